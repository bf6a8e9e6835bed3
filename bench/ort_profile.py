"""Where an ONNX graph spends its time in ONNX Runtime: kernel time per op type, from its profiler.

  python bench/ort_profile.py --threads 1 --reps 20 --json OUT.json MODEL.onnx [MODEL.onnx ...]

Each file gets one session (CPU, all of ONNX Runtime's graph optimizations, as the toolkit's
runner uses), the feed `toolkit bench` builds (batch 1, a question of --seq tokens, a random
image), --warmup calls, then --reps profiled calls. The profile's kernel events are summed per op
type of the optimized graph (what ORT runs after its fusions, not the file's node types) and per
kind: matrix products in float or integer, the quantize/dequantize steps, and everything else.
Shares are of the summed kernel time; the wall time per call is the median of the profiled calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

# Op types after ONNX Runtime's CPU optimizations (its contrib ops included), by kind.
KINDS = {
    "integer product": {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
                        "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"},
    "float product": {"MatMul", "Conv", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"},
    "quantize / dequantize": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"},
}


def kind(op_type: str) -> str:
    return next((k for k, ops in KINDS.items() if op_type in ops), "other")


def feed_for(path: str, seq: int) -> dict[str, np.ndarray]:
    """The feed `toolkit bench` times: one random picture and a question of exactly `seq`
    tokens, through the artifact's own preprocessing (its record says how)."""
    from toolkit.bench import bench_inputs
    from toolkit.errors import ToolkitError
    from toolkit.runtime.predictor import Predictor

    try:
        with Predictor.load(path, device="cpu", threads=1) as predictor:
            return bench_inputs(predictor, 1, seq)[0]
    except ToolkitError as e:  # not a toolkit export, or --seq past its max_length
        raise SystemExit(f"error: {e}") from None


def profile(path: str, threads: int, seq: int, warmup: int, reps: int) -> dict:
    import onnxruntime as ort

    if not Path(path).is_file():
        raise SystemExit(f"error: {path} is not a file; give an exported .onnx (toolkit export)")
    feed = feed_for(path, seq)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        walls = []
        for i in range(warmup + reps):
            t = time.perf_counter()
            sess.run(None, feed)
            if i >= warmup:
                walls.append((time.perf_counter() - t) * 1e3)
        with open(sess.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    # Per node, its kernel events of the last `reps` runs (the warm-up calls are profiled too).
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_node[node].append(e["dur"] / 1e3)  # us -> ms
            op_of[node] = e["args"]["op_name"]
    # ORT stops recording past its event cap; a node short of one event per call would be
    # averaged over the wrong calls.
    short = [n for n, durs in per_node.items() if len(durs) < warmup + reps]
    if short:
        raise SystemExit(f"error: the profile of {path} lacks calls of {len(short)} node(s) "
                         f"(e.g. {short[0]}): fewer --reps")
    by_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for node, durs in per_node.items():
        by_op[op_of[node]] += sum(durs[-reps:]) / reps
        nodes[op_of[node]] += 1
    total = sum(by_op.values())
    by_kind: dict[str, float] = defaultdict(float)
    for op, ms in by_op.items():
        by_kind[kind(op)] += ms
    return {
        "onnx": path, "threads": threads, "seq": seq, "reps": reps,
        "wall_ms": statistics.median(walls), "kernel_ms": total,
        "kinds": {k: {"ms": v, "share": v / total} for k, v in
                  sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "ops": [{"op": op, "kind": kind(op), "nodes": nodes[op], "ms": ms, "share": ms / total}
                for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])],
    }


def markdown(p: dict, top: int) -> str:
    out = [f"\n{p['onnx']}: {p['wall_ms']:.1f} ms a call (median of {p['reps']}), "
           f"{p['kernel_ms']:.1f} ms in kernels, {p['threads']} thread(s)\n",
           "| kind | ms | share |", "|---|---|---|"]
    out += [f"| {k} | {v['ms']:.1f} | {v['share']:.1%} |" for k, v in p["kinds"].items()]
    out += ["", "| op type (optimized graph) | kind | nodes | ms | share |", "|---|---|---|---|---|"]
    out += [f"| {o['op']} | {o['kind']} | {o['nodes']} | {o['ms']:.2f} | {o['share']:.1%} |"
            for o in p["ops"][:top]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128, help="question tokens")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--top", type=int, default=15, help="op types printed per file")
    ap.add_argument("--json", type=Path)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    results = [profile(p, a.threads, a.seq, a.warmup, a.reps) for p in a.onnx]
    for p in results:
        print(markdown(p, a.top), flush=True)
    if a.json:
        from toolkit.artifacts import write_json

        write_json(a.json, {"command": "python bench/ort_profile.py " + " ".join(argv),
                            "profiles": results})
    return results


if __name__ == "__main__":
    main()
