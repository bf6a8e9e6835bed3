"""The Predictor: raw images and questions in, labels and probabilities out, on any backend.

    from toolkit.runtime import Predictor
    result = Predictor.load("engines/model.plan").predict(images, texts)

A Predictor composes a Runner (dict in, dict out) with the artifact's own record (ArtifactMetadata:
labels, image size, mean/std, vocabulary, max length), read from the ONNX file's metadata_props, the
plan's sidecar, or the run directory. Preprocessing is toolkit.data.preprocess, the same path
training and export use. With an .onnx or a .plan nothing here imports torch or transformers.

Texts longer than the model's max_length are truncated by the tokenizer (the position embeddings
end there); the tail of such a question is ignored, silently, as BERT tokenizers do.

Thread safety, per backend (one Predictor may be shared by many threads):
  onnxruntime  InferenceSession.run is thread-safe (ONNX Runtime documents concurrent Run calls on
               one session); preprocessing keeps no shared state, so no lock is taken.
  tensorrt     the runner owns one execution context, one stream and reusable pinned/device
               buffers, so concurrent calls would overwrite each other: calls are serialized by a
               lock around infer (one engine, one GPU: little throughput is lost).
  torch        the eval-mode module under inference_mode is read-only, but we still lock, since a
               CUDA model's caching allocator and cudnn autotuning make no promise.
"""

from __future__ import annotations

import contextlib
import enum
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.artifacts import OUTPUT_NAMES, ArtifactMetadata
from toolkit.config import Device
from toolkit.data.preprocess import ImageInput, Tokenizer, load_image, normalize
from toolkit.errors import ToolkitError
from toolkit.runtime.base import Runner


class PredictorError(ToolkitError):
    """A Predictor cannot be loaded or called as asked; the message names the fix."""


