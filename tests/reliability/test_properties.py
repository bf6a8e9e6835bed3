"""Property-based tests (hypothesis) of preprocessing and of the comparison function."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from toolkit.compare import ParityError, compare
from toolkit.config import Tolerance
from toolkit.data.preprocess import PreprocessError, Tokenizer, load_image, normalize, train_vocab

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB = train_vocab(["what shape is the red object?", "how many circles are there?"], 120)
TOK = Tokenizer(VOCAB, 16)

images = hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40),
                                        st.sampled_from([1, 3, 4])))


@FAST
@given(images, st.integers(4, 48))
def test_load_image_is_rgb_of_the_asked_size(a, size):
    out = load_image(a, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


@FAST
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12),
                                      st.just(3))))
def test_normalize_inverts_exactly(batch):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = normalize(batch, mean, std)
    assert x.shape == (batch.shape[0], 3, *batch.shape[1:3]) and np.isfinite(x).all()
    back = x.transpose(0, 2, 3, 1) * np.float32(std) + np.float32(mean)
    np.testing.assert_allclose(back * 255, batch, atol=1e-3)


@FAST
@given(st.lists(st.text(min_size=0, max_size=200), min_size=1, max_size=6))
def test_tokenizer_never_crashes_and_respects_max_length(texts):
    """Any Unicode: ids within the vocabulary, [CLS] first, at most max_length, mask = ids != pad;
    or one PreprocessError (empty, control-only, lone surrogates)."""
    try:
        out = TOK(texts)
    except PreprocessError:
        return
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == len(texts) and ids.shape[1] <= 16
    assert (ids >= 0).all() and (ids < len(VOCAB)).all()
    assert (ids[:, 0] == VOCAB.index("[CLS]")).all()
    assert ((mask == 1) == (ids != TOK.pad_id)).all()


@FAST
@given(st.lists(st.sampled_from(["shape", "red", "what", "is", "the", "object", "?"]),
                min_size=1, max_size=8))
def test_tokenizer_is_case_and_space_insensitive(words):
    a = TOK([" ".join(words)])["input_ids"]
    b = TOK(["  " + "   ".join(w.upper() for w in words) + " "])["input_ids"]
    np.testing.assert_array_equal(a, b)


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
logits = st.integers(1, 8).flatmap(
    lambda n: hnp.arrays(np.float32, (n, 5), elements=finite))


@FAST
@given(logits)
def test_compare_of_identical_outputs_passes_any_tolerance(x):
    c = compare({"logits": x}, {"logits": x.copy()},
                Tolerance(atol=0.0, min_cosine=1.0 - 1e-6, min_top1=1.0))
    assert c.passed and c.outputs[0].max_abs == 0.0 and c.n == x.shape[0]


@FAST
@given(logits, st.floats(1e-3, 10.0))
def test_compare_detects_a_shift_over_the_bound(x, shift):
    y = x.copy()
    y[0, 0] += np.float32(shift)
    shifted = float(np.abs(y.astype(np.float64) - x).max())
    c = compare({"logits": x}, {"logits": y}, Tolerance(atol=shifted / 2))
    assert not c.passed
    assert compare({"logits": x}, {"logits": y}, Tolerance(atol=shifted * 2)).passed
    # symmetric in its statistics
    d = compare({"logits": y}, {"logits": x}, Tolerance())
    assert d.outputs[0].max_abs == pytest.approx(c.outputs[0].max_abs)


@FAST
@given(logits, st.floats(1e-3, 10.0))
def test_compare_bound_scales_with_the_reference_range(x, shift):
    """rtol is relative to the reference's range: the same shift passes a bound of half of it
    made of rtol x range, and fails a bound of half of it."""
    y = x.copy()
    y[0, 0] += np.float32(shift)
    shifted = float(np.abs(y.astype(np.float64) - x).max())
    scale = float(x.max() - x.min())
    if shifted == 0.0 or scale == 0.0:  # a shift lost to float32 rounding, or a constant row
        return
    c = compare({"logits": x}, {"logits": y}, Tolerance(atol=0.0, rtol=2 * shifted / scale))
    assert c.passed and c.outputs[0].scale == pytest.approx(scale)
    assert not compare({"logits": x}, {"logits": y},
                       Tolerance(atol=0.0, rtol=shifted / scale / 2)).passed


@FAST
@given(logits, st.sampled_from([np.nan, np.inf, -np.inf]))
def test_compare_never_passes_non_finite(x, bad):
    y = x.copy()
    y[-1, -1] = bad
    assert not compare({"logits": x}, {"logits": y}, Tolerance(atol=1e9)).passed


@FAST
@given(logits)
def test_compare_refuses_other_shapes_and_names(x):
    with pytest.raises(ParityError):
        compare({"logits": x}, {"logits": x[:, :-1]}, Tolerance())
    with pytest.raises(ParityError):
        compare({"logits": x}, {"other": x}, Tolerance())


def test_compare_refuses_empty_outputs():
    with pytest.raises(ParityError, match="empty"):
        compare({"logits": np.zeros((0, 5))}, {"logits": np.zeros((0, 5))}, Tolerance(atol=1))
