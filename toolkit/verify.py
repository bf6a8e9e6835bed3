"""The one verification path: a reference runner and a candidate runner on the same feeds.

Used by the export-time check (export/pipeline.py), `toolkit parity` (parity.py) and bench's GPU
check. Each runner gets every feed (cast to the runner's own input dtypes, so an FP16-I/O graph
takes FP16 images), the outputs of all feeds are joined per name, and both sides go to
compare.compare. Like Polygraphy's Comparator, which runs a list of runners on one data loader
and compares their results (docs.nvidia.com/deeplearning/tensorrt/polygraphy/docs/comparator/).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import numpy as np

from toolkit.compare import Comparison, compare
from toolkit.config import Tolerance
from toolkit.runtime.base import Runner


def as_inputs(runner: Runner, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feed` with each float array cast to the dtype the runner takes (others unchanged)."""
    specs = runner.input_specs()
    out = {}
    for name, x in feed.items():
        spec = specs.get(name)
        cast = spec is not None and x.dtype.kind == "f" and spec.dtype.kind == "f"
        out[name] = x.astype(spec.dtype, copy=False) if cast else x
    return out


def run_all(runners: list[Runner], feeds: Iterable[Mapping[str, np.ndarray]]
            ) -> list[dict[str, np.ndarray]]:
    """Every runner on every feed; per runner, its outputs of all feeds joined along axis 0
    (floats as float32). Runners not yet active are activated here and deactivated after."""
    results: list[dict[str, list[np.ndarray]]] = [{} for _ in runners]
    with contextlib.ExitStack() as stack:
        for r in runners:
            if not r.is_active:
                stack.enter_context(r)
        for feed in feeds:
            for r, res in zip(runners, results):
                for name, y in r.infer(as_inputs(r, feed)).items():
                    y = np.asarray(y)
                    res.setdefault(name, []).append(y.astype(np.float32) if y.dtype.kind == "f"
                                                    else y)
    return [{n: np.concatenate(ys) for n, ys in res.items()} for res in results]


def verify(reference: Runner, candidate: Runner, feeds: Iterable[Mapping[str, np.ndarray]],
           tolerance: Tolerance, labels: np.ndarray | None = None) -> Comparison:
    """Run both on the same feeds and compare (names, shapes, values; accuracy with `labels`)."""
    ref, cand = run_all([reference, candidate], feeds)
    return compare(ref, cand, tolerance, labels)
