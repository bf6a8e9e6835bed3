"""toolkit.verify: a reference and a candidate runner on the same feeds, handed to compare."""

import numpy as np
import pytest

from toolkit.compare import ParityError
from toolkit.config import TOLERANCES, Precision, Tolerance
from toolkit.runtime import Runner, TensorSpec
from toolkit.verify import as_inputs, run_all, verify


class Affine(Runner):
    """y = a * x + b, taking x in `dtype`; records its lifecycle and the feeds it saw."""

    def __init__(self, a=1.0, b=0.0, dtype=np.float32, out="logits"):
        super().__init__()
        self.a, self.b, self.dtype, self.out = a, b, np.dtype(dtype), out
        self.events, self.seen = [], []

    def input_specs(self):
        return {"x": TensorSpec("x", self.dtype, (None, 4)),
                "ids": TensorSpec("ids", np.dtype(np.int64), (None,))}

    def _activate(self):
        self.events.append("activate")

    def _deactivate(self):
        self.events.append("deactivate")

    def _infer(self, feed):
        self.seen.append({k: v.dtype for k, v in feed.items()})
        return {self.out: (self.a * feed["x"].astype(np.float64) + self.b).astype(self.dtype)}


def _feeds(sizes=(1, 3, 2)):
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(n, 4)).astype(np.float32), "ids": np.arange(n)} for n in sizes]


def test_both_runners_see_every_feed_and_outputs_are_joined():
    ref, cand = Affine(), Affine()
    outs = run_all([ref, cand], _feeds())
    assert [o["logits"].shape for o in outs] == [(6, 4), (6, 4)]
    np.testing.assert_array_equal(outs[0]["logits"], outs[1]["logits"])
    assert len(ref.seen) == len(cand.seen) == 3


def test_feeds_are_cast_to_each_runners_input_dtype():
    # An FP16-I/O graph takes FP16 images; integer inputs are left alone.
    half = Affine(dtype=np.float16)
    out = run_all([Affine(), half], _feeds())[1]
    assert half.seen[0] == {"x": np.float16, "ids": np.int64}
    assert out["logits"].dtype == np.float32  # compared in float32 whatever the graph returns
    assert as_inputs(half, {"x": np.ones((1, 4), np.float32), "ids": np.arange(1)})["x"].dtype \
        == np.float16


def test_inactive_runners_are_activated_for_the_run_active_ones_stay_active():
    ref, cand = Affine(), Affine()
    cand.activate()
    run_all([ref, cand], _feeds())
    assert ref.events == ["activate", "deactivate"] and not ref.is_active
    assert cand.events == ["activate"] and cand.is_active


def test_verify_passes_a_faithful_candidate_and_fails_a_wrong_one():
    feeds = _feeds((5, 5))
    assert verify(Affine(), Affine(), feeds, TOLERANCES[Precision.fp32]).passed
    wrong = verify(Affine(), Affine(b=0.5), feeds, TOLERANCES[Precision.fp32])
    assert not wrong.passed and any("max abs error" in f for f in wrong.failures)


def test_verify_with_labels_reports_accuracy():
    feeds = _feeds((4,))
    labels = feeds[0]["x"].argmax(-1)
    c = verify(Affine(), Affine(a=-1.0), feeds, Tolerance(max_accuracy_drop=0.01), labels)
    assert c.reference_accuracy == 1.0 and c.candidate_accuracy < 1.0 and not c.passed


def test_different_output_names_are_an_error():
    with pytest.raises(ParityError, match="output names differ"):
        verify(Affine(), Affine(out="scores"), _feeds(), Tolerance())


def test_torch_runner_on_a_loaded_checkpoint_against_onnx_runtime(tiny_run, tiny_onnx):
    from toolkit.checkpoint import load_checkpoint
    from toolkit.export.samples import generated_batch
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner
    from toolkit.runtime.torch_runner import TorchRunner

    ck = load_checkpoint(tiny_run)
    rng = np.random.default_rng(0)
    feeds = [generated_batch(ck, b, 6, rng) for b in (1, 4)]
    torch_runner = TorchRunner.from_checkpoint(ck)
    c = verify(torch_runner, OnnxRuntimeRunner(tiny_onnx.path, threads=1), feeds,
               TOLERANCES[Precision.fp32])
    assert c.passed and c.n == 5, c.report()
    assert torch_runner.ck is None  # deactivated after the run; the checkpoint itself is the caller's
