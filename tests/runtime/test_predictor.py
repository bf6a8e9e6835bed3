"""The Predictor on the tiny run and its ONNX export: same answers as the runners, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.runtime import Predictor, PredictorError

REPO = Path(__file__).resolve().parents[2]


def _rows(tiny_data, n):
    """n (image path, question) pairs of the generated dataset."""
    rows = [json.loads(line) for line in (Path(tiny_data) / "train.jsonl").read_text().splitlines()]
    rows = (rows * (n // len(rows) + 1))[:n]
    return [str(Path(tiny_data) / r["image"]) for r in rows], [r["text"] for r in rows]


@pytest.fixture(scope="module")
def onnx_predictor(tiny_onnx):
    with Predictor.load(tiny_onnx.path) as p:
        yield p


def test_onnx_matches_the_runner_and_torch(onnx_predictor, tiny_run, tiny_data):
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    images, texts = _rows(tiny_data, 5)
    res = onnx_predictor.predict(images, texts, return_logits=True)
    feed = onnx_predictor.preprocess(images, texts)
    with OnnxRuntimeRunner(onnx_predictor.path) as r:
        want = r.infer(feed)["logits"]
    np.testing.assert_allclose(res.logits, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert res.labels == [res.classes[i] for i in want.argmax(1)]
    assert res.classes == onnx_predictor.metadata.labels and len(res) == 5
    with Predictor.load(tiny_run) as torch_pred:
        ref = torch_pred.predict(images, texts, return_logits=True)
    assert torch_pred.backend.value == "torch"
    np.testing.assert_allclose(res.logits, ref.logits, atol=1e-4)
    # A run directory describes itself with the record its FP32 export carries (model_config too).
    exported = onnx_predictor.metadata
    assert torch_pred.metadata.model_config == exported.model_config != {}
    assert torch_pred.metadata.source_sha256 == exported.source_sha256


def test_batches_and_input_kinds_agree(onnx_predictor, tiny_data):
    images, texts = _rows(tiny_data, 7)
    whole = onnx_predictor.predict(images, texts, batch_size=32, return_logits=True)
    split = onnx_predictor.predict(images, texts, batch_size=3, return_logits=True)
    np.testing.assert_allclose(whole.logits, split.logits, atol=1e-5)
    assert whole.logits is not None and onnx_predictor.predict(images, texts).logits is None
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    pils = [Image.open(p) for p in images]
    blobs = [Path(p).read_bytes() for p in images]
    for kind in (arrays, pils, blobs):
        got = onnx_predictor.predict(kind, texts, return_logits=True)
        np.testing.assert_allclose(got.logits, whole.logits, atol=1e-5)
    rows = whole.rows()
    assert rows[0]["label"] == whole.labels[0] and set(rows[0]["probabilities"]) == set(whole.classes)


def test_long_text_is_truncated(onnx_predictor, tiny_data):
    images, texts = _rows(tiny_data, 1)
    long = " ".join([texts[0]] * 200)
    assert len(onnx_predictor.tokenizer.encode_ids([long])[0]) == onnx_predictor.metadata.max_length
    assert len(onnx_predictor.predict(images, [long])) == 1


@pytest.mark.parametrize("images, texts, match", [
    ([], [], "at least one"),
    (["x"], [], "at least one"),
    ([np.zeros((8, 8, 3), np.uint8)] * 2, ["what shape?"], "2 images but 1 texts"),
    ([np.zeros((8, 8, 3), np.uint8)], ["  "], "empty"),
    ([np.zeros((8, 8, 3), np.uint8)], "what shape?", "list of strings"),
    (np.zeros((8, 8, 3), np.uint8), ["what shape?"], "wrap a single image"),
    (["/no/such/image.png"], ["what shape?"], "not found"),
])
def test_bad_input(onnx_predictor, images, texts, match):
    with pytest.raises(PredictorError if match != "not found" else Exception, match=match) as e:
        onnx_predictor.predict(images, texts)
    from toolkit.errors import ToolkitError

    assert isinstance(e.value, ToolkitError)


def test_bad_paths_and_devices(tmp_path, tiny_onnx):
    from toolkit.errors import ToolkitError

    with pytest.raises(PredictorError, match="does not exist"):
        Predictor.load(tmp_path / "missing.onnx")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(PredictorError, match="unknown extension"):
        Predictor.load(odd)
    with pytest.raises(PredictorError, match="unknown backend"):
        Predictor.load(tiny_onnx.path, backend="tflite")
    import shutil

    renamed = tmp_path / "renamed.weights"
    shutil.copy(tiny_onnx.path, renamed)  # an explicit backend needs no known extension
    assert Predictor.load(renamed, backend="onnxruntime").backend.value == "onnxruntime"
    with pytest.raises(PredictorError, match="unknown device"):
        Predictor.load(tiny_onnx.path, device="tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(PredictorError, match="cuda"):
            Predictor.load(tiny_onnx.path, device="cuda")
    with pytest.raises(PredictorError, match="GPU only"):
        Predictor.load(tiny_onnx.path, backend="tensorrt", device="cpu")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(ToolkitError, match="sidecar"):  # no sidecar: clear error, no TensorRT
        Predictor.load(plan)


def _run_isolated(code: str) -> dict:
    """Run `code` in a fresh interpreter (nothing imported yet); its last line is JSON."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120, env={"PYTHONPATH": str(REPO),
                                                     "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_onnx_predictor_imports_no_torch(tiny_onnx, tiny_data):
    images, texts = _rows(tiny_data, 2)
    code = (
        "import sys, json\n"
        "from toolkit.runtime import Predictor\n"
        f"r = Predictor.load({str(tiny_onnx.path)!r}).predict({images!r}, {texts!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'torchvision', 'onnx'))\n"
        "print(json.dumps({'labels': r.labels, 'heavy': heavy}))\n")
    got = _run_isolated(code)
    assert got["heavy"] == []
    assert len(got["labels"]) == 2


