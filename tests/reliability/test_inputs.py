"""Images, texts and arrays a caller may hand the Predictor, and output paths the CLI may be
given: a PreprocessError/PredictorError (ToolkitError) each, or the documented normalization."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from corpus import invoke, no_leftovers, root_can_write
from PIL import Image

from toolkit.errors import ToolkitError
from toolkit.runtime import Predictor

pytestmark = pytest.mark.bad_input
Q = "what shape is the red object?"


@pytest.fixture(scope="module")
def predictor(tiny_onnx):
    with Predictor.load(tiny_onnx.path, device="cpu") as p:
        yield p


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def _bomb_png(w=100_000, h=100_000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (over Pillow's decompression-bomb limit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) \
        + chunk(b"IEND", b"")


RGB = Image.new("RGB", (32, 32), (200, 30, 30))
GOOD_PNG, GOOD_JPEG = _png(RGB), _jpeg(RGB)
bad_crc = bytearray(GOOD_PNG)
bad_crc[30] ^= 0xFF

BAD_IMAGES = {
    "0x0-array": np.zeros((0, 0, 3), np.uint8),
    "0xW-array": np.zeros((0, 5, 3), np.uint8),
    "Hx0-gray-array": np.zeros((5, 0), np.uint8),
    "float-array": np.zeros((8, 8, 3), np.float32),
    "nan-array": np.full((8, 8, 3), np.nan, np.float32),
    "int16-array": np.zeros((8, 8, 3), np.int16),
    "bool-array": np.zeros((8, 8, 3), bool),
    "two-channel-array": np.zeros((8, 8, 2), np.uint8),
    "rank-4-array": np.zeros((1, 8, 8, 3), np.uint8),
    "rank-1-array": np.zeros((8,), np.uint8),
    "empty-bytes": b"",
    "random-bytes": bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8)),
    "truncated-png": GOOD_PNG[: len(GOOD_PNG) // 2],
    "png-header-only": GOOD_PNG[:8],
    "png-bad-crc": bytes(bad_crc),
    "truncated-jpeg": GOOD_JPEG[: len(GOOD_JPEG) // 3],
    "jpeg-header-only": GOOD_JPEG[:4],
    "text-as-bytes": b"what shape is the red object?",
    "decompression-bomb": _bomb_png(),
    "missing-path": "/nonexistent/image.png",
    "a-folder": "/tmp",
    "none": None,
    "int": 7,
    "nested-list": [[0, 0, 0]],
    "zero-size-pil": Image.new("RGB", (0, 0)),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_one_clear_error(case, predictor):
    with pytest.raises(ToolkitError):
        predictor.predict([BAD_IMAGES[case]], [Q])


def test_bad_image_file_on_disk(predictor, tmp_path):
    for name, data in (("corrupt.png", GOOD_PNG[:40]), ("corrupt.jpg", GOOD_JPEG[:50]),
                       ("notes.png", b"hello")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ToolkitError, match="not a readable image"):
            predictor.predict([tmp_path / name], [Q])


NORMALIZED = {  # documented in load_image: converted to RGB and resized
    "grayscale": Image.new("L", (32, 32), 90),
    "rgba": Image.new("RGBA", (32, 32), (10, 20, 30, 128)),
    "la": Image.new("LA", (32, 32), (10, 128)),
    "palette": Image.new("RGB", (32, 32), (1, 2, 3)).convert("P"),
    "cmyk": Image.new("CMYK", (32, 32), (0, 50, 100, 0)),
    "16-bit": Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60),
    "32-bit-int": Image.fromarray(np.arange(32 * 32, dtype=np.int32).reshape(32, 32)),
    "float-mode": Image.fromarray(np.linspace(0, 1, 1024, dtype=np.float32).reshape(32, 32)),
    "1x1": Image.new("RGB", (1, 1), (255, 0, 0)),
    "very-large": Image.new("RGB", (3000, 3000), (0, 0, 255)),
    "very-wide": Image.new("RGB", (4000, 1), (0, 255, 0)),
    "1-bit": Image.new("1", (32, 32), 1),
}


PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}  # what Pillow can write as PNG


@pytest.mark.parametrize("case, form", [(c, f) for c in sorted(NORMALIZED) for f in ("pil", "png")
                                        if f == "pil" or NORMALIZED[c].mode in PNG_MODES])
def test_other_image_modes_and_sizes_are_normalized(case, form, predictor):
    img = NORMALIZED[case]
    if form == "png":
        img = _png(img)
    out = predictor.predict([img], [Q], return_logits=True)
    assert np.isfinite(out.logits).all() and out.labels[0] in predictor.classes


def test_16_bit_png_keeps_its_range(predictor):
    """16-bit values are scaled by their range, not clipped to 255 (which would make them white)."""
    from toolkit.data.preprocess import load_image

    ramp = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16))
    pixels = load_image(_png(ramp), 32)
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 100


TEXTS = {
    "empty": ("", True), "whitespace": ("  \t\n ", True), "control-only": ("\x00\x07\x1b", True),
    "zero-width-only": ("\u200b\u200d", True), "lone-surrogate": ("shape \ud800", True),
    "10000-words": (" ".join(["shape"] * 10_000), False),  # truncated to max_length, documented
    "non-ascii": ("¿qué forma tiene el objeto rojo?", False),
    "cjk": ("红色物体是什么形状", False),
    "emoji": ("🔴 what shape? 🟦", False),  # unknown characters are [UNK]
    "control-inside": ("what\x00 shape\x07 is red?", False),
    "rtl": ("ما شكل الجسم الأحمر؟", False),
}


@pytest.mark.parametrize("case", sorted(TEXTS))
def test_texts(case, predictor):
    text, refused = TEXTS[case]
    img = np.zeros((32, 32, 3), np.uint8)
    if refused:
        with pytest.raises(ToolkitError, match="text #0"):
            predictor.predict([img], [text])
    else:
        out = predictor.predict([img], [text], return_logits=True)
        assert np.isfinite(out.logits).all()


@pytest.mark.parametrize("case", ("bytes", "none", "int", "single-string", "more-texts",
                                  "no-images", "batch-size-0"))
def test_bad_call_shapes(case, predictor):
    img = np.zeros((32, 32, 3), np.uint8)
    images, texts, kw = [img], [Q], {}
    if case == "bytes":
        texts = [Q.encode()]
    elif case == "none":
        texts = [None]
    elif case == "int":
        texts = [3]
    elif case == "single-string":
        texts = Q
    elif case == "more-texts":
        texts = [Q, Q]
    elif case == "no-images":
        images, texts = [], []
    else:
        kw = {"batch_size": 0}
    with pytest.raises(ToolkitError):
        predictor.predict(images, texts, **kw)


DEGENERATE_FEEDS = ("zero-batch", "float64-image", "int32-ids", "missing-mask", "rank-3-ids",
                    "list-not-array")


@pytest.mark.parametrize("case", DEGENERATE_FEEDS)
def test_degenerate_feed_arrays(case, predictor):
    feed = predictor.preprocess([np.zeros((32, 32, 3), np.uint8)], [Q])
    if case == "zero-batch":
        feed = {k: v[:0] for k, v in feed.items()}
        with pytest.raises(ToolkitError):
            predictor.predict([], [])
        return
    if case == "float64-image":
        feed["image"] = feed["image"].astype(np.float64)
    elif case == "int32-ids":
        feed["input_ids"] = feed["input_ids"].astype(np.int32)
    elif case == "missing-mask":
        del feed["attention_mask"]
    elif case == "rank-3-ids":
        feed["input_ids"] = feed["input_ids"][None]
    else:
        feed["image"] = feed["image"].tolist()
    with pytest.raises(ToolkitError):
        predictor.infer(feed)


def test_nan_image_feed_gives_nan_logits_that_compare_refuses(predictor):
    """NaN pixels cannot come from a uint8 image; fed directly, they surface as non-finite logits
    which the comparison function fails (never a pass)."""
    from toolkit.compare import compare
    from toolkit.config import Tolerance

    feed = predictor.preprocess([np.zeros((32, 32, 3), np.uint8)], [Q])
    ok = predictor.infer(feed)
    feed["image"][:] = np.nan
    bad = predictor.infer(feed)
    c = compare({"logits": ok}, {"logits": bad}, Tolerance(atol=1.0))
    assert not c.passed and "non-finite" in c.failures[0]


# ------------------------------------------------------------------ output paths


def _outputs(tmp_path, tiny_run, tiny_data, tiny_onnx, target):
    return {
        "data-generate": ("data", "generate", "--out", target, "--scenes", "2",
                          "--image-size", "16"),
        "train": ("train", "--data", tiny_data, "--out", target, "--preset", "tiny",
                  "--max-steps", "1", "--device", "cpu"),
        "eval-json": ("eval", "--checkpoint", tiny_run, "--data", tiny_data, "--device", "cpu",
                      "--json", target),
        "parity-json": ("parity", "--reference", tiny_run, "--candidate", tiny_onnx.path,
                        "--samples", "2", "--json", target),
        "export-out": ("export", "--checkpoint", tiny_run, "--out", target),
    }


WHERE = ("existing-file", "under-a-file", "existing-folder", "in-proc")
SKIP = {("data-generate", "existing-folder"), ("train", "existing-folder"),
        ("export-out", "existing-folder")}  # a folder is what those take / export: see below


@pytest.mark.slow
@pytest.mark.parametrize("command, where", [
    (c, w) for c in ("data-generate", "train", "eval-json", "parity-json", "export-out")
    for w in WHERE if (c, w) not in SKIP or c == "export-out"])
def test_output_paths_that_cannot_be_written(command, where, tmp_path, tiny_run, tiny_data,
                                             tiny_onnx):
    blocker = tmp_path / "blocker"
    if where == "existing-file":
        blocker.write_text("keep me\n")
        target = blocker if command != "export-out" else tmp_path / "blocker"
    elif where == "under-a-file":
        blocker.write_text("keep me\n")
        target = blocker / "sub" / ("out.onnx" if command == "export-out" else "out.json")
    elif where == "existing-folder":
        blocker.mkdir()
        target = blocker if command != "export-out" else tmp_path / "folder.onnx"
        if command == "export-out":
            target.mkdir()
    else:  # /proc refuses new entries even to root: a read-only place that works as root too
        target = "/proc/toolkit-issue-17/out" + (".onnx" if command == "export-out" else ".json")
    if command == "export-out" and where == "existing-file":
        target = tmp_path / "blocker"
    result = invoke(*_outputs(tmp_path, tiny_run, tiny_data, tiny_onnx, target)[command])
    if where == "existing-file" and command.endswith("-json"):
        # A report path that holds a file is replaced whole (atomically): the intended use.
        result.assert_ok()
        import json

        assert json.loads(blocker.read_text())
        return
    result.assert_clean_error()
    if blocker.is_file():
        assert blocker.read_text() == "keep me\n"
    assert not no_leftovers(tmp_path)


@pytest.mark.parametrize("command", ("eval-json", "data-generate"))
def test_read_only_folder(command, tmp_path, tiny_run, tiny_data, tiny_onnx):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if root_can_write(folder):
            pytest.skip("running as root: mode 0555 does not stop writes (the /proc case above "
                        "covers a read-only place)")
        target = folder / ("out.json" if command == "eval-json" else "data")
        invoke(*_outputs(tmp_path, tiny_run, tiny_data, tiny_onnx, target)[command]) \
            .assert_clean_error()
    finally:
        folder.chmod(0o755)


def test_missing_output_folder_is_created(tmp_path, tiny_run, tiny_data):
    target = tmp_path / "a" / "b" / "eval.json"
    invoke("eval", "--checkpoint", tiny_run, "--data", tiny_data, "--device", "cpu",
           "--json", target).assert_ok()
    assert target.is_file()


# ------------------------------------------------------------------ labels and manifests


@pytest.mark.slow
@pytest.mark.parametrize("case", ("unknown-label", "missing-key", "not-json", "empty-manifest",
                                  "missing-image", "corrupt-image", "random-manifest"))
def test_bad_manifests(case, data_copy, tiny_run):
    import json

    val = data_copy / "val.jsonl"
    rows = [json.loads(x) for x in val.read_text().splitlines()]
    if case == "unknown-label":
        rows[0]["label"] = "purple"
    elif case == "missing-key":
        del rows[0]["label"]
    elif case == "missing-image":
        rows[0]["image"] = "images/none.png"
    elif case == "corrupt-image":
        (data_copy / rows[0]["image"]).write_bytes(b"\x89PNG broken")
    lines = [json.dumps(r) for r in rows]
    if case == "not-json":
        lines[0] = "{not json"
    elif case == "empty-manifest":
        lines = []
    if case == "random-manifest":
        val.write_bytes(b"\xff\xfe" + bytes(range(256)) * 4)
    else:
        val.write_text("\n".join(lines) + ("\n" if lines else ""))
    invoke("eval", "--checkpoint", tiny_run, "--data", data_copy, "--device", "cpu") \
        .assert_clean_error()
