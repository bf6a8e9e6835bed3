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
                                      host_platform, sidecar_path, trt_major, version_tuple,
                                      write_sidecar)

MODEL_INPUTS = {"image": (-1, 3, 32, 32), "input_ids": (-1, -1), "attention_mask": (-1, -1)}
JETSON = {"machine": "aarch64", "system": "Linux", "integrated_gpu": True}
X86 = {"machine": "x86_64", "system": "Linux", "integrated_gpu": False}


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
                  gpu=GpuInfo("Orin", "8.7", integrated=True), metadata=meta(),
                  build={"version_compatible": False, "hardware_compat": "none"},
                  profiles=[profile_shapes(MODEL_INPUTS, ProfileConfig(max_batch=4), 32, 16)],
                  inputs=[{"name": "image", "dtype": "float16", "shape": [-1, 3, 32, 32]}],
                  outputs=[{"name": "logits", "dtype": "float16", "shape": [-1, 2]}],
                  build_platform=JETSON)
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
    assert s["platform"] == {"machine": "aarch64", "system": "Linux", "integrated_gpu": True}
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
        {"format": "toolkit.tensorrt-plan", "sidecar_version": 1})), "sidecar version 1, this "
                                                                       "toolkit reads 2"),
    (lambda p: sidecar_path(p).write_text(json.dumps(
        {"format": "toolkit.tensorrt-plan", "sidecar_version": 2})), "lacks"),
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


def side(version="10.3.0", cc="8.7", platform=JETSON, **build):
    return {"tensorrt_version": version, "gpu": {"name": "Orin", "compute_capability": cc},
            "platform": platform,
            "build": {"version_compatible": False, "hardware_compat": "none", **build}}


ORIN, H200, T4 = (GpuInfo("Orin", "8.7", integrated=True), GpuInfo("NVIDIA H200", "9.0"),
                  GpuInfo("T4", "7.5"))


def compat(sidecar, version, gpu, here=None):
    """check_compatibility on a machine of the GPU's kind (an integrated GPU: a Jetson)."""
    return check_compatibility(sidecar, version, gpu, here or (JETSON if gpu.integrated else X86))


def test_same_version_and_gpu_is_compatible():
    assert compat(side(), "10.3.0", ORIN) is None
    assert compat(side(version="11.4.0.106"), "11.4.0.106", ORIN) is None
    assert compat(side(), "10.3.0", GpuInfo("another 8.7 board", "8.7", integrated=True)) is None


def test_another_tensorrt_version_is_refused_with_both_versions_named():
    err = compat(side(), "11.4.0.106", ORIN)
    assert isinstance(err, PlanError)
    assert "10.3.0" in str(err) and "11.4.0.106" in str(err) and "toolkit build" in str(err)
    assert compat(side(), "10.4.0", ORIN) is not None
    # The build number counts: TensorRT compares all four parts when it deserializes.
    err = compat(side(version="11.4.0.106"), "11.4.0.99", ORIN)
    assert err is not None and "major.minor.patch.build" in str(err)
    assert compat(side(version="10.3.0"), "10.3.0.30", ORIN) is not None


def test_tensorrt_majors_outside_the_supported_ones_are_refused():
    for built, running in (("9.3.0", "9.3.0"), ("12.0.0.1", "12.0.0.1"), ("10.3.0", "12.0.0")):
        err = compat(side(version=built, version_compatible=True), running, ORIN)
        assert isinstance(err, PlanError) and "supports TensorRT 10 and 11 only" in str(err)
    vc8 = side(version="8.6.1", version_compatible=True)  # 8 -> 10 exists, but not for us
    assert "supports TensorRT 10 and 11" in str(compat(vc8, "10.3.0", ORIN))


def test_version_compatible_plans_run_forward_only():
    vc = dict(version_compatible=True)
    assert compat(side(**vc), "10.8.0", ORIN) is None
    assert compat(side(**vc), "11.4.0.106", ORIN) is None  # 10 -> 11 is supported
    assert compat(side(version="11.4.0", **vc), "10.3.0", ORIN) is not None
    assert compat(side(version="10.8.0", **vc), "10.3.0", ORIN) is not None


def test_another_gpu_is_refused_unless_hardware_compatible():
    x86 = dict(platform=X86)
    err = compat(side(cc="8.6", **x86), "10.3.0", H200)
    assert "compute capability 8.6" in str(err) and "9.0" in str(err)
    amp = dict(hardware_compat="ampere_plus", **x86)
    assert compat(side(**amp), "10.3.0", H200) is None
    assert "Ampere" in str(compat(side(**amp), "10.3.0", T4))
    same = dict(hardware_compat="same_compute_capability", **x86)
    assert compat(side(cc="9.0", **same), "10.3.0", H200) is None
    assert compat(side(cc="7.5", **same), "10.3.0", H200) is not None


