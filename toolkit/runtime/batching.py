"""A batching front for the Predictor: many threads ask one question each, one backend call answers.

    from toolkit.runtime import Predictor
    from toolkit.runtime.batching import BatchConfig, Batcher

    with Predictor.load("export/model.onnx") as p, Batcher(p, BatchConfig(max_batch=16)) as b:
        row = b.predict(image_bytes, "what shape is the red object?").rows()[0]

Each caller's request is checked and preprocessed on the caller's own thread (the Predictor's own
checks and preprocessing), so a bad image or question fails there, for that caller only, before it
is queued. One worker thread takes the queued requests in order: a batch closes when `max_batch`
are queued or `max_delay_ms` have passed since its oldest request was submitted (a request that
already waited while the previous batch ran does not wait again), then runs as ONE backend call and
each caller gets its own row. Should the batch call still fail, its requests are retried one by
one so that each caller gets its own answer or its own error.

Answers equal unbatched `Predictor.predict` calls: the same preprocessing, and in a batch each
question is right-padded to the batch's longest with the attention mask at 0, which the model
ignores (masked attention and masked mean); only the float summation order of a larger matrix
product differs, so probabilities agree to float32 rounding (measured: within 1e-7), not bitwise.

The artifact's batch limits are respected: a TensorRT plan's profile (batches of at most its
maximum; a smaller batch is padded up to its minimum, by repeating the last request, and the
padded rows are dropped), an ONNX graph with a fixed batch axis (padded to exactly that size the
same way), and a fixed or bounded sequence axis (ids padded to it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from toolkit.data.preprocess import ImageInput, pad
from toolkit.errors import ToolkitError
from toolkit.runtime.predictor import (Prediction, Predictor, PredictorError, _check_inputs,
                                       softmax)


class BatchConfigError(ToolkitError):
    """A batching setting is not allowed; the message names it and the allowed range."""


class BatcherClosedError(ToolkitError):
    """The batcher was closed before (or while) the request was queued: it did not run."""


@dataclass(frozen=True)
class BatchConfig:
    """max_batch: most requests in one backend call (capped by the artifact's own limit);
    max_delay_ms: longest a request waits for company after it is submitted (0: run with
    whatever is queued as soon as the backend is free)."""

    max_batch: int = 16
    max_delay_ms: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) \
                or self.max_batch < 1:
            raise BatchConfigError(f"max_batch must be an integer >= 1, got {self.max_batch!r}; "
                                   "use 1 to run every request alone")
        d = self.max_delay_ms
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not d >= 0 \
                or d == float("inf"):
            raise BatchConfigError(f"max_delay_ms must be a finite number >= 0, got {d!r}; "
                                   "use 0 to never wait for more requests")


@dataclass(frozen=True)
class BatchLimits:
    """What the artifact accepts: batch sizes min_batch..max_batch (None: unlimited) and
    sequence lengths min_seq..max_seq (None: unlimited)."""

    min_batch: int = 1
    max_batch: int | None = None
    min_seq: int = 1
    max_seq: int | None = None


def batch_limits(predictor: Predictor) -> BatchLimits:
    """The limits of the predictor's artifact, from its input specs and (a plan) its profile."""
    specs = predictor.runner.input_specs()
    batch_axis, seq_axis = specs["image"].shape[0], specs["input_ids"].shape[1]
    lo_b, hi_b = (batch_axis, batch_axis) if isinstance(batch_axis, int) else (1, None)
    lo_s, hi_s = (seq_axis, seq_axis) if isinstance(seq_axis, int) else (1, None)
    profile = getattr(predictor.runner, "shape_profile", None)  # TensorRTRunner only
    if profile:
        lo_b, hi_b = profile["image"]["min"][0], profile["image"]["max"][0]
        lo_s, hi_s = profile["input_ids"]["min"][1], profile["input_ids"]["max"][1]
    if predictor.max_batch:
        hi_b = min(hi_b, predictor.max_batch) if hi_b else predictor.max_batch
    return BatchLimits(lo_b, hi_b, lo_s, hi_s)


@dataclass
class _Request:
    image: np.ndarray  # (1, 3, H, W), the model's dtype
    ids: list[int]  # token ids, unpadded
    return_logits: bool
    future: Future
    submitted: float  # clock() at submit


class Batcher:
    """The front; see the module docstring. It does not own the Predictor: close both."""

    def __init__(self, predictor: Predictor, config: BatchConfig = BatchConfig(),
                 clock: Callable[[], float] = time.monotonic):
        self.predictor, self.config, self._clock = predictor, config, clock
        self.limits = batch_limits(predictor)
        self.max_batch = min(config.max_batch, self.limits.max_batch or config.max_batch)
        # Real requests per backend call, the most recent first-in-first-out; and totals.
        self.batch_sizes: deque[int] = deque(maxlen=10_000)
        self.calls = self.answered = 0
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ callers

    def submit(self, image: ImageInput, question: str, return_logits: bool = False
               ) -> Future:
        """Queue one request; a Future of its one-row Prediction. A bad image or question raises
        here (the Predictor's own error), and so does a closed batcher."""
        if self._closed:
            raise BatcherClosedError("the batcher is closed; make a new one to predict again")
        images, texts = _check_inputs([image], [question])
        feed = self.predictor.preprocess(images, texts)  # the Predictor's one path
        ids = feed["input_ids"][0][feed["attention_mask"][0] == 1].tolist()
        if self.limits.max_seq is not None and len(ids) > self.limits.max_seq:
            raise PredictorError(f"the question is {len(ids)} tokens; this artifact takes at most "
                                 f"{self.limits.max_seq}: shorten it, or rebuild the engine with a "
                                 "larger --max-seq")
        request = _Request(feed["image"], ids, return_logits, Future(), self._clock())
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the batcher is closed; make a new one to predict again")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def predict(self, image: ImageInput, question: str, timeout: float | None = None,
                return_logits: bool = False) -> Prediction:
        """Block until this request's one-row Prediction is ready (TimeoutError after `timeout`
        seconds; the request is then withdrawn if it has not started)."""
        future = self.submit(image, question, return_logits)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout} s; the backend is busy or stuck: "
                               "raise the timeout or lower the load") from None

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, fail the queued ones with BatcherClosedError, let the batch that
        is running finish (its callers get their answers) and stop the worker."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        _fail(pending, BatcherClosedError("the batcher was closed before this request ran; "
                                          "send it again to a running service"))
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        batch: list[_Request] = []
        try:
            while (batch := self._collect()) is not None:
                self._answer(batch)
        except BaseException as e:  # a bug here, not a request's fault: fail what it held
            _fail(batch, BatcherClosedError(f"the batcher's worker stopped ({type(e).__name__}: "
                                            f"{e}); close it and make a new one"))
            raise
        finally:  # however the worker ends, nobody is left waiting on a future
            self.close()

    def _collect(self) -> list[_Request] | None:
        """The next batch, in submission order; None once closed."""
        delay = self.config.max_delay_ms / 1000.0
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].submitted + delay
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        # A caller that gave up (predict's timeout cancelled its future) is skipped.
        return [r for r in batch if r.future.set_running_or_notify_cancel()]

    def _answer(self, batch: list[_Request]) -> None:
        if not batch:
            return
        try:
            logits = self._infer(batch)
        except Exception as e:
            if len(batch) == 1:
                _fail(batch, e)
            else:  # no request can be blamed for a whole batch's failure: let each find out
                for r in batch:
                    self._answer_alone(r)
            return
        self._deliver(batch, logits)

    def _answer_alone(self, r: _Request) -> None:
        try:
            logits = self._infer([r])
        except Exception as e:
            _fail([r], e)
            return
        self._deliver([r], logits)

    def _infer(self, batch: list[_Request]) -> np.ndarray:
        """(len(batch), C) logits from one backend call."""
        lim = self.limits
        rows = batch + [batch[-1]] * max(0, lim.min_batch - len(batch))  # padded rows dropped
        image = np.concatenate([r.image for r in rows], axis=0)  # (B, 3, H, W)
        longest = max(len(r.ids) for r in rows)
        pad_to = lim.max_seq if lim.min_seq == lim.max_seq else max(longest, lim.min_seq)
        feed = {"image": image, **pad([r.ids for r in rows], self.predictor.tokenizer.pad_id,
                                      pad_to)}
        self.batch_sizes.append(len(batch))
        self.calls += 1
        return self.predictor.infer(feed)[:len(batch)]

    def _deliver(self, batch: list[_Request], logits: np.ndarray) -> None:
        probs = softmax(logits)  # row-wise, as Predictor.predict
        classes = self.predictor.classes
        self.answered += len(batch)
        for i, r in enumerate(batch):
            label = classes[int(probs[i].argmax())]
            r.future.set_result(Prediction([label], probs[i:i + 1].copy(), classes,
                                           logits[i:i + 1].copy() if r.return_logits else None))


def _fail(requests: list[_Request], error: BaseException) -> None:
    for r in requests:
        if not r.future.done():
            r.future.set_exception(error)


__all__ = ["BatchConfig", "BatchConfigError", "BatchLimits", "Batcher", "BatcherClosedError",
           "batch_limits"]
