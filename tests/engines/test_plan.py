"""The plan sidecar, profiles and the compatibility decision: pure, no TensorRT needed."""

from __future__ import annotations

import json
import sys
import types

import pytest

from toolkit.artifacts import ArtifactMetadata, sha256
from toolkit.errors import ToolkitError
from toolkit.runtime.cuda_mem import GpuInfo
from toolkit.runtime.trt_plan import (PlanError, ProfileConfig, ShapeOutsideProfile,
                                      TensorRTUnavailable, check_compatibility, check_plan_file,
                                      check_shapes, import_tensorrt, profile_shapes, read_sidecar,
                                      sidecar_path, trt_major, version_tuple, write_sidecar)

MODEL_INPUTS = {"image": (-1, 3, 32, 32), "input_ids": (-1, -1), "attention_mask": (-1, -1)}


def meta(**kw):
    base = dict(labels=["yes", "no"], image_size=32, mean=[0.4] * 3, std=[0.2] * 3,
                vocab=["[PAD]", "a"], max_length=16, precision="fp16", source_sha256="ab" * 32,
                toolkit_version="0.1")
    base.update(kw)
    return ArtifactMetadata(**base)


# ------------------------------------------------------------------ profiles


def test_profile_defaults_come_from_the_model_metadata():
    p = profile_shapes(MODEL_INPUTS, ProfileConfig(), image_size=32, max_length=16)
    assert p["image"] == {"min": [1, 3, 32, 32], "opt": [32, 3, 32, 32], "max": [32, 3, 32, 32]}
    assert p["input_ids"] == {"min": [1, 1], "opt": [32, 16], "max": [32, 16]}
    assert p["attention_mask"] == p["input_ids"]


def test_profile_options_and_dynamic_image_sides():
    cfg = ProfileConfig(min_batch=2, opt_batch=4, max_batch=8, min_seq=4, opt_seq=8, max_seq=12)
    p = profile_shapes({"image": (-1, 3, -1, -1), "input_ids": (-1, -1)}, cfg, 224, 128)
    assert p["image"]["min"] == [2, 3, 224, 224] and p["image"]["max"] == [8, 3, 224, 224]
    assert p["input_ids"] == {"min": [2, 4], "opt": [4, 8], "max": [8, 12]}


def test_fixed_axes_stay_fixed():
    p = profile_shapes({"input_ids": (1, 16)}, ProfileConfig(), 32, 16)
    assert p["input_ids"] == {"min": [1, 16], "opt": [1, 16], "max": [1, 16]}


@pytest.mark.parametrize("cfg, match", [
    (ProfileConfig(min_batch=4, max_batch=2), "batch range"),
    (ProfileConfig(opt_batch=64, max_batch=32), "batch range"),
    (ProfileConfig(min_batch=0), "batch range"),
    (ProfileConfig(min_seq=10, opt_seq=5), "seq range"),
    (ProfileConfig(max_seq=17), "exceeds the model's max_length 16"),
])
def test_bad_profile_ranges_are_clear_errors(cfg, match):
    with pytest.raises(ToolkitError, match=match):
        profile_shapes(MODEL_INPUTS, cfg, 32, 16)


def test_an_unknown_dynamic_axis_is_refused():
    with pytest.raises(ToolkitError, match="axis 2"):
        profile_shapes({"x": (-1, 4, -1)}, ProfileConfig(), 32, 16)


def test_shapes_inside_and_outside_the_profile():
    p = profile_shapes(MODEL_INPUTS, ProfileConfig(max_batch=8, max_seq=12), 32, 16)
    check_shapes(p, {"image": (8, 3, 32, 32), "input_ids": (1, 12)})  # the edges are inside
    with pytest.raises(ShapeOutsideProfile, match=r"batch 9 is outside the engine's profile"):
        check_shapes(p, {"image": (9, 3, 32, 32)})
    with pytest.raises(ShapeOutsideProfile, match=r"sequence 13 .* \[1, 12\]"):
        check_shapes(p, {"input_ids": (2, 13)})
    with pytest.raises(ShapeOutsideProfile, match="axis 2"):
        check_shapes(p, {"image": (2, 3, 64, 64)})
    with pytest.raises(ShapeOutsideProfile, match="rank 2"):
        check_shapes(p, {"input_ids": (2,)})


# ------------------------------------------------------------------ the sidecar


@pytest.fixture
def plan(tmp_path):
    onnx = tmp_path / "export" / "model.fp16.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"onnx bytes")
    plan = tmp_path / "engines" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"\x00plan" * 100)
    write_sidecar(plan, source_onnx=onnx, tensorrt_version="10.3.0",
                  gpu=GpuInfo("Orin", "8.7"), metadata=meta(),
                  build={"version_compatible": False, "hardware_compat": "none"},
                  profiles=[profile_shapes(MODEL_INPUTS, ProfileConfig(max_batch=4), 32, 16)],
                  inputs=[{"name": "image", "dtype": "float16", "shape": [-1, 3, 32, 32]}],
                  outputs=[{"name": "logits", "dtype": "float16", "shape": [-1, 2]}])
    return plan


def test_sidecar_content(plan):
    path = sidecar_path(plan)
    assert path.name == "model.plan.json"
    s = json.loads(path.read_text())
    assert s["plan"] == "model.plan" and s["plan_bytes"] == 500
    assert s["plan_sha256"] == sha256(plan)
    assert s["source_onnx_sha256"] == sha256(plan.parent.parent / "export" / "model.fp16.onnx")
    assert s["tensorrt_version"] == "10.3.0"
    assert s["gpu"] == {"name": "Orin", "compute_capability": "8.7"}
    assert s["precision"] == "fp16"
    assert s["profiles"][0]["input_ids"]["max"] == [4, 16]
    assert s["inputs"][0]["dtype"] == "float16"
    # The very record the ONNX file carries, round-tripping to the same ArtifactMetadata.
    assert ArtifactMetadata.from_json(json.dumps(s["model"])) == meta()
    assert read_sidecar(plan) == s


