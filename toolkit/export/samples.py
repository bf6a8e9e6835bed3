"""Real rows for checking and calibrating exports, through the one preprocessing path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from toolkit.data.manifest import DataError, Split, load_split, resolve_manifest
from toolkit.export.graph import ExportError

# The post-export check: two batch sizes (1 catches a batch axis specialized to the example) and
# two sequence lengths (each batch's own longest row, and the tokenizer's maximum with padding).
CHECK_BATCHES = (1, 5)


def run_data(run: Path) -> str | None:
    """The dataset a run was trained on, if its config records one that still exists."""
    try:
        data = json.loads((Path(run) / "config.json").read_text())["train"]["data"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return data if data and Path(data).exists() else None


def load_rows(ck, data: str | Path, split: str) -> Split:
    try:
        manifest = resolve_manifest(data, split)
    except DataError:
        manifest = resolve_manifest(data, "val" if split == "train" else "train")
    return load_split(manifest, ck.labels, ck.tokenizer, ck.config.image_size, skip_bad_rows=True)


def batch(ck, rows: Split, idx: np.ndarray, pad_to: int | None = None) -> dict[str, np.ndarray]:
    from toolkit.data.preprocess import normalize, pad

    feed = pad([rows.token_ids[i] for i in idx], ck.tokenizer.pad_id, pad_to)
    feed["image"] = normalize(rows.images[rows.image_index[idx]], ck.config.mean, ck.config.std)
    return feed


def check_batches(ck, rows: Split | None, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Feeds for the post-export check: real rows when given, else generated ones (random pixels
    through the same normalization, random in-vocabulary ids with padding)."""
    rng = np.random.default_rng(seed)
    max_len = ck.config.text.max_length
    out = []
    for b in CHECK_BATCHES:
        for pad_to in (None, max_len):
            if rows is not None:
                idx = rng.choice(len(rows), size=b, replace=len(rows) < b)
                out.append(batch(ck, rows, idx, pad_to))
            else:
                out.append(generated_batch(ck, b, pad_to or max(2, max_len // 2), rng))
    return out


def generated_batch(ck, b: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from toolkit.data.preprocess import normalize

    s = ck.config.image_size
    images = rng.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8)
    ids = rng.integers(5, len(ck.tokenizer.vocab), size=(b, length)).astype(np.int64)
    mask = np.ones((b, length), np.int64)
    for i in range(b):
        keep = int(rng.integers(1, length + 1))  # real tokens, then padding
        ids[i, keep:], mask[i, keep:] = ck.tokenizer.pad_id, 0
    return {"image": normalize(images, ck.config.mean, ck.config.std), "input_ids": ids,
            "attention_mask": mask}


def calibration_batches(ck, rows: Split, samples: int, batch_size: int
                        ) -> Iterator[dict[str, np.ndarray]]:
    """`samples` rows in a fixed shuffled order, every batch padded to the longest of them.

    One shape for every batch: ORT's histogram calibrators (entropy, percentile) stack each
    tensor's values across batches, which fails on ragged shapes; so the caller passes a
    `batch_size` that divides `samples` (or 1)."""
    if len(rows) < samples:
        raise ExportError(f"calibration data has {len(rows)} usable rows, fewer than the "
                          f"{samples} asked for; pass more data or a smaller --calib-samples")
    order = np.random.default_rng(0).permutation(len(rows))[:samples]
    longest = max(len(rows.token_ids[i]) for i in order)
    for start in range(0, samples, batch_size):
        yield batch(ck, rows, order[start:start + batch_size], pad_to=longest)
