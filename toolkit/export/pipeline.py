"""`export(ExportConfig)`: checkpoint -> FP32 ONNX -> (FP16 | INT8) ONNX, each step checked.

PyTorch is exported once, in FP32; FP16 and INT8 are ONNX-to-ONNX transforms of that graph
(docs/architecture.md, "precision lives in the ONNX graph"). Every written file carries
ArtifactMetadata, passes onnx.checker, and is compared with PyTorch on real rows before it is
renamed into place: on any failure nothing is left at the output path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.artifacts import ArtifactMetadata, atomic_path, read_onnx_metadata, sha256
from toolkit.compare import Comparison
from toolkit.config import TOLERANCES, ExportConfig, Int8Target, Precision
from toolkit.export import graph, samples
from toolkit.export.graph import ExportError


@dataclass
class ExportResult:
    path: Path
    precision: Precision
    seconds: float
    comparison: Comparison
    checks: dict = field(default_factory=dict)
    fallback: object = None  # export.fallback.Fallback with --auto-fallback


def default_out(precision: Precision, target: str | None = None) -> Path:
    suffix = {Precision.fp32: "", Precision.fp16: ".fp16", Precision.int8: ".int8"}[precision]
    if precision is Precision.int8 and target == "cpu":
        suffix = ".int8-cpu"
    return Path("export") / f"model{suffix}.onnx"


def check_against_torch(ck, path: Path, feeds: list[dict[str, np.ndarray]], tolerance,
                        labels: np.ndarray | None = None) -> Comparison:
    """`path` in ONNX Runtime (CPU) against the checkpoint in PyTorch on the same feeds (several
    batch sizes and lengths, compared together): toolkit.verify's one path."""
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner
    from toolkit.runtime.torch_runner import TorchRunner
    from toolkit.verify import verify

    return verify(TorchRunner.from_checkpoint(ck), OnnxRuntimeRunner(path), feeds, tolerance,
                  labels)


def export(cfg: ExportConfig, log=lambda *_: None) -> ExportResult:
    from toolkit.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    ck = load_checkpoint(cfg.checkpoint, cfg.which)
    data = cfg.data or samples.run_data(ck.path)
    rows = samples.load_rows(ck, data, "val") if data else None
    feeds = samples.check_batches(ck, rows)
    out = Path(cfg.out)
    if out.suffix != ".onnx":
        raise ExportError(f"output {out} must end in .onnx")
    if cfg.auto_fallback and rows is None:
        raise ExportError("--auto-fallback needs held-out rows to judge each choice: pass --data "
                          f"DATA ({ck.path} records no dataset that still exists)")
    # Calibration rows are read first: too few of them fails before minutes of exporting.
    calib = _calibration(ck, cfg) if cfg.precision is Precision.int8 else None

    checks: dict = {}
    if cfg.fp32_source:  # PyTorch was exported before: transform that graph
        fp32_path, owned = reuse_fp32(ck, Path(cfg.fp32_source)), False
        extra = read_onnx_metadata(fp32_path).extra
        log(f"transforming {fp32_path} (FP32, same weights as {ck.weights})")
    else:
        fp32_path = out if cfg.precision is Precision.fp32 else graph.tmp_sibling(out, "fp32")
        owned = fp32_path != out
        extra, cmp = _export_fp32(ck, cfg, fp32_path, feeds, rows is not None, log)
    fb = None
    try:
        if cfg.precision is Precision.fp16:
            cmp, checks, fb = _fp16(ck, cfg, fp32_path, out, feeds, extra, rows, log)
        elif cfg.precision is Precision.int8:
            cmp, checks, fb = _int8(ck, cfg, fp32_path, out, feeds, extra, calib, rows, log)
    finally:
        if owned and fp32_path.exists():
            fp32_path.unlink()
    return ExportResult(out, cfg.precision, time.perf_counter() - t0, cmp, checks, fb)


def _auto_fallback(ck, cfg: ExportConfig, fp32_model, build, rows, log):
    """fallback.search on the held-out slice; returns (Fallback, chosen graph)."""
    from toolkit.export import fallback

    feeds, labels = fallback.heldout_slice(ck, rows, cfg.fallback_samples)
    rank_rows = [samples.batch(ck, rows, np.array([i]))
                 for i in range(min(fallback.RANK_ROWS, len(rows)))]
    candidates = fallback.compute_nodes(fp32_model, tuple(o.value for o in cfg.exclude_op_types))
    log(f"auto-fallback: {len(candidates)} compute ops, ranked by layerwise error on "
        f"{len(rank_rows)} rows, bisected on {len(labels)} held-out rows")
    return fallback.search(fp32_model, build, candidates, feeds, labels,
                           TOLERANCES[cfg.precision], cfg.precision.value, rank_rows, log)


def _export_fp32(ck, cfg: ExportConfig, fp32_path: Path, feeds, real_rows: bool, log):
    """PyTorch -> FP32 ONNX at `fp32_path`, checked against PyTorch before it is renamed there."""
    from toolkit.export import onnx as torch_onnx

    log(f"exporting {ck.path} to ONNX (torch.onnx dynamo, opset {cfg.opset})")
    model = torch_onnx.to_onnx(ck, cfg.opset)
    extra = {"exporter": "torch.onnx dynamo", "opset": cfg.opset,
             "checked_on": "dataset rows" if real_rows else "generated inputs"}
    graph.set_metadata(model, ArtifactMetadata.for_checkpoint(ck, Precision.fp32, extra))
    with atomic_path(fp32_path) as tmp:  # nothing at fp32_path unless the check passes
        graph.save(model, tmp)
        cmp = check_against_torch(ck, tmp, feeds, TOLERANCES[Precision.fp32])
        cmp.raise_if_failed(f"FP32 ONNX export of {ck.path}")
    log(f"FP32 vs PyTorch: {cmp.report()}")
    return extra, cmp


