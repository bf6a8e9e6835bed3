"""bench/gpu_check.sh, the prepared GPU check: it parses, its CPU-only and dry-run paths run and
write nothing, and the pieces of its GPU path that the CPU can run do (the rest needs a GPU)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_parses_and_is_executable():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def _run(tmp_path, *args):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # as on a machine without a GPU
    return subprocess.run([shutil.which("bash") or "bash", str(SCRIPT), "--results",
                           str(tmp_path / "results"), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs it all")
def test_without_a_gpu_it_says_so_and_exits_cleanly(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no NVIDIA GPU found" in proc.stdout
    assert '"onnxruntime"' in proc.stdout  # the environment report came first
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_dry_run_lists_the_stages_and_runs_nothing(tmp_path):
    proc = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("pytest -m 'gpu or tensorrt'", "toolkit bench seed", "fp16 cuda_graph",
                  "training loop seed batch 32 bf16", "TensorRT FP32/FP16/INT8"):
        assert stage in proc.stdout, stage
    assert not (tmp_path / "results").exists()


def test_targets_and_the_markdown_report():
    gc = _gpu_check()
    timing = lambda p50, thr: {"p50_ms": p50, "throughput_per_s": thr}  # noqa: E731
    rows = [{"precision": "fp32", "mode": "eager", "batch": 1, "compute_only": timing(9.0, 111)},
            {"precision": "fp16", "mode": "cuda_graph", "batch": 1,
             "compute_only": timing(2.5, 400)},
            {"precision": "fp16", "mode": "eager", "batch": 256,
             "compute_only": timing(40.0, 6400.0)}]
    got = {t["variant"]: t for t in gc.against_targets(rows)}
    assert got["fp32 eager batch 1"]["within_15pct"] is True  # 9.0 vs 9.4 ms
    assert got["fp16 cuda_graph batch 1"]["within_15pct"] is False  # 2.5 vs 1.85 ms
    assert got["fp16 eager batch 256"]["ratio"] == pytest.approx(6400 / 6547)
    assert got["fp16 eager batch 1"]["measured"] is None  # not measured: said so
    env = {"host": "h200", "nvidia_smi": {"gpus": ["NVIDIA H200, 570.1, 143771 MiB"],
                                          "cuda_version": "12.8"},
           "torch": {"version": "2.11.0", "cuda_available": True}, "tensorrt": {"error": "none"}}
    report = {"environment": env, "date": "2026-12-02", "command": "x",
              "seconds": 12.0, "budget_seconds": 480,
              "tests": {"summary": "3 passed", "failures": [], "skips": ["SKIPPED [1] no trt"]},
              "bench": {"table": "| t |", "targets": list(got.values()), "skipped": [],
                        "errors": ["fp16 cuda_graph: cannot be captured"]},
              "training": {"samples_per_s": 120.0, "steps_timed": 30, "peak_allocated_gib": 11.5,
                           "architecture_doc_gib": 12},
              "tensorrt": "skipped: TensorRT is not installed"}
    md = gc.markdown(report)
    assert "| fp16 cuda_graph batch 1 | p50 latency | 1.85 ms | 2.50 ms | 1.35 | False |" in md
    assert "120.0 samples/s over 30 steps; peak allocated 11.5 GiB" in md
    assert "skipped: TensorRT is not installed" in md and "SKIPPED [1] no trt" in md
    assert "| GPU (nvidia-smi) | NVIDIA H200, 570.1, 143771 MiB |" in md


@pytest.mark.slow
def test_the_training_loop_runs(tmp_path):
    """The loop of stage 4, on the tiny preset and the CPU for two steps (seed needs the GPU)."""
    pytest.importorskip("torch")
    gc = _gpu_check()
    out = gc.train_loop(gc.Budget(600), batch=2, steps=2, warmup=1, preset_name="tiny",
                        device="cpu")
    assert out["steps_timed"] == 2 and out["samples_per_s"] > 0
    assert out["peak_allocated_gib"] is None  # no GPU memory on the CPU