class Backend(str, enum.Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


# Suffix -> backend; a directory is a run (torch).
_SUFFIXES = {".onnx": Backend.onnxruntime, ".plan": Backend.tensorrt, ".engine": Backend.tensorrt}


def infer_backend(path: Path) -> Backend:
    if not path.exists():
        raise PredictorError(f"{path} does not exist; pass a run directory (runs/NAME), an .onnx "
                             "export or a .plan engine")
    if path.is_dir():
        return Backend.torch
    backend = _SUFFIXES.get(path.suffix.lower())
    if backend is None:
        raise PredictorError(f"{path} has the unknown extension {path.suffix!r}; the Predictor "
                             f"loads a run directory, {' or '.join(_SUFFIXES)} files (or pass "
                             "backend= explicitly)")
    return backend


@dataclass(frozen=True)
class Prediction:
    """Per-row results: labels[i] is the argmax class of row i; probabilities is (N, C) softmax,
    columns in `classes` order; logits only when asked for."""

    labels: list[str]
    probabilities: np.ndarray
    classes: list[str]
    logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self) -> list[dict]:
        """[{"label": ..., "probabilities": {class: p}}] (JSON-friendly)."""
        return [{"label": label, "probabilities": dict(zip(self.classes, map(float, p)))}
                for label, p in zip(self.labels, self.probabilities)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class Predictor:
    """Use `Predictor.load(path)`; the constructor takes an already-built runner and its record."""

    def __init__(self, runner: Runner, metadata: ArtifactMetadata, backend: Backend,
                 path: Path, max_batch: int | None = None):
        self.runner, self.metadata, self.backend, self.path = runner, metadata, backend, path
        self.max_batch = max_batch  # a plan's profile limit; None = unlimited
        self.tokenizer = Tokenizer(list(metadata.vocab), metadata.max_length)
        self.runner.activate()
        self.image_dtype = self.runner.input_specs()["image"].dtype  # FP16-I/O graphs take FP16
        # Why a lock for some backends only: see the module docstring.
        self._lock = (contextlib.nullcontext() if backend is Backend.onnxruntime
                      else threading.Lock())

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend | str | None = None,
             device: Device | str | None = None, providers: Sequence[str] | None = None,
             threads: int | None = None) -> "Predictor":
        """Load a run directory (torch), an .onnx (onnxruntime) or a .plan (tensorrt).

        device: cpu, cuda or auto (the default: cuda where the backend has it, else cpu; a plan
        always cuda). providers: ONNX Runtime execution providers, overriding
        the device's (e.g. ["TensorrtExecutionProvider", "CUDAExecutionProvider"]).
        """
        path = Path(path)
        if backend is None:
            backend = infer_backend(path)
        else:
            try:
                backend = Backend(backend)
            except ValueError:
                raise PredictorError(f"unknown backend {backend!r}; use one of "
                                     f"{[b.value for b in Backend]}") from None
            if not path.exists():
                raise PredictorError(f"{path} does not exist")
        if backend is not Backend.torch and path.is_dir():
            raise PredictorError(f"{path} is a directory; backend {backend.value} loads a file")
        try:
            device = Device(device if device is not None else Device.auto)
        except ValueError:
            raise PredictorError(f"unknown device {device!r}; use cpu, cuda or auto") from None
        if device is Device.auto:
            device = _auto_device(backend)
        loader = {Backend.onnxruntime: _load_onnx, Backend.tensorrt: _load_plan,
                  Backend.torch: _load_run}[backend]
        return loader(cls, path, device, providers, threads)

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.labels)

    # ------------------------------------------------------------------ predicting

    def preprocess(self, images: Sequence[ImageInput], texts: Sequence[str]
                   ) -> dict[str, np.ndarray]:
        """The model's feed for one batch: normalized images and token ids/mask."""
        m = self.metadata
        pixels = np.stack([load_image(im, m.image_size) for im in images])
        feed = {"image": normalize(pixels, m.mean, m.std).astype(self.image_dtype, copy=False)}
        feed.update(self.tokenizer(list(texts)))
        return feed

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for a prepared feed (compute only), serialized where the backend needs it."""
        with self._lock:
            out = self.runner.infer(feed)
        return np.asarray(out[OUTPUT_NAMES[0]], dtype=np.float32)

    def predict(self, images: Sequence[ImageInput], texts: Sequence[str], batch_size: int = 32,
                return_logits: bool = False) -> Prediction:
        """Classify each (image, text) pair. Images: paths, PNG/JPEG bytes, PIL images or HWC
        uint8 arrays; texts: non-empty strings (longer than max_length: truncated)."""
        images, texts = _check_inputs(images, texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PredictorError(f"batch_size must be a positive integer, got {batch_size!r}")
        step = min(batch_size, self.max_batch) if self.max_batch else batch_size
        chunks = [self.infer(self.preprocess(images[i:i + step], texts[i:i + step]))
                  for i in range(0, len(images), step)]
        logits = np.concatenate(chunks, axis=0)
        probs = softmax(logits)
        classes = self.classes
        labels = [classes[i] for i in probs.argmax(axis=-1)]
        return Prediction(labels, probs, classes, logits if return_logits else None)


def _check_inputs(images, texts) -> tuple[list, list[str]]:
    # A single str/bytes/array is one item, not a sequence of them: say so instead of iterating.
    if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not _is_sequence(images):
        raise PredictorError("images must be a list (of paths, bytes, PIL images or arrays); "
                             "wrap a single image in a list")
    if isinstance(texts, str) or not _is_sequence(texts):
        raise PredictorError("texts must be a list of strings; wrap a single question in a list")
    images, texts = list(images), list(texts)
    if not images or not texts:
        raise PredictorError(f"got {len(images)} image(s) and {len(texts)} text(s); pass at least "
                             "one of each")
    if len(images) != len(texts):
        raise PredictorError(f"got {len(images)} images but {len(texts)} texts; pass one text per "
                             "image")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise PredictorError(f"text #{i} is a {type(t).__name__}; pass strings")
        if not t.strip():
            raise PredictorError(f"text #{i} is empty; every image needs a non-empty question")
    return images, texts


def _is_sequence(x) -> bool:
    return hasattr(x, "__len__") and hasattr(x, "__getitem__")


# ------------------------------------------------------------------ one loader per backend


def _auto_device(backend: Backend) -> Device:
    if backend is Backend.tensorrt:
        return Device.cuda
    if backend is Backend.onnxruntime:
        import onnxruntime as ort

        return Device.cuda if "CUDAExecutionProvider" in ort.get_available_providers() \
            else Device.cpu
    from toolkit.runtime.devices import resolve_device

    return Device(resolve_device(Device.auto).type)


def _load_onnx(cls, path: Path, device: Device, providers, threads) -> Predictor:
    import onnxruntime as ort

    from toolkit.runtime.ort_runner import OnnxRuntimeRunner, Provider

    if providers is None:
        if device is Device.cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise PredictorError("device 'cuda' asked for, but this onnxruntime has no CUDA "
                                     f"provider (it has {ort.get_available_providers()}): install "
                                     "onnxruntime-gpu on a machine with an NVIDIA GPU, or use "
                                     "device='cpu'")
            providers = (Provider.cuda, Provider.cpu)
        else:
            providers = (Provider.cpu,)
    try:
        providers = tuple(Provider(p) for p in providers)
    except ValueError as e:
        raise PredictorError(f"{e}; use one of {[p.value for p in Provider]}") from None
    runner = OnnxRuntimeRunner(path, providers=providers, threads=threads)
    runner.activate()
    try:
        meta = runner.artifact_metadata()
        return cls(runner, meta, Backend.onnxruntime, path)
    except BaseException:
        runner.deactivate()
        raise


def _load_plan(cls, path: Path, device: Device, providers, threads) -> Predictor:
    from toolkit.runtime.trt_plan import read_sidecar
    from toolkit.runtime.trt_runner import TensorRTRunner

    if device is not Device.cuda:
        raise PredictorError(f"{path} is a TensorRT engine; it runs on an NVIDIA GPU only "
                             "(device='cuda'); for the CPU load the .onnx it was built from")
    # The sidecar is read (and its form checked) before the runner touches TensorRT or the GPU,
    # so a missing/damaged sidecar is the error even on a machine without CUDA.
    sidecar = read_sidecar(path)
    meta = ArtifactMetadata.from_json(_json(sidecar["model"]), source=f"{path}.json")
    # Batches are split to the profile's maximum instead of failing on a large input list.
    profile = sidecar["profiles"][0] if sidecar["profiles"] else {}
    max_batch = profile["image"]["max"][0] if "image" in profile else None
    runner = TensorRTRunner(path)
    try:
        return cls(runner, meta, Backend.tensorrt, path, max_batch=max_batch)
    except BaseException:
        runner.deactivate()
        raise


def _load_run(cls, path: Path, device: Device, providers, threads) -> Predictor:
    from toolkit.runtime.torch_runner import TorchRunner

    from toolkit.runtime.devices import resolve_device

    resolve_device(device)  # a clear error for cuda without a GPU, before loading anything
    runner = TorchRunner(path, device=device.value)
    runner.activate()
    try:
        return cls(runner, ArtifactMetadata.for_checkpoint(runner.ck), Backend.torch, path)
    except BaseException:
        runner.deactivate()
        raise


def _json(obj) -> str:
    import json

    return json.dumps(obj)


__all__ = ["Backend", "Prediction", "Predictor", "PredictorError", "softmax"]
