"""Evaluation: accuracy overall, per question type and per group, plus a confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.config import AccuracyFloors, ModelConfig
from toolkit.data.manifest import Split, load_split, resolve_manifest
from toolkit.data.preprocess import Tokenizer
from toolkit.metrics import classification_report, group_accuracy, majority_baseline


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict_split(model: nn.Module, split: Split, tokenizer: Tokenizer, cfg: ModelConfig,
                  device: torch.device, batch_size: int = 256) -> np.ndarray:
    model.eval()
    preds = []
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        inputs = to_torch(split.batch(idx, tokenizer, cfg.mean, cfg.std), device)
        preds.append(model(**inputs).argmax(-1).cpu().numpy())
    return np.concatenate(preds)


def evaluate(model: nn.Module, split: Split, tokenizer: Tokenizer, cfg: ModelConfig,
             labels: list[str], device: torch.device) -> dict:
    pred = predict_split(model, split, tokenizer, cfg, device)
    report = classification_report(pred, split.labels, split.question_types, labels)
    report["groups"] = group_accuracy(report["per_type"])
    report["priors"] = majority_baseline(split.labels, split.question_types, len(labels))
    return report


def evaluate_checkpoint(run: str | Path, data: str | Path, split: str = "val",
                        which: str = "best", device: str = "auto",
                        skip_bad_rows: bool = False) -> dict:
    from toolkit.checkpoint import load_checkpoint
    from toolkit.runtime.devices import resolve_device

    dev = resolve_device(device)
    ck = load_checkpoint(run, which, device=str(dev))
    rows = load_split(resolve_manifest(data, split), ck.labels, ck.tokenizer, ck.config.image_size,
                      skip_bad_rows)
    report = evaluate(ck.model, rows, ck.tokenizer, ck.config, ck.labels, dev)
    report["checkpoint"] = str(ck.weights)
    return report


def format_report(report: dict) -> str:
    lines = [f"accuracy {report['accuracy']:.2%} on {report['n']} rows"]
    for g, v in report.get("groups", {}).items():
        lines.append(f"  {g:<16} {v:.2%}")
    priors = report.get("priors", {})
    for t, v in report["per_type"].items():
        prior = f"   (majority answer {priors[t]:.1%})" if t in priors else ""
        lines.append(f"  {t:<16} {v:.2%}{prior}")
    labels = report["labels"]
    w = max(6, max(len(x) for x in labels) + 1)
    lines.append("confusion (rows: truth, columns: predicted)")
    lines.append(" " * w + "".join(f"{x:>{w}}" for x in labels))
    for name, row in zip(labels, report["confusion"]):
        lines.append(f"{name:>{w}}" + "".join(f"{c:>{w}}" for c in row))
    return "\n".join(lines)


def below_floors(report: dict, floors: AccuracyFloors) -> list[str]:
    """One line per accuracy under its floor, with the figure and the floor; empty when met."""
    checks = [("overall", report["accuracy"], floors.overall)]
    checks += [(g, v, floors.group) for g, v in report.get("groups", {}).items()]
    checks += [(t, v, floors.per_type) for t, v in report["per_type"].items()]
    return [f"{name} accuracy {100 * v:.2f}% is below the floor of {floor:g}%"
            for name, v, floor in checks if floor is not None and 100 * v < floor]
