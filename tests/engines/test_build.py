"""The builder around its TensorRT calls, and the `build` / `inspect` commands, without TensorRT."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from trt_fakes import FakeCudart, make_fake_trt  # noqa: E402  (tests/runtime/trt_fakes.py)

from toolkit.artifacts import METADATA_KEY, ArtifactMetadata
from toolkit.cli import app
from toolkit.engines import tensorrt as E
from toolkit.errors import ToolkitError
from toolkit.runtime import cuda_mem
from toolkit.runtime.cuda_mem import GpuInfo
from toolkit.runtime.trt_plan import (PlanError, ProfileConfig, TensorRTUnavailable,
                                      profile_shapes, read_sidecar, write_sidecar)

META = ArtifactMetadata(labels=["yes", "no"], image_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                        vocab=["[PAD]", "a"], max_length=16, precision="int8",
                        source_sha256="cd" * 32, toolkit_version="0.1")


def write_onnx(path, metadata: ArtifactMetadata | None = META):
    """A minimal valid ONNX model (Identity) carrying the toolkit's metadata record."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])])
    model = helper.make_model(graph)
    if metadata is not None:
        helper.set_model_props(model, {METADATA_KEY: metadata.to_json()})
    onnx.save(model, str(path))
    return path


def test_onnx_metadata_is_read(tmp_path):
    assert E.read_onnx_metadata(write_onnx(tmp_path / "m.onnx")) == META


def test_onnx_without_metadata_or_not_onnx_is_a_clear_error(tmp_path):
    with pytest.raises(ToolkitError, match="not written by toolkit export"):
        E.read_onnx_metadata(write_onnx(tmp_path / "m.onnx", metadata=None))
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00junk" * 10)
    with pytest.raises(ToolkitError, match="not a readable ONNX model"):
        E.read_onnx_metadata(tmp_path / "junk.onnx")


@pytest.mark.parametrize("kw, match", [
    (dict(onnx="missing.onnx"), "does not exist"),
    (dict(opt_level=6), "0..5"),
    (dict(workspace_mb=0), "at least 1"),
    (dict(dla_core=-1), "0 or more"),
])
def test_build_config_is_validated_before_anything_else(tmp_path, kw, match):
    onnx = write_onnx(tmp_path / "m.onnx")
    cfg = E.BuildConfig(**{"onnx": str(onnx), "out": str(tmp_path / "m.plan"), **kw})
    with pytest.raises(ToolkitError, match=match):
        E.build_engine(cfg)


def test_build_without_tensorrt_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    cfg = E.BuildConfig(onnx=str(write_onnx(tmp_path / "m.onnx")), out=str(tmp_path / "m.plan"))
    with pytest.raises(TensorRTUnavailable, match=r"dualmodal-toolkit\[tensorrt-cu12\]"):
        E.build_engine(cfg)
    assert not (tmp_path / "m.plan").exists()


def test_parser_errors_name_node_and_operator():
    error = types.SimpleNamespace(node=lambda: 7, node_name=lambda: "/fusion/Attention_3",
                                  node_operator=lambda: "MyCustomOp",
                                  desc=lambda: "No importer registered for op: MyCustomOp",
                                  code=lambda: "ErrorCode.UNSUPPORTED_NODE")
    text = E.format_parser_error(error)
    assert text.startswith("node 7 '/fusion/Attention_3' (MyCustomOp): No importer registered")


# ------------------------------------------------------------------ version-specific options


def fake_trt(version):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(AMPERE_PLUS="AP",
                                                           SAME_COMPUTE_CAPABILITY="SCC")
    trt.DeviceType = types.SimpleNamespace(DLA="DLA")
    trt.BuilderFlag = types.SimpleNamespace(GPU_FALLBACK="GPU_FALLBACK")
    return trt


class FakeConfig:
    def __init__(self):
        self.flags = []

    def set_flag(self, flag):
        self.flags.append(flag)

    def can_run_on_DLA(self, layer):
        return layer == "conv"


def network(*layers):
    return types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])


H200, ORIN = GpuInfo("NVIDIA H200", "9.0"), GpuInfo("Orin", "8.7", integrated=True)


