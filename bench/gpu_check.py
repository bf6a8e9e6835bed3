"""The prepared GPU check (bench/gpu_check.sh runs this): everything this project wants measured
or tried on a machine with an NVIDIA GPU, in one go, within a time budget.

    bench/gpu_check.sh                     # writes bench/results/gpu-check-<host>-<date>.{json,md}
    bench/gpu_check.sh --dry-run           # what is here and what would run; runs nothing heavy
    bench/gpu_check.sh --budget-seconds 300 --results /tmp/out

Stages, each skipped with its reason when what it needs is missing or the budget is spent:
  1. environment: GPU, driver and CUDA (nvidia-smi), torch and its CUDA, TensorRT, cuda-python,
     ONNX Runtime and its providers
  2. the test markers that need a GPU: pytest -m "gpu or tensorrt"
  3. toolkit bench of the `seed` preset (fresh seeded weights: latency does not depend on them):
     FP32 and FP16 (autocast), eager and CUDA graphs, batch 1, 32 and 256, L = 128, against the
     figures the issue measured on the H200 before the project (within 15%?)
  4. a short training loop of `seed` at batch 32 under bf16 autocast, as toolkit.train runs on
     CUDA (synthetic batches: forward, backward, AdamW): samples/s and peak GPU memory
  5. with TensorRT: FP32, FP16 and INT8 engines of `seed`: build -> inspect -> parity -> bench

Nothing is installed and no network is used: it runs with what the machine has. On a machine
without a GPU it says so and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # export_table.make_untrained_run, run_matrix.make_artifacts

# The reference figures: PyTorch 2.11 on the H200, `seed`, L = 128, measured before the
# project. (torch_precision, torch_mode, batch) -> (what, value, unit)
TARGETS = {("fp32", "eager", 1): ("p50 latency", 9.4, "ms"),
           ("fp16", "eager", 1): ("p50 latency", 11.7, "ms"),
           ("fp16", "cuda_graph", 1): ("p50 latency", 1.85, "ms"),
           ("fp16", "eager", 256): ("throughput", 6547.0, "samples/s")}
TOLERANCE = 0.15
SEQ = 128
BATCHES = (1, 32, 256)
VARIANTS = (("fp32", "eager"), ("fp16", "eager"), ("fp32", "cuda_graph"), ("fp16", "cuda_graph"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, seconds: float) -> bool:
        """Is there time for a step expected to take about `seconds`?"""
        return self.left() >= seconds


# ------------------------------------------------------------------ 1. environment


def _run(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)


def environment() -> dict:
    env: dict = {"host": platform.node(), "platform": platform.platform(),
                 "python": platform.python_version(), "nvidia_smi": None}
    if shutil.which("nvidia-smi"):
        rc, out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"])
        _, head = _run(["nvidia-smi"])
        cuda = next((part.split(":", 1)[1].strip().split()[0] for part in head.split("|")
                     if "CUDA Version" in part), None)
        env["nvidia_smi"] = {"gpus": out.splitlines() if rc == 0 else [], "error": None if rc == 0
                             else out[-300:], "cuda_version": cuda}
    try:
        import torch

        env["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                        "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            env["torch"]["device"] = torch.cuda.get_device_name(0)
            env["torch"]["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError as e:
        env["torch"] = {"error": str(e)}
    from toolkit.errors import ToolkitError

    try:
        from toolkit.runtime.trt_plan import import_tensorrt

        env["tensorrt"] = {"version": import_tensorrt().__version__}
    except ToolkitError as e:
        env["tensorrt"] = {"error": str(e).split(". Install")[0]}
    try:
        import cuda.bindings

        from toolkit.runtime.cuda_mem import device_info

        gpu = device_info()
        env["cuda_python"] = {"version": getattr(cuda.bindings, "__version__", "?"),
                              "gpu": gpu.name, "compute_capability": gpu.compute_capability,
                              "integrated": gpu.integrated}
    except (ImportError, ToolkitError) as e:
        env["cuda_python"] = {"error": str(e)[:300]}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = {"version": ort.__version__,
                              "providers": ort.get_available_providers()}
    except ImportError as e:
        env["onnxruntime"] = {"error": str(e)}
    return env


def has_torch_cuda(env: dict) -> bool:
    return bool(env.get("torch", {}).get("cuda_available"))


def has_gpu(env: dict) -> bool:
    smi = env.get("nvidia_smi") or {}
    return bool(smi.get("gpus")) or has_torch_cuda(env) or "gpu" in env.get("cuda_python", {})


def has_tensorrt(env: dict) -> bool:
    return "version" in env.get("tensorrt", {}) and "gpu" in env.get("cuda_python", {})


# ------------------------------------------------------------------ 2. GPU tests


def gpu_tests(budget: Budget) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-q", "-rs", "-p",
           "no:cacheprovider", str(REPO / "tests")]
    limit = max(60.0, min(240.0, budget.left() / 3))
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=REPO)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        rc = f"timeout after {limit:.0f} s"
    lines = out.strip().splitlines()
    return {"command": "pytest -m 'gpu or tensorrt' -q -rs tests", "returncode": rc,
            "seconds": round(time.monotonic() - t0, 1),
            "summary": lines[-1] if lines else "", "skips": [x for x in lines
                                                             if x.startswith("SKIPPED")][:20],
            "failures": [x for x in lines if x.startswith(("FAILED", "ERROR"))][:20]}


# ------------------------------------------------------------------ 3. toolkit bench of seed


def seed_run(work: Path) -> tuple[Path, Path]:
    """A `seed` run directory with fresh seeded weights, and the small dataset it names."""
    from export_table import make_untrained_run  # bench/export_table.py

    from toolkit.config import DataConfig
    from toolkit.data.synthetic import generate

    data = work / "data"
    if not (data / "dataset.json").exists():
        generate(data, DataConfig(scenes=80, image_size=64, seed=0))
    run = work / "seed-run"
    if not (run / "best.safetensors").exists():
        make_untrained_run("seed", str(data), run)
    return run, data


def bench_seed(run: Path, budget: Budget, iters: int) -> dict:
    from toolkit.bench import (Artifact, ArtifactKind, BenchConfig, BenchError, TorchMode,
                               TorchPrecision, markdown_table, run_bench)
    from toolkit.config import Device

    rows, skipped, notes = [], [], []
    for precision, mode in VARIANTS:
        if not budget.allows(60):
            skipped.append(f"{precision} {mode}: the time budget was spent")
            continue
        log(f"bench seed {precision} {mode}, batches {BATCHES}, L={SEQ}")
        cfg = BenchConfig((Artifact(ArtifactKind.checkpoint, str(run)),), device=Device.cuda,
                          batches=BATCHES, seq=SEQ, warmup=3, iters=iters, compare=False,
                          torch_precision=TorchPrecision(precision), torch_mode=TorchMode(mode))
        try:
            rows += run_bench(cfg, step=log)["results"]
        except BenchError as e:
            notes.append(f"{precision} {mode}: {e}")
    report = {"results": rows}
    return {"rows": rows, "skipped": skipped, "errors": notes, "targets": against_targets(rows),
            "table": markdown_table(report) if rows else ""}


def against_targets(rows: list[dict]) -> list[dict]:
    out = []
    for (precision, mode, batch), (what, want, unit) in TARGETS.items():
        row = next((r for r in rows if (r["precision"], r["mode"], r["batch"]) ==
                    (precision, mode, batch)), None)
        got = None if row is None else (row["compute_only"]["p50_ms"] if unit == "ms"
                                        else row["compute_only"]["throughput_per_s"])
        out.append({"variant": f"{precision} {mode} batch {batch}", "what": what, "unit": unit,
                    "target": want, "measured": got,
                    "ratio": None if got is None else got / want,
                    "within_15pct": None if got is None else abs(got / want - 1) <= TOLERANCE})
    return out


# ------------------------------------------------------------------ 4. training loop


def train_loop(budget: Budget, batch: int = 32, steps: int = 30, warmup: int = 5,
               preset_name: str = "seed", device: str = "cuda") -> dict:
    """Forward, backward and AdamW step on random batches under bf16 autocast (the autocast
    toolkit.train uses on CUDA); samples/s over the timed steps, peak allocated GPU memory."""
    import torch
    from torch import nn

    from toolkit.config import preset
    from toolkit.model import DualModalNet

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    cfg = preset(preset_name)
    model = DualModalNet(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    s, L = cfg.image_size, cfg.text.max_length
    image = torch.rand(batch, 3, s, s, device=device)
    ids = torch.randint(0, cfg.text.vocab_size, (batch, L), device=device)
    mask = torch.ones(batch, L, dtype=torch.int64, device=device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timed, t0 = 0, time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn(model(image, ids, mask), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        timed += step >= warmup
        if step >= warmup and not budget.allows(30):
            break
    sync()
    seconds = time.perf_counter() - t0
    return {"preset": preset_name, "batch": batch, "seq": L, "image_size": s,
            "steps_timed": timed, "samples_per_s": batch * timed / seconds,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "architecture_doc_gib": 12, "loss_last": loss.item()}


# ------------------------------------------------------------------ 5. TensorRT engines


def engine_parity(run: Path, data: Path, plan: Path, samples: int = 64) -> dict:
    """The engine against PyTorch FP32 on the first held-out rows, with the tolerance of the
    plan's precision (config.TOLERANCES, as toolkit parity uses for an ONNX export)."""
    import numpy as np

    from toolkit.checkpoint import load_checkpoint
    from toolkit.config import TOLERANCES, Precision
    from toolkit.export import samples as S
    from toolkit.runtime.torch_runner import TorchRunner
    from toolkit.runtime.trt_runner import TensorRTRunner
    from toolkit.verify import verify

    ck = load_checkpoint(run)
    rows = S.load_rows(ck, data, "val")
    n = min(samples, len(rows))
    with TensorRTRunner(plan) as engine:
        top = engine.shape_profile["image"]["max"][0]
        precision = Precision(engine.sidecar["precision"])
        feeds = (S.batch(ck, rows, np.arange(start, min(start + top, n)))
                 for start in range(0, n, top))
        result = verify(TorchRunner.from_checkpoint(ck), engine, feeds, TOLERANCES[precision],
                        labels=rows.labels[:n])
    return {"passed": result.passed, "rows": n, "report": result.report()}


