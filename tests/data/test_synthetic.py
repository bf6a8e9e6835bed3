"""The embedded dataset. Answers are recomputed from the pixels of each PNG, not from the generator:
each object is found by its colour, its centre and shape measured, and every question answered
again from those measurements."""

import json

import numpy as np
import pytest
from PIL import Image

from toolkit.config import DataConfig
from toolkit.data.synthetic import COLOURS, LABELS, QUESTION_TYPES, generate, questions, random_scene


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("soc") / "d",
                    DataConfig(scenes=60, image_size=64, questions_per_type=2, seed=7))


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _measure(png: np.ndarray):
    """Colour -> (centre x, centre y, shape) measured from the pixels."""
    out = {}
    for name, rgb in COLOURS.items():
        ys, xs = np.nonzero(np.all(png == np.array(rgb, np.uint8), axis=-1))
        assert len(xs), f"no {name} pixels"
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        # A filled square covers its bounding box; a disc about pi/4 of it.
        out[name] = (cx, cy, "square" if len(xs) / box > 0.9 else "circle")
    return out


def _answer_from_pixels(objs, size, qtype, colour):
    x, y, shape = objs[colour]
    if qtype == "shape":
        return shape
    if qtype == "horizontal":
        return "left" if x < size / 2 else "right"
    if qtype == "vertical":
        return "top" if y < size / 2 else "bottom"
    others = {c: o for c, o in objs.items() if c != colour}
    dist = {c: np.hypot(o[0] - x, o[1] - y) for c, o in others.items()}
    if qtype == "closest":
        return others[min(dist, key=dist.get)][2]
    if qtype == "furthest":
        return others[max(dist, key=dist.get)][2]
    return str(sum(o[2] == shape for o in objs.values()))


def test_every_answer_matches_the_pixels(dataset):
    rows = _rows(dataset / "train.jsonl") + _rows(dataset / "val.jsonl")
    assert len(rows) == 60 * 6 * 2
    cache = {}
    for r in rows:
        if r["image"] not in cache:
            cache[r["image"]] = _measure(np.asarray(Image.open(dataset / r["image"]).convert("RGB")))
        assert r["colour"] in r["text"]
        assert _answer_from_pixels(cache[r["image"]], 64, r["question_type"], r["colour"]) \
            == r["label"], r


def test_labels_and_types(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["labels"] == list(LABELS)
    rows = _rows(dataset / "train.jsonl")
    assert {r["question_type"] for r in rows} == set(QUESTION_TYPES)
    assert {r["label"] for r in rows} <= set(LABELS)


def test_splits_hold_different_scenes(dataset):
    train = {r["image"] for r in _rows(dataset / "train.jsonl")}
    val = {r["image"] for r in _rows(dataset / "val.jsonl")}
    assert len(val) == 6 and not train & val


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    cfg = DataConfig(scenes=8, image_size=32, seed=3)
    a, b = generate(tmp_path / "a", cfg), generate(tmp_path / "b", cfg)
    c = generate(tmp_path / "c", DataConfig(scenes=8, image_size=32, seed=4))
    for name in ("train.jsonl", "val.jsonl", "images/000005.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_single_phrasing_uses_one_template_per_type():
    rng = np.random.default_rng(0)
    texts = {}
    for _ in range(50):
        scene = random_scene(rng, 32)
        for q in questions(scene, rng, DataConfig(phrasing="single")):
            texts.setdefault(q["question_type"], set()).add(q["text"].replace(q["colour"], "C"))
    assert all(len(v) == 1 for v in texts.values())


def test_answer_priors_per_question_type():
    """Print (and bound) the majority-answer rate per type: the floor every accuracy is read against."""
    rng = np.random.default_rng(0)
    by_type = {t: [] for t in QUESTION_TYPES}
    cfg = DataConfig(questions_per_type=6)
    for _ in range(400):
        for q in questions(random_scene(rng, 64), rng, cfg):
            by_type[q["question_type"]].append(q["label"])
    print()
    for t, answers in by_type.items():
        values, counts = np.unique(answers, return_counts=True)
        prior = counts.max() / counts.sum()
        print(f"majority answer for {t}: {values[counts.argmax()]!r} {prior:.1%}")
        # Balanced binary answers sit near 50%; counts (1 + Binomial(5, 1/2)) peak near 31%.
        assert prior < (0.40 if t == "count" else 0.56), t
