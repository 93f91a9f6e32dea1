"""Pooled GE2E features per clip, cached on disk by clip content: the encoder is frozen, so every head, fold and
experiment reuses the same features, and training a head takes seconds instead of an hour.

The cache is one .npz per (encoder weights, front end version, degradation) holding, per clip digest, the pooled
states of all three layers (3 x 512) and the speaker embedding (256). Work done survives a crash: the file is
rewritten atomically every few hundred clips.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..audio.decode import load_audio
from ..files import file_digest, save_npz_atomic
from ..inference.prosody import PROSODY_SIZE, PROSODY_VERSION, prosody
from ..inference.voice_frontend import (COMPUTABLE_FRONTENDS, ENCODER_SHA256, FRONTEND_VERSION, encoder_input,
                                        partial_frames, preprocess)

ALL_LAYERS = (0, 1, 2)


def layer_columns(layers: Sequence[int]) -> np.ndarray:
    """Columns of the cached 1536-wide matrix that hold the given layers' (mean, std) blocks."""
    return np.concatenate([np.arange(i * 512, (i + 1) * 512) for i in layers])


def clip_features(paths: Sequence[str | Path], cache_dir: str | Path, tag: str = "clean",
                  transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
                  progress: bool = True, frontend_version: int = FRONTEND_VERSION) -> tuple[np.ndarray, np.ndarray]:
    """(pooled (n, 1536), speaker embeddings (n, 256)) for clips, computed once per clip content and `tag`.

    `transform(audio, index)` degrades a clip before the front end (rooms, noise); give each transform its own
    `tag`, since the cache cannot see what it does. A `frontend_version` this code no longer computes only reads a
    cache an earlier version of this package filled (before/after comparisons, bench/voice.py --parts frontend)."""
    from .voice_encoder import embed_utterance, pooled_features

    store_path = Path(cache_dir) / f"ge2e-{ENCODER_SHA256[:12]}-fe{frontend_version}-{tag}.npz"

    def compute(encoder, i: int) -> np.ndarray:
        audio = load_audio(paths[i])
        if transform is not None:
            audio = transform(audio, i)
        pooled = pooled_features(encoder, [encoder_input(audio, frontend_version)])[0]
        return np.concatenate([pooled, embed_utterance(encoder, partial_frames(preprocess(audio)))])

    matrix = _cached_per_clip(paths, store_path, compute, f"GE2E features ({tag})", progress,
                              None if frontend_version in COMPUTABLE_FRONTENDS else
                              f"only the package version with front end {frontend_version} can compute them")
    return matrix[:, :1536], matrix[:, 1536:]


def _cached_per_clip(paths: Sequence[str | Path], store_path: Path, compute: Callable[[Any, int], np.ndarray],
                     desc: str, progress: bool, cannot_compute: str | None = None,
                     needs_encoder: bool = True) -> np.ndarray:
    """`compute(encoder, index)` per clip, stored in one .npz by clip content and computed only where missing
    (rewritten atomically every 300 clips, so a crash loses little); `cannot_compute` refuses missing clips.
    Without `needs_encoder`, compute gets None instead of the GE2E encoder."""
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store: dict[str, np.ndarray] = dict(np.load(store_path)) if store_path.exists() else {}
    keys = [file_digest(p) for p in paths]
    missing = [(i, k) for i, k in enumerate(keys) if k not in store]
    if missing and cannot_compute:
        raise FileNotFoundError(f"{store_path}: {len(missing)} clip(s) missing; {cannot_compute}")
    if missing:
        encoder, no_grad = None, contextlib.nullcontext
        if needs_encoder:
            import torch

            from .voice_encoder import GE2EEncoder

            torch.set_num_threads(1)
            encoder, no_grad = GE2EEncoder.pretrained(), torch.no_grad
        for done, (i, key) in enumerate(tqdm(missing, desc=desc, unit="clip", disable=not progress or None),
                                        start=1):
            with no_grad():
                store[key] = np.asarray(compute(encoder, i), dtype=np.float32)
            if done % 300 == 0 or done == len(missing):
                save_npz_atomic(store, store_path)
    return np.stack([store[k] for k in keys])


def clip_prosody(paths: Sequence[str | Path], cache_dir: str | Path, tag: str = "clean",
                 transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
                 progress: bool = True) -> np.ndarray:
    """(n, PROSODY_SIZE) prosody (inference/prosody.py) of clips, after `transform` as in clip_features (give each
    transform its own `tag`), cached per clip content, tag and prosody version."""
    store_path = Path(cache_dir) / f"prosody-v{PROSODY_VERSION}-{tag}.npz"
    if not paths:
        return np.zeros((0, PROSODY_SIZE), np.float32)

    def compute(_, i: int) -> np.ndarray:
        audio = load_audio(paths[i])
        return prosody(transform(audio, i) if transform is not None else audio)

    return _cached_per_clip(paths, store_path, compute, f"prosody ({tag})", progress, needs_encoder=False)


def node_speaker_embeddings(paths: Sequence[str | Path], cache_dir: str | Path,
                            frontend_version: int = FRONTEND_VERSION, progress: bool = True,
                            of: str = "mean") -> np.ndarray:
    """(n, 256) speaker embeddings as the node's graph gives them after the whole encoder input of the clip: the
    embedding head on the mean of layer 3's states (`of="mean"`, models from v0.6) or on its last state (`"last"`,
    models up to v0.5); not the wheel's mean over 1.6 s windows, which `clip_features` keeps. The node's voice
    tracker decides on these, so its settings are calibrated on these (bench/conversations.py). Cached per clip."""
    import torch

    if of not in ("mean", "last"):
        raise ValueError(f"of={of!r}: 'mean' or 'last'")
    suffix = "-mean" if of == "mean" else ""
    store_path = Path(cache_dir) / f"ge2e-{ENCODER_SHA256[:12]}-fe{frontend_version}-node-embedding{suffix}.npz"
    if not paths:
        return np.zeros((0, 256), np.float32)

    def compute(encoder, i: int) -> np.ndarray:
        frames = encoder_input(load_audio(paths[i]), frontend_version)[None]
        layer3 = encoder(torch.from_numpy(frames))[-1]
        embedding = encoder.utterance_embedding(layer3) if of == "mean" else encoder.speaker_embedding(layer3)
        return embedding[0].numpy()

    return _cached_per_clip(paths, store_path, compute, f"GE2E node embeddings ({of})", progress)
