"""N:M structured sparsity patterns and conformance checks (numpy and onnx only, no torch), so
that `toolkit inspect` can check an .onnx or a plan's source on a machine without PyTorch.

In every group of M consecutive weights along the input-channel (reduction) dimension, at most N
are non-zero: NVIDIA's 2:4 layout for sparse tensor cores (Mishra et al., "Accelerating Sparse
Deep Neural Networks", https://arxiv.org/abs/2104.08378). toolkit/prune.py makes such weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.config import ConfigError
from toolkit.errors import ToolkitError


class SparsityError(ToolkitError):
    """A file cannot be checked; the message names the fix."""


@dataclass(frozen=True)
class Pattern:
    """At most `n` non-zero weights in every `m` consecutive input-channel weights."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: str) -> Pattern:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not match:
        raise ConfigError(f"--pattern {text!r} is not N:M (e.g. --pattern 2:4: at most 2 non-zero "
                          "weights in every 4)")
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise ConfigError(f"--pattern {text}: N:M needs 1 <= N < M (N non-zero weights kept of "
                          "every M); use e.g. 2:4")
    return Pattern(n, m)


def _groups(w: np.ndarray, axis: int, m: int) -> np.ndarray:
    """(groups, m): runs of m consecutive weights along `axis` (the input channels)."""
    return np.moveaxis(w, axis, -1).reshape(-1, m)


def conforming_share(w: np.ndarray, axis: int, pattern: Pattern) -> float:
    """The share of groups with at most N non-zero weights."""
    g = _groups(np.asarray(w), axis, pattern.m)
    return float(np.mean(np.count_nonzero(g, axis=1) <= pattern.n))


def summary(rows: list[dict], skipped: dict[str, str], pattern: Pattern) -> dict:
    groups = sum(r["groups"] for r in rows)
    share = (sum(r["conforming"] * r["groups"] for r in rows) / groups) if groups else 0.0
    return {"pattern": str(pattern), "layers": rows, "skipped": skipped,
            "conforming_share": share, "groups": groups}


def onnx_conformance(path: str | Path, pattern: Pattern) -> dict:
    """Per Conv/MatMul/Gemm of an .onnx file whose weight is an initializer, the share of groups
    conforming to the pattern, along the weight's reduction axis as the node reads it: Conv W is
    (K, C, R, S); Gemm B is (N, K) with transB=1, else (K, N); MatMul B is (..., K, N). A weight
    reached through Transpose, Cast, Identity or DequantizeLinear is followed to its initializer
    (FP16 and INT8 exports), the Transpose's permutation mapping the axis.

    Every constant such a node multiplies is reported, as TensorRT would see it, weights or not:
    the relation read's cell centres, an (N, 2) constant that `w @ xy` multiplies, are one of them
    and stay dense."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError and others for a file that is not ONNX
        raise SparsityError(f"{path} is not a readable ONNX model ({type(e).__name__}); export it "
                         "again with `toolkit export`") from e
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:  # Constant nodes hold weights too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            inits.setdefault(node.output[0], node.attribute[0].t)

    def source(name: str, axis: int) -> tuple[str, int] | None:
        """(initializer name, its axis) behind the tensor `name`, or None if not a constant."""
        while name not in inits:
            node = producer.get(name)
            if node is None:
                return None
            if node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                if perm is None:
                    return None
                axis = perm[axis]
            elif node.op_type not in ("Cast", "Identity", "DequantizeLinear"):
                return None
            name = node.input[0]
        return name, axis

    rows, skipped = [], {}
    for node in graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            weight, axis = node.input[1], 1
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            weight, axis, group = node.input[1], 1 if trans_b else 0, 1
        elif node.op_type == "MatMul":
            weight, axis, group = node.input[1], -2, 1
        else:
            continue
        found = source(weight, axis)
        if found is None:
            continue  # activations times activations (attention scores): no weight
        init, axis = found
        w = numpy_helper.to_array(inits[init])
        axis = axis % w.ndim
        label = f"{node.name or node.op_type} ({init})"
        if group != 1:
            skipped[label] = f"grouped convolution (group={group})"
        elif w.shape[axis] % pattern.m:
            skipped[label] = f"{w.shape[axis]} input channels, not a multiple of {pattern.m}"
        else:
            rows.append({"layer": label, "kind": node.op_type, "shape": list(w.shape),
                         "groups": int(w.size // pattern.m),
                         "conforming": conforming_share(w, axis, pattern)})
    return summary(rows, skipped, pattern)


def format_conformance(report: dict) -> str:
    lines = [f"{report['pattern']} conformance: {report['conforming_share']:.2%} of "
             f"{report['groups']} groups in {len(report['layers'])} layers"]
    for r in report["layers"]:
        lines.append(f"  {r['conforming']:>8.2%}  {r['kind']:<6} {str(tuple(r['shape'])):<18} "
                     f"{r['layer']}")
    for name, why in report["skipped"].items():
        lines.append(f"  {'dense':>8}  {name}: {why}")
    return "\n".join(lines)
