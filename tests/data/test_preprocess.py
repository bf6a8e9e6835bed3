import io

import numpy as np
import pytest
from PIL import Image

from toolkit.data.preprocess import (PreprocessError, Tokenizer, load_image, normalize, pad,
                                     train_vocab)

TEXTS = ["what is the shape of the red object?", "is the blue object on the left?",
         "how many objects share the shape of the gray object?"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(train_vocab(TEXTS, 200), max_length=12)


def test_rgb_gray_rgba_palette_array_and_bytes_agree(tmp_path):
    rgb = Image.new("RGB", (20, 10), (10, 200, 30))
    ref = load_image(rgb, 8)
    assert ref.shape == (8, 8, 3) and ref.dtype == np.uint8
    assert (ref == [10, 200, 30]).all()
    gray = load_image(Image.new("L", (20, 10), 77), 8)
    assert gray.shape == (8, 8, 3) and (gray == 77).all()
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent: white background
    assert (load_image(rgba, 8) == 255).all()
    pal = rgb.convert("P", palette=Image.ADAPTIVE)
    assert (load_image(pal, 8) == ref).all()
    assert (load_image(np.asarray(rgb), 8) == ref).all()
    assert (load_image(np.asarray(rgb.convert("L")), 8) == load_image(rgb.convert("L"), 8)).all()
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    assert (load_image(buf.getvalue(), 8) == ref).all()
    path = tmp_path / "x.png"
    rgb.save(path)
    assert (load_image(path, 8) == ref).all()


def test_bad_images_are_named(tmp_path):
    with pytest.raises(PreprocessError, match="not found"):
        load_image(tmp_path / "missing.png", 8)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png")
    with pytest.raises(PreprocessError, match="junk.png is not a readable image"):
        load_image(junk, 8)
    with pytest.raises(PreprocessError, match="dtype float32"):
        load_image(np.zeros((4, 4, 3), np.float32), 8)
    with pytest.raises(PreprocessError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8), 8)


def test_normalize_matches_the_formula():
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = normalize(img, mean, std)
    assert out.shape == (2, 3, 5, 5) and out.dtype == np.float32
    want = (img[1, 2, 3, 0] / 255 - mean[0]) / std[0]
    assert out[1, 0, 2, 3] == pytest.approx(want, rel=1e-6)
    with pytest.raises(PreprocessError):
        normalize(img.astype(np.float32), mean, std)


def test_tokenizer_is_bert_style(tok):
    enc = tok(TEXTS[:2])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64
    assert ids[0, 0] == tok.vocab.index("[CLS]")
    n = int(mask[1].sum())
    assert ids[1, n - 1] == tok.vocab.index("[SEP]")
    assert (ids[1, n:] == tok.pad_id).all() and (mask[1, n:] == 0).all()
    assert "[UNK]" not in [tok.vocab[i] for i in ids[0]]  # the vocabulary covers its text
    # case does not matter (uncased)
    assert (tok(["WHAT IS THE SHAPE OF THE RED OBJECT?"])["input_ids"] ==
            tok(TEXTS[:1])["input_ids"]).all()


def test_truncation_and_fixed_padding(tok):
    long = " ".join(["red"] * 50)
    enc = tok([long])
    assert enc["input_ids"].shape == (1, 12)
    assert enc["input_ids"][0, -1] == tok.vocab.index("[SEP]")
    enc = tok(TEXTS[:1], pad_to=20)
    assert enc["input_ids"].shape == (1, 20)


def test_empty_text_and_bare_string_are_refused(tok):
    with pytest.raises(PreprocessError, match="text #1 is empty"):
        tok(["fine", "   "])
    with pytest.raises(PreprocessError, match="list of texts"):
        tok("a single string")


def test_vocab_file_round_trip(tok, tmp_path):
    tok.save(tmp_path / "vocab.txt")
    again = Tokenizer.from_file(tmp_path / "vocab.txt", 12)
    assert (again(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]).all()
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(PreprocessError, match="special token"):
        Tokenizer.from_file(tmp_path / "bad.txt", 12)


def test_pad_truncates_rows_longer_than_pad_to():
    out = pad([[1, 2, 3, 4], [5]], pad_id=0, pad_to=2)
    assert out["input_ids"].tolist() == [[1, 2], [5, 0]]
    assert out["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_vocabulary_is_the_same_in_every_process():
    import subprocess
    import sys

    code = ("from toolkit.data.preprocess import train_vocab; import sys\n"
            "from toolkit.data.synthetic import TEMPLATES, COLOURS\n"
            "texts = [t.format(c=c) for ts in TEMPLATES.values() for t in ts for c in COLOURS]\n"
            "sys.stdout.write('|'.join(train_vocab(texts, 1000)))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}
    assert len(outs) == 1
    assert outs.pop().split("|")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
