"""Batch 1, L=128 latency: PyTorch eager vs ONNX Runtime (CPU EP) on the same feed, one process.

  python bench/latency.py --run RUN --threads 2 export/model.onnx export/model.int8-cpu.onnx ...

Each backend runs `--reps` times after two warm-ups; PyTorch is re-measured between the ONNX
models so that a change in machine load shows up as a change in the PyTorch column.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def median_ms(fn, reps: int) -> float:
    fn(), fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))


def main() -> None:
    import torch

    from toolkit.checkpoint import load_checkpoint
    from toolkit.export.samples import generated_batch
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("onnx", nargs="+")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ck = load_checkpoint(a.run)
    feed = generated_batch(ck, 1, min(a.length, ck.config.text.max_length),
                           np.random.default_rng(0))
    feed["attention_mask"][:] = 1
    args = {k: torch.from_numpy(v) for k, v in feed.items()}
    print("| model | PyTorch eager ms | ONNX Runtime ms | ratio |")
    for path in a.onnx:
        with torch.inference_mode():
            t_torch = median_ms(lambda: ck.model(**args), a.reps)
        with OnnxRuntimeRunner(path, threads=a.threads) as r:
            t_ort = median_ms(lambda: r.infer(feed), a.reps)
        print(f"| {path} | {t_torch:.1f} | {t_ort:.1f} | {t_ort / t_torch:.2f} |", flush=True)


if __name__ == "__main__":
    main()
