"""The parity library and the export/parity CLI commands."""

import json

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.config import TOLERANCES, ParityConfig, Precision
from toolkit.parity import parity

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("artifact,precision", [("tiny_onnx", Precision.fp32),
                                                ("tiny_fp16", Precision.fp16)])
def test_parity_uses_the_tolerance_of_the_candidates_precision(request, tiny_run, tiny_data,
                                                               artifact, precision):
    path = request.getfixturevalue(artifact).path
    c = parity(ParityConfig(str(tiny_run), str(path), data=str(tiny_data)))
    assert c.tolerance == TOLERANCES[precision]
    assert c.passed, c.report()
    assert c.reference_accuracy == c.candidate_accuracy  # same decisions, same accuracy


def test_int8_parity_runs_and_reports_agreement(tiny_run, tiny_data, tiny_int8):
    # The tiny model learned nothing, so only that the evidence is there is checked here;
    # the 99% / 1 point bounds are measured on a trained checkpoint (bench/export.md).
    c = parity(ParityConfig(str(tiny_run), str(tiny_int8.path), data=str(tiny_data), samples=20))
    assert c.n == 20 and 0 <= c.outputs[0].top1 <= 1
    assert c.tolerance == TOLERANCES[Precision.int8] and c.accuracy_drop is not None


def test_parity_refuses_a_candidate_from_other_weights(tiny_run, tiny_data, tiny_onnx, tmp_path):
    import shutil

    from toolkit.compare import ParityError

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    state = load_file(str(other / "best.safetensors"))
    name = next(iter(state))
    state[name] = state[name] + 1  # same structure, other weights
    save_file(state, str(other / "best.safetensors"))
    with pytest.raises(ParityError, match="other weights"):
        parity(ParityConfig(str(other), str(tiny_onnx.path), data=str(tiny_data)))


