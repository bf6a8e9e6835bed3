"""Quantization-aware fine-tuning: the fake quantizers, their placement against the PTQ graph, the
exported graph against the fake-INT8 PyTorch model, the fine-tuning run and the CLI's bad input.
Whether QAT recovers accuracy is measured on a trained model in bench/export.md."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.export.qat import FakeQuant, Point


def _qdq(x: np.ndarray, scale) -> np.ndarray:
    """ONNX QuantizeLinear (round half to even, saturate to int8) then DequantizeLinear."""
    return np.clip(np.round(x / scale), -128, 127) * scale


def test_activation_fake_quant_is_a_quantize_dequantize_with_its_fixed_scale():
    x = torch.randn(4, 7, 5) * 3
    x[0, 0, 0] = 1000.0  # saturates at 127 * scale, as QuantizeLinear does
    got = FakeQuant(Point("act", "t"), scale=0.05)(x)
    np.testing.assert_allclose(got.numpy(), _qdq(x.numpy(), np.float32(0.05)), rtol=0, atol=1e-6)
    assert got[0, 0, 0].item() == pytest.approx(127 * 0.05)


def test_weight_fake_quant_is_per_output_channel_absmax_over_127():
    w = torch.randn(6, 4, 3, 3)
    w[2] *= 100  # one channel far larger: per-channel scales keep the others fine
    got = FakeQuant(Point("weight", "w", axis=0))(w).numpy()
    scale = np.abs(w.numpy()).reshape(6, -1).max(1) / 127
    want = _qdq(w.numpy(), scale[:, None, None, None])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(w.numpy()).max())
    assert np.unique(got[0] / scale[0]).size <= 255  # on the int8 grid
    # MatMul weights (in, out) are quantized along axis 1
    m = torch.randn(5, 3)
    got = FakeQuant(Point("weight", "m", axis=1))(m).numpy()
    np.testing.assert_allclose(got, _qdq(m.numpy(), np.abs(m.numpy()).max(0) / 127), atol=1e-6)


def test_const_fake_quant_follows_the_tensor_and_gradients_pass_straight_through():
    fq = FakeQuant(Point("const", "c"))
    w = torch.randn(8, 3, requires_grad=True)
    y = fq(w)
    assert fq.scale.item() == pytest.approx(w.detach().abs().max().item() / 127, rel=1e-6)
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # STE: rounding has gradient 1 in range


# ------------------------------------------------------------------ a fine-tuned tiny run


@pytest.fixture(scope="module")
def tiny_qat(tiny_run, tiny_data, tmp_path_factory):
    """`toolkit qat` on the tiny run (3 steps) through the CLI: the run directory."""
    out = tmp_path_factory.mktemp("qat") / "tiny-qat"
    r = CliRunner().invoke(app, ["qat", "--checkpoint", str(tiny_run), "--calibration",
                                 str(tiny_data), "--out", str(out), "--steps", "3", "--lr", "1e-3",
                                 "--calib-samples", "16", "--eval-samples", "20"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def qat_export(tiny_qat, tiny_data, tmp_path_factory):
    """The QAT run as fake-INT8 PyTorch (its stored scales), its FP32 graph, the pipeline's INT8
    export of that graph (the stored scales) and a PTQ export of the same graph (calibrated)."""
    from toolkit.checkpoint import load_checkpoint
    from toolkit.config import CalibMethod, ExportConfig, Int8Config, Int8Target, Precision
    from toolkit.export import int8, samples
    from toolkit.export.pipeline import export
    from toolkit.export.qat import fake_quant_model

    work = tmp_path_factory.mktemp("qat-export")
    ck = load_checkpoint(tiny_qat)
    scales = json.loads((tiny_qat / "qat.json").read_text())["scales"]
    gm, _, _ = fake_quant_model(ck, 20, [], CalibMethod.minmax, work, scales=scales)
    fp32 = work / "model.fp32.onnx"
    result = export(ExportConfig(str(tiny_qat), str(work / "qat.int8.onnx"), Precision.int8,
                                 data=str(tiny_data), fp32_source=str(fp32),
                                 int8=Int8Config(str(tiny_data), samples=16)))
    rows = samples.load_rows(ck, tiny_data, "train")
    batches = list(samples.calibration_batches(ck, rows, 16, 8))
    int8.quantize(fp32, work / "ptq.int8.onnx", batches, Int8Target.tensorrt, CalibMethod.minmax)
    return {"ck": ck, "gm": gm, "result": result, "ptq": work / "ptq.int8.onnx", "scales": scales,
            "data": tiny_data}


def _placement(path):
    """Per Conv/MatMul/Gemm in graph order: for inputs 0-2, None (float) or the shape of the
    scale of the DequantizeLinear that feeds it."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    out = []
    for n in m.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm"):
            row = [n.name]
            for x in n.input:
                p = producer.get(x)
                row.append(None if p is None or p.op_type != "DequantizeLinear" else
                           numpy_helper.to_array(inits[p.input[1]]).shape)
            out.append(tuple(row))
    return out