def reuse_fp32(ck, path: Path) -> Path:
    """An existing FP32 export, if it was made from exactly these weights."""
    meta = read_onnx_metadata(path)
    if meta.precision != Precision.fp32.value:
        raise ExportError(f"{path} is a {meta.precision} model; --from-onnx needs the FP32 export")
    if meta.source_sha256 != sha256(ck.weights):
        raise ExportError(f"{path} was exported from other weights than {ck.weights}; export "
                          "FP32 again or drop --from-onnx")
    return path


def _fp16(ck, cfg: ExportConfig, fp32_path: Path, out: Path, feeds, extra, rows, log):
    from toolkit.export import fp16

    keep = fp16.DEFAULT_KEEP_FP32 + tuple(o.value for o in cfg.exclude_op_types)
    fp32_model = graph.load(fp32_path)
    fb, kept = None, []
    if cfg.auto_fallback:
        fb, model = _auto_fallback(
            ck, cfg, fp32_model,
            lambda nodes: fp16.convert(fp32_model, keep, cfg.fp16_io, keep_nodes=nodes), rows, log)
        kept = fb.kept_float
        log(fb.summary())
    else:
        model = fp16.convert(fp32_model, keep_fp32=keep, fp16_io=cfg.fp16_io)
    checks = fp16.check_fp16(model, keep, kept)
    info = {**extra, "fp16_io": cfg.fp16_io, **checks, "float_nodes": list(kept)}
    if fb is not None:
        info["auto_fallback"] = fb.record()
    graph.set_metadata(model, ArtifactMetadata.for_checkpoint(ck, Precision.fp16, info))
    with atomic_path(out) as tmp:
        graph.save(model, tmp)
        cmp = check_against_torch(ck, tmp, feeds, TOLERANCES[Precision.fp16])
        cmp.raise_if_failed(f"FP16 ONNX export of {ck.path}")
    return cmp, checks, fb


def _calibration(ck, cfg: ExportConfig) -> list[dict[str, np.ndarray]]:
    q = cfg.int8
    rows = samples.load_rows(ck, q.calibration, q.split)
    # Equal batches (see calibration_batches): the largest divisor of samples up to batch_size.
    size = max(d for d in range(1, q.batch_size + 1) if q.samples % d == 0)
    return list(samples.calibration_batches(ck, rows, q.samples, size))


def _int8(ck, cfg: ExportConfig, fp32_path: Path, out: Path, feeds, extra, batches, rows, log):
    from toolkit.config import Tolerance
    from toolkit.export import int8, qat

    q = cfg.int8
    # A run from `toolkit qat` carries its learned activation scales: they replace calibration's.
    scales = qat.stored_scales(ck.path, graph.load(fp32_path))
    if scales is not None and (q.target is not Int8Target.tensorrt or cfg.exclude_op_types):
        raise ExportError(f"{ck.path} was fine-tuned for the tensorrt target with every Conv, "
                          "MatMul and Gemm quantized; export it with --target tensorrt and no "
                          "--exclude-op-type")
    if scales is not None:
        log(f"using the {len(scales)} activation scales learned by toolkit qat")
    floats = ", ".join(o.value for o in cfg.exclude_op_types)
    log(f"calibrating on {q.samples} rows ({q.method.value}), target {q.target.value}"
        + (f", {floats} kept in float" if floats else ""))
    with atomic_path(out) as tmp:
        int8.quantize(fp32_path, tmp, batches, q.target, q.method, cfg.exclude_op_types, scales)
        model = graph.load(tmp)
        fb, kept = None, []
        if cfg.auto_fallback:
            # Calibrated once; a node kept in float is the same QDQ graph with its
            # DequantizeLinear inputs bypassed (int8.keep_float).
            fp32_model, qdq = graph.load(fp32_path), model
            fb, model = _auto_fallback(
                ck, cfg, fp32_model, lambda nodes: int8.keep_float(qdq, fp32_model, nodes),
                rows, log)
            kept = fb.kept_float
            log(fb.summary())
        checks = int8.check_qdq(model, q.target, cfg.exclude_op_types, kept)
        info = {**extra, "target": q.target.value, "calib_method": q.method.value,
                "calib_samples": q.samples, "qat": scales is not None,
                "exclude_op_types": [o.value for o in cfg.exclude_op_types], **checks,
                "float_nodes": list(kept)}
        if fb is not None:
            info["auto_fallback"] = fb.record()
        graph.set_metadata(model, ArtifactMetadata.for_checkpoint(ck, Precision.int8, info))
        graph.save(model, tmp)
        # INT8 is judged on decisions and held-out accuracy by `toolkit parity` (the tolerance
        # table); here only a broken graph (NaN, inf) fails the export, and the numbers are logged.
        cmp = check_against_torch(ck, tmp, feeds, Tolerance())
        cmp.raise_if_failed(f"INT8 ONNX export of {ck.path}")
    return cmp, checks, fb
