"""PyTorch models of the paper: the VGG16 backbone, DS-FC and DS-AM (attention after Gorriz et al. 2019).

Needs the `train` extra (torch). The robot never imports this module: it runs the ONNX export.

Layer names follow torchvision's VGG16 (`features.0` ... `features.28`, `classifier.0/3/6`), so an ImageNet
state_dict saved by torchvision (vgg16-397923af.pth) loads from a local file. A width multiplier scales every
convolution for small CPUs and Jetson-class boards (width 1.0 = the paper's VGG16).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..files import atomic_path
from ..labels import EMOTIONS

VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


@dataclass(frozen=True)
class ModelConfig:
    """What a model is: its variant, size and head. Stored in checkpoints and exported metadata."""

    variant: str = "ds_am"  # ds_am | ds_fc (ds_svc uses the backbone plus scikit-learn, see training)
    width: float = 1.0  # channel multiplier of the VGG16 backbone
    num_classes: int = len(EMOTIONS)
    image_height: int = 224
    image_width: int = 224
    hidden: int = 256  # dense layer of the DS-AM / DS-FC head
    dropout: float = 0.5
    vgg_classifier: bool = False  # DS-FC only: torchvision's 4096-4096 classifier (the paper) instead of pooling
    batch_norm: bool = False  # VGG16-BN layout (torchvision's vgg16_bn): trains from scratch far more easily

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        return cls(**values)


def scaled_layout(width: float) -> list[int | str]:
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return [v if v == "M" else max(8, int(round(v * width))) for v in VGG16_LAYOUT]


class VGG16Backbone(nn.Module):
    """VGG16 convolutional layers, `features.N` named as in torchvision (vgg16 or, with batch_norm, vgg16_bn)."""

    def __init__(self, width: float = 1.0, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for value in scaled_layout(width):
            if value == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(in_channels, int(value), kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(value)))
                layers.append(nn.ReLU(inplace=True))
                in_channels = int(value)
        self.features = nn.Sequential(*layers)
        for module in self.features:
            if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation: trainable from scratch
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        self.channels = in_channels
        self.pool4_channels = [v for v in scaled_layout(width) if v != "M"][9]
        # Index in `features` of the max-pool closing block 4 (23 in vgg16, 33 in vgg16_bn).
        self.pool4_index = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)][3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_pools(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of pool4 and pool5 (the inputs of the two attention heads)."""
        pool4 = self.features[: self.pool4_index + 1](x)
        return pool4, self.features[self.pool4_index + 1 :](pool4)


class LocallyConnected1x1(nn.Module):
    """A 1x1 layer whose weights differ at every spatial position (unshared), producing one map."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, height, width) * (1.0 / channels**0.5))
        self.bias = nn.Parameter(torch.zeros(height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(dim=1) + self.bias


class AttentionHead(nn.Module):
    """Gorriz et al. attention: BN -> 1x1 conv 64 -> 1x1 conv 16 -> unshared 1x1 + sigmoid -> weighted pooling."""

    def __init__(self, channels: int, height: int, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 16, kernel_size=1), nn.ReLU(inplace=True),
        )
        self.locally_connected = LocallyConnected1x1(16, height, width)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the attended descriptor g (N, C) and the attention map A (N, H, W)."""
        normed = self.norm(x)
        attention = torch.sigmoid(self.locally_connected(self.reduce(normed)))
        weighted = (normed * attention.unsqueeze(1)).sum(dim=(2, 3))
        g = weighted / (attention.sum(dim=(1, 2)).unsqueeze(1) + self.eps)
        return g, attention


