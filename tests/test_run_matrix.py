"""bench/run_matrix.py end to end on the tiny preset (one iteration): files written, every
artifact at every batch, ratios against the run that is measured once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_matrix_tiny(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_matrix.py"), "--presets", "tiny",
         "--batches", "1,2", "--iters", "1", "--warmup", "0", "--threads", "1",
         "--calib-samples", "8", "--work", str(tmp_path / "work"), "--results", str(results)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (js,) = results.glob("*.json")
    (md,) = results.glob("*.md")
    rows = json.loads(js.read_text())["presets"]["tiny"]["results"]
    names = [Path(r["artifact"]).name for r in rows]
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"):
        assert names.count(name) == 2  # batches 1 and 2
    assert [r["role"] for r in rows].count("reference") == 0  # the run is an artifact: reused
    assert all(r["speedup_vs_torch"]["compute_only"] > 0 for r in rows if r["kind"] == "onnx")
    assert "| model.int8-cpu.onnx |" in md.read_text()
