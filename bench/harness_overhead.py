"""What `toolkit bench`'s timing adds over a bare timed loop of the same calls (target: <= 2%).

  python bench/harness_overhead.py export/model.onnx --batch 1 --seq 128 --iters 200 --rounds 5

Both loops call Predictor.infer on the same prepared feed: the bare loop times `iters` calls with
one pair of perf_counter reads; the harness (toolkit.bench.time_calls + summarize) times each call.
Rounds alternate the two so that a change in machine load hits both; the medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    from toolkit.bench import bench_inputs, summarize, time_calls
    from toolkit.runtime import Predictor

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    p = Predictor.load(a.model, threads=a.threads)
    seq = min(a.seq, p.metadata.max_length)
    feed, _, _ = bench_inputs(p, a.batch, seq)
    for _ in range(10):
        p.infer(feed)
    bare, harness = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for _ in range(a.iters):
            p.infer(feed)
        bare.append((time.perf_counter() - t0) / a.iters * 1000)
        harness.append(summarize(time_calls(lambda: p.infer(feed), 0, a.iters, None), a.batch,
                                 "perf_counter").mean_ms)
    b, h = statistics.median(bare), statistics.median(harness)
    print(f"| {a.model} | batch {a.batch} | L={seq} | bare loop {b:.4f} ms | harness mean "
          f"{h:.4f} ms | overhead {100 * (h - b) / b:+.2f}% |")


if __name__ == "__main__":
    main()
