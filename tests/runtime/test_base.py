import numpy as np
import pytest

from toolkit.runtime import Runner, RunnerError, TensorSpec
from toolkit.runtime.torch_runner import TorchRunner


class Doubler(Runner):
    name = "doubler"

    def __init__(self):
        super().__init__()
        self.events = []

    def input_specs(self):
        return {"x": TensorSpec("x", np.dtype(np.float32), (None, 3))}

    def _activate(self):
        self.events.append("activate")

    def _deactivate(self):
        self.events.append("deactivate")

    def _infer(self, feed):
        return {"y": feed["x"] * 2}


def test_lifecycle_runs_once_and_infers():
    r = Doubler()
    with r:
        r.activate()  # idempotent
        out = r.infer({"x": np.ones((2, 3), np.float32)})
    assert r.events == ["activate", "deactivate"]
    assert (out["y"] == 2).all()


@pytest.mark.parametrize("feed,message", [
    ({}, "missing \\['x'\\]"),
    ({"x": np.ones((2, 3), np.float32), "z": np.ones(1)}, "unexpected \\['z'\\]"),
    ({"x": np.ones((2, 3), np.float64)}, "dtype float64.*astype\\(np.float32\\)"),
    ({"x": np.ones((2, 3, 1), np.float32)}, "rank 2"),
    ({"x": np.ones((2, 4), np.float32)}, "axis 1 must be 3"),
    ({"x": [[1.0, 2.0, 3.0]]}, "numpy array"),
])
def test_bad_feeds_are_named(feed, message):
    with Doubler() as r, pytest.raises(RunnerError, match=message):
        r.infer(feed)


def test_inactive_runner_refuses():
    with pytest.raises(RunnerError, match="not active"):
        Doubler().infer({"x": np.ones((1, 3), np.float32)})


def test_torch_runner_matches_the_model(tiny_run):
    import torch

    from toolkit.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_run)
    rng = np.random.default_rng(0)
    s = ck.config.image_size
    feed = {"image": rng.standard_normal((2, 3, s, s)).astype(np.float32),
            **ck.tokenizer(["what is the shape of the red object?", "is it left?"])}
    with TorchRunner(tiny_run) as r:
        out = r.infer(feed)["logits"]
        with pytest.raises(RunnerError, match="int32"):
            r.infer({**feed, "input_ids": feed["input_ids"].astype(np.int32)})
    with torch.no_grad():
        ref = ck.model(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
