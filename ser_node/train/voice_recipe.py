"""`ser_train_voice`: the default model's recipe. Linear heads on the frozen GE2E encoder's pooled features,
speaker-normalised, trained on the target corpus plus the other corpora, exported as one ONNX graph.

Why linear heads on frozen features: with 12 target speakers, every trainable parameter beyond a linear map
overfits the speakers (measured: see bench/voice.py and the model card); the encoder was trained on thousands of
voices, and its pooled states are the part that generalises. The features are cached per clip
(voice_features.py), so a head trains in seconds and a 12-fold LOSO in about a minute.

Speaker normalisation: the normalised head is trained on features centred per training speaker (all their clips);
at run time each utterance is centred by the mean of the same voice's earlier utterances (SpeakerAdapter). Until
`warmup` utterances of a voice are in, the plain head answers.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from ..inference.adaptation import SpeakerAdapter, voice_spread
from ..inference.prosody import PROSODY_NAMES, PROSODY_SIZE, PROSODY_VERSION
from ..inference.voice_frontend import ENCODER_PACKAGE, ENCODER_SHA256, ENCODER_VERSION, FRONTEND_VERSION, MEL_CONFIG
from ..inference.voice_stream import (HEAD_OUTPUTS, HIDDEN, LAYERS, PROSODY_INPUT, SCALE_INPUT, STEP_INPUTS,
                                      STEP_OUTPUTS)
from ..labels import EMOTIONS
from ..settings import check_known_fields
from .corpora import load_corpus_entry
from .voice_features import ALL_LAYERS, clip_features, clip_prosody, layer_columns

MODEL_KIND = "ge2e_heads"


@dataclass
class VoiceRecipe:
    """Every setting of the default model's recipe (config/train_voice.yaml)."""

    # corpus entries as in ser_train's `corpora:` (name, kind, path, label_map); the first is the target corpus
    corpora: list[dict] = field(default_factory=lambda: [
        {"name": "uem-es", "kind": "emomatch", "path": "../shared/data/uem-es"}])
    layers: list[int] = field(default_factory=lambda: list(ALL_LAYERS))  # GE2E layers pooled (0 = nearest input)
    c: float = 1e-2  # inverse L2 strength of both logistic-regression heads (linear heads)
    # 0: linear heads (logistic regression). N: each head is a small MLP, one hidden layer of N ReLU units,
    # trained with dropout (head_input_dropout on the features, head_dropout on the hidden units) and weight decay:
    # one linear map cannot hold dry and far-away speech at once without losing clean accuracy (bench/voice.py
    # --parts heads).
    head_hidden: int = 0
    # The plain head's hidden units, where they should differ (None: head_hidden). The plain head judges a voice's
    # first utterances from the features alone, where MLP heads lost 2 points: a linear plain head (0) beside an
    # MLP normalised head keeps it.
    plain_head_hidden: int | None = None
    # MLP heads only: this many MLPs (seeds seed, seed + 1000, ...) trained on the same rows, their logits
    # averaged. The average is itself one MLP (hidden layers stacked, output weights divided by the count), so the
    # exported graph and the node are unchanged; a single MLP's answer on 12 speakers varies with its seed.
    head_ensemble: int = 1
    head_dropout: float = 0.5
    head_input_dropout: float = 0.2
    head_weight_decay: float = 1e-2
    head_epochs: int = 20
    # MLP heads only: weight of a loss pulling each copy's hidden units (augmented or room copy) towards those of
    # its clean clip (paired consistency, as teacher-student training for far-field speech). 0: off. At 1 on the
    # shipped rows, +0.4-0.7 points clean, in the room and in noise, none significant (bench/voice.py --parts
    # consistency, 2026-12-06): not in the default recipe.
    head_consistency: float = 0.0
    target_weight: float = 3.0  # sample weight of target-corpus clips against the other corpora's
    warmup: int = 5  # utterances of a voice before the normalised head answers
    history: int = 50  # utterances the running mean rests on (the node's SpeakerAdapter)
    shrinkage: float = 0.0  # offset shrunk by n / (n + shrinkage) while it rests on few utterances
    # A voice's offset as a class-balanced mean of its history, each utterance weighed by the plain head's class
    # probabilities (SpeakerAdapter balance, the smoothing); 0: the plain mean. A serving setting, in the model's
    # metadata: it changes no head. bench/voice.py --parts balance and bench/conversations.py --balance measure it.
    history_balance: float = 0.0
    # Per-voice variance normalisation: the normalised head reads (features - voice mean) / voice spread (the
    # per-dimension standard deviation of the voice's history, SpeakerAdapter.spread) instead of the centred
    # features alone; the exported graph then takes a speaker_scale input beside speaker_offset. Reverberation
    # changes how a person's utterances spread as well as their mean. Not with history_neutral_share.
    speaker_scale: bool = False
    # With speaker_scale: the voice's spread pulled towards 1 as if this many more utterances of unit variance were
    # in its history (SpeakerAdapter spread_shrinkage). A serving setting, in the model's metadata: it changes no
    # head, which trained on each speaker's full spread.
    spread_shrinkage: float = 0.0
    # Real speakers are mostly neutral, acted corpora are balanced: with a share here, the normalised head is
    # trained on clips centred by random histories of their speaker drawn with this neutral share (history_size
    # clips, history_draws draws per clip) instead of the speaker's full mean; [low, high]: a share drawn
    # uniformly per history. None: the full mean.
    history_neutral_share: float | list[float] | None = None
    history_size: int = 20
    history_draws: int = 3
    # Acoustic augmentation: this many degraded copies of every target clip (a random room and/or noise at 0-30 dB
    # SNR and gain, ser_node/train/acoustics.py; babble from the other corpora's speakers) join training, each copy
    # weighted augment_weight (the clean target clips keep target_weight).
    augment_copies: int = 0
    augment_weight: float = 1.0
    # Room copies: this many copies of the clips of `room_corpora` (None: every corpus), each speaker's clips heard
    # in one simulated room and distance per copy, as a person talks to a robot in one room. A copy is centred
    # with the other clips of its speaker in the same room, as the node's per-voice offset centres a person heard
    # in one room. Each copy weighted room_weight.
    room_copies: int = 0
    room_corpora: list[str] | None = None
    room_weight: float = 1.0
    # The simulated room shapes the room copies are heard in: "shared", each speaker and copy in one of 4 shapes
    # (ROOM_SEEDS); "own", a shape of its own per speaker and copy (OWN_ROOM_SEEDS). Same RT60 and distance draws.
    # "own" trades clean for room (4 copies: clean -1.2 points, room +0.8 against "shared" with 2) and the choice on
    # the other speakers' folds kept "shared" for 7 of 12 test speakers (bench/voice.py --parts widerooms,
    # 2026-12-07 11:10).
    room_shapes: str = "shared"
    # A head on the utterance's prosody (inference/prosody.py: pitch, voicing, loudness dynamics, tilt; fitted like
    # the GE2E heads, with its own standardisation and per-voice offset) beside them, in late fusion: the model's
    # log-probabilities are the GE2E heads' plus this weight times the prosody head's. 0: no prosody. At 1 (model
    # v0.7), +1.7 points clean, +1.0 in the test room, +2.0 in robot noise, normalised; appended to the GE2E
    # features instead, the block moved clean and room by under a point (bench/prosody.py --concat, 2026-12-06).
    prosody_weight: float = 0.0
    # What reaches the encoder (inference/voice_frontend.py): 2, the causal front end; 3, the same through a
    # late-reverberation suppressor. The model file records it and the node computes the same.
    frontend_version: int = FRONTEND_VERSION
    # Further head sets, each given as changes to this recipe's training rows or head training (HEAD_SET_FIELDS,
    # e.g. {room_shapes: own, room_copies: 4, room_weight: 0.5}): heads fitted on those rows in the first set's
    # standardisation, the model's logits the mean of every set's (one wider MLP, as head_ensemble, so the graph
    # and the node are unchanged). Rooms of other shapes in one model without trading away the first set's clean
    # accuracy (bench/voice.py --parts headsets).
    head_sets: list[dict] = field(default_factory=list)
    seed: int = 0
    cache_dir: str = "~/.cache/ser_node"

    def __post_init__(self) -> None:
        if self.speaker_scale and self.history_neutral_share is not None:
            raise ValueError("voice recipe: speaker_scale and history_neutral_share cannot be combined")
        if self.room_shapes not in ROOM_SHAPES:
            raise ValueError(f"voice recipe: room_shapes {self.room_shapes!r}: choose {' or '.join(ROOM_SHAPES)}")
        for changes in self.head_sets:
            unknown = sorted(set(changes) - set(HEAD_SET_FIELDS))
            if unknown:
                raise ValueError(f"voice recipe: a head set cannot change {unknown} (the sets share the features, "
                                 f"their standardisation and the serving): choose among {sorted(HEAD_SET_FIELDS)}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "VoiceRecipe":
        check_known_fields(cls, values, "voice recipe")
        return cls(**values)

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def feature_cache(self) -> Path:
        """Where the encoder features of the clips and of their copies are cached (voice_features.clip_features)."""
        return Path(self.cache_dir).expanduser() / "voice"

    def serving(self) -> dict[str, Any]:
        """The SpeakerAdapter settings this recipe serves with, by the adapter's (and VoiceSettings') names: what
        the model's metadata stores as `normalisation` and the benches judge with."""
        return {"warmup": self.warmup, "history": self.history, "shrinkage": self.shrinkage,
                "balance": self.history_balance, "spread_shrinkage": self.spread_shrinkage}

    def adapter(self) -> SpeakerAdapter:
        return SpeakerAdapter(**self.serving())


@dataclass
class VoiceData:
    """Cached features of every clip of the recipe's corpora, with labels and namespaced speakers."""

    features: np.ndarray  # (n, 1536): all layers, select with layer_columns; + PROSODY_COLUMNS with prosody
    speaker_embeddings: np.ndarray  # (n, 256)
    labels: np.ndarray
    speakers: np.ndarray  # corpus/speaker
    corpora: np.ndarray
    paths: list[str]
    target: str

    def subset(self, mask: np.ndarray) -> "VoiceData":
        return VoiceData(self.features[mask], self.speaker_embeddings[mask], self.labels[mask], self.speakers[mask],
                         self.corpora[mask], [p for p, m in zip(self.paths, mask) if m], self.target)


def load_voice_data(recipe: VoiceRecipe, base: Path | None = None, progress: bool = True) -> VoiceData:
    """Loads the corpora (paths relative to `base`) and their cached features through the recipe's front end
    (computed where missing; a front end this code no longer computes is read from its cache only)."""
    features, embeddings, labels, speakers, corpora, paths = [], [], [], [], [], []
    for spec in recipe.corpora:
        spec = dict(spec)
        if base is not None and not Path(spec["path"]).is_absolute():
            spec["path"] = str((base / spec["path"]).resolve())
        entry = load_corpus_entry(spec)
        clips = entry.corpus.clips
        x, e = clip_features([c.path for c in clips], recipe.feature_cache, progress=progress,
                             frontend_version=recipe.frontend_version)
        if recipe.prosody_weight:
            x = np.hstack([x, clip_prosody([c.path for c in clips], recipe.feature_cache, progress=progress)])
        features.append(x)
        embeddings.append(e)
        labels += [c.label for c in clips]
        speakers += [c.speaker for c in clips]
        corpora += [entry.name] * len(clips)
        paths += [str(c.path) for c in clips]
    return VoiceData(np.concatenate(features), np.concatenate(embeddings), np.array(labels), np.array(speakers),
                     np.array(corpora), paths, target=str(corpora[0]))


def centre_by_speaker(x: np.ndarray, speakers: np.ndarray, scale: bool = False) -> np.ndarray:
    """Each row minus the mean of its speaker's rows (and, with `scale`, divided by their spread, voice_spread)."""
    out = np.array(x, dtype=np.float64, copy=True)
    for speaker in np.unique(speakers):
        rows = speakers == speaker
        if scale:
            out[rows] /= voice_spread(out[rows])  # the spread does not depend on the mean
        out[rows] -= out[rows].mean(axis=0)
    return out


def centre_by_drawn_histories(z: np.ndarray, speakers: np.ndarray, labels: np.ndarray, recipe: VoiceRecipe
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Each clip, `history_draws` times, minus the mean of `history_size` other clips of its speaker drawn with
    `history_neutral_share` neutral (with replacement where a speaker has too few): the skewed histories the node
    meets with real people. Returns the centred rows and the index of the clip each came from."""
    rng = np.random.default_rng(recipe.seed)
    out, rows = [], []
    for speaker in np.unique(speakers):
        members = np.where(speakers == speaker)[0]
        neutral, other = members[labels[members] == "neutral"], members[labels[members] != "neutral"]
        for i in members:
            for _ in range(recipe.history_draws):
                share = recipe.history_neutral_share
                share = rng.uniform(*share) if isinstance(share, (list, tuple)) else share
                n_neutral = int(round(share * recipe.history_size)) if len(neutral) else 0
                pools = [(neutral[neutral != i], n_neutral), (other[other != i], recipe.history_size - n_neutral)]
                drawn = np.concatenate([rng.choice(pool, k, replace=k > len(pool)) for pool, k in pools
                                        if k > 0 and len(pool)])
                out.append(z[i] - z[drawn].mean(axis=0))
                rows.append(i)
    return np.stack(out), np.array(rows)


Layers = list[tuple[np.ndarray, np.ndarray]]  # a head: (weight (out, in), bias (out,)) per layer, ReLU between


def head_logits(layers: Layers, x: np.ndarray) -> np.ndarray:
    """A head's logits: affine layers with ReLU between them (one layer: a linear head)."""
    for i, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


GE2E_WIDTH = len(layer_columns(ALL_LAYERS))  # the cached pooled features of all layers
PROSODY_COLUMNS = np.arange(GE2E_WIDTH, GE2E_WIDTH + PROSODY_SIZE)  # where VoiceData keeps the prosody block


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@dataclass
class VoiceHeads:
    """Standardisation and the two heads, as the exported graph computes them (numpy, for evaluation); with
    `prosody`, the heads on the prosody block (columns PROSODY_COLUMNS), fused as log p + prosody_weight x
    log p(prosody)."""

    layers: list[int]
    mean: np.ndarray
    scale: np.ndarray
    plain: Layers  # on standardised features; the last layer gives the 7 logits
    normalised: Layers  # on standardised features minus the voice's offset
    prosody: "VoiceHeads | None" = None
    prosody_weight: float = 0.0
    columns: np.ndarray | None = None  # the feature columns read, where not the layers' (fit_heads' `columns`)
    speaker_scale: bool = False  # the normalised head reads (z - offset) / the voice's spread (recipe's)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """Standardised features of rows of VoiceData.features: the heads' columns (their layers'), then the
        prosody block if any (the vector the node's per-voice offset averages)."""
        columns = layer_columns(self.layers) if self.columns is None else self.columns
        z = (features[:, columns] - self.mean) / self.scale
        return z if self.prosody is None else np.hstack([z, self.prosody.standardise(features)])

    def _fused(self, head: str, z: np.ndarray) -> np.ndarray:
        width = len(self.mean)
        log_p = _log_softmax(head_logits(getattr(self, head), z[:, :width]))
        if self.prosody is not None:
            log_p = log_p + self.prosody_weight * _log_softmax(head_logits(getattr(self.prosody, head),
                                                                           z[:, width:]))
        return np.exp(_log_softmax(log_p))

    def plain_probabilities(self, z: np.ndarray) -> np.ndarray:
        return self._fused("plain", z)

    def normalised_probabilities(self, z: np.ndarray, offsets: np.ndarray, spreads: np.ndarray | None = None
                                 ) -> np.ndarray:
        """The normalised head on z minus the voices' offsets, divided by their spreads where the heads were
        trained so (speaker_scale; None: ones)."""
        if self.speaker_scale != (spreads is not None):
            raise ValueError(f"heads trained {'with' if self.speaker_scale else 'without'} speaker_scale need "
                             f"{'spreads' if self.speaker_scale else 'no spreads'}")
        return self._fused("normalised", z - offsets if spreads is None else (z - offsets) / spreads)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, by name (heads.npz); the prosody heads' with the prefix prosody_."""
        out = {"mean": self.mean, "scale": self.scale, "layers": np.array(self.layers)}
        for name, head in (("plain", self.plain), ("norm", self.normalised)):
            for i, (weight, bias) in enumerate(head):
                out[f"{name}_w{i}"], out[f"{name}_b{i}"] = weight, bias
        if self.prosody is not None:
            out.update({f"prosody_{k}": v for k, v in self.prosody.arrays().items() if k != "layers"})
            out["prosody_weight"] = np.array(self.prosody_weight)
        return out


def _mlp_head(x: np.ndarray, y: np.ndarray, weights: np.ndarray, recipe: VoiceRecipe, hidden_units: int,
              seed: int, partner: np.ndarray | None = None) -> Layers:
    """One hidden layer of `hidden_units` ReLU units, trained by AdamW on minibatches of 128 with class-balanced
    weighted cross-entropy (the logistic head's class_weight="balanced" times the sample weights); with
    recipe.head_consistency, plus that weight times the mean squared distance of a copy's hidden units from its
    clean clip's (`partner`: the row of each row's clean clip, -1 for clean rows; the clean side held fixed)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    labels = np.array([EMOTIONS.index(v) for v in y])
    counts = np.bincount(labels, minlength=len(EMOTIONS))
    if np.any(counts == 0):
        raise ValueError(f"the training clips lack {[c for c, n in zip(EMOTIONS, counts) if n == 0]}; "
                         "the heads need every class")
    row_weights = weights * (len(labels) / (len(EMOTIONS) * counts))[labels]
    row_weights = torch.tensor(row_weights / row_weights.mean(), dtype=torch.float32)
    inputs, targets = torch.tensor(x, dtype=torch.float32), torch.tensor(labels)
    hidden, output = nn.Linear(x.shape[1], hidden_units), nn.Linear(hidden_units, len(EMOTIONS))
    net = nn.Sequential(nn.Dropout(recipe.head_input_dropout), hidden, nn.ReLU(), nn.Dropout(recipe.head_dropout),
                        output)
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=recipe.head_weight_decay)
    order = torch.Generator().manual_seed(seed)
    consistent = recipe.head_consistency > 0 and partner is not None and bool(np.any(partner >= 0))
    if consistent:
        partner_rows, is_copy = torch.tensor(np.maximum(partner, 0)), torch.tensor(partner >= 0, dtype=torch.float32)
    for _ in range(recipe.head_epochs):
        for batch in torch.randperm(len(inputs), generator=order).split(128):
            units = net[:3](inputs[batch])  # dropout on the input, hidden layer, ReLU
            loss = nn.functional.cross_entropy(net[3:](units), targets[batch], reduction="none") * row_weights[batch]
            if consistent:
                with torch.no_grad():
                    clean_units = torch.relu(hidden(inputs[partner_rows[batch]]))
                distance = ((units - clean_units) ** 2).mean(dim=1)
                loss = loss + recipe.head_consistency * distance * is_copy[batch]
            optimiser.zero_grad()
            loss.mean().backward()
            optimiser.step()
    return [(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()) for layer in (hidden, output)]


def averaged_layers(heads: Sequence[Layers]) -> Layers:
    """Heads of one kind as the one head whose logits are their mean: linear heads' weights and biases averaged;
    one-hidden-layer MLPs' hidden layers stacked, output weights side by side divided by the count."""
    if len(heads) == 1:
        return list(heads[0])
    depths = {len(head) for head in heads}
    if depths == {1}:
        return [(np.mean([w for (w, _), in heads], axis=0).astype(np.float32),
                 np.mean([b for (_, b), in heads], axis=0).astype(np.float32))]
    if depths != {2}:
        raise ValueError(f"cannot average heads of {sorted(depths)} layers: all linear or all one hidden layer")
    hidden, output = zip(*heads)  # each: (weight, bias) of every MLP
    return [(np.concatenate([w for w, _ in hidden]), np.concatenate([b for _, b in hidden])),
            ((np.concatenate([w for w, _ in output], axis=1) / len(heads)).astype(np.float32),
             np.mean([b for _, b in output], axis=0).astype(np.float32))]


def _logistic_head(x: np.ndarray, y: np.ndarray, weights: np.ndarray, c: float) -> Layers:
    """Class-balanced multinomial logistic regression on x standardised by its own spread, folded back so the
    head reads x directly (the graph standardises once, for both heads)."""
    from sklearn.linear_model import LogisticRegression

    scale = x.std(axis=0) + 1e-6
    centre = x.mean(axis=0)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    model.fit((x - centre) / scale, y, sample_weight=weights)
    if list(model.classes_) != list(EMOTIONS):
        raise ValueError(f"the training clips cover {list(model.classes_)}; the heads need all of {EMOTIONS}")
    weight = model.coef_ / scale
    return [(weight.astype(np.float32), (model.intercept_ - weight @ centre).astype(np.float32))]


def sample_weights(data: VoiceData, recipe: VoiceRecipe) -> np.ndarray:
    """Per training row: target_weight for the target corpus, augment_weight and room_weight for the copies, 1 for
    the other corpora."""
    return np.select([data.corpora == data.target, data.corpora == AUGMENTED, data.corpora == ROOMS],
                     [recipe.target_weight, recipe.augment_weight, recipe.room_weight], 1.0)


def clean_partners(data: VoiceData) -> np.ndarray:
    """For every row, the row of the clean clip it is a copy of (copies share their clip's path), -1 for clean rows
    and for copies whose clip is not among the rows."""
    copy = np.isin(data.corpora, (AUGMENTED, ROOMS))
    clean_row = {path: i for i, (path, is_copy) in enumerate(zip(data.paths, copy)) if not is_copy}
    return np.array([clean_row.get(path, -1) if is_copy else -1 for path, is_copy in zip(data.paths, copy)])


def fit_heads(data: VoiceData, recipe: VoiceRecipe, columns: np.ndarray | None = None,
              like: VoiceHeads | None = None) -> VoiceHeads:
    """Both heads on every clip of `data` (target clips weighted by target_weight), on the recipe's layers'
    columns (or the given `columns`, for features other than the cached pooling); with the recipe's
    prosody_weight, the prosody heads too, fitted the same way on PROSODY_COLUMNS. The features are standardised
    by their own mean and spread, or by those of `like` (another head set of the same model)."""
    if recipe.head_sets:
        raise ValueError("a recipe with head_sets trains through fit_head_sets (each set has rows of its own)")
    if recipe.prosody_weight and columns is None:
        plain_recipe = dataclasses.replace(recipe, prosody_weight=0.0)
        return dataclasses.replace(fit_heads(data, plain_recipe, like=like), prosody_weight=recipe.prosody_weight,
                                   prosody=fit_heads(data, plain_recipe, PROSODY_COLUMNS,
                                                     None if like is None else like.prosody))
    pooled = data.features[:, layer_columns(recipe.layers) if columns is None else columns].astype(np.float64)
    if like is None:
        mean, scale = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    else:
        mean, scale = like.mean.astype(np.float64), like.scale.astype(np.float64)
    z = (pooled - mean) / scale
    weights = sample_weights(data, recipe)
    partners = clean_partners(data)

    def head(x: np.ndarray, y: np.ndarray, w: np.ndarray, hidden_units: int, seed: int,
             partner: np.ndarray) -> Layers:
        if hidden_units:
            return averaged_layers([_mlp_head(x, y, w, recipe, hidden_units, seed + 1000 * k, partner)
                                    for k in range(recipe.head_ensemble)])
        return _logistic_head(x, y, w, recipe.c)

    plain_hidden = recipe.head_hidden if recipe.plain_head_hidden is None else recipe.plain_head_hidden
    plain = head(z, data.labels, weights, plain_hidden, recipe.seed, partners)
    if recipe.history_neutral_share is None:
        centred = centre_by_speaker(z, data.speakers, recipe.speaker_scale)
        normalised = head(centred, data.labels, weights, recipe.head_hidden, recipe.seed + 1, partners)
    else:
        centred, rows = centre_by_drawn_histories(z, data.speakers, data.labels, recipe)
        first_draw = {clip: i for i, clip in reversed(list(enumerate(rows)))}  # a clean clip's first centred row
        partner = np.array([first_draw.get(partners[clip], -1) for clip in rows])  # -1 stays -1: no such row
        normalised = head(centred, data.labels[rows], weights[rows], recipe.head_hidden, recipe.seed + 1, partner)
    return VoiceHeads(list(recipe.layers), mean.astype(np.float32), scale.astype(np.float32), plain, normalised,
                      columns=columns, speaker_scale=recipe.speaker_scale)


# What a head set may change (VoiceRecipe.head_sets): its training rows and how its heads train, never the features,
# their standardisation or the serving, which every set of one model shares.
HEAD_SET_FIELDS = ("corpora", "target_weight", "augment_copies", "augment_weight", "room_copies", "room_corpora",
                   "room_weight", "room_shapes", "c", "head_hidden", "plain_head_hidden", "head_ensemble",
                   "head_dropout", "head_input_dropout", "head_weight_decay", "head_epochs", "head_consistency",
                   "history_neutral_share", "history_size", "history_draws", "seed")


def head_set_recipes(recipe: VoiceRecipe) -> list[VoiceRecipe]:
    """The recipe of each head set: the recipe itself, then each of its head_sets' changes applied to it."""
    first = dataclasses.replace(recipe, head_sets=[])
    return [first] + [dataclasses.replace(first, **changes) for changes in recipe.head_sets]


def head_set_copies(data: VoiceData, recipe: VoiceRecipe, progress: bool = True) -> list[list["Copies"]]:
    """Every copy each head set trains with (training_copies of its recipe; cached, so sets share them)."""
    return [training_copies(data, r, progress) for r in head_set_recipes(recipe)]


def fit_head_sets(data: VoiceData, recipe: VoiceRecipe, copies: Sequence[Sequence["Copies"]], train: np.ndarray
                  ) -> list[VoiceHeads]:
    """Each head set's heads on the `train` clips of `data` plus their copies (`copies`: one list per set, as
    head_set_copies gives), all in the first set's standardisation; averaged_heads makes them the model's heads."""
    sets: list[VoiceHeads] = []
    for set_recipe, set_copies in zip(head_set_recipes(recipe), copies, strict=True):
        rows = with_augmentation(data, set_copies, train) if set_copies else data.subset(train)
        sets.append(fit_heads(rows, set_recipe, like=sets[0] if sets else None))
    return sets


def averaged_heads(sets: Sequence[VoiceHeads]) -> VoiceHeads:
    """Head sets fitted in one standardisation as one VoiceHeads whose logits (plain, normalised, and the prosody
    heads') are the mean of the sets' logits."""
    first = sets[0]
    for other in sets[1:]:
        same = (other.layers == first.layers and other.speaker_scale == first.speaker_scale
                and other.prosody_weight == first.prosody_weight and (other.prosody is None) == (first.prosody is None)
                and np.array_equal(other.mean, first.mean) and np.array_equal(other.scale, first.scale)
                and (other.columns is None) == (first.columns is None))
        if not same:
            raise ValueError("head sets to average must share layers, standardisation, prosody and speaker_scale")
    return dataclasses.replace(
        first, plain=averaged_layers([s.plain for s in sets]), normalised=averaged_layers([s.normalised for s in sets]),
        prosody=None if first.prosody is None else averaged_heads([s.prosody for s in sets]))


def causal_normalisation(z: np.ndarray, recipe: VoiceRecipe, plain: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """For one voice's features in the order heard (and the plain head's probabilities, which a balanced history
    weighs by): the offset and spread (None unless the recipe has speaker_scale) each was judged with, and whether
    the normalised head answered (exactly what the node's SpeakerAdapter does)."""
    adapter = recipe.adapter()
    offsets, active = np.zeros_like(z), np.zeros(len(z), dtype=bool)
    spreads = np.ones_like(z) if recipe.speaker_scale else None
    for i, vector in enumerate(z):
        offset = adapter.offset()
        if offset is not None:
            offsets[i], active[i] = offset, True
            if spreads is not None:
                spreads[i] = adapter.spread()
        adapter.remember(vector, None if plain is None else plain[i])
    return offsets, spreads, active


def predict_in_order(heads: VoiceHeads, z: np.ndarray, recipe: VoiceRecipe, normalise: bool) -> np.ndarray:
    """Probabilities of one voice's clips heard in the given order, as the node would publish them."""
    plain = heads.plain_probabilities(z)
    if not normalise:
        return plain
    offsets, spreads, active = causal_normalisation(z, recipe, plain)
    return np.where(active[:, None], heads.normalised_probabilities(z, offsets, spreads), plain)


def speaker_orders(n: int, speaker: str, count: int = 5) -> list[np.ndarray]:
    """Random orders of one speaker's clips, seeded by the speaker's name (the same in every run and bench)."""
    seed = int.from_bytes(speaker.encode()[-4:].rjust(4, b"\0"), "little")
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(count)]


# ------------------------------------------------------------------ export

def build_torch_model(heads: VoiceHeads, weights_path: str | Path | None = None):
    from .voice_encoder import GE2EEncoder, VoiceEmotionModel

    return VoiceEmotionModel(GE2EEncoder.pretrained(weights_path), heads.layers, heads.mean, heads.scale,
                             heads.plain, heads.normalised, heads.prosody, heads.prosody_weight,
                             heads.speaker_scale).eval()


# The default model's version; its id ends in v<major>.<minor>. 0.6: the speaker embedding is the head on the mean of
# layer 3's states (0.5: its last state); 0.7: prosody heads fused with the GE2E heads (input `prosody`); 0.8: the
# normalised heads divide by the voice's spread (input `speaker_scale`); 0.8.1: that spread shrunk towards 1 while
# a voice is new (metadata only, the heads are 0.8's, so the id and the voices files and enrolments made with it
# stay); 0.9.0: a second head set on room copies in room shapes of their own, averaged with 0.8's (head_sets); a
# self-voice enrolment names the model id it was made with.
MODEL_VERSION = "0.9.0"
DEFAULT_MODEL_ID = f"ser-default-ge2e-heads-v{MODEL_VERSION.rsplit('.', 1)[0]}"


def feature_size(heads: VoiceHeads) -> int:
    """Width of the vector the node's per-voice offset averages: the standardised GE2E features and the prosody
    block if the model has one."""
    return int(len(heads.mean)) + (PROSODY_SIZE if heads.prosody is not None else 0)


def export_voice_model(heads: VoiceHeads, recipe: VoiceRecipe, path: str | Path, training: dict[str, Any],
                       model_id: str = DEFAULT_MODEL_ID) -> Path:
    """The node's model file: one ONNX graph (opset 17, dynamic time axis): the encoder's streaming step and the
    heads (see VoiceEmotionModel), with ser_node metadata naming the encoder's source (package, version, sha256 of
    the weights), the recipe and the step's state."""
    import onnx
    import torch

    from ..inference.model_file import ModelMetadata, write_metadata
    from .export import _atomic_save

    model = build_torch_model(heads)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    example = (torch.from_numpy(rng.random((1, 120, MEL_CONFIG.n_mels), dtype=np.float32)),
               torch.zeros((LAYERS, 1, HIDDEN)), torch.zeros((LAYERS, 1, HIDDEN)),
               torch.ones((2, LAYERS * HIDDEN), dtype=torch.float64), torch.ones(1, dtype=torch.float64),
               torch.zeros((1, feature_size(heads))))
    inputs = list(STEP_INPUTS)
    if heads.prosody is not None:
        example += (torch.zeros((1, PROSODY_SIZE)),)
        inputs.append(PROSODY_INPUT)
    if heads.speaker_scale:
        example += (torch.ones((1, feature_size(heads))),)
        inputs.append(SCALE_INPUT)
    tmp = path.with_name(path.name + ".export.onnx")
    with warnings.catch_warnings():  # the tracer's notes on LSTM shapes: batch is fixed at 1, time is dynamic
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(tmp), input_names=inputs,
                          output_names=list(STEP_OUTPUTS) + list(HEAD_OUTPUTS),
                          # One utterance per run; several candidate offsets (one per known voice) in one run.
                          dynamic_axes={"frames": {1: "time"}, "probabilities": {0: "candidates"},
                                        **{name: {0: "candidates"} for name in ("speaker_offset", SCALE_INPUT)
                                           if name in inputs}},
                          opset_version=17, dynamo=False)
    graph = onnx.load(str(tmp))
    tmp.unlink()
    metadata = ModelMetadata(
        model_id=model_id, classes=list(EMOTIONS), features=MEL_CONFIG, variant=MODEL_KIND, version=MODEL_VERSION,
        model={"kind": MODEL_KIND, "layers": list(heads.layers), "frontend_version": recipe.frontend_version,
               "graph": {"kind": "stream_step", "state": {"h": [LAYERS, 1, HIDDEN], "c": [LAYERS, 1, HIDDEN],
                                                         "sums": [2, LAYERS * HIDDEN], "count": [1]},
                         "note": "step: frames and state in, h_next c_next sums_next count_next out; heads: the "
                                 "outputs probabilities.. speaker_embedding judge the state given (feed one dummy "
                                 "frame); initial state zeros"},
               "feature_size": feature_size(heads),
               **({"speaker_scale": True} if heads.speaker_scale else {}),
               "speaker_embedding": "the encoder's embedding head on the mean of layer 3's states over the utterance",
               # each head's layer widths, features to classes: [1536, 7] linear, [1536, 128, 7] one hidden layer
               "heads": {name: [int(head[0][0].shape[1])] + [int(w.shape[0]) for w, _ in head]
                         for name, head in (("plain", heads.plain), ("normalised", heads.normalised))},
               "encoder": {"name": "GE2E speaker encoder", "package": ENCODER_PACKAGE, "version": ENCODER_VERSION,
                           "file": "resemblyzer/pretrained.pt", "sha256": ENCODER_SHA256, "license": "Apache-2.0"},
               **({} if heads.prosody is None else {"prosody": {
                   "version": PROSODY_VERSION, "size": PROSODY_SIZE, "names": list(PROSODY_NAMES),
                   "weight": heads.prosody_weight, "code": "ser_node/inference/prosody.py",
                   "heads": {name: [PROSODY_SIZE] + [int(w.shape[0]) for w, _ in head]
                             for name, head in (("plain", heads.prosody.plain),
                                                ("normalised", heads.prosody.normalised))}}}),
               "normalisation": recipe.serving()},
        training=training)
    write_metadata(graph, metadata)
    _atomic_save(graph, path)
    return path


AUGMENTED = "augmented"  # corpus name of the augmentation copies (weighted by augment_weight)
ROOMS = "rooms"  # corpus name of the room copies (weighted by room_weight)
# The rooms the room copies are heard in: RT60, distance and one of four simulated rooms, drawn per speaker and
# copy. bench/robustness.py and bench/voice.py measure in room seed 0, which training never uses.
ROOM_RT60_S = (0.3, 0.45, 0.6, 0.75, 0.9)
ROOM_DISTANCE_M = (0.5, 1.0, 1.5, 2.0, 3.0)
ROOM_SEEDS = (1, 2, 3, 4)
OWN_ROOM_SEEDS = range(5, 1005)  # room_shapes "own": a speaker's shape per copy, the first of these its distance fits
ROOM_SHAPES = ("shared", "own")


@dataclass
class Copies:
    """Degraded copies of some clips of a VoiceData, to join training beside them."""

    features: np.ndarray  # (k, 1536) pooled features of the copies
    rows: np.ndarray  # (k,) the clip (row of the VoiceData) each copy is of
    speakers: np.ndarray  # (k,) the voice each copy is centred with for the normalised head
    corpus: str  # AUGMENTED or ROOMS: the weight the copies take


def augmented_copies(data: VoiceData, recipe: VoiceRecipe, progress: bool = True) -> list[Copies]:
    """`augment_copies` degraded copies of every target clip (augment_transform), cached per copy."""
    target = data.corpora == data.target
    rows = np.where(target)[0]
    paths = [data.paths[r] for r in rows]
    copies = []
    for copy in range(recipe.augment_copies):
        features = copy_features(paths, recipe, f"augment{copy}", augment_transform(data, copy), progress)
        copies.append(Copies(features, rows, data.speakers[target], AUGMENTED))
    return copies


def augment_transform(data: VoiceData, copy: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """transform(audio, i): the i-th target clip of `data` under augmentation copy `copy`. Rooms are simulated with
    room seeds 1 and 2 (bench/robustness.py measures in room seed 0); each clip's condition and seed follow from
    its file name, speaker and copy number, so the copies are the same in every run."""
    from .acoustics import AcousticSimulator, AugmentRanges, random_condition, stable_seed
    from .corpora import Clip

    target = data.corpora == data.target
    babble = [Clip(Path(p), str(label), str(speaker), str(corpus)) for p, label, speaker, corpus, keep
              in zip(data.paths, data.labels, data.speakers, data.corpora, ~target) if keep]
    paths = [p for p, keep in zip(data.paths, target) if keep]
    speakers = data.speakers[target]
    ranges, simulators = AugmentRanges(probability=1.0), {}

    def transform(audio: np.ndarray, i: int) -> np.ndarray:
        rng = np.random.default_rng(stable_seed(Path(paths[i]).name, speakers[i], "augment", copy))
        condition, room = random_condition(ranges, rng)
        simulator = simulators.setdefault(room, AcousticSimulator(babble, room_seed=1 + room))
        return simulator(audio, condition, seed=int(rng.integers(2**31)), exclude_speakers=[str(speakers[i])])
    return transform


def speaker_room(speaker: str, copy: int, shapes: str = "shared"):
    """The room a speaker's clips are heard in for room copy `copy`: (Condition, room seed), the same in every run.
    With `shapes` "own", the seed is the first of the speaker's own OWN_ROOM_SEEDS that holds the distance (a small
    room cannot hold 3 m); the RT60 and distance are those of "shared"."""
    from .acoustics import Condition, room_response, stable_seed

    rng = np.random.default_rng(stable_seed(speaker, "room", copy))
    condition = Condition(rt60_s=float(rng.choice(ROOM_RT60_S)), distance_m=float(rng.choice(ROOM_DISTANCE_M)))
    if shapes == "shared":
        return condition, int(rng.choice(ROOM_SEEDS))
    start = stable_seed(speaker, "room shape", copy)
    for attempt in range(50):
        seed = OWN_ROOM_SEEDS[(start + attempt) % len(OWN_ROOM_SEEDS)]
        try:
            room_response(condition.rt60_s, condition.distance_m, seed)  # cached: the simulator reuses it
            return condition, seed
        except ValueError:
            continue
    raise ValueError(f"no simulated room shape holds {condition.distance_m} m for {speaker}")


def room_transform(speakers: np.ndarray, copy: int, shapes: str = "shared"
                   ) -> Callable[[np.ndarray, int], np.ndarray]:
    """transform(audio, i): clip i (spoken by speakers[i]) heard in that speaker's room for room copy `copy`."""
    from .acoustics import AcousticSimulator

    simulators: dict[int, AcousticSimulator] = {}
    rooms = functools.cache(lambda speaker: speaker_room(speaker, copy, shapes))  # searched once per speaker

    def transform(audio: np.ndarray, i: int) -> np.ndarray:
        condition, seed = rooms(str(speakers[i]))
        if seed not in simulators:
            simulators[seed] = AcousticSimulator(room_seed=seed)
        return simulators[seed](audio, condition)
    return transform


def room_copies(data: VoiceData, recipe: VoiceRecipe, progress: bool = True) -> list[Copies]:
    """`room_copies` copies of the clips of `room_corpora`, each speaker heard in one room per copy (speaker_room),
    centred as the voice "<speaker>@room<copy>". Cached per copy (tag room<copy>, own-room<copy> for shapes of
    their own)."""
    corpora = recipe.room_corpora if recipe.room_corpora is not None else [c["name"] for c in recipe.corpora]
    rows = np.where(np.isin(data.corpora, corpora))[0]
    paths = [data.paths[r] for r in rows]
    speakers = data.speakers[rows]
    prefix = "" if recipe.room_shapes == "shared" else f"{recipe.room_shapes}-"
    copies = []
    for copy in range(recipe.room_copies):
        transform = room_transform(speakers, copy, recipe.room_shapes)
        features = copy_features(paths, recipe, f"{prefix}room{copy}", transform, progress)
        copies.append(Copies(features, rows, np.char.add(speakers.astype(str), f"@room{copy}"), ROOMS))
    return copies


def copy_features(paths: list[str], recipe: VoiceRecipe, tag: str,
                  transform: Callable[[np.ndarray, int], np.ndarray], progress: bool) -> np.ndarray:
    """Encoder features of degraded copies of clips, cached under `tag`, and for recipes with prosody the block of
    the same degraded audio after them."""
    features = clip_features(paths, recipe.feature_cache, tag=tag, transform=transform, progress=progress,
                             frontend_version=recipe.frontend_version)[0]
    if not recipe.prosody_weight:
        return features
    return np.hstack([features, clip_prosody(paths, recipe.feature_cache, tag, transform, progress)])


def training_copies(data: VoiceData, recipe: VoiceRecipe, progress: bool = True) -> list[Copies]:
    """Every copy the recipe trains with: the augmentation copies and the room copies."""
    return augmented_copies(data, recipe, progress) + room_copies(data, recipe, progress)


def with_augmentation(data: VoiceData, copies: Sequence[Copies], train: np.ndarray) -> VoiceData:
    """The training rows of `data` plus the copies of its training rows (labels of the clips they copy; corpus
    AUGMENTED or ROOMS, so they take that weight)."""
    parts = [data.subset(train)]
    for copy in copies:
        keep = train[copy.rows]
        rows = copy.rows[keep]
        parts.append(VoiceData(copy.features[keep], data.speaker_embeddings[rows], data.labels[rows],
                               copy.speakers[keep], np.full(len(rows), copy.corpus), [data.paths[r] for r in rows],
                               data.target))
    return VoiceData(np.concatenate([p.features for p in parts]),
                     np.concatenate([p.speaker_embeddings for p in parts]), np.concatenate([p.labels for p in parts]),
                     np.concatenate([p.speakers for p in parts]), np.concatenate([p.corpora for p in parts]),
                     sum((p.paths for p in parts), []), data.target)


def train_and_export(recipe: VoiceRecipe, out: Path, base: Path | None = None) -> dict[str, Any]:
    """Fits the heads on every clip of the recipe's corpora and writes out/model.onnx, heads.npz and report.json."""
    began = time.perf_counter()
    data = load_voice_data(recipe, base)
    copies = head_set_copies(data, recipe)
    heads = averaged_heads(fit_head_sets(data, recipe, copies, np.ones(len(data.labels), dtype=bool)))
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "heads.npz", **heads.arrays())
    counts = {str(c): int((data.corpora == c).sum()) for c in np.unique(data.corpora)}
    copy_counts = {kind: sum(len(c.rows) for set_copies in copies for c in set_copies if c.corpus == kind)
                   for kind in (AUGMENTED, ROOMS)}
    training = {"recipe": recipe.to_mapping(), "clips": counts, "copies": copy_counts,
                "speakers": int(len(np.unique(data.speakers))),
                "date": time.strftime("%Y-%m-%d"), "protocol": "all speakers (the shipped model)",
                "accuracy": "see models/MODEL_CARD.md and bench/results/voice.md (LOSO)"}
    export_voice_model(heads, recipe, out / "model.onnx", training)
    report = {**training, "train_seconds": time.perf_counter() - began, "model": str(out / "model.onnx")}
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_mapping(), sort_keys=True))
    return report