def tensorrt_stage(run: Path, data: Path, work: Path, budget: Budget, iters: int) -> dict:
    from run_matrix import make_artifacts  # bench/run_matrix.py: exports and engines

    from toolkit.bench import Artifact, ArtifactKind, BenchConfig, markdown_table, run_bench
    from toolkit.config import Device
    from toolkit.engines.tensorrt import format_inspection, inspect_engine

    if not budget.allows(240):
        return {"skipped": "the time budget was spent before the TensorRT stage"}
    log("export seed FP32/FP16/INT8 and build their engines (this takes minutes)")
    (work / "trt").mkdir(parents=True, exist_ok=True)
    artifacts = make_artifacts(run, data, work / "trt", calib=32, engines=True, log=log)
    plans = [Path(a.path) for a in artifacts if a.kind is ArtifactKind.engine]
    out: dict = {"engines": []}
    for plan in plans:
        entry: dict = {"plan": plan.name}
        inspected = inspect_engine(plan)
        layers = inspected["layers"] or []
        entry["layers"] = len(layers)
        entry["precisions"] = sorted({r["precision"] for r in layers})
        entry["inspect_head"] = format_inspection(inspected).splitlines()[:3]
        entry["parity"] = engine_parity(run, data, plan)
        if budget.allows(45):
            cfg = BenchConfig((Artifact(ArtifactKind.engine, str(plan)),), device=Device.cuda,
                              batches=(1, 32), seq=SEQ, warmup=3, iters=iters, compare=True,
                              reference=str(run))
            entry["bench"] = run_bench(cfg, step=log)["results"]
        else:
            entry["bench"] = "skipped: the time budget was spent"
        out["engines"].append(entry)
    rows = [r for e in out["engines"] if isinstance(e["bench"], list) for r in e["bench"]]
    out["table"] = markdown_table({"results": rows}) if rows else ""
    return out


