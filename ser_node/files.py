"""File helpers shared by the run time and training: content digests and writes that are whole or absent.

Standard library and numpy only, so the node (voices file) and the trainers (feature caches) share one copy.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without error, removed
    when it fails. The file is whole or absent: a crash mid-write leaves the previous file, and a temporary name
    per process keeps two writers apart. The suffix is kept (numpy adds .npy/.npz to names without it) and the
    folder is made if missing (an hour's benchmark must not die at its last line over an --out not made yet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_npz_atomic(arrays: dict[str, np.ndarray], path: Path) -> None:
    """An .npz written whole or not at all."""
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def save_bytes_atomic(data: bytes, path: Path) -> None:
    """Bytes written whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