def test_dla_is_refused_on_tensorrt_11(monkeypatch):
    trt = fake_trt("11.4.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(E.EngineBuildError, match="TensorRT 10 on Jetson"):
        E._apply_dla(trt, types.SimpleNamespace(num_DLA_cores=2), network("conv"), FakeConfig(),
                     0)


def test_dla_on_tensorrt_10(monkeypatch):
    trt = fake_trt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(E.EngineBuildError, match="no DLA"):
        E._apply_dla(trt, types.SimpleNamespace(num_DLA_cores=0), network("conv"), FakeConfig(),
                     0)
    with pytest.raises(E.EngineBuildError, match="has 2 DLA cores"):
        E._apply_dla(trt, types.SimpleNamespace(num_DLA_cores=2), network("conv"), FakeConfig(),
                     2)
    with pytest.raises(E.EngineBuildError, match="no layer of this network can run on DLA"):
        E._apply_dla(trt, types.SimpleNamespace(num_DLA_cores=2), network("matmul"),
                     FakeConfig(), 0)
    config = FakeConfig()
    E._apply_dla(trt, types.SimpleNamespace(num_DLA_cores=2), network("matmul", "conv"), config, 1)
    assert (config.default_device_type, config.DLA_core, config.flags) == ("DLA", 1,
                                                                           ["GPU_FALLBACK"])


def test_hardware_compat_levels(monkeypatch):
    trt = fake_trt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    config = FakeConfig()
    E._apply_hardware_compat(trt, config, E.HardwareCompat.ampere_plus, H200)
    assert config.hardware_compatibility_level == "AP"
    with pytest.raises(E.EngineBuildError, match="needs TensorRT 11"):
        E._apply_hardware_compat(trt, FakeConfig(), E.HardwareCompat.same_compute_capability,
                                 H200)
    trt.__version__ = "11.4.0.106"
    E._apply_hardware_compat(trt, config, E.HardwareCompat.same_compute_capability, H200)
    assert config.hardware_compatibility_level == "SCC"
    untouched = FakeConfig()
    E._apply_hardware_compat(trt, untouched, E.HardwareCompat.none, H200)
    assert not hasattr(untouched, "hardware_compatibility_level")


# ------------------------------------------------------------------ build_engine on the fakes


@pytest.fixture
def fake_gpu(monkeypatch):
    """install(rt=FakeCudart(...), **trt kwargs) -> the fake tensorrt, on this fake GPU."""
    def install(rt=None, **kw):
        rt = rt or FakeCudart()
        trt = make_fake_trt(cudart=rt, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(cuda_mem, "cudart", lambda: rt)
        return trt

    return install


def fake_build(tmp_path, **kw):
    cfg = E.BuildConfig(onnx=str(write_onnx(tmp_path / "m.onnx")), out=str(tmp_path / "m.plan"),
                        **kw)
    return E.build_engine(cfg, log=lambda *_: None)


def test_build_writes_the_plan_and_a_sidecar_with_the_platform(tmp_path, fake_gpu, monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    fake_gpu()
    plan = fake_build(tmp_path, profile=ProfileConfig(max_batch=4))
    side = read_sidecar(plan)
    assert side["platform"] == {"machine": "x86_64", "system": platform.system(),
                                "integrated_gpu": False}
    assert side["profiles"][0]["input_ids"] == {"min": [1, 1], "opt": [4, 16], "max": [4, 16]}
    assert E.inspect_engine(plan)["layers"][0]["name"] == "conv1"


def test_sparse_sets_the_builder_flag_and_the_sidecar_records_it(tmp_path, fake_gpu):
    trt = fake_gpu()
    plan = fake_build(tmp_path, sparse_weights=True)
    _, config = trt.built[-1]
    assert trt.BuilderFlag.SPARSE_WEIGHTS in config.flags
    assert read_sidecar(plan)["build"]["sparse_weights"] is True
    sparsity = E.inspect_engine(plan)["sparsity"]
    assert sparsity["sparse_weights"] is True
    assert sparsity["source_conformance"]["layers"] == 0  # the Identity model has no weights
    assert "sparse weights (builder flag): on" in E.format_inspection(E.inspect_engine(plan))
    (tmp_path / "d").mkdir()
    dense = fake_build(tmp_path / "d")
    assert trt.BuilderFlag.SPARSE_WEIGHTS not in trt.built[-1][1].flags
    assert read_sidecar(dense)["build"]["sparse_weights"] is False


def test_a_model_using_a_standard_plugin_parses_once_plugins_are_registered(tmp_path, fake_gpu):
    trt = fake_gpu()
    trt.model.uses_plugin = True  # the parser maps a node to a libnvinfer_plugin plugin
    plan = fake_build(tmp_path)
    assert trt.plugins_initialized and plan.is_file()


def test_an_inconsistent_profile_shape_is_a_build_error_naming_the_input(tmp_path, fake_gpu,
                                                                        monkeypatch):
    trt = fake_gpu()
    profile_cls = type(trt.Builder(None).create_optimization_profile())

    def refuse(self, name, lo, opt, hi):
        raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

    monkeypatch.setattr(profile_cls, "set_shape", refuse)
    with pytest.raises(E.EngineBuildError, match=r"refused the profile of input 'image' min "
                                                 r"\(1, 3, 8, 8\) opt \(32, 3, 8, 8\).*"
                                                 r"inconsistent"):
        fake_build(tmp_path)
    assert not (tmp_path / "m.plan").exists()


def test_an_invalid_profile_is_a_build_error(tmp_path, fake_gpu):
    trt = fake_gpu()
    trt.model.invalid_profile = True  # add_optimization_profile returns -1
    with pytest.raises(E.EngineBuildError, match=r"refused the optimization profile as invalid "
                                                 r"\('image' min"):
        fake_build(tmp_path)
    assert trt.built == []  # refused before the (long) build


def test_dla_needs_a_static_profile(tmp_path, fake_gpu):
    """With a dynamic profile DLA cannot take the network, and GPU fallback would quietly make
    a GPU engine: refused before TensorRT is asked."""
    trt = fake_gpu(FakeCudart(cc=(8, 7), name="Orin", integrated=True), dla_cores=2)
    with pytest.raises(E.EngineBuildError, match=r"--dla-core needs a static profile.*batch is "
                                                 r"min/opt/max 1/32/32 and sequence 1/16/16.*"
                                                 r"--min-batch 32 --max-batch 32 --min-seq 16"):
        fake_build(tmp_path, dla_core=0)
    assert trt.built == []


def test_dla_with_a_static_profile_builds_and_is_loaded_on_its_core(tmp_path, fake_gpu,
                                                                   monkeypatch):
    import platform

    from toolkit.runtime.trt_runner import TensorRTRunner

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    trt = fake_gpu(FakeCudart(cc=(8, 7), name="Orin", integrated=True), dla_cores=2)
    static = ProfileConfig(min_batch=2, max_batch=2, min_seq=8, max_seq=8)
    plan = fake_build(tmp_path, dla_core=1, profile=static)
    side = read_sidecar(plan)
    assert side["build"]["dla_core"] == 1 and side["build"]["dla_layers"] >= 1
    assert side["platform"]["integrated_gpu"] is True
    with TensorRTRunner(plan) as runner:
        assert trt.Runtime.instances[-1].DLA_core == 1
        assert runner.input_specs()["image"].shape == (None, 3, 8, 8)


def test_dla_build_with_no_layer_on_dla_is_refused(tmp_path, fake_gpu, monkeypatch):
    """If TensorRT still puts every layer on the GPU (what GPU fallback does silently), the
    inspector shows it and the build fails; nothing is written."""
    fake_gpu(FakeCudart(cc=(8, 7), name="Orin", integrated=True), dla_cores=2)
    monkeypatch.setattr(E, "_check_dla_profile", lambda cfg, max_length: None)  # let it through
    with pytest.raises(E.EngineBuildError, match="placed no layer on DLA"):
        fake_build(tmp_path, dla_core=0)
    assert not (tmp_path / "m.plan").exists() and not (tmp_path / "m.plan.json").exists()


def test_hardware_compat_is_refused_on_jetson(tmp_path, fake_gpu):
    fake_gpu(FakeCudart(cc=(8, 7), name="Orin", integrated=True))
    with pytest.raises(E.EngineBuildError, match="--hardware-compat ampere_plus is not supported "
                                                 "on Jetson"):
        fake_build(tmp_path, hardware_compat=E.HardwareCompat.ampere_plus)


@pytest.mark.parametrize("version", ["9.3.0", "12.0.0.5"])
def test_an_unsupported_tensorrt_major_is_refused(tmp_path, fake_gpu, version):
    trt = fake_gpu(version=version)
    with pytest.raises(PlanError, match=f"this TensorRT is TensorRT {version}; the toolkit "
                                        f"supports TensorRT 10 and 11 only"):
        fake_build(tmp_path)
    assert trt.built == []


def test_fake_builder_puts_nothing_on_dla_with_a_dynamic_profile(fake_gpu):
    """The fake is as strict as DLA: dynamic shapes mean GPU layers, silently."""
    import json as _json

    trt = fake_gpu(dla_cores=1)
    builder = trt.Builder(None)
    net = builder.create_network(0)
    trt.OnnxParser(net, None).parse_from_file("m.onnx")
    config = builder.create_builder_config()
    config.default_device_type = trt.DeviceType.DLA
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(net, config)
    info = _json.loads(plan[len(b"FAKEPLAN"):])
    assert E.dla_layer_names({"Layers": info["layers"]}) == []
    with pytest.raises(RuntimeError, match="inconsistent"):
        profile.set_shape("image", (4, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))


# ------------------------------------------------------------------ inspect


def test_layer_precisions_read_both_inspector_schemas():
    v10 = {"Layers": [{"Name": "conv1", "LayerType": "CaskConvolution",
                       "Outputs": [{"Name": "t", "Format/Datatype":
                                   "Channel major FP16 format where channel % 8 == 0"}]},
                      {"Name": "q", "LayerType": "Quantize",
                       "Outputs": [{"Name": "u", "Format/Datatype": "Row major linear Int8"}]}]}
    v11 = {"Layers": [{"Name": "mm", "LayerType": "Gemm",
                       "Outputs": [{"Name": "t", "Format": "Row major linear", "DataType": "FP32"},
                                   {"Name": "s", "Format": "Row major linear",
                                    "DataType": "FP32"}]}]}
    rows = E.layer_precisions(v10)
    assert rows[0] == {"name": "conv1", "type": "CaskConvolution", "precision": "FP16"}
    assert rows[1] == {"name": "q", "type": "Quantize", "precision": "Int8"}
    assert E.layer_precisions(v11) == [{"name": "mm", "type": "Gemm", "precision": "FP32"}]
    assert E.layer_precisions({"Layers": ["a", "b"]})[0] == {"name": "a", "type": "?",
                                                             "precision": "?"}


@pytest.fixture
def built(tmp_path):
    """A plan (opaque bytes) with the sidecar toolkit build writes."""
    onnx = write_onnx(tmp_path / "model.int8.onnx")
    plan = tmp_path / "engines" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"opaque plan bytes" * 10)
    inputs = {"image": (-1, 3, 32, 32), "input_ids": (-1, -1), "attention_mask": (-1, -1)}
    write_sidecar(plan, source_onnx=onnx, tensorrt_version="10.3.0",
                  gpu=GpuInfo("Orin", "8.7"), metadata=META,
                  build={"version_compatible": False, "hardware_compat": "none", "opt_level": 3},
                  profiles=[profile_shapes(inputs, ProfileConfig(max_batch=8), 32, 16)],
                  inputs=[{"name": n, "dtype": "float32" if n == "image" else "int64",
                           "shape": list(d)} for n, d in inputs.items()],
                  outputs=[{"name": "logits", "dtype": "float32", "shape": [-1, 2]}])
    return plan


def test_inspect_without_tensorrt_shows_the_sidecar(built, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = E.inspect_engine(built)
    assert result["layers"] is None and "TensorRT is not installed" in result["note"]
    text = E.format_inspection(result)
    assert result["sparsity"]["sparse_weights"] is False  # a sidecar from before --sparse
    for expected in ["built with TensorRT 10.3.0 on Orin (compute capability 8.7)",
                     "sparse weights (builder flag): off",
                     "precision (from the graph): int8", "input_ids: min (1, 1) opt (8, 16) "
                     "max (8, 16)", "attention_mask: int64 (-1, -1)", "2 labels"]:
        assert expected in text, expected


def test_cli_inspect_on_a_sidecar_plan(built, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(app, ["inspect", str(built)])
    assert result.exit_code == 0, result.output
    assert "built with TensorRT 10.3.0 on Orin" in result.output
    result = CliRunner().invoke(app, ["inspect", str(built), "--json"])
    assert json.loads(result.output)["sidecar"]["model"]["labels"] == ["yes", "no"]


def test_cli_inspect_a_truncated_plan_is_one_line_error(built):
    built.write_bytes(built.read_bytes()[:20])
    result = CliRunner().invoke(app, ["inspect", str(built)])
    assert result.exit_code == 1
    assert "truncated" in result.output and "Traceback" not in result.output


def test_cli_inspect_not_a_plan(tmp_path):
    (tmp_path / "x.plan").write_bytes(b"nope")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "x.plan")])
    assert result.exit_code == 1 and "x.plan.json is missing" in result.output


def test_cli_build_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx = write_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["build", "--onnx", str(onnx), "--out",
                                      str(tmp_path / "m.plan"), "--max-batch", "8",
                                      "--hardware-compat", "ampere_plus", "--timing-cache",
                                      str(tmp_path / "t.cache")])
    assert result.exit_code == 1
    assert "pip install 'dualmodal-toolkit[tensorrt-cu12]'" in result.output
    assert "NVIDIA GPU" in result.output


def test_cli_build_bad_profile_is_refused_before_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx = write_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["build", "--onnx", str(onnx), "--max-batch", "2",
                                      "--min-batch", "4", "--out", str(tmp_path / "m.plan")])
    assert result.exit_code == 1 and "batch range min=4 opt=2 max=2" in result.output
    result = CliRunner().invoke(app, ["build", "--onnx", str(onnx), "--max-seq", "17"])
    assert result.exit_code == 1 and "max_length 16" in result.output
