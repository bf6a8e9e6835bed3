"""OnnxRuntimeRunner: the Runner interface on an exported model, and clear errors on bad files."""

import numpy as np
import pytest

from toolkit.runtime.base import RunnerError
from toolkit.runtime.ort_runner import OnnxRuntimeRunner, Provider, TensorrtEPOptions


def _feed(b, length, s=32, vocab=50):
    rng = np.random.default_rng(b * 100 + length)
    return {"image": rng.normal(size=(b, 3, s, s)).astype(np.float32),
            "input_ids": rng.integers(5, vocab, size=(b, length)).astype(np.int64),
            "attention_mask": np.ones((b, length), np.int64)}


def test_specs_come_from_the_session(tiny_onnx):
    with OnnxRuntimeRunner(tiny_onnx.path) as r:
        specs = r.input_specs()
        assert list(specs) == ["image", "input_ids", "attention_mask"]
        assert specs["image"].dtype == np.float32 and specs["image"].shape == (None, 3, 32, 32)
        assert specs["input_ids"].dtype == np.int64 and specs["input_ids"].shape == (None, None)
        out = r.infer(_feed(2, 5))
    assert list(out) == ["logits"] and out["logits"].shape[0] == 2
    assert not r.is_active


def test_feed_is_checked_before_the_backend(tiny_onnx):
    with OnnxRuntimeRunner(tiny_onnx.path, threads=1) as r:
        bad = _feed(1, 4)
        bad["input_ids"] = bad["input_ids"].astype(np.int32)
        with pytest.raises(RunnerError, match="dtype int32"):
            r.infer(bad)
        bad = _feed(1, 4)
        bad["image"] = bad["image"][:, :, :16]
        with pytest.raises(RunnerError, match="axis 2 must be 32"):
            r.infer(bad)


def test_not_onnx_file_is_a_clear_error(tmp_path):
    # bytes that are no protobuf message: the toolkit's own reader (onnx_file) refuses them
    p = tmp_path / "model.onnx"
    p.write_text("this is not a model")
    with pytest.raises(RunnerError, match="model.onnx is not a readable ONNX model.*export"):
        OnnxRuntimeRunner(p).activate()


def test_truncated_file_is_a_clear_error(tiny_onnx, tmp_path):
    p = tmp_path / "cut.onnx"
    data = tiny_onnx.path.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunnerError, match="cut.onnx is not a readable ONNX model"):
        OnnxRuntimeRunner(p).activate()


def test_a_message_without_a_graph_is_refused_by_onnx_runtime(tmp_path):
    # an empty file is a valid (empty) protobuf message: the reader passes it, ONNX Runtime refuses
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(RunnerError, match="empty.onnx is not a loadable ONNX model.*export"):
        OnnxRuntimeRunner(p).activate()


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(RunnerError, match="not found.*toolkit export"):
        OnnxRuntimeRunner(tmp_path / "none.onnx").activate()


def test_model_with_other_inputs_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    p = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), p)
    with pytest.raises(RunnerError, match=r"takes inputs \['x'\]"):
        OnnxRuntimeRunner(p).activate()
    with OnnxRuntimeRunner(p, expected_inputs=None) as r:  # generic use stays possible
        assert r.infer({"x": np.ones((2, 4), np.float32)})["y"].sum() == 8


def test_unavailable_provider_is_a_clear_error(tiny_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(RunnerError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxRuntimeRunner(tiny_onnx.path, providers=(Provider.cuda, Provider.cpu)).activate()


def test_tensorrt_ep_options_cache_engines_and_timings(tmp_path):
    opts = TensorrtEPOptions(engine_cache_path=str(tmp_path / "e"),
                             timing_cache_path=str(tmp_path / "t")).as_provider_options()
    assert opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "e")
    assert opts["trt_timing_cache_enable"] == "True"
    assert "trt_fp16_enable" not in opts
    r = OnnxRuntimeRunner("m.onnx", providers=("TensorrtExecutionProvider", "CPUExecutionProvider"),
                          tensorrt=TensorrtEPOptions(engine_cache_path="c"))
    assert r._provider_list()[0][0] == "TensorrtExecutionProvider"
    assert r._provider_list()[1] == "CPUExecutionProvider"


def test_runtime_package_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, toolkit.runtime.ort_runner; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