def _dense_head(in_features: int, hidden: int, dropout: float, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


class DSAM(nn.Module):
    """DS-AM: VGG16 + attention heads on pool4 and pool5, concatenated, Dense 256, Dense classes."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = VGG16Backbone(config.width, config.batch_norm)
        h4, w4 = config.image_height // 16, config.image_width // 16
        h5, w5 = config.image_height // 32, config.image_width // 32
        if min(h5, w5) < 1:
            raise ValueError("DS-AM needs images of at least 32x32")
        self.attention4 = AttentionHead(self.backbone.pool4_channels, h4, w4)
        self.attention5 = AttentionHead(self.backbone.channels, h5, w5)
        self.head = _dense_head(self.backbone.pool4_channels + self.backbone.channels, config.hidden,
                                config.dropout, config.num_classes)
        self.last_attention: tuple[torch.Tensor, torch.Tensor] | None = None

        self.embedding_size = self.backbone.pool4_channels + self.backbone.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, maps = self.forward_with_attention(x)
        self.last_attention = (maps[0].detach(), maps[1].detach())
        return logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled descriptor the classifier reads (what an auxiliary teacher head regresses from)."""
        pool4, pool5 = self.backbone.forward_pools(x)
        return torch.cat([self.attention4(pool4)[0], self.attention5(pool5)[0]], dim=1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(embedding)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits and the two attention maps (pool4: H/16 x W/16, pool5: H/32 x W/32), for inspection."""
        pool4, pool5 = self.backbone.forward_pools(x)
        g4, a4 = self.attention4(pool4)
        g5, a5 = self.attention5(pool5)
        return self.head(torch.cat([g4, g5], dim=1)), (a4, a5)


class DSFC(nn.Module):
    """DS-FC: VGG16 fine-tuned end to end with a fully connected head.

    vgg_classifier=True uses torchvision's classifier (25088-4096-4096-classes), as the paper; the default pools the
    last block globally first, which removes the 500 MB of dense weights that do not fit a robot.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = VGG16Backbone(config.width, config.batch_norm)
        channels = self.backbone.channels
        if config.vgg_classifier:
            self.pool = nn.AdaptiveAvgPool2d((7, 7))
            hidden = max(64, int(round(4096 * config.width)))
            self.classifier = nn.Sequential(
                nn.Linear(channels * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(config.dropout),
                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(config.dropout),
                nn.Linear(hidden, config.num_classes),
            )
        else:
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = _dense_head(channels, config.hidden, config.dropout, config.num_classes)

        self.embedding_size = channels * (49 if config.vgg_classifier else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.backbone(x)), 1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(embedding)


MODEL_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {"ds_am": DSAM, "ds_fc": DSFC}


def build_model(config: ModelConfig) -> nn.Module:
    """The one factory for every trainable variant."""
    try:
        factory = MODEL_REGISTRY[config.variant]
    except KeyError:
        raise ValueError(f"unknown model variant {config.variant!r}; known: {sorted(MODEL_REGISTRY)}") from None
    return factory(config)


class WeightsError(RuntimeError):
    """A weights file that cannot be used, with the file named."""


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Loads torchvision-format VGG16 weights into `model.backbone`: ImageNet's (vgg16-397923af.pth) or a backbone
    written by `ser_train --set stage=pretrain` (same naming, any width).

    Returns the names of the loaded tensors. With a DS-FC that uses torchvision's classifier, its first two dense
    layers are loaded too (the last one is new: 7 classes, not 1000).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: backbone weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or pickled-code files
        raise WeightsError(f"{path}: not a readable weights-only PyTorch state_dict ({error})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(str(k).startswith("features.") for k in state):
        raise WeightsError(f"{path}: no 'features.*' tensors: not a torchvision VGG16 state_dict")
    backbone: VGG16Backbone = model.backbone  # type: ignore[assignment]
    own = backbone.state_dict()
    wanted = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(wanted))
    if missing:
        raise WeightsError(f"{path}: missing backbone tensors {missing[:4]}... (vgg16 weights need "
                           "batch_norm: false, vgg16_bn weights batch_norm: true)")
    for key, value in wanted.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise WeightsError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}"
                " (ImageNet weights exist for width 1.0 only; a pretrained backbone needs the same width)"
            )
    backbone.load_state_dict(wanted)
    loaded = [f"backbone.{k}" for k in wanted]
    classifier = getattr(model, "classifier", None)
    if isinstance(model, DSFC) and model.config.vgg_classifier and classifier is not None:
        for index in (0, 3):
            for part in ("weight", "bias"):
                key = f"classifier.{index}.{part}"
                target = getattr(classifier[index], part)
                if key in state and tuple(state[key].shape) == tuple(target.shape):
                    with torch.no_grad():
                        target.copy_(state[key])
                    loaded.append(key)
    return loaded


load_imagenet_backbone = load_backbone_weights  # the ImageNet file is one case of backbone weights


def save_backbone(path: str | Path, model: nn.Module) -> None:
    """The backbone alone in torchvision naming (`features.N.weight`), loadable by load_backbone_weights."""
    with atomic_path(path) as tmp:
        torch.save(model.backbone.state_dict(), tmp)  # type: ignore[union-attr]


def save_checkpoint(path: str | Path, model: nn.Module, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Weights only (safe to load: no pickled code), written atomically."""
    with atomic_path(path) as tmp:
        torch.save({**model.state_dict(), **(extra or {})}, tmp)


def count_flops(model: nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates x 2 of one forward pass at (1, 3, height, width): convolutions and dense layers."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2 * kernel * output.numel()

    def linear_hook(module: nn.Linear, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * module.in_features * output.numel()

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, height, width))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return total
