"""N:M structured sparsity (2:4 by default): magnitude pruning, masked fine-tuning, conformance.

In every group of M consecutive weights along the input-channel (reduction) dimension, at most N
are non-zero: for a Linear (out, in) along `in`; for a Conv (K, C, R, S) along C, for each output
channel and kernel position. That is the layout NVIDIA's sparse tensor cores read (Ampere and
later, Jetson Orin; Mishra et al., "Accelerating Sparse Deep Neural Networks",
https://arxiv.org/abs/2104.08378), and what TensorRT's sparse-weights builder flag looks for
(`toolkit build --sparse`). The N weights of largest magnitude in each group stay.

Layers left dense, and why: a Conv or Linear whose input-channel count is not a multiple of M (the
groups would not tile it, e.g. the first convolution's 3 colour channels), and grouped convolutions
(the sparse kernels are dense-convolution kernels). TensorRT itself then picks a sparse kernel only
where it is faster (its verbose build log names the layers it considered).

No CPU speedup is expected: ONNX Runtime's CPU kernels do not skip zeros. The point is the GPU.

Fine-tuning runs train.py's loop with `MaskedFineTune` as its objective: plain cross-entropy, with
the masks applied again after every optimizer step, so the pattern holds whatever AdamW does.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.artifacts import sha256, write_json
from toolkit.checkpoint import CheckpointError, load_checkpoint, save_weights, write_run_files
from toolkit.config import ConfigError, Device, TrainConfig, to_dict
from toolkit.data.manifest import dataset_labels, load_split, resolve_manifest
from toolkit.errors import ToolkitError
from toolkit.sparsity import (Pattern, conforming_share, format_conformance, onnx_conformance,
                              parse_pattern, summary)
from toolkit.train import CrossEntropy, train

__all__ = ["Layer", "MaskedFineTune", "Pattern", "PruneConfig", "PruneError",
           "checkpoint_conformance", "conformance_of", "conforming_share", "format_conformance",
           "magnitude_mask", "onnx_conformance", "parse_pattern", "prunable_layers", "prune"]


class PruneError(ToolkitError):
    """Nothing can be pruned, or the parent does not fit the data; the message names the fix."""


# ------------------------------------------------------------------ groups, masks, conformance


def magnitude_mask(w: torch.Tensor, axis: int, pattern: Pattern) -> torch.Tensor:
    """A 0/1 mask of w's shape keeping the N largest |w| of every group of M along `axis`."""
    moved = w.detach().abs().movedim(axis, -1)  # (..., C)
    g = moved.reshape(-1, pattern.m)  # (groups, M)
    keep = torch.zeros_like(g).scatter_(1, g.topk(pattern.n, dim=1).indices, 1.0)
    return keep.reshape(moved.shape).movedim(-1, axis).contiguous()


@dataclass(frozen=True)
class Layer:
    """A weight that can take the pattern: its parameter name and input-channel axis."""

    name: str  # e.g. "head.0.weight"
    kind: str  # conv | linear
    shape: tuple[int, ...]
    axis: int = 1  # input channels: Linear (out, in), Conv (K, C, R, S), packed q/k/v (3D, D)


def prunable_layers(model: nn.Module, pattern: Pattern) -> tuple[list[Layer], dict[str, str]]:
    """The weights the pattern can take, and those it cannot (name -> why)."""
    layers: list[Layer] = []
    skipped: dict[str, str] = {}

    def consider(name: str, kind: str, weight: torch.Tensor, in_channels: int) -> None:
        if in_channels % pattern.m:
            skipped[name] = (f"{in_channels} input channels, not a multiple of {pattern.m}")
        else:
            layers.append(Layer(name, kind, tuple(weight.shape)))

    for mname, mod in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                skipped[prefix + "weight"] = (f"grouped convolution (groups={mod.groups}): the "
                                              "sparse kernels take dense convolutions")
            else:
                consider(prefix + "weight", "conv", mod.weight, mod.in_channels)
        elif isinstance(mod, nn.Linear):
            consider(prefix + "weight", "linear", mod.weight, mod.in_features)
        elif isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
            # the packed query/key/value projection is a Linear in all but name
            consider(prefix + "in_proj_weight", "linear", mod.in_proj_weight,
                     mod.in_proj_weight.shape[1])
    return layers, skipped


def checkpoint_conformance(model: nn.Module, pattern: Pattern) -> dict:
    """Per prunable layer of a model, the share of groups conforming to the pattern."""
    layers, skipped = prunable_layers(model, pattern)
    params = dict(model.named_parameters())
    rows = [{"layer": layer.name, "kind": layer.kind, "shape": list(layer.shape),
             "groups": int(np.prod(layer.shape) // pattern.m),
             "conforming": conforming_share(params[layer.name].detach().cpu().numpy(),
                                            layer.axis, pattern)} for layer in layers]
    return summary(rows, skipped, pattern)


def conformance_of(path: str | Path, pattern: Pattern) -> dict:
    """onnx_conformance of an .onnx file, checkpoint_conformance of a run directory."""
    path = Path(path)
    if path.is_dir():
        return checkpoint_conformance(load_checkpoint(path).model, pattern)
    return onnx_conformance(path, pattern)


# ------------------------------------------------------------------ prune and fine-tune


@dataclass(frozen=True)
class PruneConfig:
    checkpoint: str  # the dense parent, runs/<name>
    out: str  # the pruned run directory
    pattern: str = "2:4"
    fine_tune_steps: int = 0  # masked fine-tuning steps after pruning (0: prune only)
    data: str | None = None  # fine-tuning and evaluation data (None: the parent's training data)
    which: str = "best"
    lr: float = 2e-4
    batch_size: int = 64
    warmup_steps: int = 50
    eval_every: int = 0  # 0: once, at the end
    seed: int = 0
    device: Device = Device.auto

    def __post_init__(self) -> None:
        parse_pattern(self.pattern)
        if self.fine_tune_steps < 0:
            raise ConfigError(f"--fine-tune-steps {self.fine_tune_steps} must be >= 0")


class MaskedFineTune(CrossEntropy):
    """Cross-entropy, starting from the parent's weights with the masks applied, and applying
    them again after every optimizer step. The masks are buffers: resume.pt keeps them."""

    def __init__(self, parent_run: Path, state: dict, masks: dict[str, torch.Tensor],
                 record: dict):
        super().__init__()
        self.source_run = parent_run
        self.names = list(masks)
        for i, name in enumerate(self.names):
            self.register_buffer(f"mask{i}", masks[name])
        self._state, self._record = state, record

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"mask{i}") for i, name in enumerate(self.names)}

    def setup(self, model, labels, device, resumed):
        if not resumed:
            model.load_state_dict(self._state)
        self.after_step(model)

    @torch.no_grad()
    def after_step(self, model):
        params = dict(model.named_parameters())
        for name, mask in self.masks().items():
            params[name].mul_(mask)

    def record(self) -> dict:
        return self._record


