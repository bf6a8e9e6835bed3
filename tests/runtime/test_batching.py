"""The batching front: answers equal unbatched predictions, batches form as configured (checked on
the worker's own record of batch sizes, never on wall-clock speed), a bad request fails alone,
shutdown fails what is pending, and an artifact's batch limits are kept.

Every wait on an answer has a bound (WAIT seconds) so that a broken worker fails a test instead of
hanging it; a long max_delay_ms (an hour) makes a batch close only when it is full, so sizes are
deterministic however slowly the threads run.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from toolkit.data.preprocess import PreprocessError
from toolkit.errors import ToolkitError
from toolkit.runtime import Predictor, PredictorError, Runner, RunnerError
from toolkit.runtime.batching import (BatchConfig, BatchConfigError, Batcher, BatcherClosedError,
                                      BatchLimits, batch_limits)
from toolkit.runtime.predictor import Backend
from toolkit.runtime.trt_plan import check_shapes

WAIT = 60  # s: a bound on hangs, not a speed expectation
HOUR_MS = 3_600_000
# Probabilities: a batch pads each question to the batch's longest (masked, so ignored by the
# model); only the float32 summation order of the larger matrix products differs (measured: under
# 1e-7 on the probabilities, 4e-7 on the logits of the small preset).
PROB_ATOL, LOGIT_ATOL = 1e-6, 1e-5


def _requests(tiny_data, n):
    rows = [json.loads(x) for x in (Path(tiny_data) / "train.jsonl").read_text().splitlines()]
    rows = (rows * (n // len(rows) + 1))[:n]
    return [(Path(tiny_data) / r["image"]).read_bytes() for r in rows], [r["text"] for r in rows]


@pytest.fixture(scope="module")
def predictor(tiny_onnx):
    with Predictor.load(tiny_onnx.path) as p:
        yield p


def _reference(predictor, images, texts):
    return [predictor.predict([i], [t], return_logits=True) for i, t in zip(images, texts)]


def _assert_same(got, want):
    assert got.labels == want.labels and got.classes == want.classes
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=PROB_ATOL, rtol=0)
    np.testing.assert_allclose(got.logits, want.logits, atol=LOGIT_ATOL, rtol=0)


class Gate:
    """Wraps predictor.infer: once armed, the next call blocks (after saying so) until released."""

    def __init__(self, infer):
        self._infer, self.entered, self.release, self.first = infer, threading.Event(), \
            threading.Event(), False

    def arm(self) -> "Gate":
        self.first = True
        return self

    def __call__(self, feed):
        if self.first:
            self.first = False
            self.entered.set()
            assert self.release.wait(WAIT), "the test never released the gate"
        return self._infer(feed)


@pytest.fixture
def gate(predictor, monkeypatch):
    g = Gate(predictor.infer)
    monkeypatch.setattr(predictor, "infer", g)
    return g


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("kw, match", [
    ({"max_batch": 0}, "max_batch must be an integer >= 1"),
    ({"max_batch": -3}, "max_batch"),
    ({"max_batch": 2.5}, "max_batch"),
    ({"max_batch": True}, "max_batch"),
    ({"max_batch": "8"}, "max_batch"),
    ({"max_delay_ms": -1}, "max_delay_ms must be a finite number >= 0"),
    ({"max_delay_ms": float("nan")}, "max_delay_ms"),
    ({"max_delay_ms": float("inf")}, "max_delay_ms"),
    ({"max_delay_ms": "5"}, "max_delay_ms"),
])
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(BatchConfigError, match=match):
        BatchConfig(**kw)
    assert issubclass(BatchConfigError, ToolkitError)


def test_config_is_frozen_and_accepts_edges():
    cfg = BatchConfig(max_batch=1, max_delay_ms=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_batch = 4
    assert BatchConfig(max_batch=64, max_delay_ms=2.5).max_delay_ms == 2.5


# ------------------------------------------------------------------ answers


def test_many_threads_get_their_own_unbatched_answers(predictor, tiny_data):
    images, texts = _requests(tiny_data, 96)
    texts[5] = " ".join([texts[5]] * 50)  # truncated at max_length: the longest row of its batch
    want = _reference(predictor, images, texts)
    with Batcher(predictor, BatchConfig(max_batch=8, max_delay_ms=HOUR_MS)) as b:
        def ask(k):
            return b.submit(images[k], texts[k], return_logits=True).result(WAIT)

        with ThreadPoolExecutor(32) as pool:  # 32 callers, 3 requests each
            got = list(pool.map(ask, range(len(images))))
        # Every batch closed full (the delay never expires): 96 requests in 12 calls of 8.
        assert list(b.batch_sizes) == [8] * 12 and b.calls == 12 and b.answered == 96
    for g, w in zip(got, want):
        _assert_same(g, w)
        assert len(g) == 1


def test_results_match_predict_rows(predictor, tiny_data):
    images, texts = _requests(tiny_data, 2)
    with Batcher(predictor, BatchConfig(max_batch=4, max_delay_ms=0)) as b:
        got = b.predict(images[0], texts[0], timeout=WAIT)
    want = predictor.predict(images[:1], texts[:1])
    assert got.logits is None  # only when asked for, as predict
    assert got.rows()[0]["label"] == want.rows()[0]["label"]
    assert got.rows()[0]["probabilities"] == pytest.approx(want.rows()[0]["probabilities"],
                                                           abs=PROB_ATOL)


def test_a_bad_request_fails_alone(predictor, tiny_data):
    images, texts = _requests(tiny_data, 3)
    want = _reference(predictor, images, texts)
    bad = [(b"not an image", "what shape?", PreprocessError, "not a readable image"),
           (images[0], "   ", PredictorError, "empty"),
           (images[0], 42, PredictorError, "text #0 is a int"),
           ([images[0]], "what shape?", PreprocessError, "unsupported image input")]
    with Batcher(predictor, BatchConfig(max_batch=3, max_delay_ms=HOUR_MS)) as b:
        with ThreadPoolExecutor(8) as pool:
            good = [pool.submit(lambda k=k: b.submit(images[k], texts[k], True).result(WAIT))
                    for k in range(3)]
            errors = [pool.submit(b.submit, image, text) for image, text, _, _ in bad]
            for f, (_, _, kind, match) in zip(errors, bad):
                with pytest.raises(kind, match=match):  # raised to that caller, never queued
                    f.result(WAIT)
            got = [f.result(WAIT) for f in good]
        assert list(b.batch_sizes) == [3]  # the good three still made one full batch
    for g, w in zip(got, want):
        _assert_same(g, w)


def test_a_failing_batch_is_retried_request_by_request(predictor, tiny_data, monkeypatch):
    images, texts = _requests(tiny_data, 3)
    texts[1] = "poison poison poison poison poison poison"
    want = _reference(predictor, images, texts)
    poison = predictor.tokenizer.encode_ids([texts[1]])[0]
    real_infer = predictor.infer

    def infer(feed):  # a backend that fails on one row: the whole call fails
        if any(row[:len(poison)].tolist() == poison for row in feed["input_ids"]):
            raise RunnerError("the backend refused row 'poison'")
        return real_infer(feed)

    monkeypatch.setattr(predictor, "infer", infer)
    with Batcher(predictor, BatchConfig(max_batch=3, max_delay_ms=HOUR_MS)) as b:
        futures = [b.submit(i, t, return_logits=True) for i, t in zip(images, texts)]
        _assert_same(futures[0].result(WAIT), want[0])
        _assert_same(futures[2].result(WAIT), want[2])
        with pytest.raises(RunnerError, match="poison"):
            futures[1].result(WAIT)
        assert list(b.batch_sizes) == [3, 1, 1, 1]  # the batch, then each request alone


# ------------------------------------------------------------------ when a batch closes


def test_max_batch_splits_what_queued_while_the_backend_was_busy(predictor, tiny_data, gate):
    images, texts = _requests(tiny_data, 10)
    want = _reference(predictor, images, texts)
    gate.arm()
    with Batcher(predictor, BatchConfig(max_batch=4, max_delay_ms=0)) as b:
        futures = [b.submit(images[0], texts[0], True)]
        assert gate.entered.wait(WAIT)  # the first request is in the backend, alone
        futures += [b.submit(i, t, True) for i, t in zip(images[1:], texts[1:])]
        gate.release.set()
        got = [f.result(WAIT) for f in futures]
        # Delay 0: nothing waits for company, but what queued meanwhile goes together, in order.
        assert list(b.batch_sizes) == [1, 4, 4, 1]
    for g, w in zip(got, want):
        _assert_same(g, w)


def test_a_lone_request_runs_once_its_delay_passes(predictor, tiny_data):
    images, texts = _requests(tiny_data, 1)
    with Batcher(predictor, BatchConfig(max_batch=8, max_delay_ms=20)) as b:
        b.predict(images[0], texts[0], timeout=WAIT)
        assert list(b.batch_sizes) == [1]  # not held for the seven that never came


def test_the_delay_counts_from_the_oldest_request(predictor, tiny_data):
    """A fake clock: the worker's deadline is the oldest request's submit time + max_delay."""
    images, texts = _requests(tiny_data, 3)
    now = [0.0]
    b = Batcher(predictor, BatchConfig(max_batch=8, max_delay_ms=HOUR_MS), clock=lambda: now[0])
    try:
        first = b.submit(images[0], texts[0])  # submitted at t=0: its deadline is t=3600 s
        # The worker reads the clock only under the batcher's (reentrant) lock: holding it, the
        # hour "passes" and the second request is queued before the worker can look.
        with b._cond:
            now[0] = 3600.5
            second = b.submit(images[1], texts[1])
        first.result(WAIT), second.result(WAIT)
        assert list(b.batch_sizes) == [2]  # one partial batch, closed by the first's deadline
        third = b.submit(images[2], texts[2])  # its own hour starts now: it waits
    finally:
        b.close(timeout=WAIT)
    with pytest.raises(BatcherClosedError, match="closed before this request ran"):
        third.result(WAIT)
    assert list(b.batch_sizes) == [2]


# ------------------------------------------------------------------ shutdown and timeouts


def test_close_fails_pending_requests_and_refuses_new_ones(predictor, tiny_data, gate):
    images, texts = _requests(tiny_data, 3)
    want = _reference(predictor, images, texts)
    gate.arm()
    b = Batcher(predictor, BatchConfig(max_batch=1, max_delay_ms=0))
    running = b.submit(images[0], texts[0], True)
    assert gate.entered.wait(WAIT)
    pending = [b.submit(i, t) for i, t in zip(images[1:], texts[1:])]
    closer = threading.Thread(target=b.close)
    closer.start()  # blocks until the running batch ends; fails the queued ones at once
    for f in pending:
        with pytest.raises(BatcherClosedError, match="closed before this request ran"):
            f.result(WAIT)
    with pytest.raises(BatcherClosedError, match="is closed"):
        b.submit(images[0], texts[0])
    gate.release.set()
    _assert_same(running.result(WAIT), want[0])  # the batch that was running still answers
    closer.join(WAIT)
    assert not closer.is_alive() and not b._worker.is_alive()
    assert list(b.batch_sizes) == [1]
    b.close()  # twice is harmless


def test_a_caller_that_times_out_is_withdrawn(predictor, tiny_data, gate):
    images, texts = _requests(tiny_data, 2)
    gate.arm()
    with Batcher(predictor, BatchConfig(max_batch=4, max_delay_ms=0)) as b:
        first = b.submit(images[0], texts[0])
        assert gate.entered.wait(WAIT)
        with pytest.raises(TimeoutError, match="no answer within"):
            b.predict(images[1], texts[1], timeout=0.05)
        gate.release.set()
        first.result(WAIT)
    assert list(b.batch_sizes) == [1]  # the withdrawn request never reached the backend


# The worker re-raises its own bug (so that it is logged); the thread's traceback is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_fails_waiting_callers(predictor, tiny_data, monkeypatch):
    images, texts = _requests(tiny_data, 1)
    b = Batcher(predictor, BatchConfig(max_batch=2, max_delay_ms=HOUR_MS))

    def boom(batch):  # a bug in the worker itself, not in a request
        raise RuntimeError("worker bug")

    monkeypatch.setattr(b, "_answer", boom)
    f1, f2 = b.submit(images[0], texts[0]), b.submit(images[0], texts[0])
    b._worker.join(WAIT)
    assert not b._worker.is_alive()
    with pytest.raises(BatcherClosedError, match="is closed"):
        b.submit(images[0], texts[0])
    for f in (f1, f2):  # the two it had taken get an error instead of waiting forever
        with pytest.raises(BatcherClosedError, match="worker stopped .RuntimeError: worker bug"):
            f.result(WAIT)


# ------------------------------------------------------------------ an artifact's batch limits


class ShapedRunner(Runner):
    """The tiny ONNX model behind a runner that declares (and, through the Runner base and the
    plan's profile check, enforces) a fixed batch axis or a TensorRT-like profile."""

    name = "shaped"

    def __init__(self, inner, fixed_batch=None, profile=None):
        super().__init__()
        self.inner, self.fixed_batch, self.batches = inner, fixed_batch, []
        if profile is not None:
            self.shape_profile = profile

    def _activate(self):
        self.inner.activate()

    def input_specs(self):
        specs = self.inner.input_specs()
        if self.fixed_batch:
            specs = {n: dataclasses.replace(s, shape=(self.fixed_batch, *s.shape[1:]))
                     for n, s in specs.items()}
        return specs

    def _infer(self, feed):
        if getattr(self, "shape_profile", None):
            check_shapes(self.shape_profile, {n: x.shape for n, x in feed.items()})
        self.batches.append(len(feed["image"]))
        return self.inner.infer(feed)


def _shaped_predictor(predictor, **kw):
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    runner = ShapedRunner(OnnxRuntimeRunner(predictor.path), **kw)
    return Predictor(runner, predictor.metadata, Backend.onnxruntime, predictor.path)


def test_a_fixed_batch_artifact_gets_padded_batches(predictor, tiny_data, monkeypatch):
    images, texts = _requests(tiny_data, 6)
    want = _reference(predictor, images, texts)
    fixed = _shaped_predictor(predictor, fixed_batch=4)
    assert batch_limits(fixed) == BatchLimits(min_batch=4, max_batch=4)
    gate = Gate(fixed.infer).arm()
    monkeypatch.setattr(fixed, "infer", gate)
    with Batcher(fixed, BatchConfig(max_batch=16, max_delay_ms=0)) as b:
        assert b.max_batch == 4  # capped by the artifact
        futures = [b.submit(images[0], texts[0], True)]
        assert gate.entered.wait(WAIT)
        futures += [b.submit(i, t, True) for i, t in zip(images[1:], texts[1:])]
        gate.release.set()
        got = [f.result(WAIT) for f in futures]
        assert list(b.batch_sizes) == [1, 4, 1]  # real requests per call
    assert fixed.runner.batches == [4, 4, 4]  # what the backend saw: always its fixed batch
    for g, w in zip(got, want):
        _assert_same(g, w)


def test_a_plan_profile_bounds_batch_and_sequence(predictor, tiny_data):
    images, texts = _requests(tiny_data, 5)
    want = _reference(predictor, images, texts)
    max_len, s = predictor.metadata.max_length, predictor.metadata.image_size
    profile = {"image": {"min": [2, 3, s, s], "max": [3, 3, s, s]},
               "input_ids": {"min": [2, 1], "max": [3, max_len]},
               "attention_mask": {"min": [2, 1], "max": [3, max_len]}}
    planlike = _shaped_predictor(predictor, profile=profile)
    assert batch_limits(planlike) == BatchLimits(2, 3, 1, max_len)
    with Batcher(planlike, BatchConfig(max_batch=8, max_delay_ms=HOUR_MS)) as b:
        assert b.max_batch == 3
        futures = [b.submit(i, t, True) for i, t in zip(images, texts)]
        for g, w in zip([f.result(WAIT) for f in futures[:3]], want[:3]):
            _assert_same(g, w)
        assert list(b.batch_sizes) == [3]
    # Closing failed the two left waiting for a third (an hour's delay).
    for f in futures[3:]:
        with pytest.raises(BatcherClosedError):
            f.result(WAIT)
    assert planlike.runner.batches == [3]


def test_a_question_over_the_profiles_sequence_fails_alone(predictor, tiny_data):
    images, texts = _requests(tiny_data, 1)
    s = predictor.metadata.image_size
    profile = {"image": {"min": [1, 3, s, s], "max": [4, 3, s, s]},
               "input_ids": {"min": [1, 1], "max": [4, 4]},
               "attention_mask": {"min": [1, 1], "max": [4, 4]}}
    with Batcher(_shaped_predictor(predictor, profile=profile), BatchConfig()) as b:
        with pytest.raises(PredictorError, match="at most 4"):
            b.submit(images[0], texts[0])
        assert b.calls == 0
