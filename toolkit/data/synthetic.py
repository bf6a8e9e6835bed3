"""The embedded default dataset: Sort-of-CLEVR-style scenes with English questions.

After Santoro et al. 2017 ("A simple neural network module for relational reasoning"): each scene
holds six objects in six distinct colours, each a square or a circle, on a white background. Every
question names one object by its colour; its answer needs both the image and the text.

- non-relational: the object's shape; left or right half; top or bottom half
- relational: the shape of the object closest to it; of the one furthest from it; how many objects
  share its shape (itself included)

Numpy and Pillow only, deterministic in the seed. ``generate`` writes PNG images and JSONL manifests,
the same format users bring (see ``manifest.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from toolkit.config import DataConfig, to_dict

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 0, 255),
    "orange": (255, 140, 0),
    "gray": (128, 128, 128),
    "yellow": (230, 220, 0),
}
SHAPES = ("square", "circle")
NON_RELATIONAL = ("shape", "horizontal", "vertical")
RELATIONAL = ("closest", "furthest", "count")
QUESTION_TYPES = NON_RELATIONAL + RELATIONAL
# The fixed class list: every answer of every question type, in a stable order.
LABELS = ("square", "circle", "left", "right", "top", "bottom", "1", "2", "3", "4", "5", "6")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("what is the shape of the {c} object?", "which shape is the {c} object?",
              "is the {c} object a square or a circle?"),
    "horizontal": ("is the {c} object on the left or on the right?",
                   "which half holds the {c} object, left or right?",
                   "on which side is the {c} object?"),
    "vertical": ("is the {c} object at the top or at the bottom?",
                 "which half holds the {c} object, top or bottom?",
                 "is the {c} object in the upper or the lower half?"),
    "closest": ("what is the shape of the object closest to the {c} object?",
                "which shape is the object nearest to the {c} one?",
                "the object closest to the {c} object is a square or a circle?"),
    "furthest": ("what is the shape of the object furthest from the {c} object?",
                 "which shape is the object farthest from the {c} one?",
                 "the object furthest from the {c} object is a square or a circle?"),
    "count": ("how many objects have the same shape as the {c} object?",
              "how many objects share the shape of the {c} object?",
              "count the objects shaped like the {c} object."),
}


@dataclass(frozen=True)
class Scene:
    colours: tuple[str, ...]  # the six colours, in drawing order
    centers: np.ndarray  # (6, 2) int pixel centres (x, y)
    shapes: tuple[str, ...]
    size: int  # image side in pixels
    radius: int  # half the side of a square / the radius of a circle


def object_radius(image_size: int) -> int:
    # Objects about 15% of the image wide, as in the paper's 10 px objects on 75 px images.
    return max(2, round(image_size * 0.075))


def answer(scene: Scene, qtype: str, colour: str) -> str:
    """The answer to a question about the object of `colour`, from positions and shapes alone."""
    i = scene.colours.index(colour)
    x, y = scene.centers[i]
    half = scene.size / 2
    if qtype == "shape":
        return scene.shapes[i]
    if qtype == "horizontal":
        return "left" if x < half else "right"
    if qtype == "vertical":
        return "top" if y < half else "bottom"
    if qtype == "count":
        return str(sum(s == scene.shapes[i] for s in scene.shapes))
    if qtype in ("closest", "furthest"):
        return scene.shapes[answer_object(scene, qtype, colour)]
    raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")


def answer_object(scene: Scene, qtype: str, colour: str) -> int:
    """The index of the object whose shape answers a closest/furthest question about `colour`."""
    i = scene.colours.index(colour)
    d = np.linalg.norm(scene.centers - scene.centers[i], axis=1).astype(np.float64)
    if qtype == "closest":
        d[i] = np.inf
        return int(np.argmin(d))
    if qtype == "furthest":
        d[i] = -np.inf
        return int(np.argmax(d))
    raise ValueError(f"only closest and furthest questions have an answer object, not {qtype!r}")


def _unambiguous(centers: np.ndarray, size: int, radius: int) -> bool:
    """Objects apart, off the centre lines, and with no tie for closest or furthest."""
    half = size / 2
    if np.any(np.abs(centers - half) < 1.5):
        return False
    d = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    off = d[~np.eye(len(centers), dtype=bool)]
    if off.min() < 2.4 * radius:  # no overlap, and a visible gap between objects
        return False
    for row_i, row in enumerate(d):
        others = np.sort(np.delete(row, row_i))
        if others[1] - others[0] < 1.0 or others[-1] - others[-2] < 1.0:
            return False
    return True


def random_scene(rng: np.random.Generator, size: int) -> Scene:
    radius = object_radius(size)
    lo, hi = radius + 1, size - radius - 1
    while True:
        centers = rng.integers(lo, hi, size=(len(COLOURS), 2))
        if _unambiguous(centers, size, radius):
            break
    shapes = tuple(SHAPES[k] for k in rng.integers(0, 2, size=len(COLOURS)))
    return Scene(tuple(COLOURS), centers, shapes, size, radius)


def render(scene: Scene) -> Image.Image:
    img = Image.new("RGB", (scene.size, scene.size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, colour in enumerate(scene.colours):
        _draw_object(draw, scene, i, COLOURS[colour])
    return img


def object_mask(scene: Scene, i: int) -> np.ndarray:
    """(size, size) bool: the pixels object `i` covers, drawn as `render` draws it."""
    img = Image.new("L", (scene.size, scene.size), 0)
    _draw_object(ImageDraw.Draw(img), scene, i, 255)
    return np.asarray(img) > 0


def _draw_object(draw: ImageDraw.ImageDraw, scene: Scene, i: int, fill) -> None:
    x, y = scene.centers[i].tolist()
    r = scene.radius
    box = (x - r, y - r, x + r, y + r)
    if scene.shapes[i] == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.ellipse(box, fill=fill)


def questions(scene: Scene, rng: np.random.Generator, cfg: DataConfig) -> list[dict[str, str]]:
    """`questions_per_type` questions of each type, each about a different colour."""
    rows = []
    for qtype in QUESTION_TYPES:
        picks = rng.choice(len(scene.colours), size=min(cfg.questions_per_type, 6), replace=False)
        for k in picks:
            colour = scene.colours[k]
            templates = TEMPLATES[qtype] if cfg.phrasing == "varied" else TEMPLATES[qtype][:1]
            text = templates[int(rng.integers(len(templates)))].format(c=colour)
            rows.append({"text": text, "label": answer(scene, qtype, colour),
                         "question_type": qtype, "colour": colour})
    return rows


def generate(out: str | os.PathLike, cfg: DataConfig) -> Path:
    """Write images/NNNNNN.png, train.jsonl, val.jsonl and dataset.json under `out`.

    Scenes, not questions, are split: no held-out image is seen in training. Each manifest row also
    records the scene (positions and shapes) so tests can recompute every answer independently.
    """
    if cfg.phrasing not in ("single", "varied"):
        raise ValueError(f"phrasing must be 'single' or 'varied', got {cfg.phrasing!r}")
    if cfg.scenes < 2:
        raise ValueError(f"need at least 2 scenes (one for each split), got {cfg.scenes}")
    out = Path(out)
    _make_out(out)
    rng = np.random.default_rng(cfg.seed)
    n_val = max(1, round(cfg.scenes * cfg.val_fraction))
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for idx in range(cfg.scenes):
        scene = random_scene(rng, cfg.image_size)
        name = f"images/{idx:06d}.png"
        render(scene).save(out / name)
        split = "val" if idx >= cfg.scenes - n_val else "train"
        record = {"objects": [{"colour": c, "x": int(x), "y": int(y), "shape": s}
                              for c, (x, y), s in zip(scene.colours, scene.centers, scene.shapes)]}
        for q in questions(scene, rng, cfg):
            splits[split].append(json.dumps({"image": name, **q, "scene": record}))
    for split, lines in splits.items():
        tmp = out / f".{split}.jsonl.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, out / f"{split}.jsonl")
    meta = {"name": "sort-of-clevr", "labels": list(LABELS), "question_types": list(QUESTION_TYPES),
            "generator": to_dict(cfg)}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _make_out(out: Path) -> None:
    """The dataset folder and its images/ folder, or a ToolkitError naming what is in the way."""
    from toolkit.errors import ToolkitError

    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise ToolkitError(f"dataset folder {out}: {p} is a file, not a folder; pass another "
                               "--out or remove the file")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolkitError(f"cannot create the dataset folder {out} ({e.strerror}); pass an "
                           "--out in a writable folder") from e


def scene_from_record(record: dict, size: int) -> Scene:
    objs = record["objects"]
    return Scene(tuple(o["colour"] for o in objs), np.array([[o["x"], o["y"]] for o in objs]),
                 tuple(o["shape"] for o in objs), size, object_radius(size))
