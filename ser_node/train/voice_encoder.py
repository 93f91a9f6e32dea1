"""The pretrained GE2E voice encoder in torch (training and export side), and the emotion model built on it.

GE2E (Wan et al. 2018) is a 3-layer LSTM (40 -> 256) trained to tell thousands of speakers apart; the weights ship
inside the `resemblyzer` wheel (see voice_frontend.py). Its speaker embedding carries little emotion, but its
hidden states do: a voice's tension, pitch movement and energy pass through them on the way to "who is it".
The emotion features are each layer's hidden states pooled over the utterance (mean and standard deviation per
unit): 3 layers x 512 values. Layer 1 sits closest to the spectrum, layer 3 closest to speaker identity; which
layers are kept is a setting (`layers`), chosen on LOSO accuracy (see bench/voice.py).

`VoiceEmotionModel` is what the node runs, exported as one ONNX graph: a streaming step of the encoder (mel frames
and the state so far in, the new state out), and the heads on a state (emotion probabilities, the pooled features
standardised, the speaker embedding). Speaker normalisation happens in the feature space: the node passes the
running mean of the voice's earlier features as `speaker_offset`, so the state of a voice lives where the voice is
tracked. `speaker_offset` may hold several rows (one per voice the utterance may belong to): the normalised head
answers for each, and the node keeps the row of the voice the speaker embedding is assigned to, all in one run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..inference.voice_frontend import MEL_CONFIG, encoder_weights_path
from ..inference.voice_stream import HIDDEN, LAYERS  # the run time's state shapes: one definition

MEL_BANDS = MEL_CONFIG.n_mels


class GE2EEncoder(nn.Module):
    """The wheel's VoiceEncoder with each LSTM layer separate, so every layer's hidden states can be read."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.LSTM(MEL_BANDS if i == 0 else HIDDEN, HIDDEN, batch_first=True)
                                    for i in range(LAYERS))
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    @classmethod
    def pretrained(cls, path: str | Path | None = None) -> "GE2EEncoder":
        """The wheel's weights (hash-checked unless an explicit path is given), frozen, in eval mode."""
        path = Path(path) if path is not None else encoder_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
        encoder = cls()
        renamed = {}
        for key, value in state.items():
            if key.startswith("lstm."):  # lstm.weight_ih_l2 -> layers.2.weight_ih_l0
                name, layer = key[len("lstm."):].rsplit("_l", 1)
                renamed[f"layers.{layer}.{name}_l0"] = value
            elif key.startswith("linear."):
                renamed[key] = value
        encoder.load_state_dict(renamed, strict=True)
        encoder.eval()
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        return encoder

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Hidden-state sequences (batch, time, 256) of each layer, for mel frames (batch, time, 40)."""
        states, x = [], frames
        for layer in self.layers:
            x, _ = layer(x)
            states.append(x)
        return states

    def embed(self, layer3: torch.Tensor) -> torch.Tensor:
        """The wheel's embedding head on (batch, 256) layer-3 states: ReLU(linear(x)), L2-normalised."""
        raw = torch.relu(self.linear(layer3))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def speaker_embedding(self, last_states: torch.Tensor) -> torch.Tensor:
        """The wheel's embedding of one window (batch, time, 256): the head on layer 3's last time step."""
        return self.embed(last_states[:, -1])

    def utterance_embedding(self, states: torch.Tensor) -> torch.Tensor:
        """The node's embedding of a whole utterance (batch, time, 256): the head on the mean of layer 3's states.
        An LSTM's last state leans on the utterance's last second; the mean hears all of it. On uem-es
        conversations it tells voices apart better (bench/conversations.py --identity --embedding last|mean),
        and it costs nothing: the graph keeps the running sum of layer 3's states for the pooled features."""
        return self.embed(states.mean(dim=1))