def _parent_data(cfg: PruneConfig) -> str:
    if cfg.data:
        return cfg.data
    meta = json.loads((Path(cfg.checkpoint) / "config.json").read_text())
    data = meta.get("train", {}).get("data")
    if not data or not Path(data).exists():
        raise PruneError(f"{cfg.checkpoint} was trained on {data!r}, which is not here; pass "
                         "--data DATASET for fine-tuning and evaluation")
    return data


def prune(cfg: PruneConfig, log=print) -> dict:
    """Prune the parent to the pattern, fine-tune with the masks held, write an ordinary run
    directory. Returns {"report": held-out report, "conformance": ..., "parent_report": ...}."""
    pattern = parse_pattern(cfg.pattern)
    try:
        parent = load_checkpoint(cfg.checkpoint, cfg.which)
    except CheckpointError as e:
        raise PruneError(f"--checkpoint {cfg.checkpoint} is not a usable run ({e}); pass a run "
                         "directory written by `toolkit train`") from e
    layers, skipped = prunable_layers(parent.model, pattern)
    if not layers:
        raise PruneError(f"{cfg.checkpoint} has no layer the {pattern} pattern can take (every "
                         f"Conv/Linear has an input-channel count that is not a multiple of "
                         f"{pattern.m}, or is grouped); choose a pattern with a smaller M, e.g. "
                         "2:4")
    data = _parent_data(cfg)
    labels = dataset_labels(data)
    if list(labels) != list(parent.labels):
        raise PruneError(f"{cfg.checkpoint} answers with {len(parent.labels)} labels that are not "
                         f"{data}'s {len(labels)}; fine-tune on the data it was trained on")
    params = dict(parent.model.named_parameters())
    masks = {layer.name: magnitude_mask(params[layer.name], layer.axis, pattern)
             for layer in layers}
    for name, why in skipped.items():
        log(f"left dense: {name}: {why}")
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    log(f"{pattern}: {len(layers)} layers pruned ({total - kept} of {total} weights set to zero), "
        f"{len(skipped)} left dense")
    record = {"prune": {"parent": str(cfg.checkpoint), "parent_which": cfg.which,
                        "parent_weights_sha256": sha256(parent.weights), "pattern": str(pattern),
                        "fine_tune_steps": cfg.fine_tune_steps,
                        "layers": [layer.name for layer in layers], "skipped": skipped}}
    state = {k: v.detach().clone() for k, v in parent.model.state_dict().items()}
    objective = MaskedFineTune(Path(cfg.checkpoint), state, masks, record)
    tcfg = TrainConfig(data=data, out=cfg.out, model=parent.config, epochs=max(1, cfg.fine_tune_steps),
                       max_steps=max(1, cfg.fine_tune_steps), batch_size=cfg.batch_size, lr=cfg.lr,
                       warmup_steps=cfg.warmup_steps, seed=cfg.seed, device=cfg.device,
                       eval_every=cfg.eval_every or max(1, cfg.fine_tune_steps),
                       skip_bad_rows=False)
    if cfg.fine_tune_steps:
        result = train(tcfg, log=log, objective=objective)
        model, report = result["model"], result["report"]
    else:
        model, report = _write_pruned(tcfg, parent, objective)
    conformance = checkpoint_conformance(model, pattern)
    log(f"{pattern} conformance of the pruned layers: {conformance['conforming_share']:.2%}")
    return {"report": report, "conformance": conformance, "model": model}


def _write_pruned(tcfg: TrainConfig, parent, objective: MaskedFineTune):
    """Without fine-tuning: the masked parent, evaluated once, as best and last."""
    from toolkit.evaluate import evaluate

    model = parent.model
    objective.setup(model, parent.labels, torch.device("cpu"), resumed=False)
    val = load_split(resolve_manifest(tcfg.data, "val"), parent.labels, parent.tokenizer,
                     parent.config.image_size)
    report = evaluate(model, val, parent.tokenizer, parent.config, parent.labels,
                      torch.device("cpu"))
    out = Path(tcfg.out)
    write_run_files(out, parent.config, {**to_dict(dataclasses.replace(tcfg, max_steps=0)),
                                         **objective.record()}, parent.tokenizer, parent.labels)
    save_weights(model, out / "best.safetensors")
    save_weights(model, out / "last.safetensors")
    write_json(out / "metrics.json", {"best_accuracy": report["accuracy"], "history": [
        {"step": 0, **{k: report[k] for k in ("accuracy", "per_type", "groups")}}]})
    report["steps"] = 0
    return model, report
