"""The Python-backend model's logic: raw image bytes and questions in, labels and probabilities out.

`toolkit triton` copies python_model.py into <name>_text/1/model.py; that file only finds the
toolkit (the `toolkit_python_path` parameter) and hands Triton's `triton_python_backend_utils` and
its requests to `TextModel` here. Nothing in this module imports Triton, so it is tested without a
server. The answer is the Predictor's own: a Predictor over a runner whose backend call is a BLS
request to the <name> model (business logic scripting: the model runs in Triton's onnxruntime or
tensorrt backend, batched there), so decoding, resizing, normalizing, tokenizing, splitting to the
max batch and softmax are the very code `Predictor.load(...).predict` runs.
Python backend API: https://github.com/triton-inference-server/python_backend (README: Usage,
Business Logic Scripting, Error Handling).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.artifacts import INPUT_NAMES, OUTPUT_NAMES, ArtifactError, ArtifactMetadata
from toolkit.errors import ToolkitError
from toolkit.runtime.base import Runner, TensorSpec
from toolkit.triton.repository import TEXT_INPUTS, TEXT_OUTPUTS

Feed = dict[str, np.ndarray]


class TextModelError(ToolkitError):
    """A request the Python model cannot answer; the message goes back to the client."""


@dataclass(frozen=True)
class TextSpec:
    """<name>_text/1/toolkit.json: what the Python model calls and how it prepares inputs."""

    target_model: str
    backend: str  # onnxruntime | tensorrt: the Predictor's backend (its locking)
    image_dtype: str
    max_batch_size: int
    metadata: ArtifactMetadata
    path: Path

    @classmethod
    def read(cls, path: str | Path) -> "TextSpec":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != "toolkit.triton-text" or data.get("version") != 1:
                raise ValueError("not a toolkit.triton-text record, version 1")
            return cls(str(data["target_model"]), str(data["backend"]), str(data["image_dtype"]),
                       int(data["max_batch_size"]),
                       ArtifactMetadata.from_json(json.dumps(data["model"]), str(path)), path)
        except (OSError, ValueError, KeyError, TypeError, ArtifactError) as e:
            raise TextModelError(f"{path} is missing or unreadable ({e}); write the repository "
                                 "again with `toolkit triton`") from e


class CallRunner(Runner):
    """A Runner whose backend call is a function (a BLS request in Triton, a local runner in
    tests); the base class still checks every feed against the model's input specs."""

    name = "triton"

    def __init__(self, spec: TextSpec, call: Callable[[Feed], Feed]):
        super().__init__()
        self._call = call
        self._specs = {INPUT_NAMES[0]: TensorSpec(INPUT_NAMES[0], np.dtype(spec.image_dtype),
                                                  (None, 3, None, None)),
                       INPUT_NAMES[1]: TensorSpec(INPUT_NAMES[1], np.dtype(np.int64), (None, None)),
                       INPUT_NAMES[2]: TensorSpec(INPUT_NAMES[2], np.dtype(np.int64), (None, None))}

    def input_specs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def _activate(self) -> None:
        pass

    def _infer(self, feed: Feed) -> Feed:
        return self._call(feed)


def decode_inputs(images: np.ndarray, questions: np.ndarray) -> tuple[list[bytes], list[str]]:
    """Triton BYTES tensors, (B, 1) each, to a list of image bytes and a list of questions."""
    images, questions = np.asarray(images, dtype=object), np.asarray(questions, dtype=object)
    if images.ndim != 2 or questions.ndim != 2 or images.shape[1] != 1 or \
            questions.shape[1] != 1 or len(images) != len(questions):
        raise TextModelError(f"{TEXT_INPUTS[0]} and {TEXT_INPUTS[1]} must be (B, 1) each, got "
                             f"{images.shape} and {questions.shape}")
    texts = []
    for i, q in enumerate(questions[:, 0]):
        try:
            texts.append(q.decode("utf-8") if isinstance(q, (bytes, bytearray)) else str(q))
        except UnicodeDecodeError:
            raise TextModelError(f"question #{i} is not UTF-8 text") from None
    return [bytes(im) for im in images[:, 0]], texts


