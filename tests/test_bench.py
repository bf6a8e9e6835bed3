"""`toolkit bench` on the tiny ONNX export: report structure, sane statistics, clear errors.

Tiny iteration counts; never a wall-clock threshold."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from toolkit.bench import parse_batches, summarize, time_calls
from toolkit.cli import app

runner = CliRunner()


def _bench(*args):
    return runner.invoke(app, ["bench", *args])


def _check_timing(t, batch):
    assert t["iters"] >= 1 and t["batch"] == batch
    assert 0 < t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"]
    assert t["mean_ms"] > 0 and t["throughput_per_s"] > 0
    assert t["throughput_per_s"] == pytest.approx(batch * 1000 / t["mean_ms"])


def test_bench_onnx_with_reference(tiny_onnx, tiny_run, tmp_path):
    out = tmp_path / "bench.json"
    res = _bench("--onnx", str(tiny_onnx.path), "--batch", "1,3", "--seq", "8", "--warmup", "1",
                 "--iters", "3", "--threads", "1", "--reference", str(tiny_run),
                 "--json", str(out))
    assert res.exit_code == 0, res.output
    assert "toolkit bench" in res.output  # the table (columns wrap at 80)
    report = json.loads(out.read_text())
    assert {"machine", "config", "results"} <= set(report)
    rows = report["results"]
    cands = [r for r in rows if r["role"] == "candidate"]
    refs = [r for r in rows if r["role"] == "reference"]
    assert [r["batch"] for r in cands] == [1, 3] and [r["batch"] for r in refs] == [1, 3]
    assert {r["backend"] for r in cands} == {"onnxruntime"} and refs[0]["backend"] == "torch"
    for r in rows:
        assert r["seq"] == 8 and r["model_bytes"] > 0 and r["peak_rss_bytes"] > 0
        for kind in ("compute_only", "end_to_end"):
            _check_timing(r[kind], r["batch"])
            assert r[kind]["iters"] == 3
    for r in cands:
        assert r["reference"] == str(tiny_run)
        for kind, ratio in r["speedup_vs_torch"].items():
            ref = next(x for x in refs if x["batch"] == r["batch"])
            assert ratio == pytest.approx(ref[kind]["mean_ms"] / r[kind]["mean_ms"])


def test_bench_checkpoint_and_duration_without_compare(tiny_run, tmp_path):
    out = tmp_path / "b.json"
    res = _bench("--checkpoint", str(tiny_run), "--batch", "2", "--seq", "6", "--warmup", "0",
                 "--duration", "0.05", "--no-compare", "--json", str(out))
    assert res.exit_code == 0, res.output
    (row,) = json.loads(out.read_text())["results"]
    assert row["backend"] == "torch" and row["speedup_vs_torch"] is None
    _check_timing(row["compute_only"], 2)


def test_no_reference_found_is_a_note_not_a_failure(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here or beside the export
    out = tmp_path / "b.json"
    res = _bench("--onnx", str(tiny_onnx.path), "--batch", "1", "--seq", "4", "--iters", "1",
                 "--warmup", "0", "--json", str(out))
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["results"]
    assert [r["role"] for r in rows] == ["candidate"]


def test_reference_found_by_hash(tiny_onnx, tiny_run, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_run, tmp_path / "runs" / "mine")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "b.json"
    res = _bench("--onnx", str(tiny_onnx.path), "--batch", "1", "--seq", "4", "--iters", "1",
                 "--warmup", "0", "--json", str(out))
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["reference"].endswith("mine") and rows[1]["role"] == "reference"


@pytest.mark.parametrize("args, match", [
    (["--batch", "1,x"], "comma-separated"),
    (["--batch", "0"], "comma-separated"),
    (["--seq", "100000"], "max_length"),
    (["--iters", "2", "--duration", "1"], "exactly one"),
])
def test_bad_options(tiny_onnx, args, match):
    res = _bench("--onnx", str(tiny_onnx.path), "--no-compare", "--warmup", "0", *args)
    assert res.exit_code == 1
    assert match in res.output


def test_bad_paths_and_devices(tiny_onnx, tmp_path):
    res = _bench("--onnx", str(tmp_path / "nope.onnx"))
    assert res.exit_code == 1 and "does not exist" in res.output
    res = _bench()
    assert res.exit_code == 1 and "nothing to measure" in res.output
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        res = _bench("--onnx", str(tiny_onnx.path), "--device", "cuda", "--no-compare")
        assert res.exit_code == 1 and "cuda" in res.output


def test_plot_needs_matplotlib(tiny_onnx, tmp_path):
    import importlib.util

    res = _bench("--onnx", str(tiny_onnx.path), "--batch", "1", "--seq", "4", "--iters", "1",
                 "--warmup", "0", "--no-compare", "--plot", str(tmp_path / "p.png"))
    if importlib.util.find_spec("matplotlib") is None:
        assert res.exit_code == 1 and "matplotlib" in res.output
    else:
        assert res.exit_code == 0, res.output
        assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind


def test_statistics_helpers():
    t = summarize([0.001, 0.002, 0.003, 0.010], batch=4, timer="perf_counter")
    assert t.p50_ms <= t.p90_ms <= t.p99_ms <= 10.0 and t.mean_ms == pytest.approx(4.0)
    calls = []
    assert len(time_calls(lambda: calls.append(1), warmup=2, iters=5, duration=None)) == 5
    assert len(calls) == 7
    assert parse_batches("1,8,32") == (1, 8, 32)
