"""`toolkit bench`: latency, throughput, size and memory of artifacts, through the Predictor.

Every artifact (a .plan, an .onnx, a run directory) is loaded with `Predictor.load`, so what is
measured is what an application embedding the runtime gets. Per artifact and batch size, two
timings, named for what they include:

  compute_only  Predictor.infer on a prepared feed (B, L) of token ids and normalized images: the
                backend's call, including its host<->device copies (the runners take and return
                numpy). Host time with time.perf_counter; PyTorch on CUDA: CUDA events around the
                forward pass on inputs already on the GPU, then synchronize.
  end_to_end    Predictor.predict on PNG bytes and question strings: decode, resize, normalize,
                tokenize, infer, softmax.

The question is made of one vocabulary word repeated so that it tokenizes to exactly L tokens, and
the prepared feed is made from the same images and questions through the same preprocessing, so
both timings run the backend on the same (B, L) shapes; each row records the shapes each timing
ran on (`compute_shapes`, `end_to_end_shapes`) and the table marks a row where they differ.

PyTorch checkpoints on CUDA can also be measured in FP16 (`torch.autocast(float16)`, the mixed
precision PyTorch runs) and replayed as CUDA graphs (`torch.cuda.CUDAGraph`, one per input shape):
`torch_precision` and `torch_mode`, for checkpoint artifacts; a reference for the ratio stays FP32
eager. Device memory: PyTorch's peak allocation (torch.cuda.max_memory_allocated, reset per
artifact); for ONNX Runtime on CUDA and TensorRT, what the device has in use after the calls
minus before loading (cudaMemGetInfo, device-wide: other processes' allocations in that time
count too). On the CPU there is none.
With `compare` the artifact's source checkpoint (found by the SHA-256 its metadata records, or
given) is measured the same way in PyTorch eager in the same process, and each row gets the
ratio reference / artifact (above 1: the artifact is faster).

Peak host memory is the process's peak RSS so far (getrusage), so it only grows across rows:
run one artifact per process for an isolated figure.
"""

from __future__ import annotations

import contextlib
import enum
import io
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit.config import Device
from toolkit.errors import ToolkitError
from toolkit.runtime.torch_runner import TorchRunner  # (torch itself is imported when used)


class BenchError(ToolkitError):
    pass


class ArtifactKind(str, enum.Enum):
    engine = "engine"
    onnx = "onnx"
    checkpoint = "checkpoint"


class TorchPrecision(str, enum.Enum):
    fp32 = "fp32"
    fp16 = "fp16"  # torch.autocast("cuda", float16)


class TorchMode(str, enum.Enum):
    eager = "eager"
    cuda_graph = "cuda_graph"  # the forward captured once per input shape and replayed


@dataclass(frozen=True)
class Artifact:
    kind: ArtifactKind
    path: str


@dataclass(frozen=True)
class BenchConfig:
    artifacts: tuple[Artifact, ...]
    device: Device = Device.cpu  # auto: cuda where the backend has it
    batches: tuple[int, ...] = (1, 8, 32)
    seq: int = 128
    warmup: int = 3
    iters: int | None = 20  # exactly this many timed calls, or
    duration: float | None = None  # timed calls until this many seconds have passed
    threads: int | None = None  # intra-op threads (ONNX Runtime, PyTorch)
    compare: bool = True  # PyTorch eager of the source checkpoint, side by side
    reference: str | None = None  # the source checkpoint; default: found by SHA-256
    # How checkpoint artifacts run on CUDA (references stay FP32 eager).
    torch_precision: TorchPrecision = TorchPrecision.fp32
    torch_mode: TorchMode = TorchMode.eager


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); a BenchError for anything else."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise BenchError(f"--batch {text!r} is not a comma-separated list of positive integers "
                         "(e.g. 1,8,32)")
    return values


def _validate(cfg: BenchConfig) -> None:
    if not cfg.artifacts:
        raise BenchError("nothing to measure: pass --engine PLAN, --onnx PATH or --checkpoint RUN")
    if (cfg.iters is None) == (cfg.duration is None):
        raise BenchError("pass exactly one of --iters and --duration")
    if cfg.iters is not None and cfg.iters < 1:
        raise BenchError(f"--iters {cfg.iters} must be at least 1")
    if cfg.duration is not None and cfg.duration <= 0:
        raise BenchError(f"--duration {cfg.duration} must be positive (seconds)")
    if cfg.warmup < 0:
        raise BenchError(f"--warmup {cfg.warmup} must be 0 or more")
    if cfg.seq < 2:
        raise BenchError(f"--seq {cfg.seq} must be at least 2 ([CLS] and [SEP])")
    for b in cfg.batches:
        if b < 1:
            raise BenchError(f"batch size {b} must be at least 1")
    if _torch_options(cfg) and cfg.device is Device.cpu:
        raise BenchError("--torch-precision fp16 and --torch-mode cuda_graph are for PyTorch on "
                         "a GPU; add --device cuda")