def test_qat_export_has_the_ptq_graphs_qdq_placement(qat_export):
    qat, ptq = _placement(qat_export["result"].path), _placement(qat_export["ptq"])
    assert qat == ptq and len(qat) > 20
    assert all(row[3:] == (None,) * len(row[3:]) for row in qat)  # biases float
    assert qat_export["result"].checks["quantized_ops"] == len(qat)  # check_qdq passed


def test_qat_export_uses_the_stored_scales_not_calibration(qat_export):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(qat_export["result"].path))
    inits = {t.name: t for t in m.graph.initializer}
    got = {n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]))
           for n in m.graph.node if n.op_type == "QuantizeLinear"}
    scales = qat_export["scales"]
    assert set(got) == set(scales)
    assert all(got[k] == pytest.approx(v, rel=1e-6) for k, v in scales.items())


def test_exported_onnx_matches_the_fake_quantized_model(qat_export):
    """The QDQ graph in ONNX Runtime against the fake-INT8 PyTorch model on real rows. They differ
    only by float rounding (another order of sums, BatchNorm folded into the convolution before
    rounding instead of after), which can move a value onto the next int8 step. Measured on the
    tiny seeded run: 2.3% of the logits' range, 0.067x the INT8-vs-FP32 difference; the bound
    (5% of the range and a tenth of the INT8-vs-FP32 difference) says the fake quantizers sit
    where the Q/DQ pairs are and use their scales (a misplaced or missing one costs as much as
    INT8 itself). The measured figure is printed (pytest -s)."""
    from toolkit.export import samples
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    ck, gm = qat_export["ck"], qat_export["gm"]
    rows = samples.load_rows(ck, qat_export["data"], "val")
    feeds = [samples.batch(ck, rows, np.arange(s, min(s + 8, len(rows)))) for s in
             range(0, len(rows) - 1, 8)]
    feeds = [f for f in feeds if len(f["input_ids"]) >= 2]
    with OnnxRuntimeRunner(qat_export["result"].path) as ort, torch.no_grad():
        onnx_out = np.concatenate([ort.infer(f)["logits"] for f in feeds])
        fake = np.concatenate([gm(*(torch.from_numpy(f[k]) for k in
                                    ("image", "input_ids", "attention_mask"))).numpy()
                               for f in feeds])
        fp32 = np.concatenate([ck.model(*(torch.from_numpy(f[k]) for k in
                                          ("image", "input_ids", "attention_mask"))).numpy()
                               for f in feeds])
    scale = float(fp32.max() - fp32.min())
    err, int8_err = np.abs(onnx_out - fake).max(), np.abs(onnx_out - fp32).max()
    print(f"QAT ONNX vs fake-INT8 torch: max abs {err:.3g} ({err / scale:.2g} of the range "
          f"{scale:.3g}); vs FP32 {int8_err:.3g}")
    assert err <= 0.05 * scale and err <= 0.1 * int8_err
    assert (onnx_out.argmax(1) == fake.argmax(1)).mean() >= 0.95


