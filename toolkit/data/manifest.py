"""Users' data: a folder of images plus a JSONL or CSV manifest of (image, text, label) rows.

Optional columns: `question_type` (accuracy is then also reported per type). Image paths are
relative to the manifest's folder. Bad rows are collected with their line numbers and reported
together; the load stops unless the caller asks to skip them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.data import cache
from toolkit.data.preprocess import PreprocessError, Tokenizer, load_image, normalize, pad

REQUIRED = ("image", "text", "label")


class DataError(ToolkitError):
    """The data cannot be used; the message names the file, the lines and the fix."""


@dataclass(frozen=True)
class Row:
    line: int
    image: Path
    text: str
    label: str
    question_type: str = ""


def resolve_manifest(data: str | Path, split: str) -> Path:
    """A manifest file as given, or `<dir>/<split>.jsonl` (or .csv) inside a dataset folder."""
    p = Path(data)
    if p.is_dir():
        for ext in ("jsonl", "csv"):
            if (p / f"{split}.{ext}").is_file():
                return p / f"{split}.{ext}"
        raise DataError(f"{p} has no {split}.jsonl or {split}.csv; generate one with "
                        "`toolkit data generate` or pass a manifest file")
    if not p.is_file():
        raise DataError(f"dataset not found: {p}; pass a folder with train.jsonl/val.jsonl or a "
                        "manifest file")
    return p


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """A manifest's rows as (line number, record), each with image, text and label; structural
    problems (encoding, bad JSON, missing columns, no rows) fail at once with the line."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise DataError(f"{path}: unknown manifest format {path.suffix!r}; use .jsonl or .csv")
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); regenerate or "
                        "re-save the manifest as UTF-8") from e
    records: list[tuple[int, dict]] = []
    with path.open(newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: header lacks column(s) {missing}; need image,text,label")
            records = [(i + 2, r) for i, r in enumerate(reader)]
        else:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from e
                if not isinstance(rec, dict) or any(c not in rec for c in REQUIRED):
                    raise DataError(f"{path}:{i}: a row needs the keys image, text and label")
                records.append((i, rec))
    if not records:
        raise DataError(f"{path} has zero rows; a manifest needs at least one image,text,label row")
    return records


def read_manifest(path: str | Path) -> list[Row]:
    """Parse rows; structural problems (bad JSON, missing columns) fail at once with the line."""
    path = Path(path)
    records = read_records(path)
    base = path.parent
    images: dict[str, Path] = {}  # one Path per file: datasets ask several questions per image
    for _, r in records:
        name = str(r["image"])
        if name not in images:
            images[name] = base / name
    return [Row(line, images[str(r["image"])], str(r["text"] or ""), str(r["label"]),
                str(r.get("question_type") or "")) for line, r in records]


@dataclass
class Split:
    """A loaded split: decoded images once per file, token ids, label indices."""

    images: np.ndarray  # (n_images, S, S, 3) uint8
    image_index: np.ndarray  # (n_rows,) index into images
    token_ids: list[list[int]]
    labels: np.ndarray  # (n_rows,) int64
    question_types: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: Sequence[int], tokenizer: Tokenizer, mean, std,
              share_images: bool = False) -> dict[str, np.ndarray]:
        """Model inputs for rows `idx`: image (B, 3, S, S) float32, ids and mask (B, L) int64.

        With `share_images`, each distinct image appears once, (K, 3, S, S), and `image_index`
        (B,) says which image each row asks about: the vision tower then runs once per image.
        """
        inputs = pad([self.token_ids[i] for i in idx], tokenizer.pad_id)
        if share_images:
            uniq, inverse = np.unique(self.image_index[idx], return_inverse=True)
            inputs["image"] = normalize(self.images[uniq], mean, std)
            inputs["image_index"] = inverse.reshape(-1).astype(np.int64)
        else:
            inputs["image"] = normalize(self.images[self.image_index[idx]], mean, std)
        return inputs

    def image_groups(self) -> list[np.ndarray]:
        """Row indices of each image's questions."""
        order = np.argsort(self.image_index, kind="stable")
        bounds = np.flatnonzero(np.diff(self.image_index[order])) + 1
        return np.split(order, bounds)


def load_split(path: str | Path, labels: Sequence[str], tokenizer: Tokenizer, image_size: int,
               skip_bad_rows: bool = False, rows: Sequence[Row] | None = None) -> Split:
    """Rows of a manifest (`rows`, if already read from `path`) as model-ready arrays: each image
    decoded once (and cached next to the manifest, data/cache.py), each distinct text tokenized
    once."""
    path = Path(path)
    rows = read_manifest(path) if rows is None else rows
    label_ids = {name: i for i, name in enumerate(labels)}
    problems: list[tuple[int, str]] = []
    keep: list[Row] = []
    for row in rows:
        if not row.text.strip():
            problems.append((row.line, "empty text"))
        elif row.label not in label_ids:
            problems.append((row.line, f"unknown label {row.label!r}"))
        else:
            keep.append(row)
    images, index, bad = _decode_images(path, [r.image for r in keep], image_size)
    problems += [(r.line, bad[r.image]) for r in keep if r.image in bad]
    keep = [r for r in keep if r.image not in bad]
    if problems and not skip_bad_rows:
        problems.sort()
        shown = "\n  ".join(f"{path}:{line}: {msg}" for line, msg in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} bad row(s) in {path}:\n  {shown}{more}\n"
                        "fix them, or pass --skip-bad-rows to leave them out")
    if not keep:
        raise DataError(f"{path}: no usable rows left")
    return Split(
        images=images,
        image_index=np.array([index[r.image] for r in keep], dtype=np.int64),
        token_ids=tokenizer.encode_ids([r.text for r in keep]),
        labels=np.array([label_ids[r.label] for r in keep], dtype=np.int64),
        question_types=[r.question_type for r in keep],
        skipped=[f"{path}:{line}: {msg}" for line, msg in sorted(problems)],
    )


def _decode_images(manifest: Path, row_images: Sequence[Path], size: int
                   ) -> tuple[np.ndarray, dict[Path, int], dict[Path, str]]:
    """The distinct images of the rows, in order of first use, as (n, size, size, 3) uint8; each
    path's index; and the paths that could not be read, with the reason."""
    paths = list(dict.fromkeys(row_images))
    where = cache.cache_file(manifest, paths, size)
    images = cache.load_cached(where, len(paths), size)
    if images is not None:
        return images, {p: i for i, p in enumerate(paths)}, {}
    decoded: dict[Path, np.ndarray] = {}
    bad: dict[Path, str] = {}
    for p in paths:
        try:
            decoded[p] = load_image(p, size)
        except PreprocessError as e:
            bad[p] = str(e)
    if not decoded:
        return np.zeros((0, size, size, 3), np.uint8), {}, bad
    images = np.stack(list(decoded.values()))
    if not bad:
        cache.store(where, images)
    return images, {p: i for i, p in enumerate(decoded)}, bad


def dataset_labels(data: str | Path, train_rows: Sequence[Row] | None = None) -> list[str]:
    """The class list: dataset.json's `labels` when present, else sorted labels of the train rows."""
    p = Path(data)
    meta = p / "dataset.json" if p.is_dir() else p.parent / "dataset.json"
    if meta.is_file():
        return list(json.loads(meta.read_text())["labels"])
    if train_rows is None:
        train_rows = read_manifest(resolve_manifest(data, "train"))
    return sorted({r.label for r in train_rows})