def pool(states: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """Mean and standard deviation over time of the chosen layers' states: (batch, len(layers) * 512)."""
    parts = []
    for index in layers:
        x = states[index]
        mean = x.mean(dim=1)
        std = ((x - mean[:, None]) ** 2).mean(dim=1).clamp_min(1e-8).sqrt()
        parts += [mean, std]
    return torch.cat(parts, dim=1)


class VoiceEmotionModel(nn.Module):
    """One streaming step of the encoder, and the heads on the state it was given, in one graph.

    State between steps: each layer's LSTM state (`h`, `c`: 3 x 1 x 256) and running sums of the hidden states
    (`sums`: 2 x 768 float64, the sum and the sum of squares of every layer's states; `count`: frames so far). A step
    reads the next mel frames and returns the new state. The heads read the state *given* (not the one after this
    step's frames): pooled mean and standard deviation from the sums, standardised with `mean`/`scale`, a plain head
    on the features and a normalised head on the features minus each row of `speaker_offset` (the mean of a
    voice's earlier features; several rows judge the utterance as several voices in one run), and the speaker
    embedding from the mean of layer 3's states (from the sums; models up to v0.5 used layer 3's last state). So
    the node steps while people speak and asks for the heads at the end, with a one-frame dummy step it ignores.
    Float64 sums: a 30 s utterance sums 3,000 frames, and the standard deviation is a difference of two such sums.

    `mean`/`scale` standardise the pooled features (fitted on the training clips). The plain head reads the
    features as they are; the normalised head was trained on features centred per training speaker. The node uses
    the plain head until it has heard enough of a voice (warm-up), the normalised one after."""

    def __init__(self, encoder: GE2EEncoder, layers: Sequence[int], mean: np.ndarray, scale: np.ndarray,
                 plain: Sequence[tuple[np.ndarray, np.ndarray]],
                 normalised: Sequence[tuple[np.ndarray, np.ndarray]], prosody: Any = None,
                 prosody_weight: float = 0.0, speaker_scale: bool = False) -> None:
        """`prosody`: heads on the utterance's prosody block (voice_recipe.VoiceHeads with mean, scale, plain,
        normalised), fused with these as log p + prosody_weight x log p(prosody); the graph then takes the block
        as the input `prosody` (1, PROSODY_SIZE) and its features and offsets are the GE2E features followed by
        the standardised block. `speaker_scale`: the normalised heads read the centred features divided by the
        input `speaker_scale` (one row per row of `speaker_offset`: each voice's spread), after `prosody`."""
        super().__init__()
        self.encoder = encoder
        self.layer_ids = tuple(int(i) for i in layers)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.plain_head, self.normalised_head = _head(plain), _head(normalised)
        self.width = len(mean)
        self.prosody_weight = float(prosody_weight)
        self.has_prosody = prosody is not None
        self.speaker_scale = speaker_scale
        if prosody is not None:
            self.register_buffer("prosody_mean", torch.as_tensor(prosody.mean, dtype=torch.float32))
            self.register_buffer("prosody_scale", torch.as_tensor(prosody.scale, dtype=torch.float32))
            self.prosody_plain, self.prosody_normalised = _head(prosody.plain), _head(prosody.normalised)

    def forward(self, frames: torch.Tensor, h: torch.Tensor, c: torch.Tensor, sums: torch.Tensor,
                count: torch.Tensor, speaker_offset: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(new h, new c, new sums, new count; probabilities with the offset removed, probabilities of the plain
        head, features, speaker embedding - the last four of the state given). `extra`: the prosody block for
        models with prosody heads, then the spreads for models with speaker_scale."""
        prosody = extra[0] if self.has_prosody else None
        spread = extra[-1] if self.speaker_scale else None
        x, new_h, new_c, step_sums, step_squares = frames, [], [], [], []
        for i, layer in enumerate(self.encoder.layers):
            x, (h_i, c_i) = layer(x, (h[i:i + 1], c[i:i + 1]))
            new_h.append(h_i)
            new_c.append(c_i)
            states = x[0].double()
            step_sums.append(states.sum(dim=0))
            step_squares.append((states * states).sum(dim=0))
        step = torch.stack([torch.cat(step_sums), torch.cat(step_squares)])
        new_count = count + torch.ones_like(frames[0, :, 0], dtype=torch.float64).sum().reshape(1)
        features = (pooled_from_sums(sums, count, self.layer_ids) - self.mean) / self.scale
        centred = features - speaker_offset[:, :self.width]
        if spread is not None:
            centred = centred / spread[:, :self.width]
        normalised = self.normalised_head(centred)
        plain = self.plain_head(features)
        if self.has_prosody:
            block = (prosody - self.prosody_mean) / self.prosody_scale
            weight = self.prosody_weight
            centred_block = block - speaker_offset[:, self.width:]
            if spread is not None:
                centred_block = centred_block / spread[:, self.width:]
            normalised = torch.log_softmax(normalised, dim=1) + weight * torch.log_softmax(
                self.prosody_normalised(centred_block), dim=1)
            plain = torch.log_softmax(plain, dim=1) + weight * torch.log_softmax(self.prosody_plain(block), dim=1)
            features = torch.cat([features, block], dim=1)
        return (torch.cat(new_h), torch.cat(new_c), sums + step, new_count,
                torch.softmax(normalised, dim=1), torch.softmax(plain, dim=1), features,
                self.encoder.embed((sums[0, (LAYERS - 1) * HIDDEN:] / count).float()[None]))


def pooled_from_sums(sums: torch.Tensor, count: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """`pool` from running sums (2 x 768 float64): (1, len(layers) * 512) float32."""
    mean = sums[0] / count
    variance = (sums[1] / count - mean * mean).clamp_min(1e-8)
    parts = []
    for index in layers:
        block = slice(index * HIDDEN, (index + 1) * HIDDEN)
        parts += [mean[block], variance[block].sqrt()]
    return torch.cat(parts).float()[None]


def _head(layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> nn.Sequential:
    """A head from its (weight, bias) layers, ReLU between them (voice_recipe.head_logits in torch)."""
    modules: list[nn.Module] = []
    for weight, bias in layers:
        layer = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        modules += [layer, nn.ReLU()]
    return nn.Sequential(*modules[:-1])


@torch.no_grad()
def pooled_features(encoder: GE2EEncoder, frames: Sequence[np.ndarray], layers: Sequence[int] = (0, 1, 2)
                    ) -> np.ndarray:
    """(clips, len(layers) * 512) pooled features, one clip at a time (clips differ in length; padding would
    change the statistics)."""
    out = [pool(encoder(torch.from_numpy(f[None])), layers)[0].numpy() for f in frames]
    return np.stack(out) if out else np.zeros((0, len(layers) * 2 * HIDDEN), np.float32)


@torch.no_grad()
def embed_utterance(encoder: GE2EEncoder, partials: np.ndarray) -> np.ndarray:
    """The wheel's utterance embedding from its partial windows (see voice_frontend.partial_frames)."""
    embeddings = encoder.speaker_embedding(encoder(torch.from_numpy(partials))[-1]).numpy()
    mean = embeddings.mean(axis=0)
    return mean / np.linalg.norm(mean)
