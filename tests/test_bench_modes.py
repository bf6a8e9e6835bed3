"""`toolkit bench`, issue 19: PyTorch FP16 / CUDA graphs for checkpoints, device memory of every
backend, and both timings on the same shapes. The CUDA parts run under the `gpu` marker."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit import bench
from toolkit.bench import (Artifact, ArtifactKind, BenchConfig, BenchError, DeviceMemory,
                           TorchMode, TorchPrecision, run_bench, table_rows)
from toolkit.cli import app
from toolkit.config import Device

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))
from trt_fakes import FakeCudart  # noqa: E402  (tests/runtime/trt_fakes.py)


def test_both_timings_run_the_backend_on_the_shapes_the_row_records(tiny_onnx, monkeypatch):
    """What the runner receives during compute-only and during end-to-end is recorded, and is
    the same (B, L) for both: the question tokenizes to --seq tokens on both paths."""
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    seen = []
    real = OnnxRuntimeRunner._infer
    monkeypatch.setattr(OnnxRuntimeRunner, "_infer",
                        lambda self, feed: (seen.append(_shapes(feed)), real(self, feed))[1])
    cfg = BenchConfig((Artifact(ArtifactKind.onnx, str(tiny_onnx.path)),), batches=(2,), seq=7,
                      warmup=0, iters=2, compare=False, threads=1)
    (row,) = run_bench(cfg)["results"]
    want = {"image": [2, 3, 32, 32], "input_ids": [2, 7], "attention_mask": [2, 7]}
    assert row["compute_shapes"] == want and row["end_to_end_shapes"] == want
    assert seen and all(s == want for s in seen)  # 2 compute + 2 end-to-end calls
    assert len(seen) == 4
    assert "(other shapes)" not in table_rows({"results": [row]})[0][10]
    assert row["peak_device_bytes"] is None and row["device_memory"] is None  # CPU


def _shapes(feed):
    return {k: list(v.shape) for k, v in feed.items()}


def test_the_table_marks_rows_whose_timings_ran_on_other_shapes():
    timing = dict(timer="perf_counter", iters=1, batch=1, p50_ms=1.0, p90_ms=1.0, p99_ms=1.0,
                  mean_ms=1.0, throughput_per_s=1000.0)
    row = dict(artifact="m.onnx", backend="onnxruntime", precision="fp32", mode="-", batch=1,
               model_bytes=1, peak_rss_bytes=1, peak_device_bytes=3 << 20, compute_only=timing,
               end_to_end=timing, speedup_vs_torch=None,
               compute_shapes={"input_ids": [1, 16]}, end_to_end_shapes={"input_ids": [1, 9]})
    cells = dict(zip(bench.TABLE_HEADER, table_rows({"results": [row]})[0]))
    assert cells["end-to-end p50 ms"] == "1.00 (other shapes)"
    assert cells["device MiB"] == "3" and cells["mode"] == "-"


@pytest.mark.parametrize("option", [("--torch-precision", "fp16"),
                                    ("--torch-mode", "cuda_graph")])
def test_fp16_and_cuda_graphs_are_for_a_gpu(tiny_run, option):
    res = CliRunner().invoke(app, ["bench", "--checkpoint", str(tiny_run), "--batch", "1",
                                   "--seq", "4", "--iters", "1", "--no-compare", *option])
    assert res.exit_code == 1 and "add --device cuda" in res.output
    with pytest.raises(BenchError, match="add --device cuda"):
        run_bench(BenchConfig((Artifact(ArtifactKind.checkpoint, str(tiny_run)),),
                              torch_mode=TorchMode.cuda_graph))


def test_device_memory_of_a_cuda_backend_is_what_it_holds_after_the_calls(monkeypatch):
    """ONNX Runtime on CUDA and TensorRT: cudaMemGetInfo's used memory after minus before."""
    from toolkit.runtime import cuda_mem

    rt = FakeCudart()
    monkeypatch.setattr(cuda_mem, "cudart", lambda: rt)
    memory = DeviceMemory(BenchConfig((), device=Device.cuda), ArtifactKind.engine)
    buf = cuda_mem.DeviceBuffer()
    buf.reserve(5 << 20)  # what loading the engine and its buffers took
    engine = types.SimpleNamespace(backend=types.SimpleNamespace(value="tensorrt"))
    assert memory.peak(engine) == 5 << 20 and "cudaMemGetInfo" in memory.method
    cpu_ort = types.SimpleNamespace(
        backend=types.SimpleNamespace(value="onnxruntime"),
        runner=types.SimpleNamespace(session=types.SimpleNamespace(
            get_providers=lambda: ["CPUExecutionProvider"])))
    assert memory.peak(cpu_ort) is None  # ONNX Runtime on the CPU holds no device memory
    buf.free()
    assert DeviceMemory(BenchConfig((), device=Device.cpu), ArtifactKind.onnx).method is None


# ------------------------------------------------------------------ on a GPU


def _cuda_or_skip():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch and an NVIDIA GPU")


@pytest.mark.gpu
def test_cuda_graphs_and_fp16_agree_with_eager(tiny_run):
    """The captured graph replays the eager forward: the same logits (FP32), close ones in FP16;
    one capture per input shape."""
    _cuda_or_skip()
    from toolkit.runtime.predictor import Predictor

    eager = Predictor.load(tiny_run, device="cuda")
    feed, _, _ = bench.bench_inputs(eager, 2, 8)
    want = eager.infer(feed)
    eager.close()
    for precision, tol in ((TorchPrecision.fp32, 1e-4), (TorchPrecision.fp16, 5e-2)):
        cfg = BenchConfig((), device=Device.cuda, torch_precision=precision,
                          torch_mode=TorchMode.cuda_graph)
        p = bench._load_torch_variant(str(tiny_run), cfg)
        try:
            for seed in (0, 1):
                f, _, _ = bench.bench_inputs(p, 2, 8, seed=seed)
                np.testing.assert_allclose(p.infer(f), eager_logits(tiny_run, f), atol=tol,
                                           rtol=tol)
            np.testing.assert_allclose(p.infer(feed), want, atol=tol, rtol=tol)
            assert len(p.runner._graphs) == 1
            p.infer(bench.bench_inputs(p, 3, 8)[0])
            assert len(p.runner._graphs) == 2
        finally:
            p.close()


def eager_logits(run, feed):
    from toolkit.runtime.predictor import Predictor

    with Predictor.load(run, device="cuda") as p:
        return p.infer(feed)


@pytest.mark.gpu
def test_bench_rows_of_a_checkpoint_on_cuda_report_mode_and_memory(tiny_run, tmp_path):
    _cuda_or_skip()
    out = tmp_path / "b.json"
    res = CliRunner().invoke(app, ["bench", "--checkpoint", str(tiny_run), "--device", "cuda",
                                   "--batch", "1,4", "--seq", "8", "--iters", "3", "--warmup",
                                   "1", "--no-compare", "--torch-precision", "fp16",
                                   "--torch-mode", "cuda_graph", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["precision"]) for r in rows] == [("cuda_graph", "fp16")] * 2
    assert all(r["peak_device_bytes"] > 0 for r in rows)
    assert rows[0]["compute_only"]["timer"] == "cuda_events"
