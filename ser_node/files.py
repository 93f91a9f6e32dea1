"""File helpers shared by the run time and training: content digests and writes that are whole or absent.

Standard library and numpy only, so the node (voices file) and the trainers (feature caches) share one copy.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def file_digest(path: str | Path) -> str:
    """Content hash of a clip: the cache key survives moving or renaming a corpus."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def sha256_of(path: str | Path) -> str:
    """sha256 of a file read in 1 MiB blocks (weights files are large): provenance and weight checks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_npz_atomic(arrays: dict[str, np.ndarray], path: Path) -> None:
    """An .npz written whole or not at all: a crash mid-write leaves the previous file."""
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def save_bytes_atomic(data: bytes, path: Path) -> None:
    """Bytes written whole or not at all (a temporary file per process, then a rename: two writers never mix),
    the folder made if missing: an hour's benchmark must not die at its last line over an --out not made yet."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
