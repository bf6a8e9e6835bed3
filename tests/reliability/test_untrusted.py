"""Untrusted artifacts: no pickle on a loading path, ONNX external data kept in the model's
folder wherever the toolkit reads ONNX, and a plan checked against its sidecar's SHA-256 before
TensorRT sees a byte of it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from corpus import invoke

from toolkit.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[2]


def test_no_pickle_on_any_loading_path():
    """torch.load only with weights_only=True; no pickle module, no np.load(allow_pickle=True)."""
    offenders = []
    for path in sorted((ROOT / "toolkit").rglob("*.py")) + sorted((ROOT / "examples").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
        for pat in (r"^\s*import (c?pickle|dill|joblib)\b", r"^\s*from (c?pickle|dill|joblib) ",
                    r"allow_pickle\s*=\s*True", r"pickle\.loads?\("):
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
                          for m in re.finditer(pat, text, re.M)]
    assert not offenders, offenders


# ------------------------------------------------------------------ ONNX external data


def _with_external_data(src: Path, folder: Path, location: str) -> Path:
    """`src` saved with its weights in external data, then each tensor's location rewritten."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo  # noqa: F401  (the field we rewrite)

    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)  # ORT needs small shape tensors inline
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


ESCAPES = {
    "absolute": lambda tmp: str(tmp / "outside" / "weights.bin"),
    "dot-dot": lambda tmp: "../outside/weights.bin",
    "dot-dot-inside": lambda tmp: "sub/../../outside/weights.bin",
    "windows-absolute": lambda tmp: "C:\\weights.bin",
    "symlink-out": lambda tmp: "link.bin",
}


def _escaping_model(case, tmp_path, tiny_onnx) -> Path:
    path = _with_external_data(tiny_onnx.path, tmp_path / "model", ESCAPES[case](tmp_path))
    # The weights really are there, so only the toolkit's own check can refuse the file.
    (tmp_path / "outside").mkdir()
    shutil.copy(tmp_path / "model" / "weights.bin", tmp_path / "outside" / "weights.bin")
    if case == "symlink-out":
        (tmp_path / "model" / "link.bin").symlink_to(tmp_path / "outside" / "weights.bin")
    return path


READERS = ("predictor", "ort-runner", "onnx-metadata", "graph-load", "cli-parity", "cli-build",
           "cli-bench", "cli-export-from-onnx")


def _read(reader, path, tiny_run):
    from toolkit.artifacts import read_onnx_metadata
    from toolkit.export import graph
    from toolkit.runtime import Predictor
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    if reader == "predictor":
        return Predictor.load(path, device="cpu")
    if reader == "ort-runner":
        return OnnxRuntimeRunner(path).activate()
    if reader == "onnx-metadata":
        return read_onnx_metadata(path)
    if reader == "graph-load":
        return graph.load(path)
    args = {"cli-parity": ("parity", "--reference", tiny_run, "--candidate", path),
            "cli-build": ("build", "--onnx", path, "--out", path.parent / "m.plan"),
            "cli-bench": ("bench", "--onnx", path, "--batch", "1", "--iters", "1", "--no-compare"),
            "cli-export-from-onnx": ("export", "--checkpoint", tiny_run, "--precision", "fp16",
                                     "--from-onnx", path, "--out", path.parent / "m16.onnx")}
    result = invoke(*args[reader])
    result.assert_clean_error("outside the model's folder")
    raise ToolkitError(result.output)


@pytest.mark.bad_input
@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_external_data_outside_the_folder_is_refused(case, reader, tmp_path, tiny_onnx, tiny_run):
    path = _escaping_model(case, tmp_path, tiny_onnx)
    with pytest.raises(ToolkitError, match="outside the model's folder"):
        _read(reader, path, tiny_run)
    assert not (path.parent / "m16.onnx").exists() and not (path.parent / "m.plan").exists()


def test_external_data_inside_the_folder_still_loads(tmp_path, tiny_onnx):
    """The check refuses only what leaves the folder: a model with its weights beside it runs."""
    import numpy as np

    from toolkit.runtime import Predictor

    path = _with_external_data(tiny_onnx.path, tmp_path / "model", "weights.bin")
    image = np.zeros((32, 32, 3), np.uint8)
    with Predictor.load(path, device="cpu") as p, Predictor.load(tiny_onnx.path, device="cpu") as q:
        a, b = p.predict([image], ["what shape is the red object?"], return_logits=True), \
            q.predict([image], ["what shape is the red object?"], return_logits=True)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_external_locations_walks_nested_subgraphs(tmp_path):
    """A tensor hidden in an If node's branch is found as well as an initializer."""
    import onnx
    from onnx import TensorProto, helper

    from toolkit.onnx_file import UnsafeOnnxError, check_external_data, external_locations

    def ext(name):
        t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=f"/etc/{name}")
        return t

    branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=ext("deep"))],
                               "b", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                          initializer=[ext("top")])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g).SerializeToString())
    assert sorted(external_locations(path.read_bytes())) == [
        ("deep", "/etc/deep"), ("deep", "/etc/deep"), ("top", "/etc/top")]
    with pytest.raises(UnsafeOnnxError, match="outside"):
        check_external_data(path)


# ------------------------------------------------------------------ plan vs sidecar


@pytest.mark.bad_input
@pytest.mark.parametrize("how", ("one-byte-flipped", "same-size-other-bytes", "sidecar-hash-edited",
                                 "appended", "truncated"))
def test_plan_not_matching_its_sidecar_is_refused_before_tensorrt(how, fake_plan, monkeypatch):
    """read_plan (size, then SHA-256) runs before tensorrt is imported: importing it would fail
    the test, so the refusal cannot come from TensorRT."""
    import toolkit.runtime.trt_plan as trt_plan
    from toolkit.engines.tensorrt import inspect_engine
    from toolkit.runtime.trt_plan import PlanError, read_sidecar
    from toolkit.runtime.trt_runner import TensorRTRunner

    def no_tensorrt():
        raise AssertionError("TensorRT was reached with a plan that does not match its sidecar")

    monkeypatch.setattr(trt_plan, "import_tensorrt", no_tensorrt)
    import toolkit.runtime.trt_runner as trt_runner

    monkeypatch.setattr(trt_runner, "import_tensorrt", no_tensorrt, raising=False)
    data = bytearray(fake_plan.read_bytes())
    if how == "one-byte-flipped":
        data[7] ^= 0x01
    elif how == "same-size-other-bytes":
        data = bytearray(b"\x01" * len(data))
    elif how == "appended":
        data += b"\x00"
    elif how == "truncated":
        data = data[:-1]
    if how == "sidecar-hash-edited":
        side = fake_plan.with_name(fake_plan.name + ".json")
        record = json.loads(side.read_text())
        record["plan_sha256"] = "0" * 64
        side.write_text(json.dumps(record))
    else:
        fake_plan.write_bytes(bytes(data))
    want = "SHA-256" if how in ("one-byte-flipped", "same-size-other-bytes",
                                "sidecar-hash-edited") else "bytes"
    with pytest.raises(PlanError, match=want):
        TensorRTRunner(fake_plan).activate()
    with pytest.raises(PlanError, match=want):
        inspect_engine(fake_plan)
    with pytest.raises(PlanError, match=want):
        trt_plan.read_plan(fake_plan, read_sidecar(fake_plan))
    invoke("inspect", fake_plan).assert_clean_error(want)