# ------------------------------------------------------------------ the report


def markdown(report: dict) -> str:
    env = report["environment"]
    smi = env.get("nvidia_smi") or {}
    lines = [f"# GPU check, {env['host']}, {report['date']}", "",
             f"`{report['command']}` ({report['seconds']:.0f} s, budget "
             f"{report['budget_seconds']:.0f} s)", "",
             "| what | found |", "|---|---|",
             f"| GPU (nvidia-smi) | {'; '.join(smi.get('gpus') or ['none'])} |",
             f"| CUDA (driver) | {smi.get('cuda_version')} |"]
    for key in ("torch", "tensorrt", "cuda_python", "onnxruntime"):
        lines.append(f"| {key} | {json.dumps(env.get(key))} |")
    t = report.get("tests")
    lines += ["", "## GPU tests", "", t["summary"] if isinstance(t, dict) else str(t)]
    if isinstance(t, dict):
        lines += [f"- {x}" for x in t["failures"] + t["skips"]]
    b = report.get("bench")
    lines += ["", f"## toolkit bench, seed, L={SEQ} (fresh seeded weights)", ""]
    if isinstance(b, dict):
        lines += [b["table"], "", "| variant | what | target | measured | ratio | within 15% |",
                  "|---|---|---|---|---|---|"]
        for x in b["targets"]:
            m = "-" if x["measured"] is None else f"{x['measured']:.2f} {x['unit']}"
            r = "-" if x["ratio"] is None else f"{x['ratio']:.2f}"
            lines.append(f"| {x['variant']} | {x['what']} | {x['target']} {x['unit']} | {m} | "
                         f"{r} | {x['within_15pct']} |")
        lines += [f"- skipped: {x}" for x in b["skipped"]] + [f"- error: {x}" for x in b["errors"]]
    else:
        lines.append(str(b))
    tr = report.get("training")
    lines += ["", "## Training loop (seed, batch 32, bf16 autocast)", ""]
    lines.append(str(tr) if not isinstance(tr, dict) else
                 f"{tr['samples_per_s']:.1f} samples/s over {tr['steps_timed']} steps; peak "
                 f"allocated {tr['peak_allocated_gib'] or 0:.1f} GiB (architecture document: "
                 f"about {tr['architecture_doc_gib']} GB per GPU)")
    trt = report.get("tensorrt")
    lines += ["", "## TensorRT", ""]
    if isinstance(trt, dict) and "engines" in trt:
        for e in trt["engines"]:
            lines.append(f"- {e['plan']}: {e['layers']} layers, precisions {e['precisions']}, "
                         f"parity {'passed' if e['parity']['passed'] else 'FAILED'} on "
                         f"{e['parity']['rows']} rows")
        lines += ["", trt["table"]]
    else:
        lines.append(str(trt))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="report what is here and the plan")
    ap.add_argument("--budget-seconds", type=float, default=480)
    ap.add_argument("--iters", type=int, default=20, help="timed calls per bench row")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--work", default=None, help="runs, exports, engines [a temp dir]")
    a = ap.parse_args(argv)
    started = time.monotonic()
    budget = Budget(a.budget_seconds)
    env = environment()
    print(json.dumps(env, indent=2))
    plan = ["environment", "pytest -m 'gpu or tensorrt'",
            f"toolkit bench seed {[' '.join(v) for v in VARIANTS]} batches {BATCHES} L={SEQ}",
            "training loop seed batch 32 bf16", "TensorRT FP32/FP16/INT8: build, inspect, "
            "parity, bench" + ("" if has_tensorrt(env) else " (skipped: no TensorRT)")]
    if a.dry_run:
        print("dry run; would run:\n  " + "\n  ".join(plan))
        return 0
    if not has_gpu(env):
        print("no NVIDIA GPU found (nvidia-smi, torch and cuda-python see none): nothing to "
              "check here; run this on a machine with an NVIDIA GPU")
        return 0
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict = {"command": "bench/gpu_check.sh " + " ".join(argv or sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d"), "budget_seconds": a.budget_seconds,
                    "environment": env}
    report["tests"] = gpu_tests(budget)
    log(f"tests: {report['tests']['summary']}")
    if has_torch_cuda(env):
        run, data = seed_run(work)
        report["bench"] = bench_seed(run, budget, a.iters)
        report["training"] = (train_loop(budget) if budget.allows(45)
                              else "skipped: the time budget was spent")
    else:
        run = data = None
        report["bench"] = report["training"] = "skipped: torch has no CUDA here"
    if not has_tensorrt(env):
        report["tensorrt"] = f"skipped: {env['tensorrt'].get('error', 'no GPU for TensorRT')}"
    elif run is None:
        report["tensorrt"] = "skipped: needs torch with CUDA for the seed run and parity"
    else:
        report["tensorrt"] = tensorrt_stage(run, data, work, budget, a.iters)
    report["seconds"] = time.monotonic() - started
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-check-{platform.node() or 'machine'}-{report['date']}"
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (results / f"{stem}.md").write_text(markdown(report))
    log(f"wrote {results / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