def test_another_platform_is_refused_even_when_the_gpu_rule_passes():
    """An ampere_plus plan from an x86 H200 on an Orin (8.7 >= 8.0), or from a discrete GPU on
    an integrated one of the same compute capability: engines are not portable across
    platforms."""
    amp = side(cc="9.0", platform=X86, hardware_compat="ampere_plus")
    err = compat(amp, "10.3.0", ORIN)
    assert isinstance(err, PlanError) and "not portable across platforms" in str(err)
    assert "Linux x86_64 with a discrete GPU" in str(err)
    assert "Linux aarch64 with a integrated (Jetson) GPU" in str(err)
    same_cc = side(cc="8.7", platform={**JETSON, "integrated_gpu": False})
    assert compat(same_cc, "10.3.0", ORIN) is not None
    windows = side(cc="9.0", platform={**X86, "system": "Windows"})
    assert compat(windows, "10.3.0", H200) is not None
    assert compat(side(cc="9.0", platform=X86), "10.3.0", H200) is None


def test_host_platform_is_this_machine(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert host_platform(ORIN) == JETSON
    assert host_platform(H200) == {**JETSON, "integrated_gpu": False}
    assert check_compatibility(side(), "10.3.0", ORIN) is None  # `here` defaults to this one


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
    assert "pip install 'dualmodal-toolkit[tensorrt-cu12]'" in msg
    assert "'dualmodal-toolkit[tensorrt-cu13]'" in msg and "JetPack" in msg
    assert "NVIDIA GPU and its driver are needed" in msg


def test_trt_major_reads_the_running_version(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0.106"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert trt_major() == 11
    fake.__version__ = "10.3.0"
    assert trt_major() == 10


def test_importing_the_toolkit_does_not_import_tensorrt():
    """Neither tensorrt nor the CUDA runtime bindings load with the toolkit. cuda-bindings 12.9's
    _cuda_bindings_redirector.pth imports the (empty) `cuda.bindings` package at interpreter start
    (cuda-python: cuda_bindings/site-packages/_cuda_bindings_redirector.py), so the check is on
    `cuda.bindings.runtime`, after doing what that .pth does."""
    import subprocess

    code = ("import sys\n"
            "try:\n"
            "    import cuda.bindings  # what cuda-bindings 12.9's .pth does at start\n"
            "except ImportError:\n"
            "    pass\n"
            "import toolkit.cli, toolkit.engines.tensorrt, toolkit.runtime.trt_runner\n"
            "print('tensorrt' in sys.modules, 'cuda.bindings.runtime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_tensorrt_extras_are_one_per_cuda_major():
    """pip's plain `tensorrt` follows the newest TensorRT (11.4.0.106 requires tensorrt_cu13
    only), which a CUDA 12 driver cannot load: each extra pins one CUDA major, TensorRT and
    cuda-python together, and the install hint names extras that exist."""
    import re
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    from toolkit.runtime.cuda_mem import INSTALL_HINT

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    reqs = {name: {r.name: r.specifier for r in map(Requirement, deps)}
            for name, deps in extras.items()}
    assert not any("tensorrt" in r for r in reqs.values())  # no unpinned meta-package anywhere
    cu12, cu13 = reqs["tensorrt-cu12"], reqs["tensorrt-cu13"]
    assert set(cu12) == {"tensorrt-cu12", "cuda-python"}
    assert set(cu13) == {"tensorrt-cu13", "cuda-python"}
    assert "10.3.0" in cu12["tensorrt-cu12"] and "10.16.1.11" in cu12["tensorrt-cu12"]
    assert "11.4.0.106" not in cu12["tensorrt-cu12"]  # CUDA 12 here means TensorRT 10
    assert "11.4.0.106" in cu13["tensorrt-cu13"] and "10.16.1.11" not in cu13["tensorrt-cu13"]
    assert "12.9.0" in cu12["cuda-python"] and "13.0.0" not in cu12["cuda-python"]
    assert "13.4.4" in cu13["cuda-python"] and "12.9.0" not in cu13["cuda-python"]
    assert reqs["gpu-cu12"]["cuda-python"] == cu12["cuda-python"]
    assert reqs["gpu-cu13"]["cuda-python"] == cu13["cuda-python"]
    named = set(re.findall(r"dualmodal-toolkit\[([\w-]+)\]", INSTALL_HINT))
    assert named == {"tensorrt-cu12", "tensorrt-cu13"} and named <= set(extras)