def test_sidecar_is_written_atomically(plan):
    before = sidecar_path(plan).read_text()
    with pytest.raises(TypeError):  # a value JSON cannot hold: the write fails midway
        write_sidecar(plan, source_onnx=plan, tensorrt_version="11.4.0", gpu=GpuInfo("x", "9.0"),
                      metadata=meta(), build={"bad": object()}, profiles=[], inputs=[],
                      outputs=[])
    assert sidecar_path(plan).read_text() == before
    assert sorted(p.name for p in plan.parent.iterdir()) == ["model.plan", "model.plan.json"]


@pytest.mark.parametrize("damage, match", [
    (lambda p: sidecar_path(p).unlink(), "is missing"),
    (lambda p: sidecar_path(p).write_text("{not json"), "not valid JSON"),
    (lambda p: sidecar_path(p).write_text('{"format": "other"}'), "not a toolkit plan sidecar"),
    (lambda p: sidecar_path(p).write_text(json.dumps(
        {"format": "toolkit.tensorrt-plan", "sidecar_version": 99})), "sidecar version 99"),
    (lambda p: sidecar_path(p).write_text(json.dumps(
        {"format": "toolkit.tensorrt-plan", "sidecar_version": 1})), "lacks"),
])
def test_damaged_sidecars_are_clear_errors(plan, damage, match):
    damage(plan)
    with pytest.raises(PlanError, match=match):
        read_sidecar(plan)


def test_plan_file_must_be_the_one_described(plan):
    s = read_sidecar(plan)
    check_plan_file(plan, s)
    data = plan.read_bytes()
    plan.write_bytes(data[:-1])
    with pytest.raises(PlanError, match="truncated"):
        check_plan_file(plan, s)
    plan.write_bytes(b"X" + data[1:])
    with pytest.raises(PlanError, match="SHA-256"):
        check_plan_file(plan, s)
    plan.unlink()
    with pytest.raises(PlanError, match="does not exist"):
        check_plan_file(plan, s)


# ------------------------------------------------------------------ compatibility


def side(version="10.3.0", cc="8.7", **build):
    return {"tensorrt_version": version, "gpu": {"name": "Orin", "compute_capability": cc},
            "build": {"version_compatible": False, "hardware_compat": "none", **build}}


ORIN, H200, T4 = GpuInfo("Orin", "8.7"), GpuInfo("NVIDIA H200", "9.0"), GpuInfo("T4", "7.5")


def test_same_version_and_gpu_is_compatible():
    assert check_compatibility(side(), "10.3.0", ORIN) is None
    assert check_compatibility(side(version="11.4.0.106"), "11.4.0.99", ORIN) is None  # build no.
    assert check_compatibility(side(), "10.3.0", GpuInfo("another 8.7 board", "8.7")) is None


def test_another_tensorrt_version_is_refused_with_both_versions_named():
    err = check_compatibility(side(), "11.4.0.106", ORIN)
    assert isinstance(err, PlanError)
    assert "10.3.0" in str(err) and "11.4.0.106" in str(err) and "toolkit build" in str(err)
    assert check_compatibility(side(), "10.4.0", ORIN) is not None


def test_version_compatible_plans_run_forward_only():
    vc = dict(version_compatible=True)
    assert check_compatibility(side(**vc), "10.8.0", ORIN) is None
    assert check_compatibility(side(**vc), "11.4.0.106", ORIN) is None  # 10 -> 11 is supported
    assert check_compatibility(side(version="11.4.0", **vc), "10.3.0", ORIN) is not None
    assert check_compatibility(side(version="10.8.0", **vc), "10.3.0", ORIN) is not None


def test_another_gpu_is_refused_unless_hardware_compatible():
    err = check_compatibility(side(), "10.3.0", H200)
    assert "compute capability 8.7" in str(err) and "9.0" in str(err)
    amp = dict(hardware_compat="ampere_plus")
    assert check_compatibility(side(**amp), "10.3.0", H200) is None
    assert "Ampere" in str(check_compatibility(side(**amp), "10.3.0", T4))
    same = dict(hardware_compat="same_compute_capability")
    assert check_compatibility(side(cc="9.0", **same), "10.3.0", H200) is None
    assert check_compatibility(side(cc="9.0", **same), "10.3.0", ORIN) is not None


def test_version_strings():
    assert version_tuple("11.4.0.106") == (11, 4, 0, 106)
    with pytest.raises(PlanError):
        version_tuple("eleven")


# ------------------------------------------------------------------ importing TensorRT


def test_missing_tensorrt_names_the_package_and_the_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable) as e:
        import_tensorrt()
    msg = str(e.value)
    assert "pip install 'dualmodal-toolkit[tensorrt]'" in msg
    assert "tensorrt-cu12" in msg and "tensorrt-cu13" in msg and "JetPack" in msg
    assert "NVIDIA GPU and its driver are needed" in msg


def test_trt_major_reads_the_running_version(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0.106"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert trt_major() == 11
    fake.__version__ = "10.3.0"
    assert trt_major() == 10


def test_importing_the_toolkit_does_not_import_tensorrt():
    import subprocess

    code = ("import sys, toolkit.cli, toolkit.engines.tensorrt, toolkit.runtime.trt_runner; "
            "print('tensorrt' in sys.modules, 'cuda.bindings' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
