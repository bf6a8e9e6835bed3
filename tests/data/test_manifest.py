import json

import numpy as np

import pytest
from PIL import Image

from toolkit.data.manifest import DataError, dataset_labels, load_split, read_manifest
from toolkit.data.preprocess import Tokenizer, train_vocab


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        Image.new(mode, (12, 12)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"nope")
    return tmp_path


@pytest.fixture()
def tok():
    return Tokenizer(train_vocab(["is it a cat", "is it a dog"], 100), 8)


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_and_csv_give_the_same_split(folder, tok):
    rows = [{"image": "img/0.png", "text": "is it a cat", "label": "yes"},
            {"image": "img/1.png", "text": "is it a dog", "label": "no"}]
    j = _jsonl(folder / "m.jsonl", rows)
    c = folder / "m.csv"
    c.write_text("image,text,label\n" + "".join(f"{r['image']},{r['text']},{r['label']}\n"
                                                 for r in rows))
    a = load_split(j, ["no", "yes"], tok, 8)
    b = load_split(c, ["no", "yes"], tok, 8)
    assert a.labels.tolist() == b.labels.tolist() == [1, 0]
    assert (a.images == b.images).all() and a.images.shape == (2, 8, 8, 3)
    assert a.token_ids == b.token_ids


def test_bad_rows_are_reported_with_line_numbers(folder, tok):
    rows = [{"image": "img/0.png", "text": "is it a cat", "label": "yes"},
            {"image": "img/missing.png", "text": "is it a cat", "label": "yes"},
            {"image": "img/broken.png", "text": "is it a cat", "label": "yes"},
            {"image": "img/1.png", "text": "", "label": "yes"},
            {"image": "img/2.png", "text": "is it a dog", "label": "maybe"}]
    path = _jsonl(folder / "m.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_split(path, ["no", "yes"], tok, 8)
    msg = str(e.value)
    assert "4 bad row(s)" in msg and "--skip-bad-rows" in msg
    for line, what in [(2, "image not found"), (3, "not a readable image"), (4, "empty text"),
                       (5, "unknown label 'maybe'")]:
        assert any(f"m.jsonl:{line}: " in x and what in x for x in msg.splitlines()), (line, msg)
    kept = load_split(path, ["no", "yes"], tok, 8, skip_bad_rows=True)
    assert len(kept) == 1 and len(kept.skipped) == 4


def test_structural_problems_fail_at_once(folder):
    (folder / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="zero rows"):
        read_manifest(folder / "empty.jsonl")
    (folder / "bad.jsonl").write_text('{"image": "a"\n')
    with pytest.raises(DataError, match="bad.jsonl:1: not valid JSON"):
        read_manifest(folder / "bad.jsonl")
    (folder / "cols.csv").write_text("image,question\n")
    with pytest.raises(DataError, match="text"):
        read_manifest(folder / "cols.csv")
    (folder / "m.txt").write_text("x")
    with pytest.raises(DataError, match="unknown manifest format"):
        read_manifest(folder / "m.txt")


def test_labels_come_from_the_training_rows_without_dataset_json(folder):
    _jsonl(folder / "train.jsonl", [{"image": "img/0.png", "text": "t", "label": "b"},
                                    {"image": "img/1.png", "text": "t", "label": "a"}])
    assert dataset_labels(folder) == ["a", "b"]


def test_shared_image_batches_cover_each_image_once(folder, tok):
    rows = [{"image": f"img/{i % 3}.png", "text": "is it a cat", "label": "yes"} for i in range(7)]
    split = load_split(_jsonl(folder / "m.jsonl", rows), ["no", "yes"], tok, 8)
    groups = split.image_groups()
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))
    assert all(len(set(split.image_index[g])) == 1 for g in groups)
    idx = np.array([5, 0, 3, 1])  # images 2, 0, 0, 1
    shared = split.batch(idx, tok, (0, 0, 0), (1, 1, 1), share_images=True)
    plain = split.batch(idx, tok, (0, 0, 0), (1, 1, 1))
    assert shared["image"].shape[0] == 3
    assert (shared["image"][shared["image_index"]] == plain["image"]).all()


def test_decoded_images_are_cached_and_a_changed_image_is_decoded_again(folder, tok):
    import os

    from toolkit.data.cache import CACHE_DIR

    rows = [{"image": "img/0.png", "text": "is it a cat", "label": "yes"},
            {"image": "img/1.png", "text": "is it a dog", "label": "no"},
            {"image": "img/0.png", "text": "is it a dog", "label": "no"}]
    path = _jsonl(folder / "m.jsonl", rows)
    first = load_split(path, ["no", "yes"], tok, 8)
    cached = list((folder / CACHE_DIR).glob("m.8px.*.npy"))
    assert len(cached) == 1 and first.images.shape == (2, 8, 8, 3)
    again = load_split(path, ["no", "yes"], tok, 8)
    assert isinstance(again.images, np.memmap)  # read from the cache, not decoded
    assert (again.images == first.images).all()
    assert again.image_index.tolist() == first.image_index.tolist() == [0, 1, 0]
    Image.new("RGB", (12, 12), (255, 0, 0)).save(folder / "img" / "0.png")
    os.utime(folder / "img" / "0.png", ns=(1, 1))  # another size or time: another key
    changed = load_split(path, ["no", "yes"], tok, 8)
    assert not isinstance(changed.images, np.memmap)
    assert (changed.images[0] == [255, 0, 0]).all()
    assert len(list((folder / CACHE_DIR).glob("m.8px.*.npy"))) == 1  # the stale one is gone


def test_a_read_only_dataset_folder_loads_without_a_cache(folder, tok):
    import os

    rows = [{"image": "img/0.png", "text": "is it a cat", "label": "yes"}]
    path = _jsonl(folder / "m.jsonl", rows)
    if os.geteuid() == 0:
        (folder / ".toolkit-cache").write_text("a file where the folder would go")
    else:
        folder.chmod(0o555)
    try:
        split = load_split(path, ["no", "yes"], tok, 8)
    finally:
        folder.chmod(0o755)
    assert split.images.shape == (1, 8, 8, 3)