def test_threads_agree_with_sequential_calls(onnx_predictor, tiny_data):
    images, texts = _rows(tiny_data, 12)
    pairs = [(images[i:i + 3], texts[i:i + 3]) for i in range(0, 12, 3)] * 2
    want = [onnx_predictor.predict(im, tx, return_logits=True).logits for im, tx in pairs]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(pairs))

    def work(i):
        try:
            start.wait(timeout=30)
            for _ in range(3):
                got[i] = onnx_predictor.predict(*pairs[i], return_logits=True).logits
        except BaseException as e:  # surfaced below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(got) == len(pairs)
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[i], w)


def test_tensorrt_backend_takes_a_lock():
    """The TensorRT runner's buffers and context are shared state: its Predictor serializes."""
    from toolkit.runtime.predictor import Backend

    class Fake:
        def activate(self):
            return self

        def input_specs(self):
            from toolkit.runtime.base import TensorSpec

            return {"image": TensorSpec("image", np.dtype(np.float32), (None, 3, 8, 8))}

    from toolkit.artifacts import ArtifactMetadata
    from toolkit.data.preprocess import SPECIAL_TOKENS

    meta = ArtifactMetadata(labels=["a"], image_size=8, mean=[0, 0, 0], std=[1, 1, 1],
                            vocab=list(SPECIAL_TOKENS) + ["a"], max_length=8, precision="fp32",
                            source_sha256="", toolkit_version="0")
    p = Predictor(Fake(), meta, Backend.tensorrt, Path("x.plan"))
    assert hasattr(p._lock, "acquire")
    q = Predictor(Fake(), meta, Backend.onnxruntime, Path("x.onnx"))
    assert not hasattr(q._lock, "acquire")


@pytest.mark.tensorrt
def test_plan_predictor_matches_onnx(tiny_onnx, tiny_data, tmp_path, onnx_predictor):
    """A plan built from the tiny export answers like the ONNX file, also from 4 threads."""
    from toolkit.errors import ToolkitError

    try:
        from toolkit.runtime.cuda_mem import device_info
        from toolkit.runtime.trt_plan import import_tensorrt

        import_tensorrt()
        device_info()
    except ToolkitError as e:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {e}")
    from toolkit.engines.tensorrt import BuildConfig, ProfileConfig, build_engine

    plan = build_engine(BuildConfig(onnx=str(tiny_onnx.path), out=str(tmp_path / "m.plan"),
                                    profile=ProfileConfig(max_batch=4)), log=lambda *_: None)
    images, texts = _rows(tiny_data, 9)  # 9 rows > max batch 4: the Predictor splits
    want = onnx_predictor.predict(images, texts, return_logits=True)
    with Predictor.load(plan) as p:
        got = p.predict(images, texts, return_logits=True)
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-3, rtol=1e-3)
        results = [None] * 4

        def work(i):
            results[i] = p.predict(images, texts, return_logits=True).logits

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for r in results:
            np.testing.assert_array_equal(r, got.logits)


def test_plan_path_imports_no_torch(tiny_onnx, tmp_path):
    """Up to TensorRT itself, loading a plan reads only its sidecar: no torch, no transformers.
    (Without TensorRT here the load ends in TensorRTUnavailable, a clear error.)"""
    from toolkit.runtime.cuda_mem import GpuInfo
    from toolkit.runtime.trt_plan import write_sidecar

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 64)
    meta = Predictor.load(tiny_onnx.path).metadata
    profile = {"image": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [4, 3, 32, 32]}}
    write_sidecar(plan, source_onnx=tiny_onnx.path, tensorrt_version="10.3.0",
                  gpu=GpuInfo("fake", "9.0"), metadata=meta, build={}, profiles=[profile],
                  inputs=[], outputs=[])
    code = (
        "import sys, json\n"
        "from toolkit.runtime import Predictor\n"
        "from toolkit.errors import ToolkitError\n"
        "try:\n"
        f"    Predictor.load({str(plan)!r})\n"
        "    err = None\n"
        "except ToolkitError as e:\n"
        "    err = type(e).__name__\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'torchvision'))\n"
        "print(json.dumps({'error': err, 'heavy': heavy}))\n")
    got = _run_isolated(code)
    assert got["heavy"] == []
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert got["error"] == "TensorRTUnavailable"
