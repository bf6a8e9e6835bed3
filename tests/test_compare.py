"""The one comparison function: names, then shapes, then values, against a Tolerance."""

import numpy as np
import pytest

from toolkit.compare import ParityError, compare
from toolkit.config import TOLERANCES, Precision, Tolerance


@pytest.fixture
def logits():
    return {"logits": np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)}


def test_identical_outputs_pass_with_exact_evidence(logits):
    c = compare(logits, {"logits": logits["logits"].copy()}, TOLERANCES[Precision.fp32])
    assert c.passed and c.failures == []
    s = c.outputs[0]
    assert s.max_abs == 0 and s.mean_rel == 0 and s.top1 == 1.0 and s.cosine == pytest.approx(1)
    assert c.n == 20


def test_names_are_checked_before_shapes(logits):
    with pytest.raises(ParityError, match="output names differ"):
        compare(logits, {"scores": np.zeros((3, 2))}, Tolerance())


def test_shapes_are_checked_before_values(logits):
    with pytest.raises(ParityError, match=r"shape \(20, 5\).*\(19, 5\)"):
        compare(logits, {"logits": logits["logits"][:19]}, Tolerance())


def test_value_error_beyond_tolerance_fails_with_evidence(logits):
    cand = {"logits": logits["logits"] + 1e-3}
    c = compare(logits, cand, Tolerance(max_abs=1e-4))
    assert not c.passed
    assert c.outputs[0].max_abs == pytest.approx(1e-3, rel=1e-2)
    with pytest.raises(ParityError) as e:
        c.raise_if_failed("model X")
    assert "model X" in str(e.value) and "max abs error" in str(e.value)
    assert "cosine" in str(e.value)  # the evidence, not only the verdict


def test_top1_agreement_and_accuracy_drop(logits):
    ref = logits["logits"]
    cand = ref.copy()
    flip = [0, 1]  # two of twenty rows choose another class
    for i in flip:
        cand[i] = -cand[i]
    labels = ref.argmax(-1)
    c = compare({"logits": ref}, {"logits": cand}, TOLERANCES[Precision.int8], labels=labels)
    assert c.outputs[0].top1 == pytest.approx(18 / 20)
    assert c.reference_accuracy == 1.0 and c.candidate_accuracy == pytest.approx(18 / 20)
    assert c.accuracy_drop == pytest.approx(0.1)
    assert not c.passed and len(c.failures) == 2  # top-1 and accuracy both exceeded


def test_nan_in_candidate_fails_even_without_bounds(logits):
    cand = {"logits": logits["logits"].copy()}
    cand["logits"][3, 2] = np.nan
    assert not compare(logits, cand, Tolerance()).passed


def test_accuracy_bound_without_labels_is_noted_not_passed_silently(logits):
    c = compare(logits, dict(logits), TOLERANCES[Precision.int8])
    assert c.passed and any("no labels" in n for n in c.notes)


def test_result_serializes(logits):
    d = compare(logits, dict(logits), Tolerance(max_abs=1.0)).to_dict()
    assert d["passed"] is True and d["outputs"][0]["name"] == "logits"
