"""Real TensorRT builds and runs of the `tiny` preset (marker `tensorrt`: needs TensorRT and a GPU).

Skipped, with the reason, wherever `import tensorrt` fails or no GPU is visible (this machine, CI).
The ONNX models are exported here with torch.onnx.export from a randomly initialised tiny model
carrying the toolkit's metadata record; FP16 is the model exported in half precision (the graph
carries the precision; the network is strongly typed). INT8 is the QDQ export of the session's tiny
run (`tiny_int8`, from `toolkit.export`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.artifacts import METADATA_KEY, ArtifactMetadata
from toolkit.config import preset
from toolkit.runtime.trt_plan import PlanError, ProfileConfig, ShapeOutsideProfile

pytestmark = pytest.mark.tensorrt

# Parity tolerances vs PyTorch FP32 (to move to the shared tolerance table when compare.py lands).
TOLERANCES = {"fp32": dict(atol=1e-3, rtol=1e-3), "fp16": dict(atol=3e-2, rtol=3e-2)}


@pytest.fixture(scope="module")
def trt_gpu():
    from toolkit.errors import ToolkitError
    from toolkit.runtime.cuda_mem import device_info
    from toolkit.runtime.trt_plan import import_tensorrt

    try:
        trt = import_tensorrt()
        gpu = device_info()
    except ToolkitError as e:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {e}")
    return trt, gpu


def export_tiny(path, precision: str):
    """The tiny model (seeded random weights) as ONNX with metadata; returns (path, torch model)."""
    import onnx
    import torch

    from toolkit.model.net import DualModalNet

    cfg = preset("tiny", num_classes=4)
    torch.manual_seed(0)
    model = DualModalNet(cfg).eval()
    s, L = cfg.image_size, cfg.text.max_length
    dtype = torch.float16 if precision == "fp16" else torch.float32
    args = (torch.rand(2, 3, s, s, dtype=dtype), torch.randint(0, cfg.text.vocab_size, (2, L)),
            torch.ones(2, L, dtype=torch.int64))
    exported = model.half() if precision == "fp16" else model
    torch.onnx.export(exported, args, str(path), input_names=["image", "input_ids",
                                                              "attention_mask"],
                      output_names=["logits"], opset_version=18, dynamo=True,
                      dynamic_axes={"image": {0: "B"}, "input_ids": {0: "B", 1: "L"},
                                    "attention_mask": {0: "B", 1: "L"}, "logits": {0: "B"}})
    meta = ArtifactMetadata(labels=[f"c{i}" for i in range(4)], image_size=s, mean=[0.5] * 3,
                            std=[0.25] * 3, vocab=[f"t{i}" for i in range(cfg.text.vocab_size)],
                            max_length=L, precision=precision, source_sha256="0" * 64,
                            toolkit_version="test")
    m = onnx.load(str(path))
    onnx.helper.set_model_props(m, {METADATA_KEY: meta.to_json()})
    onnx.save(m, str(path))
    torch.manual_seed(0)
    return path, DualModalNet(cfg).eval()  # the FP32 reference (same seed, same weights)


def feed(batch, seq, image_size=32, vocab=200, image_dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[0, max(1, seq // 2):] = 0  # an all-zero row would be an empty masked mean
    return {"image": rng.random((batch, 3, image_size, image_size)).astype(image_dtype),
            "input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64),
            "attention_mask": mask}


def torch_logits(model, f):
    import torch

    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v).float() if v.dtype == np.float16 else
                        torch.from_numpy(v) for k, v in f.items()}).numpy()


def build(tmp_path, precision, **kw):
    from toolkit.engines.tensorrt import BuildConfig, build_engine

    onnx, model = export_tiny(tmp_path / f"model.{precision}.onnx", precision)
    cfg = BuildConfig(onnx=str(onnx), out=str(tmp_path / f"{precision}.plan"),
                      profile=ProfileConfig(max_batch=4, opt_batch=2), workspace_mb=512, **kw)
    return build_engine(cfg, log=lambda *_: None), model


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_parity_across_the_profile(trt_gpu, tmp_path, precision):
    from toolkit.runtime.trt_runner import TensorRTRunner

    trt, gpu = trt_gpu
    plan, model = build(tmp_path, precision)
    side = json.loads(plan.with_name(plan.name + ".json").read_text())
    assert side["tensorrt_version"] == trt.__version__
    assert side["gpu"]["compute_capability"] == gpu.compute_capability
    assert {t["name"]: t["dtype"] for t in side["inputs"]}["input_ids"] == "int64"
    assert side["model"]["precision"] == precision
    image_dtype = np.float16 if precision == "fp16" else np.float32
    with TensorRTRunner(plan) as runner:
        for batch, seq in [(1, 1), (2, 7), (4, 16), (3, 16), (1, 4)]:  # grows, shrinks, regrows
            f = feed(batch, seq, image_dtype=image_dtype, seed=batch * 31 + seq)
            got = runner.infer(f)["logits"].astype(np.float32)
            want = torch_logits(model, f)
            np.testing.assert_allclose(got, want, **TOLERANCES[precision])
            assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75
        with pytest.raises(ShapeOutsideProfile, match="batch 5"):
            runner.infer(feed(5, 8, image_dtype=image_dtype))
        with pytest.raises(ShapeOutsideProfile, match="sequence 17"):
            runner.infer(feed(1, 17, image_dtype=image_dtype))


def test_inspect_shows_layer_precisions(trt_gpu, tmp_path):
    from toolkit.engines.tensorrt import inspect_engine

    plan, _ = build(tmp_path, "fp16")
    result = inspect_engine(plan)
    assert result["layers"], result["note"]
    precisions = {r["precision"].upper() for r in result["layers"]}
    assert any("FP16" in p or "HALF" in p for p in precisions), precisions


def test_timing_cache_is_saved_and_reused(trt_gpu, tmp_path):
    from toolkit.runtime.trt_runner import TensorRTRunner

    cache = tmp_path / "timing.cache"
    plan, _ = build(tmp_path, "fp32", timing_cache=str(cache))
    assert cache.stat().st_size > 0
    first = json.loads(plan.with_name(plan.name + ".json").read_text())["build"]
    assert first["timing_cache_reused"] is False
    plan, model = build(tmp_path, "fp32", timing_cache=str(cache))
    second = json.loads(plan.with_name(plan.name + ".json").read_text())["build"]
    assert second["timing_cache_reused"] is True
    with TensorRTRunner(plan) as runner:
        f = feed(2, 8)
        np.testing.assert_allclose(runner.infer(f)["logits"], torch_logits(model, f),
                                   **TOLERANCES["fp32"])


def test_a_sidecar_from_another_version_is_refused(trt_gpu, tmp_path):
    from toolkit.runtime.trt_runner import TensorRTRunner

    plan, _ = build(tmp_path, "fp32")
    path = plan.with_name(plan.name + ".json")
    side = json.loads(path.read_text())
    side["tensorrt_version"] = "9.9.9"
    path.write_text(json.dumps(side))
    with pytest.raises(PlanError, match="built with TensorRT 9.9.9"):
        TensorRTRunner(plan).activate()


def test_an_operator_tensorrt_cannot_parse_is_named(trt_gpu, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from toolkit.engines.tensorrt import BuildConfig, EngineBuildError, build_engine

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["input_ids"], ["logits"], name="mystery",
                          domain="example.custom")], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "L"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("example.custom", 1)])
    meta = ArtifactMetadata(labels=["a"], image_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                            vocab=["a"], max_length=16, precision="fp32",
                            source_sha256="0" * 64, toolkit_version="test")
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(EngineBuildError, match="NoSuchOp"):
        build_engine(BuildConfig(onnx=str(tmp_path / "bad.onnx"),
                                 out=str(tmp_path / "bad.plan")), log=lambda *_: None)
    assert not (tmp_path / "bad.plan").exists()


def test_int8_engine_agrees_with_onnx_runtime_on_the_same_qdq_graph(trt_gpu, tiny_int8, tmp_path):
    """The QDQ graph of `toolkit export --precision int8 --target tensorrt`, built by TensorRT (the
    precision comes from the graph), gives the classes ONNX Runtime gives for that graph."""
    from toolkit.compare import compare
    from toolkit.config import Tolerance
    from toolkit.engines.tensorrt import BuildConfig, build_engine
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner
    from toolkit.runtime.trt_runner import TensorRTRunner

    cfg = BuildConfig(onnx=str(tiny_int8.path), out=str(tmp_path / "int8.plan"),
                      profile=ProfileConfig(max_batch=8, opt_batch=4), workspace_mb=512)
    plan = build_engine(cfg, log=lambda *_: None)
    x = feed(8, 12, vocab=100)
    with OnnxRuntimeRunner(tiny_int8.path) as ort, TensorRTRunner(plan) as engine:
        result = compare(ort.infer(x), engine.infer(x), Tolerance(min_cosine=0.99))
    assert result.passed, result.report()


def test_cuda_graphs_threads_and_nvtx_on_a_real_engine(trt_gpu, tmp_path):
    """The runner as a server uses it: CUDA-graph replay matches plain launches, calls from new
    threads work (the device is set per call), contexts run with names-only NVTX."""
    import threading

    from toolkit.runtime.trt_runner import TensorRTRunner

    trt, _ = trt_gpu
    plan, model = build(tmp_path, "fp32")
    f = feed(2, 8)
    with TensorRTRunner(plan) as plain, TensorRTRunner(plan, cuda_graph=True) as graphed:
        assert plain.context.nvtx_verbosity == trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        want = plain.infer(f)["logits"]
        for _ in range(3):  # capture, then replays
            np.testing.assert_allclose(graphed.infer(f)["logits"], want, **TOLERANCES["fp32"])
        assert graphed.cuda_graph, "the engine could not be captured (see the warning)"
        out = []
        t = threading.Thread(target=lambda: out.append(plain.infer(f)["logits"]))
        t.start()
        t.join(timeout=120)
        np.testing.assert_allclose(out[0], want, **TOLERANCES["fp32"])
