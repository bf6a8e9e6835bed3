"""Decoded images, kept next to the manifest so that a dataset is decoded and resized once.

Every run over a dataset (training, evaluation, calibration, parity) needs the same
(n_images, S, S, 3) uint8 array; decoding thousands of PNG files takes longer than many of those
runs' own work. The first load writes the array to `<manifest folder>/.toolkit-cache/`, named by
the manifest, the image size and a key over every image file's path, size and modification time,
so that a changed, added or removed image makes a new cache. Later loads map the file read-only.
A folder that cannot be written is used without a cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit.artifacts import OutputPathError, atomic_path

CACHE_DIR = ".toolkit-cache"
_VERSION = 1  # of the key: bump when decoding changes (resampling, colour conversion)


def cache_file(manifest: Path, paths: Sequence[Path], size: int) -> Path | None:
    """Where the decoded images of `paths` at `size` live; None when an image cannot be stat'ed
    (the decoder then reports it)."""
    h = hashlib.sha256(f"{_VERSION}:{size}".encode())
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            return None
        h.update(f"\0{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return manifest.parent / CACHE_DIR / f"{manifest.stem}.{size}px.{h.hexdigest()[:16]}.npy"


def load_cached(path: Path | None, n: int, size: int) -> np.ndarray | None:
    """The cached array, memory-mapped, if it is there and has the expected shape."""
    if path is None or not path.is_file():
        return None
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None  # damaged: decode again and replace it
    if images.shape != (n, size, size, 3) or images.dtype != np.uint8:
        return None
    return images


def store(path: Path | None, images: np.ndarray) -> None:
    """Write the array atomically and remove this manifest's caches for other image sets."""
    if path is None:
        return
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, images)
        stem = path.name.rsplit(".", 2)[0]  # "<manifest>.<size>px"
        for old in path.parent.glob(f"{stem}.*.npy"):
            if old != path:
                old.unlink(missing_ok=True)
    except (OSError, OutputPathError):  # atomic_path reports OS errors as OutputPathError
        pass  # a read-only dataset folder: every load decodes
