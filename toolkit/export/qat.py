"""Quantization-aware fine-tuning (QAT) for the `tensorrt` INT8 target: `qat(QatConfig)`.

Post-training INT8 (export/int8.py) rounds a model that was trained in float; QAT fine-tunes the
weights with that rounding in the forward pass, so that they settle where INT8 loses little. The
fake quantization is placed from the QDQ graph itself, so that the two cannot drift apart: the
checkpoint is exported to FP32 ONNX as `toolkit export` does, `int8.quantized_inputs` lists every
input that gets a Q/DQ pair, and each is traced back, through the exporter's per-node record of
the torch.export node it came from (`pkg.torch.onnx.fx_node`), to that node in the very program
the ONNX graph was translated from. That program is rewritten with a fake quantizer on the same
inputs and fine-tuned. The rules are the tensorrt recipe's: symmetric int8, zero point 0;
activations per tensor, their scales from the PTQ calibrator on the same rows, then kept fixed;
weights per output channel from their current values (absmax / 127, as quantize_static computes
at export); biases, Softmax and every op but Conv/MatMul/Gemm in float. Gradients pass the
rounding straight through (torch.fake_quantize_per_tensor_affine and
torch.fake_quantize_per_channel_affine, docs.pytorch.org/docs/stable/generated/
torch.fake_quantize_per_channel_affine.html).

The result is an ordinary run directory (weights, config, vocab, labels) plus `qat.json`: the
settings, the before/after numbers and every activation scale by ONNX tensor name. `toolkit export
--precision int8` of that run gives those scales to quantize_static (TensorQuantOverrides) instead
of calibrated ones, so the QDQ graph is the PTQ graph with the learned numbers.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.config import Int8Target, QatConfig
from toolkit.errors import ToolkitError
from toolkit.export.graph import ExportError

QAT_FILE = "qat.json"
QAT_FORMAT = 1
_FX_NODE = "pkg.torch.onnx.fx_node"  # torch.onnx's per-node metadata: "%name : ... = call_..."


class QatError(ToolkitError):
    pass


# ------------------------------------------------------------------ where the Q/DQ pairs are


@dataclass(frozen=True)
class Point:
    """One quantized input. `act`: an activation with a fixed, calibrated scale; `const`: a
    tensor the graph computes from weights alone (a slice of MultiheadAttention's packed
    projection), calibrated per tensor, so its scale follows its current value; `weight`: an
    initializer, per channel along `axis` of the PyTorch tensor."""

    kind: str  # act | const | weight
    tensor: str  # the ONNX tensor name
    axis: int = 0


@dataclass
class Site:
    """A torch.export node whose inputs are quantized. For scaled_dot_product_attention, which the
    exporter writes as two MatMuls, the points are 0 q*sqrt(scale), 1 k^T*sqrt(scale),
    2 the softmax, 3 v; for the others they are the node's own argument positions."""

    fx: str
    op: str  # conv | linear | matmul | sdpa
    points: dict[int, Point] = field(default_factory=dict)


_OPS = {"conv2d": "conv", "convolution": "conv", "linear": "linear", "matmul": "matmul",
        "mm": "matmul", "bmm": "matmul", "scaled_dot_product_attention": "sdpa"}


def _op(node) -> str | None:
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return _OPS.get(name)


def plan(model, gm) -> list[Site]:
    """The quantized sites of `gm` (the ExportedProgram's module), one per node that an input of
    `int8.quantized_inputs(model)` comes from. Anything that cannot be matched is an error."""
    from onnx import numpy_helper

    from toolkit.export.int8 import quantized_inputs

    fx = {n.name: n for n in gm.graph.nodes}
    inits = {t.name: t for t in model.graph.initializer}
    constant = _constant_nodes(gm)
    sites: dict[str, Site] = {}
    sdpa_nodes: dict[str, list[str]] = {}
    for node, i, is_init in quantized_inputs(model):
        props = {p.key: p.value for p in node.metadata_props}
        m = re.match(r"%(\S+)", props.get(_FX_NODE, ""))
        n = fx.get(m.group(1)) if m else None
        if n is not None and "batch_norm" in str(n.target):  # Conv with BatchNorm folded into it
            n = n.args[0]
        op = _op(n) if n is not None else None
        if op is None:
            raise QatError(f"ONNX node {node.name} ({node.op_type}) cannot be traced to a "
                           f"convolution, linear, matmul or attention of the PyTorch program "
                           f"(exporter record {props.get(_FX_NODE, 'missing')[:80]!r}); QAT "
                           "supports the graphs of torch.onnx's dynamo exporter")
        site = sites.setdefault(n.name, Site(n.name, op))
        tensor = node.input[i]
        if op == "sdpa":
            seen = sdpa_nodes.setdefault(n.name, [])
            if node.name not in seen:
                seen.append(node.name)
            arg = 2 * seen.index(node.name) + i
            point = Point("act", tensor)
        elif is_init:
            dims = numpy_helper.to_array(inits[tensor]).ndim
            if op in ("conv", "linear") and i == 1:
                axis = 0  # the output channel of a PyTorch Conv2d or Linear weight
            elif op == "matmul" and i == 1 and dims == 2:
                axis = 1  # int8.py: per-channel MatMul weights along ONNX axis 1
            else:
                raise QatError(f"ONNX node {node.name} has a constant at input {i} that QAT "
                               "does not know how to quantize")
            arg, point = i, Point("weight", tensor, axis)
        else:
            arg = i
            point = Point("const" if n.args[i] in constant else "act", tensor)
        site.points[arg] = point
    if not sites:
        raise QatError("the FP32 graph has no Conv, MatMul or Gemm to quantize")
    return list(sites.values())