def test_training_changes_the_weights_and_records_the_run(tiny_qat, tiny_run):
    from safetensors.numpy import load_file

    before, after = load_file(str(tiny_run / "best.safetensors")), load_file(
        str(tiny_qat / "best.safetensors"))
    assert before.keys() == after.keys()
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(moved) > len(before) // 2
    record = json.loads((tiny_qat / "qat.json").read_text())
    assert len(record["loss"]) == 3 and all(np.isfinite(record["loss"]))
    assert record["target"] == "tensorrt" and record["config"]["steps"] == 3
    assert record["points"]["weight"] > 0 and record["points"]["act"] > 0
    assert all(s > 0 for s in record["scales"].values())
    assert {"fp32_accuracy", "fake_int8_accuracy", "agreement"} <= set(record["after"])
    assert json.loads((tiny_qat / "config.json").read_text())["train"]["qat"]["steps"] == 3


def test_the_qat_export_goes_through_parity_as_int8(qat_export, tiny_qat, tiny_data, tmp_path):
    import onnx

    from toolkit.export.graph import get_metadata

    meta = get_metadata(onnx.load(str(qat_export["result"].path)))
    assert meta.precision == "int8" and meta.extra["target"] == "tensorrt" and meta.extra["qat"]
    report = tmp_path / "parity.json"
    r = CliRunner().invoke(app, ["parity", "--reference", str(tiny_qat), "--candidate",
                                 str(qat_export["result"].path), "--data", str(tiny_data),
                                 "--json", str(report)])
    assert r.exit_code in (0, 1), r.output  # a verdict either way, not an error
    evidence = json.loads(report.read_text())
    assert evidence["outputs"][0]["top1"] is not None and evidence["n"] > 0


def test_stored_scales_that_do_not_fit_the_graph_are_refused(qat_export, tiny_qat, tmp_path):
    import shutil

    import onnx

    from toolkit.export.graph import ExportError
    from toolkit.export.qat import stored_scales

    fp32 = onnx.load(str(qat_export["result"].path.parent / "model.fp32.onnx"))
    run = tmp_path / "run"
    shutil.copytree(tiny_qat, run)
    record = json.loads((run / "qat.json").read_text())
    record["scales"].pop(next(iter(record["scales"])))
    (run / "qat.json").write_text(json.dumps(record))
    with pytest.raises(ExportError, match="without a scale"):
        stored_scales(run, fp32)


# ------------------------------------------------------------------ bad input, one line each


def _qat_cli(*args):
    return CliRunner().invoke(app, ["qat", *map(str, args)])


def _one_line_error(r, *words):
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert text.startswith("error:") and all(w in text for w in words), r.output


def test_qat_without_calibration_data_is_a_clear_error(tiny_run, tmp_path):
    r = _qat_cli("--checkpoint", tiny_run, "--out", tmp_path / "x")
    _one_line_error(r, "calibration", "--calibration DATA")
    assert not (tmp_path / "x").exists()


def test_qat_needs_at_least_one_step(tiny_run, tiny_data, tmp_path):
    r = _qat_cli("--checkpoint", tiny_run, "--calibration", tiny_data, "--out", tmp_path / "x",
                 "--steps", "0")
    _one_line_error(r, "--steps must be >= 1")
    assert list(tmp_path.iterdir()) == []


def test_qat_on_a_directory_that_is_not_a_run(tiny_data, tmp_path):
    (tmp_path / "notarun").mkdir()
    r = _qat_cli("--checkpoint", tmp_path / "notarun", "--calibration", tiny_data, "--out",
                 tmp_path / "x")
    _one_line_error(r, "not a toolkit run directory")
    assert not (tmp_path / "x").exists()


def test_qat_refuses_an_output_that_exists_as_a_file(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "taken"
    out.write_text("keep me")
    r = _qat_cli("--checkpoint", tiny_run, "--calibration", tiny_data, "--out", out)
    _one_line_error(r, "already exists", "a file")
    assert out.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
