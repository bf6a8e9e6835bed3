"""Which ops must stay FP32? Convert one FP32 export with several keep-lists and compare each with
the FP32 graph on held-out rows (ONNX Runtime, CPU).

  python bench/fp16_keep.py --run RUN --onnx export/model.onnx --data DATA [--samples 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {
    "none": (),
    "LayerNorm": ("LayerNormalization",),
    "LayerNorm+Softmax (default)": ("LayerNormalization", "Softmax"),
    "LayerNorm+Softmax+Reduce*": ("LayerNormalization", "Softmax", "ReduceMean",
                                            "ReduceSum"),
    "LayerNorm+Softmax+ReduceSum+Gemm/MatMul": ("LayerNormalization", "Softmax", "ReduceSum",
                                                "Gemm", "MatMul"),
}


def main() -> None:
    import onnx

    from toolkit.checkpoint import load_checkpoint
    from toolkit.compare import compare
    from toolkit.config import Tolerance
    from toolkit.export import fp16, graph, samples
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, default=64)
    a = ap.parse_args()
    ck = load_checkpoint(a.run)
    rows = samples.load_rows(ck, a.data, "val")
    n = min(a.samples, len(rows))
    feeds = [samples.batch(ck, rows, np.arange(s, min(s + 16, n))) for s in range(0, n, 16)]

    def run(path):
        with OnnxRuntimeRunner(path) as r:
            return {"logits": np.concatenate([r.infer(f)["logits"] for f in feeds])}

    ref = run(a.onnx)
    fp32 = graph.load(a.onnx)
    print("| kept FP32 | max abs | mean abs | cosine | top-1 | logit range |")
    for name, keep in VARIANTS.items():
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "m.onnx"
            onnx.save(fp16.convert(fp32, keep_fp32=keep), str(p))
            c = compare(ref, run(p), Tolerance())
        o = c.outputs[0]
        print(f"| {name} | {o.max_abs:.3g} | {o.mean_abs:.3g} | {o.cosine:.6f} | {o.top1:.2%} | "
              f"{np.abs(ref['logits']).max():.3g} |", flush=True)


if __name__ == "__main__":
    main()