def _constant_nodes(gm) -> set:
    """Nodes of `gm` that depend on no graph input: weights and what is computed from them."""
    const: set = set()
    for n in gm.graph.nodes:  # topological order
        if n.op == "get_attr":
            const.add(n)
        elif n.op == "call_function":
            deps = [a for a in n.all_input_nodes]
            if all(d in const for d in deps):
                const.add(n)
    return const


# ------------------------------------------------------------------ fake quantization


class FakeQuant(nn.Module):
    """One Q/DQ pair: quantize to int8 with zero point 0 and dequantize, gradient straight
    through. `act` uses its stored scale; `const` and `weight` the current absmax / 127."""

    def __init__(self, point: Point, scale: float | None = None):
        super().__init__()
        self.kind, self.tensor, self.axis = point.kind, point.tensor, point.axis
        self.register_buffer("scale", torch.tensor(1.0 if scale is None else scale))
        self.register_buffer("zero", torch.zeros((), dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "weight":
            dims = [d for d in range(x.ndim) if d != self.axis % x.ndim]
            scale = _absmax_scale(x.detach().abs().amax(dim=dims))  # (C,)
            zero = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_channel_affine(x, scale, zero, self.axis % x.ndim,
                                                          -128, 127)
        if self.kind == "const":
            self.scale = _absmax_scale(x.detach().abs().amax())
        # ONNX QuantizeLinear saturates to int8's [-128, 127].
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero, -128, 127)


def _absmax_scale(absmax: torch.Tensor) -> torch.Tensor:
    """absmax / 127: compute_scale_zp's symmetric int8 scale (1 for an all-zero tensor, as ORT)."""
    scale = (absmax.double() * 2 / 254).float()
    return torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))


class QuantSDPA(nn.Module):
    """scaled_dot_product_attention as torch.onnx writes it (onnxscript's torchlib,
    _aten_scaled_dot_product_attention_*_onnx): MatMul(q*sqrt(s), k^T*sqrt(s)), plus the mask,
    Softmax, MatMul with v; a Q/DQ pair on each MatMul input."""

    def __init__(self, quant: list[FakeQuant]):
        super().__init__()
        self.quant = nn.ModuleList(quant)

    def forward(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False):
        if is_causal or enable_gqa:
            raise QatError("QAT does not support causal or grouped-query attention")
        s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
        root = math.sqrt(s)
        fq_q, fq_k, fq_p, fq_v = self.quant
        w = fq_q(q * root) @ fq_k(k.transpose(-2, -1) * root)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            w = w + torch.where(attn_mask, 0.0, torch.finfo(w.dtype).min)
        elif attn_mask is not None:
            w = w + attn_mask
        p = w.softmax(dim=-1)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            p = torch.where(torch.isnan(p), 0.0, p)
        return fq_p(p) @ fq_v(v)


def prepare(gm, sites: list[Site], scales: dict[str, float]) -> list[FakeQuant]:
    """Rewrite `gm` in place: a FakeQuant on every point of every site. Returns the quantizers."""
    nodes = {n.name: n for n in gm.graph.nodes}
    quants = []
    for site in sites:
        node = nodes[site.fx]
        if site.op == "sdpa":
            if sorted(site.points) != [0, 1, 2, 3]:
                raise QatError(f"attention {site.fx}: expected two quantized MatMuls in the "
                               f"ONNX graph, found inputs {sorted(site.points)}")
            fqs = [FakeQuant(site.points[j], scales.get(site.points[j].tensor)) for j in range(4)]
            name = f"qat_{site.fx}"
            gm.add_submodule(name, QuantSDPA(fqs))
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, node.args, node.kwargs)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            quants += fqs
            continue
        for arg, point in sorted(site.points.items()):
            fq = FakeQuant(point, scales.get(point.tensor))
            name = f"qat_{site.fx}_{arg}"
            gm.add_submodule(name, fq)
            with gm.graph.inserting_before(node):
                q = gm.graph.call_module(name, (node.args[arg],))
            args = list(node.args)
            args[arg] = q
            node.args = tuple(args)
            quants.append(fq)
    # The attention above returns another memory layout than the fused kernel it replaces, and
    # a later `view` of the program may rely on the kernel's; `reshape` is `view` where possible.
    for n in gm.graph.nodes:
        if n.target is torch.ops.aten.view.default:
            n.target = torch.ops.aten.reshape.default
    gm.graph.lint()
    gm.recompile()
    missing = sorted({f.tensor for f in quants if f.kind == "act" and f.tensor not in scales})
    if missing:
        raise QatError(f"no calibrated range for {len(missing)} quantized tensor(s), e.g. "
                       f"{missing[:3]}")
    return quants


