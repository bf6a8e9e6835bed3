"""The one comparison function (numpy only): names, then shapes, then values.

Used at export time, by `toolkit parity` and by the tests. Like Hugging Face Optimum's
`validate_model_outputs` (names -> shapes -> values), except that a value outside the tolerance is
an error carrying the evidence, never a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from toolkit.config import Tolerance
from toolkit.errors import ToolkitError

EPS = 1e-6  # keeps relative error finite where the reference is (nearly) zero


class ParityError(ToolkitError):
    """A candidate does not answer like its reference; the message is the evidence."""


@dataclass(frozen=True)
class OutputStats:
    name: str
    shape: tuple
    max_abs: float
    scale: float  # the reference's range (max - min): what Tolerance.rtol is relative to
    mean_abs: float
    max_rel: float
    mean_rel: float
    cosine: float  # the worst row's cosine similarity (rows = samples)
    top1: float | None  # share of rows with the same argmax; None for 1-D outputs


@dataclass(frozen=True)
class Comparison:
    outputs: list[OutputStats]
    tolerance: Tolerance
    failures: list[str]  # one line per exceeded bound; empty when passed
    n: int  # rows compared
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def accuracy_drop(self) -> float | None:
        if self.reference_accuracy is None or self.candidate_accuracy is None:
            return None
        return self.reference_accuracy - self.candidate_accuracy

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"], d["accuracy_drop"] = self.passed, self.accuracy_drop
        return d

    def report(self) -> str:
        lines = [f"{'PASSED' if self.passed else 'FAILED'} on {self.n} rows"]
        for o in self.outputs:
            top1 = "" if o.top1 is None else f" top1 {o.top1:.2%}"
            share = o.max_abs / o.scale if o.scale else 0.0
            lines.append(f"  {o.name} {o.shape}: max abs {o.max_abs:.3g} (mean {o.mean_abs:.3g}; "
                         f"{share:.2g} of the range {o.scale:.3g}), "
                         f"max rel {o.max_rel:.3g} (mean {o.mean_rel:.3g}), "
                         f"cosine {o.cosine:.6f}{top1}")
        if self.reference_accuracy is not None:
            lines.append(f"  accuracy: reference {self.reference_accuracy:.2%}, candidate "
                         f"{self.candidate_accuracy:.2%} (drop {self.accuracy_drop:+.2%})")
        lines += [f"  exceeded: {f}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def raise_if_failed(self, what: str = "candidate") -> "Comparison":
        if not self.passed:
            raise ParityError(f"{what} does not match its reference:\n{self.report()}")
        return self


def _row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    b = b.reshape(b.shape[0], -1) if b.ndim > 1 else b.reshape(1, -1)
    # Two all-zero rows are identical (cosine 1); one zero row against a non-zero one is 0.
    # No floor on den: clamping it (formerly at 1e-30) made two identical tiny rows cosine 0.
    # A non-finite value (inf x 0) gives NaN, which min() keeps and the check then fails.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        num = (a * b).sum(1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), (num == 0) * 1.0)
    return float(cos.min())


def _stats(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputStats:
    ref, cand = ref.astype(np.float64), cand.astype(np.float64)
    diff = np.abs(ref - cand)
    rel = diff / (np.abs(ref) + EPS)
    top1 = None
    if ref.ndim >= 2:
        top1 = float((ref.argmax(-1) == cand.argmax(-1)).mean())
    scale = float(ref.max() - ref.min()) if ref.size else 0.0
    return OutputStats(name, tuple(ref.shape), float(diff.max(initial=0)), scale,
                       float(diff.mean()), float(rel.max(initial=0)), float(rel.mean()),
                       _row_cosine(ref, cand), top1)


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            tolerance: Tolerance, labels: np.ndarray | None = None,
            logits: str = "logits") -> Comparison:
    """Compare two dicts of outputs. Names and shapes must match exactly (else ParityError at once);
    values are measured per output and checked against `tolerance`. With `labels` (row class ids),
    accuracy of the `logits` output is computed for both sides."""
    if set(reference) != set(candidate):
        raise ParityError(f"output names differ: reference {sorted(reference)}, candidate "
                          f"{sorted(candidate)}; the candidate was exported from another model")
    for name in reference:
        r, c = np.asarray(reference[name]), np.asarray(candidate[name])
        if r.shape != c.shape:
            raise ParityError(f"output {name!r}: reference shape {r.shape}, candidate shape "
                              f"{c.shape}; the candidate was exported from another model")
        if r.size == 0:  # statistics of nothing would read as NaN, i.e. a false "non-finite"
            raise ParityError(f"output {name!r} is empty (shape {r.shape}); compare at least "
                              "one row")
    stats = [_stats(n, np.asarray(reference[n]), np.asarray(candidate[n])) for n in reference]
    failures, notes = [], []
    t = tolerance
    for s in stats:
        if not (np.isfinite(s.max_abs) and np.isfinite(s.cosine)):
            failures.append(f"{s.name}: non-finite values (NaN or inf) in the candidate")
            continue
        bound = t.abs_bound(s.scale)
        if bound is not None and s.max_abs > bound:
            failures.append(f"{s.name}: max abs error {s.max_abs:.3g} > {bound:.3g} "
                            f"({t.atol:g} + {t.rtol:g} x the reference's range {s.scale:.3g})")
        if t.min_cosine is not None and s.cosine < t.min_cosine:
            failures.append(f"{s.name}: cosine {s.cosine:.6f} < {t.min_cosine:g}")
        if t.min_top1 is not None and s.top1 is not None and s.top1 < t.min_top1:
            failures.append(f"{s.name}: top-1 agreement {s.top1:.2%} < {t.min_top1:.2%}")
    first = next(iter(reference)) if reference else None
    n = int(np.asarray(reference[first]).shape[0]) if first and np.ndim(reference[first]) else 0
    ref_acc = cand_acc = None
    if labels is not None and logits in reference:
        labels = np.asarray(labels)
        ref_acc = float((np.asarray(reference[logits]).argmax(-1) == labels).mean())
        cand_acc = float((np.asarray(candidate[logits]).argmax(-1) == labels).mean())
        if t.max_accuracy_drop is not None and ref_acc - cand_acc > t.max_accuracy_drop:
            failures.append(f"accuracy drop {ref_acc - cand_acc:.2%} > {t.max_accuracy_drop:.2%}")
    elif t.max_accuracy_drop is not None:
        notes.append("accuracy drop not checked: no labels given")
    return Comparison(stats, tolerance, failures, n, ref_acc, cand_acc, notes)
