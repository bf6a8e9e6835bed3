"""`--auto-fallback`: the fewest compute nodes kept in float for an FP16/INT8 export to meet its
precision's tolerance (config.TOLERANCES: top-1 agreement and accuracy drop, and the FP16 bounds).

As Polygraphy's `debug precision` does (docs.nvidia.com/deeplearning/tensorrt/polygraphy/docs/,
tools/debug), a bisection over the compute nodes (Conv, MatMul, Gemm), here in the order of their
layerwise sensitivity: the error each node adds to what it reads (toolkit.layerwise, on a few
rows of the plain reduced graph), most sensitive first. Keeping the first k of that order in float
is tried for k = 0, then all, then bisected; each trial runs the whole held-out slice in ONNX
Runtime and compares its logits with the FP32 graph's. Bisection assumes that keeping more nodes
in float never hurts; the chosen k is itself a passing trial, so the result meets the tolerance
on the slice whatever the shape of the search.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from toolkit.compare import compare
from toolkit.config import Tolerance
from toolkit.export.graph import ExportError
from toolkit.layerwise import COMPUTE_OPS

RANK_ROWS = 8  # rows of the layerwise ranking (every tensor of one row in memory at a time)


class FallbackError(ExportError):
    """No choice of float nodes meets the tolerance; the message carries the evidence."""


@dataclass(frozen=True)
class Trial:
    kept: int  # the first `kept` nodes of the ranking in float
    top1: float | None
    accuracy_drop: float | None
    passed: bool
    failures: list[str] = field(default_factory=list)


@dataclass
class Fallback:
    kept_float: list[str]  # node names, most sensitive first
    compute_ops: int  # candidates searched (compute nodes not excluded by op type)
    ranking: list[tuple[str, float]]  # (node, added error), most sensitive first
    trials: list[Trial]
    rows: int  # held-out rows of each trial

    @property
    def kept_share(self) -> float:
        return len(self.kept_float) / self.compute_ops if self.compute_ops else 0.0

    def record(self) -> dict:
        """What goes into the artifact's metadata (extra["auto_fallback"])."""
        return {"kept_float": list(self.kept_float), "compute_ops": self.compute_ops,
                "kept_share": self.kept_share, "rows": self.rows,
                "ranking": "layerwise added error (max abs over range), most sensitive first",
                "trials": [asdict(t) for t in self.trials]}

    def summary(self) -> str:
        last = next(t for t in reversed(self.trials) if t.kept == len(self.kept_float))
        names = ", ".join(self.kept_float) or "none"
        drop = "" if last.accuracy_drop is None else f", accuracy drop {last.accuracy_drop:+.2%}"
        return (f"auto-fallback: {len(self.kept_float)} of {self.compute_ops} compute ops kept in "
                f"float ({self.kept_share:.1%}): {names}; on {self.rows} held-out rows top-1 "
                f"{last.top1:.2%}{drop} ({len(self.trials)} trials)")


def compute_nodes(model, exclude: tuple[str, ...] = ()) -> list[str]:
    return [n.name for n in model.graph.node
            if n.op_type in COMPUTE_OPS and n.op_type not in exclude]


def logits(model, feeds: list[Mapping[str, np.ndarray]], threads: int | None = None
           ) -> np.ndarray:
    from toolkit.layerwise import run, session

    sess = session(model, threads)
    return np.concatenate([run(sess, f, ["logits"])["logits"].astype(np.float32) for f in feeds])


def rank(fp32, reduced, candidates: list[str], rows: list[Mapping[str, np.ndarray]],
         precision: str) -> list[tuple[str, float]]:
    """Candidates by the error they add in `reduced` (layerwise, one row per run), largest first;
    ties (and nodes not compared) in graph order."""
    from toolkit.layerwise import compare_graphs

    report = compare_graphs(fp32, reduced, rows, precision)
    added = {n.node: n.added for n in report.nodes}
    order = {name: i for i, name in enumerate(candidates)}
    scored = [(name, float(added.get(name, 0.0))) for name in candidates]
    return sorted(scored, key=lambda x: (-x[1] if np.isfinite(x[1]) else -np.inf, order[x[0]]))


def search(fp32, build: Callable[[frozenset[str]], object], candidates: list[str],
           feeds: list[Mapping[str, np.ndarray]], labels: np.ndarray, tolerance: Tolerance,
           precision: str, rank_rows: list[Mapping[str, np.ndarray]], log=lambda *_: None
           ) -> tuple[Fallback, object]:
    """The fewest of `candidates` that `build(kept)` must keep in float to meet `tolerance` on
    `feeds`; returns the record and the chosen graph. FallbackError if even all of them miss."""
    reference = logits(fp32, feeds)
    plain = build(frozenset())
    ranking = rank(fp32, plain, candidates, rank_rows, precision)
    order = [name for name, _ in ranking]
    trials: list[Trial] = []
    graphs: dict[int, object] = {0: plain}

    def trial(k: int) -> Trial:
        if k not in graphs:
            graphs[k] = build(frozenset(order[:k]))
        model = graphs[k]
        c = compare({"logits": reference}, {"logits": logits(model, feeds)}, tolerance, labels)
        t = Trial(k, c.outputs[0].top1, c.accuracy_drop, c.passed, c.failures)
        trials.append(t)
        drop = "" if t.accuracy_drop is None else f", accuracy drop {t.accuracy_drop:+.2%}"
        log(f"  {k} of {len(order)} compute ops in float: top-1 {t.top1:.2%}{drop} -> "
            f"{'meets' if t.passed else 'misses'} the {precision} tolerance")
        return t

    n = len(order)
    hi = 0
    if not trial(0).passed:
        last = trial(n)
        if not last.passed:
            raise FallbackError(
                f"--auto-fallback: even with all {n} compute ops (Conv, MatMul, Gemm) in float "
                f"the {precision} export misses its tolerance on {len(reference)} held-out rows: "
                f"{'; '.join(last.failures)}; nothing was written. The loss is outside the "
                "compute ops: export a higher precision, or keep more op types float "
                "(--exclude-op-type)")
        lo, hi = 0, n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if trial(mid).passed:
                hi = mid
            else:
                lo = mid
        if hi == n and precision == "int8":
            raise FallbackError(
                f"--auto-fallback: the int8 export meets its tolerance only with all {n} compute "
                "ops in float, and nothing would be INT8; nothing was written. Export --precision "
                "fp16, or calibrate on more rows (--calib-samples) or with another "
                "--calib-method")
    fb = Fallback(order[:hi], n, ranking, trials, int(len(reference)))
    return fb, graphs[hi]


def heldout_slice(ck, rows, n: int, batch_size: int = 32, seed: int = 0
                  ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Up to `n` held-out rows in a fixed random order, in batches (each padded to its longest
    row), and their labels."""
    from toolkit.export import samples

    idx = np.random.default_rng(seed).permutation(len(rows))[:n]
    feeds = [samples.batch(ck, rows, idx[s:s + batch_size]) for s in range(0, len(idx), batch_size)]
    return feeds, np.asarray(rows.labels)[idx]