def _torch_options(cfg: BenchConfig) -> bool:
    return (cfg.torch_precision, cfg.torch_mode) != (TorchPrecision.fp32, TorchMode.eager)


# ------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Timing:
    timer: str  # perf_counter | cuda_events
    iters: int
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float  # samples (rows) per second, from the mean latency


def summarize(seconds: list[float], batch: int, timer: str) -> Timing:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return Timing(timer, len(ms), batch, float(p50), float(p90), float(p99), mean,
                  batch / (mean / 1000.0))


def time_calls(fn: Callable[[], object], warmup: int, iters: int | None,
               duration: float | None) -> list[float]:
    """Per-call seconds (perf_counter) after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    deadline = None if duration is None else time.perf_counter() + duration
    while (len(out) < iters) if iters is not None else (time.perf_counter() < deadline
                                                        or not out):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------ inputs


def bench_inputs(predictor, batch: int, seq: int, seed: int = 0):
    """(feed, png images, texts) for one batch: random pictures, a question of exactly `seq`
    tokens (one whole-word vocabulary token repeated) padded to nothing."""
    from PIL import Image

    m = predictor.metadata
    if seq > m.max_length:
        raise BenchError(f"--seq {seq} is above the max_length {m.max_length} of "
                         f"{predictor.path} (its position embeddings end there); use --seq "
                         f"{m.max_length} or less")
    word = _single_token_word(predictor.tokenizer)
    text = " ".join([word] * (seq - 2))
    rng = np.random.default_rng(seed)
    s = m.image_size
    pixels = rng.integers(0, 256, size=(batch, s, s, 3), dtype=np.uint8)
    pngs = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    texts = [text] * batch
    feed = predictor.preprocess(list(pixels), texts)
    if feed["input_ids"].shape[1] != seq:  # the word choice below guarantees it; say if not
        raise BenchError(f"could not build a {seq}-token question for {predictor.path}")
    return feed, pngs, texts


def _single_token_word(tokenizer) -> str:
    for w in tokenizer.vocab:
        if w.isalpha() and not w.startswith("##") and len(tokenizer.encode_ids([w])[0]) == 3:
            return w
    raise BenchError("the vocabulary has no whole-word token to build a question from")


# ------------------------------------------------------------------ finding the reference


def find_reference(source_sha256: str, near: Path) -> Path | None:
    """A run directory whose best/last weights have this SHA-256: under ./runs, or a runs/
    beside the artifact or its parents."""
    from toolkit.artifacts import sha256

    roots = [Path.cwd() / "runs"] + [p / "runs" for p in list(near.resolve().parents)[:3]]
    seen = set()
    for root in roots:
        if root in seen or not root.is_dir():
            continue
        seen.add(root)
        for run in sorted(p for p in root.iterdir() if p.is_dir()):
            for which in ("best", "last"):
                w = run / f"{which}.safetensors"
                if w.is_file() and sha256(w) == source_sha256:
                    return run
    return None


# ------------------------------------------------------------------ measuring


def model_bytes(kind: ArtifactKind, path: Path) -> int:
    if kind is ArtifactKind.checkpoint:
        return (path / "best.safetensors").stat().st_size
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")  # ONNX external data, when large
    return size + (data.stat().st_size if data.is_file() else 0)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def _load(kind: ArtifactKind, path: str, cfg: BenchConfig, role: str):
    from toolkit.runtime.predictor import Predictor

    if kind is ArtifactKind.checkpoint and cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if kind is ArtifactKind.checkpoint and role == "candidate" and _torch_options(cfg):
        return _load_torch_variant(path, cfg)
    backend = {ArtifactKind.engine: "tensorrt", ArtifactKind.onnx: "onnxruntime",
               ArtifactKind.checkpoint: "torch"}[kind]
    return Predictor.load(path, backend=backend, device=cfg.device.value, threads=cfg.threads)


class BenchTorchRunner(TorchRunner):
    """A checkpoint on CUDA with its forward in FP16 autocast and/or replayed as a CUDA graph.

    Graphs follow PyTorch's recipe (pytorch.org/docs/stable/notes/cuda.html, "CUDA Graphs"):
    a few warm-up calls on a side stream, capture with torch.cuda.graph into static inputs, then
    copy each call's inputs into those and replay. Autocast runs with cache_enabled=False, which
    the same notes ask for under capture.
    """

    def __init__(self, checkpoint: str | Path, precision: TorchPrecision, mode: TorchMode,
                 device: str = "cuda"):
        super().__init__(checkpoint, device=device)
        self.precision, self.mode = precision, mode
        self._graphs: dict = {}  # input shapes -> (graph, static inputs, static logits)

    def _deactivate(self) -> None:
        self._graphs = {}
        super()._deactivate()

    def _autocast(self):
        import torch

        if self.precision is TorchPrecision.fp16:
            return torch.autocast("cuda", dtype=torch.float16, cache_enabled=False)
        return contextlib.nullcontext()

    def forward(self, args: dict):
        """Logits, on the GPU, for inputs already there (what compute-only times). All of it in
        inference mode: the static tensors a graph reads are written in place on every call."""
        import torch

        with torch.inference_mode():
            if self.mode is TorchMode.eager:
                with self._autocast():
                    return self.ck.model(**args)
            key = tuple((k, tuple(v.shape)) for k, v in args.items())
            if key not in self._graphs:
                self._graphs[key] = self._capture(args)
            graph, static_in, static_out = self._graphs[key]
            for k, v in args.items():
                static_in[k].copy_(v)
            graph.replay()
            return static_out

    def _capture(self, args: dict):
        import torch

        static_in = {k: v.clone() for k, v in args.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                with self._autocast():
                    self.ck.model(**static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph), self._autocast():
                static_out = self.ck.model(**static_in)
        except RuntimeError as e:  # an operation CUDA graphs cannot capture
            raise BenchError(f"{self.checkpoint}: the model cannot be captured as a CUDA graph "
                             f"({e}); measure it with --torch-mode eager") from e
        return graph, static_in, static_out

    def _infer(self, feed: dict) -> dict:
        import torch

        args = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
        return {"logits": self.forward(args).float().cpu().numpy()}


def _load_torch_variant(path: str, cfg: BenchConfig):
    """A Predictor on a run directory whose runner is a BenchTorchRunner, on CUDA."""
    from toolkit.runtime.devices import resolve_device
    from toolkit.artifacts import ArtifactMetadata
    from toolkit.runtime.predictor import Backend, Predictor

    if resolve_device(cfg.device).type != "cuda":
        raise BenchError("--torch-precision fp16 and --torch-mode cuda_graph need a CUDA GPU, "
                         "and torch sees none; drop them or run on a GPU")
    runner = BenchTorchRunner(path, cfg.torch_precision, cfg.torch_mode)
    runner.activate()
    try:
        return Predictor(runner, ArtifactMetadata.for_checkpoint(runner.ck), Backend.torch,
                         Path(path))
    except BaseException:
        runner.deactivate()
        raise


def _compute_timing(predictor, feed, cfg: BenchConfig, batch: int) -> Timing:
    if predictor.backend.value == "torch" and predictor.runner.device == "cuda":
        return _cuda_event_timing(predictor, feed, cfg, batch)
    seconds = time_calls(lambda: predictor.infer(feed), cfg.warmup, cfg.iters, cfg.duration)
    return summarize(seconds, batch, "perf_counter")


def _cuda_event_timing(predictor, feed, cfg: BenchConfig, batch: int) -> Timing:
    """PyTorch on CUDA: inputs placed on the GPU once, each forward timed by CUDA events."""
    import torch

    runner = predictor.runner
    forward = runner.forward if isinstance(runner, BenchTorchRunner) else (
        lambda a: runner.ck.model(**a))
    args = {k: torch.from_numpy(v).cuda() for k, v in feed.items()}
    seconds: list[float] = []
    with torch.inference_mode():
        for _ in range(cfg.warmup):
            forward(args)
        torch.cuda.synchronize()
        deadline = None if cfg.duration is None else time.perf_counter() + cfg.duration
        while (len(seconds) < cfg.iters) if cfg.iters is not None else (
                time.perf_counter() < deadline or not seconds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(args)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000.0)
    return summarize(seconds, batch, "cuda_events")


class DeviceMemory:
    """The device memory an artifact uses, by the best measure its backend allows (module
    docstring); `peak()` is None on the CPU."""

    def __init__(self, cfg: BenchConfig, kind: ArtifactKind) -> None:
        self.method, self.before = None, 0
        if cfg.device is Device.cpu:
            return
        if kind is ArtifactKind.checkpoint:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                self.method = "torch.cuda.max_memory_allocated"
            return
        from toolkit.runtime import cuda_mem

        try:
            self.before = cuda_mem.device_memory_used()
            self.method = "cudaMemGetInfo used, after minus before loading (device-wide)"
        except cuda_mem.CudaError:
            self.method = None  # no cuda-python or no GPU: nothing to measure with

    def peak(self, predictor) -> int | None:
        if self.method is None:
            return None
        if predictor.backend.value == "torch":
            if predictor.runner.device != "cuda":
                return None
            import torch

            return int(torch.cuda.max_memory_allocated())
        if predictor.backend.value == "onnxruntime" and not any(
                p != "CPUExecutionProvider" for p in predictor.runner.session.get_providers()):
            return None
        from toolkit.runtime import cuda_mem

        return cuda_mem.device_memory_used() - self.before


@dataclass
class Row:
    artifact: str
    kind: str
    backend: str
    precision: str
    role: str  # candidate | reference
    batch: int
    seq: int
    model_bytes: int
    peak_rss_bytes: int
    compute_only: dict
    end_to_end: dict
    peak_device_bytes: int | None = None
    device_memory: str | None = None  # how peak_device_bytes was measured (DeviceMemory)
    mode: str = "-"  # PyTorch: eager | cuda_graph
    compute_shapes: dict | None = None  # the input shapes each timing ran the backend on
    end_to_end_shapes: dict | None = None
    reference: str | None = None
    # reference mean / this mean, per timing (above 1: faster than PyTorch eager)
    speedup_vs_torch: dict | None = None


def _shapes(feed: dict) -> dict:
    return {name: list(x.shape) for name, x in feed.items()}


def _measure(kind: ArtifactKind, path: str, cfg: BenchConfig, role: str,
             step: Callable[[str], None]) -> tuple[list[Row], object]:
    memory = DeviceMemory(cfg, kind)
    predictor = _load(kind, path, cfg, role)
    torch_variant = kind is ArtifactKind.checkpoint and role == "candidate"
    rows = []
    try:
        for batch in cfg.batches:
            step(f"{Path(path).name} batch {batch}")
            feed, pngs, texts = bench_inputs(predictor, batch, cfg.seq)
            # What predict will feed the backend: the same decode and preprocessing path.
            e2e_shapes = _shapes(predictor.preprocess(pngs, texts))
            compute = _compute_timing(predictor, feed, cfg, batch)
            e2e = summarize(time_calls(lambda: predictor.predict(pngs, texts, batch_size=batch),
                                       cfg.warmup, cfg.iters, cfg.duration), batch, "perf_counter")
            precision = (cfg.torch_precision.value if torch_variant
                         else predictor.metadata.precision)
            rows.append(Row(str(path), kind.value, predictor.backend.value, precision, role,
                            batch, cfg.seq, model_bytes(kind, Path(path)), peak_rss_bytes(),
                            asdict(compute), asdict(e2e), memory.peak(predictor), memory.method,
                            mode=cfg.torch_mode.value if torch_variant else (
                                "eager" if kind is ArtifactKind.checkpoint else "-"),
                            compute_shapes=_shapes(feed), end_to_end_shapes=e2e_shapes))
        return rows, predictor.metadata
    finally:
        predictor.close()


def run_bench(cfg: BenchConfig, step: Callable[[str], None] = lambda _: None,
              log: Callable[[str], None] = lambda _: None) -> dict:
    """Measure every artifact (and, with compare, its PyTorch reference): the JSON-ready report."""
    _validate(cfg)
    for a in cfg.artifacts:
        if not Path(a.path).exists():
            raise BenchError(f"{a.path} does not exist; pass an existing --{a.kind.value}")
    rows: list[Row] = []
    # Checkpoints already measured (as artifacts or references), by resolved path: a reference
    # that is also an artifact is measured once.
    references: dict[str, list[Row]] = {}
    for a in cfg.artifacts:
        got, meta = _measure(a.kind, a.path, cfg, "candidate", step)
        rows += got
        if a.kind is ArtifactKind.checkpoint and not _torch_options(cfg):
            references[str(Path(a.path).resolve())] = got
        if not cfg.compare or a.kind is ArtifactKind.checkpoint:
            continue
        ref = Path(cfg.reference) if cfg.reference else find_reference(meta.source_sha256,
                                                                      Path(a.path))
        if ref is None:
            log(f"no checkpoint with the weights of {a.path} found under ./runs; pass "
                "--reference RUN to compare with PyTorch")
            continue
        key = str(Path(ref).resolve())
        if key not in references:
            references[key], _ = _measure(ArtifactKind.checkpoint, key, cfg, "reference", step)
            rows += references[key]
        by_batch = {r.batch: r for r in references[key]}
        for r in got:
            base = by_batch[r.batch]
            r.reference = str(ref)
            r.speedup_vs_torch = {t: getattr(base, t)["mean_ms"] / getattr(r, t)["mean_ms"]
                                  for t in ("compute_only", "end_to_end")}
    return {"machine": machine_info(), "config": _config_json(cfg),
            "results": [asdict(r) for r in rows]}


def _config_json(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["artifacts"] = [{"kind": a.kind.value, "path": a.path} for a in cfg.artifacts]
    d["device"] = cfg.device.value
    d["torch_precision"], d["torch_mode"] = cfg.torch_precision.value, cfg.torch_mode.value
    return d


def machine_info() -> dict:
    import os

    import onnxruntime

    from toolkit import __version__

    return {"host": platform.node(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "toolkit": __version__, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ------------------------------------------------------------------ output


def table_rows(report: dict) -> list[list[str]]:
    """Rows of the printed table (also the markdown table of bench/run_matrix.py)."""
    out = []
    for r in report["results"]:
        c, e = r["compute_only"], r["end_to_end"]
        speed = r["speedup_vs_torch"]
        device = r.get("peak_device_bytes")
        e2e = f"{e['p50_ms']:.2f}"
        if r.get("end_to_end_shapes") != r.get("compute_shapes"):
            e2e += " (other shapes)"  # see the row's compute_shapes / end_to_end_shapes
        out.append([Path(r["artifact"]).name, r["backend"], r["precision"], r.get("mode", "-"),
                    str(r["batch"]), f"{c['p50_ms']:.2f}", f"{c['p90_ms']:.2f}",
                    f"{c['p99_ms']:.2f}", f"{c['mean_ms']:.2f}", f"{c['throughput_per_s']:.1f}",
                    e2e, f"{r['model_bytes'] / 1e6:.1f}", f"{r['peak_rss_bytes'] / 2**20:.0f}",
                    "-" if device is None else f"{device / 2**20:.0f}",
                    f"{speed['compute_only']:.2f}x" if speed else "-"])
    return out


TABLE_HEADER = ["artifact", "backend", "precision", "mode", "batch", "compute p50 ms", "p90 ms",
                "p99 ms", "mean ms", "samples/s", "end-to-end p50 ms", "size MB", "peak RSS MiB",
                "device MiB", "vs torch"]


def markdown_table(report: dict) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join(lines) + "\n"


def write_json(report: dict, path: str | Path) -> None:
    from toolkit.artifacts import write_json as atomic_write_json

    atomic_write_json(path, report)


def check_plot_available() -> None:
    """Before measuring: --plot needs matplotlib (not a toolkit dependency)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise BenchError("--plot needs matplotlib, which is not installed: "
                         "pip install 'dualmodal-toolkit[plot]' (or drop --plot)")