def test_cli_export_fp32_then_parity_json(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "m.onnx"
    r = _run("export", "--checkpoint", tiny_run, "--precision", "fp32", "--out", out,
             "--data", tiny_data)
    assert r.exit_code == 0, r.output
    assert out.is_file() and "PASSED" in r.output
    r = _run("parity", "--reference", tiny_run, "--candidate", out, "--data", tiny_data,
             "--samples", 10, "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["passed"] is True and report["n"] == 10
    out = report["outputs"][0]
    assert out["max_abs"] <= TOLERANCES[Precision.fp32].abs_bound(out["scale"])


def test_cli_parity_exits_1_when_a_tolerance_is_exceeded(tiny_run, tiny_data, tiny_int8,
                                                         tmp_path, monkeypatch):
    from toolkit import config

    strict = dict(config.TOLERANCES)
    strict[Precision.int8] = config.Tolerance(atol=1e-9)  # INT8 never meets this
    monkeypatch.setattr("toolkit.parity.TOLERANCES", strict)
    r = _run("parity", "--reference", tiny_run, "--candidate", tiny_int8.path,
             "--data", tiny_data, "--samples", 5)
    assert r.exit_code == 1
    assert "FAILED" in r.output and "max abs error" in r.output


@pytest.mark.parametrize("args,message", [
    (["--precision", "int4"], "int4"),
    (["--precision", "int8", "--calibration", "{data}", "--target", "dsp"], "dsp"),
    (["--precision", "int8"], "--calibration"),
    (["--precision", "int8", "--calibration", "{data}", "--calib-samples", "99999"], "fewer than"),
    (["--precision", "fp32", "--fp16-io"], "--fp16-io"),
    (["--precision", "int8", "--calibration", "{data}", "--exclude-op-type", "Softmax"], "Softmax"),
    (["--precision", "fp32", "--exclude-op-type", "Conv"], "--exclude-op-type"),
    (["--precision", "int8", "--calibration", "{data}", "--exclude-op-type", "Conv",
      "--exclude-op-type", "MatMul", "--exclude-op-type", "Gemm"], "nothing would be INT8"),
])
def test_cli_export_bad_input_exits_non_zero_and_writes_nothing(tiny_run, tiny_data, tmp_path,
                                                               args, message):
    out = tmp_path / "m.onnx"
    args = [a.replace("{data}", str(tiny_data)) for a in args]
    r = _run("export", "--checkpoint", tiny_run, "--out", out, *args)
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_export_int8_keeps_the_excluded_op_type_float(tiny_run, tiny_data, tmp_path):
    import onnx

    from toolkit.export.graph import get_metadata

    out = tmp_path / "m.onnx"
    r = _run("export", "--checkpoint", tiny_run, "--out", out, "--precision", "int8",
             "--calibration", tiny_data, "--calib-samples", "16", "--exclude-op-type", "Conv")
    assert r.exit_code == 0, r.output
    assert "Conv kept in float" in r.output
    assert get_metadata(onnx.load(str(out))).extra["exclude_op_types"] == ["Conv"]


def test_cli_parity_on_a_file_that_is_not_onnx(tiny_run, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    r = _run("parity", "--reference", tiny_run, "--candidate", bad)
    assert r.exit_code == 1 and "bad.onnx is not a readable ONNX model" in r.output


def test_cli_export_format_engine_builds_a_plan_or_names_what_is_missing(tiny_run, tiny_data,
                                                                        tmp_path):
    from toolkit.errors import ToolkitError
    from toolkit.runtime.trt_plan import import_tensorrt

    try:
        import_tensorrt()
        have_trt = True
    except ToolkitError:
        have_trt = False
    out, plan = tmp_path / "m.onnx", tmp_path / "m.plan"
    r = _run("export", "--checkpoint", tiny_run, "--out", out, "--data", tiny_data,
             "--format", "engine", "--engine-out", plan)
    assert out.is_file()  # the ONNX export stands on its own
    if have_trt:
        assert r.exit_code == 0 and plan.is_file(), r.output
    else:
        assert r.exit_code == 1 and "TensorRT" in r.output and not plan.exists(), r.output


@pytest.fixture(scope="module")
def scaled_run(tiny_run, tmp_path_factory):
    """The tiny run with its classifier scaled 1000x: logits like a model trained far longer."""
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("scaled") / "run"
    shutil.copytree(tiny_run, run)
    state = load_file(str(run / "best.safetensors"))
    last = max(k for k in state if k.startswith("head.") and k.endswith(".weight"))
    for k in (last, last.replace(".weight", ".bias")):
        state[k] = state[k] * 1000
    save_file(state, str(run / "best.safetensors"))
    return run


def test_a_scaled_up_models_correct_export_passes_and_a_wrong_one_fails(scaled_run, tiny_data,
                                                                        tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from toolkit.config import ExportConfig
    from toolkit.export.pipeline import export

    out = tmp_path / "m.onnx"
    result = export(ExportConfig(str(scaled_run), str(out), data=str(tiny_data)))
    assert result.comparison.passed and result.comparison.outputs[0].scale > 100
    c = parity(ParityConfig(str(scaled_run), str(out), data=str(tiny_data), samples=20))
    assert c.passed, c.report()

    # The same graph with one class's bias moved by a tenth of the logits' range: wrong.
    model = onnx.load(str(out))
    biases = [t for t in model.graph.initializer if t.dims == [c.outputs[0].shape[1]]
              and np.abs(numpy_helper.to_array(t)).max() > 1]  # the scaled head's bias
    assert len(biases) == 1
    b = numpy_helper.to_array(biases[0]).copy()
    b[0] += 0.1 * c.outputs[0].scale
    biases[0].CopyFrom(numpy_helper.from_array(b, biases[0].name))
    wrong = tmp_path / "wrong.onnx"
    onnx.save(model, str(wrong))
    bad = parity(ParityConfig(str(scaled_run), str(wrong), data=str(tiny_data), samples=20))
    assert not bad.passed and any("max abs error" in f for f in bad.failures), bad.report()
