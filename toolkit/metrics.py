"""Classification metrics (numpy only): accuracy overall and per question type, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_report(pred: np.ndarray, target: np.ndarray, question_types: Sequence[str],
                          labels: Sequence[str]) -> dict:
    """Accuracy overall and per question type (rows with an empty type count only overall)."""
    pred, target = np.asarray(pred), np.asarray(target)
    correct = pred == target
    types = np.asarray(question_types)
    per_type = {t: float(correct[types == t].mean()) for t in sorted(set(question_types)) if t}
    k = len(labels)
    confusion = np.bincount(target * k + pred, minlength=k * k).reshape(k, k)
    return {"accuracy": float(correct.mean()), "n": int(len(target)), "per_type": per_type,
            "labels": list(labels), "confusion": confusion.tolist()}


def majority_baseline(target: np.ndarray, question_types: Sequence[str], k: int) -> dict:
    """Accuracy of always answering the most frequent class of each question type: the prior."""
    target, types = np.asarray(target), np.asarray(question_types)
    out = {}
    for t in sorted(set(question_types)):
        rows = target[types == t]
        out[t or "all"] = float(np.bincount(rows, minlength=k).max() / len(rows))
    return out


GROUPS = {"non_relational": ("shape", "horizontal", "vertical"),
          "relational": ("closest", "furthest", "count")}


def group_accuracy(per_type: dict[str, float]) -> dict[str, float]:
    """Mean accuracy over the question types of each group present (equal-sized by design)."""
    out = {}
    for g, members in GROUPS.items():
        vals = [per_type[m] for m in members if m in per_type]
        if vals:
            out[g] = float(np.mean(vals))
    return out