class TextModel:
    def __init__(self, spec: TextSpec, call: Callable[[Feed], Feed]):
        from toolkit.runtime.predictor import Backend, Predictor

        self.spec = spec
        self.predictor = Predictor(CallRunner(spec, call), spec.metadata, Backend(spec.backend),
                                   spec.path, max_batch=spec.max_batch_size)

    def answer(self, images: Sequence[bytes], questions: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray]:
        """(labels (B, 1) object array of UTF-8 bytes, probabilities (B, C) float32)."""
        p = self.predictor.predict(list(images), list(questions),
                                   batch_size=self.spec.max_batch_size)
        labels = np.array([[label.encode("utf-8")] for label in p.labels], dtype=object)
        return labels, p.probabilities

    def answer_all(self, rows: list) -> list:
        """Answers for the requests Triton batched together: one call for all of them, and where
        that fails on bad input, each alone, so that a bad request fails only itself. `rows` are
        (images, questions) pairs or the ToolkitError their decoding raised; so are the answers."""
        good = [r for r in rows if not isinstance(r, Exception)]
        if len(good) > 1:
            try:
                labels, probs = self.answer([im for r in good for im in r[0]],
                                            [q for r in good for q in r[1]])
            except ToolkitError:
                pass
            else:
                out, start, it = [], 0, iter(good)
                for r in rows:
                    if isinstance(r, Exception):
                        out.append(r)
                        continue
                    n = len(next(it)[0])
                    out.append((labels[start:start + n], probs[start:start + n]))
                    start += n
                return out
        out = []
        for r in rows:
            if isinstance(r, Exception):
                out.append(r)
                continue
            try:
                out.append(self.answer(*r))
            except ToolkitError as e:
                out.append(e)
        return out

    def execute(self, requests, pb) -> list:
        """Triton's execute: one response per request, an error response for a bad one."""
        rows = []
        for request in requests:
            try:
                rows.append(decode_inputs(
                    pb.get_input_tensor_by_name(request, TEXT_INPUTS[0]).as_numpy(),
                    pb.get_input_tensor_by_name(request, TEXT_INPUTS[1]).as_numpy()))
            except ToolkitError as e:
                rows.append(e)
        responses = []
        for answer in self.answer_all(rows):
            if isinstance(answer, Exception):
                responses.append(pb.InferenceResponse(output_tensors=[],
                                                      error=pb.TritonError(str(answer))))
            else:
                labels, probs = answer
                responses.append(pb.InferenceResponse(output_tensors=[
                    pb.Tensor(TEXT_OUTPUTS[0], labels), pb.Tensor(TEXT_OUTPUTS[1], probs)]))
        return responses

    def close(self) -> None:
        self.predictor.close()


def bls_call(pb, target: str) -> Callable[[Feed], Feed]:
    """The backend call through BLS: one InferenceRequest to `target`, logits asked on the CPU
    (a TensorRT output would otherwise stay on the GPU; PreferredMemory, python_backend README)."""

    def call(feed: Feed) -> Feed:
        kwargs = {}
        if hasattr(pb, "PreferredMemory"):
            kwargs["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        request = pb.InferenceRequest(model_name=target, requested_output_names=list(OUTPUT_NAMES),
                                      inputs=[pb.Tensor(k, np.ascontiguousarray(v))
                                              for k, v in feed.items()], **kwargs)
        response = request.exec()
        if response.has_error():
            raise TextModelError(f"model {target!r} failed: {response.error().message()}")
        return {OUTPUT_NAMES[0]: pb.get_output_tensor_by_name(response, OUTPUT_NAMES[0]).as_numpy()}

    return call
