"""toolkit triton without a server: the repository's files, config.pbtxt as Triton's ModelConfig
(parsed with tritonclient's model_config_pb2), options, plans, bad inputs and atomic writes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.errors import ToolkitError
from toolkit.triton import RepositoryConfig, TritonRepoError, write_repository
from toolkit.triton.repository import InstanceKind, _Enum, to_pbtxt, validate_config

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient is not installed (pip install '.[serve]')")
from google.protobuf import text_format  # noqa: E402 (tritonclient brings protobuf)


def _parse(path: Path):
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def _write(model, repo, **kw):
    return write_repository(RepositoryConfig(model=str(model), repo=str(repo), **kw),
                            log=lambda *_: None)


@pytest.fixture(scope="module")
def meta(tiny_onnx):
    from toolkit.artifacts import read_onnx_metadata

    return read_onnx_metadata(tiny_onnx.path)


def test_onnx_repository(tiny_onnx, meta, tmp_path):
    result = _write(tiny_onnx.path, tmp_path / "repo", python_path=("/opt/site",))
    repo = tmp_path / "repo"
    assert result.models == ["model", "model_text"] and result.validated
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "model/1/model.onnx", "model/config.pbtxt", "model/labels.txt",
        "model_text/1/model.py", "model_text/1/toolkit.json", "model_text/config.pbtxt",
        "model_text/labels.txt"]
    assert (repo / "model/1/model.onnx").read_bytes() == Path(tiny_onnx.path).read_bytes()
    assert (repo / "model/labels.txt").read_text().splitlines() == meta.labels

    c = _parse(repo / "model/config.pbtxt")
    s = meta.image_size
    assert (c.name, c.backend, c.max_batch_size) == ("model", "onnxruntime", 32)
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in c.input] == [
        ("image", "TYPE_FP32", [3, s, s]), ("input_ids", "TYPE_INT64", [-1]),
        ("attention_mask", "TYPE_INT64", [-1])]
    (out,) = c.output
    assert (out.name, pb.DataType.Name(out.data_type), list(out.dims), out.label_filename) == (
        "logits", "TYPE_FP32", [len(meta.labels)], "labels.txt")
    assert c.dynamic_batching.max_queue_delay_microseconds == 1000
    assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in c.instance_group] == [
        (1, "KIND_AUTO")]

    t = _parse(repo / "model_text/config.pbtxt")
    assert (t.name, t.backend, t.max_batch_size) == ("model_text", "python", 32)
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in t.input] == [
        ("image_bytes", "TYPE_STRING", [1]), ("question", "TYPE_STRING", [1])]
    assert [(o.name, pb.DataType.Name(o.data_type), list(o.dims)) for o in t.output] == [
        ("label", "TYPE_STRING", [1]), ("probabilities", "TYPE_FP32", [len(meta.labels)])]
    assert pb.ModelInstanceGroup.Kind.Name(t.instance_group[0].kind) == "KIND_CPU"
    spec = json.loads((repo / "model_text/1/toolkit.json").read_text())
    assert (spec["target_model"], spec["image_dtype"], spec["max_batch_size"]) == (
        "model", "float32", 32)
    assert spec["python_path"] == ["/opt/site"] and spec["model"]["labels"] == meta.labels
    # model.py is the package's python_model.py, which Triton imports as a plain file.
    src = Path(__file__).resolve().parents[2] / "toolkit" / "triton" / "python_model.py"
    assert (repo / "model_text/1/model.py").read_text() == src.read_text()


def test_options(tiny_onnx, tmp_path):
    _write(tiny_onnx.path, tmp_path / "r", name="vqa", max_batch=8, max_delay_ms=0.25,
           instances=3, kind=InstanceKind.cpu, text_model=False)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["vqa"]
    c = _parse(tmp_path / "r/vqa/config.pbtxt")
    assert (c.name, c.max_batch_size, c.dynamic_batching.max_queue_delay_microseconds) == (
        "vqa", 8, 250)
    assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in c.instance_group] == [
        (3, "KIND_CPU")]


def test_default_name_of_a_dotted_file(tiny_onnx, tmp_path):
    model = tmp_path / "model.fp16.onnx"
    shutil.copyfile(tiny_onnx.path, model)
    assert _write(model, tmp_path / "r").models == ["model_fp16", "model_fp16_text"]


def test_existing_model_dir_needs_force(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)  # an empty folder is taken
    _write(tiny_onnx.path, repo)
    (repo / "model" / "stale.txt").write_text("old")
    with pytest.raises(TritonRepoError, match="already exists and is not empty; pass --force"):
        _write(tiny_onnx.path, repo)
    assert (repo / "model" / "stale.txt").exists()
    _write(tiny_onnx.path, repo, force=True, max_batch=4)
    assert not (repo / "model" / "stale.txt").exists()
    assert _parse(repo / "model/config.pbtxt").max_batch_size == 4
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left


def test_a_failed_write_leaves_nothing(tiny_onnx, tmp_path, monkeypatch):
    import toolkit.triton.repository as r

    calls = {"n": 0}
    real = shutil.copyfile

    def failing(src, dst, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # model.onnx copied; model.py fails
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(r.shutil, "copyfile", failing)
    with pytest.raises(TritonRepoError, match="No space left on device"):
        _write(tiny_onnx.path, tmp_path / "repo")
    assert not (tmp_path / "repo" / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] in ([], ["repo"])


def test_external_data_is_copied_and_loads(tiny_onnx, tmp_path):
    import onnx
    import onnxruntime as ort

    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(tiny_onnx.path)
    onnx.save_model(model, str(src / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin")
    _write(src / "model.onnx", tmp_path / "repo")
    version = tmp_path / "repo" / "model" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "weights.bin"]
    ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])


def test_external_data_outside_the_folder_is_refused(tiny_onnx, tmp_path):
    import onnx
    from onnx import TensorProto

    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(tiny_onnx.path)
    onnx.save_model(model, str(src / "model.onnx"), save_as_external_data=True,
                    location="weights.bin")
    bare = onnx.load(str(src / "model.onnx"), load_external_data=False)
    for t in bare.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "../weights.bin"
    (src / "model.onnx").write_bytes(bare.SerializeToString())
    with pytest.raises(TritonRepoError, match="outside its folder"):
        _write(src / "model.onnx", tmp_path / "repo")


# ------------------------------------------------------------------ plans


def _plan(tmp_path, tiny_onnx, meta, profile_batch=(1, 8, 16), image_dtype="float32"):
    from toolkit.runtime.cuda_mem import GpuInfo
    from toolkit.runtime.trt_plan import write_sidecar

    s, lo, opt, hi = meta.image_size, *profile_batch
    plan = tmp_path / "engines" / "model.plan"
    plan.parent.mkdir(exist_ok=True)
    plan.write_bytes(b"plan bytes: opaque to the repository writer")
    profile = {"image": {"min": [lo, 3, s, s], "opt": [opt, 3, s, s], "max": [hi, 3, s, s]},
               "input_ids": {"min": [lo, 1], "opt": [opt, 16], "max": [hi, 32]},
               "attention_mask": {"min": [lo, 1], "opt": [opt, 16], "max": [hi, 32]}}
    write_sidecar(plan, source_onnx=tiny_onnx.path, tensorrt_version="10.3.0",
                  gpu=GpuInfo("fake", "9.0"), metadata=meta, build={}, profiles=[profile],
                  inputs=[{"name": "image", "dtype": image_dtype, "shape": [-1, 3, s, s]},
                          {"name": "input_ids", "dtype": "int64", "shape": [-1, -1]},
                          {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]}],
                  outputs=[{"name": "logits", "dtype": "float32",
                            "shape": [-1, len(meta.labels)]}])
    return plan


def test_plan_repository(tiny_onnx, meta, tmp_path):
    plan = _plan(tmp_path, tiny_onnx, meta, image_dtype="float16")
    result = _write(plan, tmp_path / "repo")
    assert result.max_batch_size == 16  # the profile's maximum
    c = _parse(tmp_path / "repo/model/config.pbtxt")
    assert (c.platform, c.backend, c.max_batch_size) == ("tensorrt_plan", "", 16)
    assert pb.DataType.Name(c.input[0].data_type) == "TYPE_FP16"
    assert [pb.ModelInstanceGroup.Kind.Name(g.kind) for g in c.instance_group] == ["KIND_GPU"]
    assert (tmp_path / "repo/model/1/model.plan").read_bytes() == plan.read_bytes()
    spec = json.loads((tmp_path / "repo/model_text/1/toolkit.json").read_text())
    assert (spec["backend"], spec["image_dtype"], spec["max_batch_size"]) == (
        "tensorrt", "float16", 16)
    assert _write(plan, tmp_path / "r2", max_batch=4).max_batch_size == 4


@pytest.mark.parametrize("kw, message", [
    ({"max_batch": 32}, "exceeds .* profile maximum 16"),
    ({"kind": InstanceKind.cpu}, "runs on the GPU only"),
])
def test_plan_refusals(tiny_onnx, meta, tmp_path, kw, message):
    with pytest.raises(TritonRepoError, match=message):
        _write(_plan(tmp_path, tiny_onnx, meta), tmp_path / "repo", **kw)


def test_plan_profile_must_start_at_batch_1(tiny_onnx, meta, tmp_path):
    with pytest.raises(TritonRepoError, match="--min-batch 1"):
        _write(_plan(tmp_path, tiny_onnx, meta, profile_batch=(2, 8, 16)), tmp_path / "repo")


def test_plan_that_does_not_match_its_sidecar(tiny_onnx, meta, tmp_path):
    plan = _plan(tmp_path, tiny_onnx, meta)
    plan.write_bytes(b"another plan of another length")
    with pytest.raises(ToolkitError, match="truncated or was replaced"):
        _write(plan, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_plan_without_sidecar(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ToolkitError, match="sidecar"):
        _write(plan, tmp_path / "repo")


# ------------------------------------------------------------------ bad inputs


def _onnx_without_record(path: Path, batch="batch"):
    import onnx
    from onnx import TensorProto, helper

    def vi(name, t, dims):
        return helper.make_tensor_value_info(name, t, dims)

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])], "g",
        [vi("image", TensorProto.FLOAT, [batch, 12])], [vi("logits", TensorProto.FLOAT,
                                                          [batch, 12])])
    onnx.save_model(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.onnx", "does not exist"),
    (lambda p: (p / "m.txt").write_text("x") and p / "m.txt", "unknown extension '.txt'"),
    (lambda p: p, "does not exist \\(or is not a file\\)"),
    (lambda p: (p / "m.onnx").write_bytes(np.random.default_rng(0).bytes(300)) and
     p / "m.onnx", "not a readable ONNX model"),
    (lambda p: _onnx_without_record(p / "m.onnx"), "has no 'toolkit.metadata' metadata"),
])
def test_bad_model_files(tmp_path, make, message):
    with pytest.raises(TritonRepoError, match=message):
        _write(make(tmp_path), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_foreign_interface_and_fixed_batch(tiny_onnx, meta, tmp_path):
    import onnx

    model = onnx.load(tiny_onnx.path)
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.shape.dim[0].ClearField("dim_param")
        v.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save_model(model, str(tmp_path / "fixed.onnx"))
    with pytest.raises(TritonRepoError, match="without a dynamic batch axis"):
        _write(tmp_path / "fixed.onnx", tmp_path / "repo")

    foreign = _onnx_without_record(tmp_path / "foreign.onnx")
    m = onnx.load(str(foreign))
    m.metadata_props.add(key="toolkit.metadata", value=meta.to_json())
    onnx.save_model(m, str(foreign))
    with pytest.raises(TritonRepoError, match="not the toolkit's"):
        _write(foreign, tmp_path / "repo")


@pytest.mark.parametrize("kw, message", [
    ({"name": "a/b"}, "not a usable model name"),
    ({"name": ".hidden"}, "not a usable model name"),
    ({"instances": 0}, "--instances 0 must be 1 or more"),
    ({"max_batch": 0}, "--max-batch 0 must be 1 or more"),
    ({"max_delay_ms": -1.0}, "--max-delay-ms"),
])
def test_bad_options(tiny_onnx, tmp_path, kw, message):
    with pytest.raises(TritonRepoError, match=message):
        _write(tiny_onnx.path, tmp_path / "repo", **kw)


def test_repo_that_is_a_file(tiny_onnx, tmp_path):
    (tmp_path / "repo").write_text("x")
    with pytest.raises(TritonRepoError, match="is not a folder"):
        _write(tiny_onnx.path, tmp_path / "repo")


# ------------------------------------------------------------------ the text format and its check


def test_pbtxt_round_trip_and_quoting():
    text = to_pbtxt({"name": 'a "quoted" \\ name', "max_batch_size": 2,
                     "parameters": [{"key": "k", "value": {"string_value": "v"}}],
                     "input": [{"name": "x", "data_type": _Enum("TYPE_FP32"), "dims": [-1, 3]}]})
    msg = text_format.Parse(text, pb.ModelConfig())
    assert msg.name == 'a "quoted" \\ name' and list(msg.input[0].dims) == [-1, 3]
    assert msg.parameters["k"].string_value == "v"
    with pytest.raises(TritonRepoError, match="control characters"):
        to_pbtxt({"name": "a\nb"})


def test_validate_rejects_what_triton_would():
    with pytest.raises(TritonRepoError, match="not a valid Triton ModelConfig"):
        validate_config('name: "m"\nmax_batch_sise: 4\n', "m")  # a misspelt field
    with pytest.raises(TritonRepoError, match="not a valid Triton ModelConfig"):
        validate_config('name: "m"\ninput [ { name: "x" data_type: TYPE_FLOAT dims: [1] } ]', "m")
    with pytest.raises(TritonRepoError, match="no data type or dims"):
        validate_config('name: "m"\ninput [ { name: "x" data_type: TYPE_FP32 } ]', "m")


def test_without_tritonclient(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import fails
    with pytest.raises(TritonRepoError, match=r"needs tritonclient .*serve.*--no-validate"):
        _write(tiny_onnx.path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    assert not _write(tiny_onnx.path, tmp_path / "repo", validate=False).validated


# ------------------------------------------------------------------ the command line


def test_cli(tiny_onnx, tmp_path):
    runner = CliRunner()
    repo = tmp_path / "repo"
    args = ["triton", "--model", str(tiny_onnx.path), "--repo", str(repo), "--max-batch", "8",
            "--instances", "2", "--kind", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "model, model_text: max_batch_size 8, config.pbtxt validated" in r.output
    c = _parse(repo / "model/config.pbtxt")
    assert (c.max_batch_size, c.instance_group[0].count) == (8, 2)

    r = runner.invoke(app, args)  # again: refused, one line, exit 1
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "already exists" in lines[0] and "--force" in lines[0]
    assert runner.invoke(app, args + ["--force"]).exit_code == 0

    bad = tmp_path / "m.bin"
    bad.write_bytes(b"x")
    r = runner.invoke(app, ["triton", "--model", str(bad), "--repo", str(repo)])
    assert r.exit_code == 1 and "unknown extension '.bin'" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["triton", "--model", str(tiny_onnx.path), "--kind", "tpu"])
    assert r.exit_code == 2