def fake_quant_model(ck, opset: int, batches: list[dict[str, np.ndarray]], method, work: Path,
                     scales: dict[str, float] | None = None):
    """The checkpoint as a fake-INT8 torch.fx GraphModule, its FP32 ONNX graph (saved in `work`
    as model.fp32.onnx) and its quantizers. Activation scales are calibrated on `batches` as the
    PTQ path does, unless given (`scales`, by ONNX tensor name: a QAT run's stored ones)."""
    from toolkit.artifacts import ArtifactMetadata
    from toolkit.config import Precision
    from toolkit.export import graph, int8
    from toolkit.export import onnx as torch_onnx

    program = torch_onnx.export_program(ck, opset)
    model = program.model_proto
    torch_onnx.check_io(model, ck)
    graph.set_metadata(model, ArtifactMetadata.for_checkpoint(ck, Precision.fp32))
    fp32 = graph.save(model, work / "model.fp32.onnx")
    if scales is None:
        ranges = int8.calibrate(fp32, batches, method, work)
        scales = {name: int8.symmetric_scale(lo, hi) for name, (lo, hi) in ranges.items()}
    gm = program.exported_program.module()
    quants = prepare(gm, plan(model, gm), scales)
    return gm, model, quants


# ------------------------------------------------------------------ the fine-tuning run


def _torch(feed: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[k]))
                 for k in ("image", "input_ids", "attention_mask"))


@torch.no_grad()
def _measure(ck, teacher, gm, rows, n: int, batch_size: int = 50) -> dict:
    """Held-out accuracy of the FP32 model and of the fake-INT8 one, and their top-1 agreement,
    on the first `n` rows (no batch of one: the exported program's batch axis starts at 2)."""
    from toolkit.export import samples

    n = min(n, len(rows))
    if n % batch_size == 1:
        n -= 1
    if n < 2:
        return {}
    ref, cand = [], []
    for start in range(0, n, batch_size):
        x = _torch(samples.batch(ck, rows, np.arange(start, min(start + batch_size, n))))
        ref.append(teacher(*x).argmax(-1))
        cand.append(gm(*x).argmax(-1))
    ref, cand = torch.cat(ref).numpy(), torch.cat(cand).numpy()
    labels = rows.labels[:n]
    return {"rows": n, "fp32_accuracy": float((ref == labels).mean()),
            "fake_int8_accuracy": float((cand == labels).mean()),
            "agreement": float((ref == cand).mean())}