def plot(report: dict, path: str | Path) -> None:
    """Latency (compute p50) and throughput against batch size, a line per artifact."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4))
    by_artifact: dict[str, list[dict]] = {}
    for r in report["results"]:
        by_artifact.setdefault(f"{Path(r['artifact']).name} ({r['backend']})", []).append(r)
    for name, rs in by_artifact.items():
        rs = sorted(rs, key=lambda r: r["batch"])
        b = [r["batch"] for r in rs]
        ax_lat.plot(b, [r["compute_only"]["p50_ms"] for r in rs], marker="o", label=name)
        ax_thr.plot(b, [r["compute_only"]["throughput_per_s"] for r in rs], marker="o",
                    label=name)
    for ax, title in ((ax_lat, "compute-only p50 latency (ms)"),
                      (ax_thr, "throughput (samples/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from toolkit.artifacts import atomic_path

    with atomic_path(path) as tmp:  # the format from the name, not the temporary suffix
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


__all__ = ["Artifact", "ArtifactKind", "BenchConfig", "BenchError", "BenchTorchRunner",
           "DeviceMemory", "Timing", "TorchMode", "TorchPrecision", "check_plot_available",
           "markdown_table", "parse_batches", "plot", "run_bench", "summarize", "table_rows",
           "time_calls", "write_json"]
