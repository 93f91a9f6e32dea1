"""The openSMILE teacher: functionals per clip (cached on disk) and the regression targets an auxiliary head learns.

openSMILE is a training-time dependency only (its licence forbids commercial use); the node never runs it, and the
teacher head is dropped at export. The targets need no emotion labels, so every clip of a pretraining corpus can
teach. Targets are z-scored on the training clips; ComParE_2016 (6373 values) is reduced by PCA first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..files import file_digest, save_npz_atomic

FEATURE_SETS = ("eGeMAPSv02", "ComParE_2016")


def opensmile_functionals(paths: Sequence[str | Path], feature_set: str, cache_dir: str | Path) -> np.ndarray:
    """Functionals of `feature_set` for each file, computed once per (file content, set, openSMILE version)."""
    import opensmile

    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown openSMILE feature set {feature_set!r}; known: {FEATURE_SETS}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    store_path = cache_dir / f"{feature_set}-opensmile{opensmile.__version__}.npz"
    stored: dict[str, np.ndarray] = dict(np.load(store_path)) if store_path.exists() else {}
    keys = [file_digest(p) for p in paths]
    missing = [(k, p) for k, p in zip(keys, paths) if k not in stored]
    if missing:
        smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                                feature_level=opensmile.FeatureLevel.Functionals)
        for number, (key, path) in enumerate(tqdm(missing, desc=feature_set, unit="clip", disable=None)):
            stored[key] = smile.process_file(str(path)).to_numpy()[0].astype(np.float32)
            if (number + 1) % 500 == 0 or number + 1 == len(missing):  # finished work survives a crash
                save_npz_atomic(stored, store_path)
    return np.stack([stored[k] for k in keys])


@dataclass
class TeacherTargets:
    """Maps raw functionals to the teacher's targets: per-set z-scores, ComParE reduced by PCA, concatenated."""

    feature_sets: tuple[str, ...]
    pca_components: int = 64
    _means: dict[str, np.ndarray] = field(default_factory=dict)
    _scales: dict[str, np.ndarray] = field(default_factory=dict)
    _pca: dict[str, object] = field(default_factory=dict)

    def fit(self, raw: dict[str, np.ndarray]) -> "TeacherTargets":
        """Statistics from the training clips only (never the test clips)."""
        from sklearn.decomposition import PCA

        for name in self.feature_sets:
            x = np.nan_to_num(raw[name].astype(np.float64))
            mean, scale = x.mean(axis=0), x.std(axis=0)
            scale[scale < 1e-8] = 1.0
            self._means[name], self._scales[name] = mean, scale
            if name == "ComParE_2016":
                components = min(self.pca_components, len(x) - 1, x.shape[1])
                pca = PCA(n_components=components, random_state=0).fit((x - mean) / scale)
                self._pca[name] = pca
        return self

    def transform(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        for name in self.feature_sets:
            z = (np.nan_to_num(raw[name].astype(np.float64)) - self._means[name]) / self._scales[name]
            if name in self._pca:
                pca = self._pca[name]
                z = pca.transform(z) / np.sqrt(pca.explained_variance_)  # type: ignore[attr-defined]
            parts.append(np.clip(z, -6, 6))  # a few extreme clips must not dominate the regression
        return np.concatenate(parts, axis=1).astype(np.float32)