def qat(cfg: QatConfig, log=lambda *_: None) -> Path:
    """Fine-tune `cfg.checkpoint` with fake INT8 and write the run `cfg.out`; returns its path.
    Nothing is left at `cfg.out` unless every step succeeds."""
    from toolkit.artifacts import sha256, write_json
    from toolkit.checkpoint import load_checkpoint, save_weights, write_run_files
    from toolkit.config import TrainConfig, to_dict
    from toolkit.export import samples
    from toolkit.model import DualModalNet
    from toolkit.train import build_optimizer

    out = Path(cfg.out)
    if out.exists():
        kind = "a file" if out.is_file() else "a directory"
        raise QatError(f"--out {out} already exists ({kind}); pass a new run directory")
    ck = load_checkpoint(cfg.checkpoint, cfg.which)
    data = cfg.data or samples.run_data(ck.path)
    if not data:
        raise QatError(f"no fine-tuning data: {ck.path} does not record an existing dataset; "
                       "pass --data DATA")
    t0 = time.perf_counter()
    calib_rows = samples.load_rows(ck, cfg.calibration, "train")
    size = max(d for d in range(1, 9) if cfg.calib_samples % d == 0)  # as export's calibration
    batches = list(samples.calibration_batches(ck, calib_rows, cfg.calib_samples, size))
    train_rows = samples.load_rows(ck, data, "train")
    val_rows = samples.load_rows(ck, data, "val")
    if len(train_rows) < 2:
        raise QatError(f"{data} has {len(train_rows)} usable training row(s); QAT needs at least 2")

    torch.manual_seed(cfg.seed)
    # The FP32 model as it was, for distillation and the before/after numbers (the exported
    # program may share its parameters, which fine-tuning changes).
    teacher = copy.deepcopy(ck.model).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="toolkit-qat-") as work:
        log(f"exporting {ck.path} to FP32 ONNX and calibrating on {cfg.calib_samples} rows "
            f"({cfg.calib_method.value})")
        gm, _, quants = fake_quant_model(ck, cfg.opset, batches, cfg.calib_method, Path(work))
    counts = {k: sum(q.kind == k for q in quants) for k in ("act", "const", "weight")}
    log(f"fake quantization: {counts['weight']} weights per channel, {counts['act']} activation "
        f"inputs and {counts['const']} computed weight(s) per tensor")
    before = _measure(ck, teacher, gm, val_rows, cfg.eval_samples)
    if before:
        log(f"before: fake INT8 {before['fake_int8_accuracy']:.2%} vs FP32 "
            f"{before['fp32_accuracy']:.2%}, agreement {before['agreement']:.2%}")

    tcfg = TrainConfig(data=str(data), out=str(out), model=ck.config, lr=cfg.lr)
    opt = build_optimizer(gm, tcfg)
    rng = np.random.default_rng(cfg.seed)
    ce = nn.CrossEntropyLoss()
    history = []
    for step in range(1, cfg.steps + 1):
        idx = rng.choice(len(train_rows), size=min(cfg.batch_size, len(train_rows)), replace=False)
        x = _torch(samples.batch(ck, train_rows, idx))
        target = torch.from_numpy(train_rows.labels[idx])
        logits = gm(*x)
        loss = (1 - cfg.distill) * ce(logits, target)
        if cfg.distill:
            with torch.no_grad():
                soft = teacher(*x).log_softmax(-1)
            loss = loss + cfg.distill * nn.functional.kl_div(
                logits.log_softmax(-1), soft, log_target=True, reduction="batchmean")
        if not torch.isfinite(loss):
            raise QatError(f"QAT loss is {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(gm.parameters(), tcfg.grad_clip)
        opt.step()
        history.append(round(loss.item(), 6))
        if step % 50 == 0 or step == cfg.steps:
            log(f"step {step}/{cfg.steps}: loss {np.mean(history[-50:]):.4f}")

    gm(*_torch(samples.batch(ck, train_rows, np.arange(min(2, len(train_rows))))))  # const scales
    after = _measure(ck, teacher, gm, val_rows, cfg.eval_samples)
    if after:
        log(f"after: fake INT8 {after['fake_int8_accuracy']:.2%}, agreement with the FP32 "
            f"source {after['agreement']:.2%}")
    model = DualModalNet(ck.config)
    model.load_state_dict({k: v for k, v in gm.state_dict().items() if not k.startswith("qat_")})
    scales = {}
    for q in quants:
        if q.kind != "weight":
            scales[q.tensor] = float(q.scale)
    record = {"format": QAT_FORMAT, "target": Int8Target.tensorrt.value,
              "source_run": str(ck.path), "source_sha256": sha256(ck.weights),
              "config": to_dict(cfg), "points": counts, "seconds": time.perf_counter() - t0,
              "before": before, "after": after, "loss": history, "scales": scales}

    meta = json.loads((ck.path / "config.json").read_text())
    train = {**meta.get("train", {}), "qat": to_dict(cfg), "qat_source": str(ck.path)}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        write_run_files(tmp, ck.config, train, ck.tokenizer, list(ck.labels))
        save_weights(model, tmp / "best.safetensors")
        save_weights(model, tmp / "last.safetensors")
        write_json(tmp / QAT_FILE, record)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


# ------------------------------------------------------------------ export of a QAT run


def stored_scales(run: Path, fp32_model) -> dict[str, float] | None:
    """The activation scales a QAT run recorded, checked against the FP32 graph about to be
    quantized (every tensor that gets a Q/DQ pair has one); None for an ordinary run."""
    from toolkit.export.int8 import quantized_inputs

    path = Path(run) / QAT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        scales = {str(k): float(v) for k, v in record["scales"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{path} is not a readable QAT record ({type(e).__name__}: {e}); "
                          "run toolkit qat again") from e
    wanted = {n.input[i] for n, i, is_init in quantized_inputs(fp32_model) if not is_init}
    missing, stray = sorted(wanted - set(scales)), sorted(set(scales) - wanted)
    if missing or stray:
        raise ExportError(f"{path} does not fit this FP32 graph ({len(missing)} quantized "
                          f"tensor(s) without a scale, e.g. {missing[:3]}; {len(stray)} scale(s) "
                          f"for no such tensor, e.g. {stray[:3]}); run toolkit qat again with "
                          "this toolkit version")
    return scales
