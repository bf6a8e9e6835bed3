"""--auto-fallback on the tiny seeded run: the tiny model's INT8 graph already meets the real
tolerance, so a strict one (an absolute bound between the plain INT8 error and FP32's) forces a
search; and one nothing meets forces the all-float-misses path."""

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import config
from toolkit.cli import app
from toolkit.config import ExportConfig, Int8Config, Precision, Tolerance

runner = CliRunner()


@pytest.fixture(scope="module")
def slice_(tiny_run, tiny_data):
    from toolkit.checkpoint import load_checkpoint
    from toolkit.export import fallback, samples

    ck = load_checkpoint(tiny_run)
    return fallback.heldout_slice(ck, samples.load_rows(ck, tiny_data, "val"), 1000)


def _strict(monkeypatch, precision, tol):
    t = dict(config.TOLERANCES)
    t[precision] = tol
    monkeypatch.setattr("toolkit.export.pipeline.TOLERANCES", t)


def _export(tiny_run, tiny_data, tiny_onnx, out, precision=Precision.int8):
    from toolkit.export.pipeline import export

    # Calibrated as the tiny_int8 fixture is (same rows, same graph): the same QDQ graph.
    int8 = Int8Config(str(tiny_data), samples=32) if precision is Precision.int8 else None
    return export(ExportConfig(str(tiny_run), str(out), precision=precision, data=str(tiny_data),
                               fp32_source=str(tiny_onnx.path), int8=int8, auto_fallback=True))


def test_keeping_every_compute_node_float_gives_back_the_fp32_graph(tiny_onnx, tiny_int8,
                                                                    slice_):
    import onnx

    from toolkit.export import fallback, int8

    fp32, qdq = onnx.load(str(tiny_onnx.path)), onnx.load(str(tiny_int8.path))
    nodes = fallback.compute_nodes(fp32)
    back = int8.keep_float(qdq, fp32, nodes)
    assert not [n for n in back.graph.node if "QuantizeLinear" in n.op_type]
    feeds, _ = slice_
    np.testing.assert_allclose(fallback.logits(back, feeds), fallback.logits(fp32, feeds),
                               atol=1e-5)
    one = int8.keep_float(qdq, fp32, nodes[:1])  # one node float, the rest still INT8
    assert int8.check_qdq(one, config.Int8Target.tensorrt, float_nodes=nodes[:1])["float_ops"] == 1


def test_auto_fallback_meets_the_tolerance_and_records_the_nodes(tiny_run, tiny_data, tiny_onnx,
                                                                 tiny_int8, slice_, tmp_path,
                                                                 monkeypatch):
    import onnx

    from toolkit.compare import compare
    from toolkit.export import fallback
    from toolkit.export.graph import get_metadata

    from toolkit.checkpoint import load_checkpoint
    from toolkit.export import int8, samples

    feeds, labels = slice_
    fp32, qdq = onnx.load(str(tiny_onnx.path)), onnx.load(str(tiny_int8.path))
    ref = fallback.logits(fp32, feeds)

    def error(model):
        return float(np.abs(fallback.logits(model, feeds) - ref).max())

    # The bound: what keeping the more sensitive half in float gives (the search's own ranking,
    # on the same rows), so plain INT8 misses it and the search's first bisection step meets it.
    ck = load_checkpoint(tiny_run)
    rows = samples.load_rows(ck, tiny_data, "val")
    rank_rows = [samples.batch(ck, rows, np.array([i])) for i in range(fallback.RANK_ROWS)]
    nodes = fallback.compute_nodes(fp32)
    order = [n for n, _ in fallback.rank(fp32, qdq, nodes, rank_rows, "int8")]
    half = error(int8.keep_float(qdq, fp32, order[:len(order) // 2]))
    assert half < error(qdq)
    tol = Tolerance(atol=half * 1.001)
    _strict(monkeypatch, Precision.int8, tol)

    out = tmp_path / "m.int8.onnx"
    result = _export(tiny_run, tiny_data, tiny_onnx, out)
    fb = result.fallback
    n = len(nodes)
    assert fb.compute_ops == n and 0 < len(fb.kept_float) <= n // 2
    assert fb.kept_float == order[:len(fb.kept_float)]  # the most sensitive first
    assert fb.trials[0].kept == 0 and not fb.trials[0].passed
    model = onnx.load(str(out))
    meta = get_metadata(model).extra
    assert meta["float_nodes"] == fb.kept_float == meta["auto_fallback"]["kept_float"]
    assert meta["float_ops"] == len(fb.kept_float)
    # The written file itself meets the tolerance on the slice.
    assert compare({"logits": ref}, {"logits": fallback.logits(model, feeds)}, tol, labels).passed
    producer = {o: p.op_type for p in model.graph.node for o in p.output}
    for node in model.graph.node:
        if node.name in fb.kept_float:
            assert all(producer.get(x) != "DequantizeLinear" for x in node.input), node.name


@pytest.mark.parametrize("precision", [Precision.fp16, Precision.int8])
def test_when_even_all_float_misses_nothing_is_written(tiny_run, tiny_data, tiny_onnx, tmp_path,
                                                      monkeypatch, precision):
    from toolkit.export.fallback import FallbackError

    _strict(monkeypatch, precision, Tolerance(min_top1=1.01))  # nothing agrees on 101% of rows
    out = tmp_path / "m.onnx"
    with pytest.raises(FallbackError, match="even with all") as e:
        _export(tiny_run, tiny_data, tiny_onnx, out, precision)
    assert "top-1 agreement" in str(e.value) and "nothing was written" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_auto_fallback(tiny_run, tiny_data, tiny_onnx, tmp_path):
    import onnx

    from toolkit.export.graph import get_metadata

    out = tmp_path / "m.int8.onnx"
    r = runner.invoke(app, ["export", "--checkpoint", str(tiny_run), "--precision", "int8",
                            "--from-onnx", str(tiny_onnx.path), "--calibration", str(tiny_data),
                            "--calib-samples", "16", "--data", str(tiny_data), "--out", str(out),
                            "--auto-fallback", "--fallback-samples", "20"])
    assert r.exit_code == 0, r.output
    assert "auto-fallback:" in r.output and "compute ops kept in float" in r.output
    record = get_metadata(onnx.load(str(out))).extra["auto_fallback"]
    assert record["rows"] == 20 and record["trials"][0]["kept"] == 0


def test_cli_auto_fallback_needs_a_reduced_precision(tiny_run, tiny_data, tmp_path):
    r = runner.invoke(app, ["export", "--checkpoint", str(tiny_run), "--precision", "fp32",
                            "--data", str(tiny_data), "--out", str(tmp_path / "m.onnx"),
                            "--auto-fallback"])
    assert r.exit_code == 1 and "--auto-fallback only applies" in r.output
    assert list(tmp_path.iterdir()) == []
