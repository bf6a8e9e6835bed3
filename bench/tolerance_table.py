"""FP32 and FP16 export error against the logits' range, one markdown row per run and precision
(bench/export.md, "Bounds relative to the logits' range").

  python bench/tolerance_table.py RUN [RUN ...] [--samples 1000] [--scale-head 1000]

Each run is exported to RUN.fp32.onnx and RUN.fp16.onnx beside it (FP16 from that FP32 graph) and
compared with PyTorch on the first --samples held-out rows of the run's own data (toolkit.parity).
--scale-head F also measures a copy of each run (RUN-xF) whose last head layer is multiplied by F:
the logits of a model trained far longer, with the same rounding behaviour.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def scaled_copy(run: Path, factor: float) -> Path:
    from safetensors.torch import load_file, save_file

    out = run.with_name(f"{run.name}-x{factor:g}")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run, out)
    state = load_file(str(out / "best.safetensors"))
    last = max(k for k in state if k.startswith("head.") and k.endswith(".weight"))
    for k in (last, last.replace(".weight", ".bias")):
        state[k] = state[k] * factor
    save_file(state, str(out / "best.safetensors"))
    return out


def rows(run: Path, samples: int):
    from toolkit.config import TOLERANCES, ExportConfig, ParityConfig, Precision
    from toolkit.export.pipeline import export
    from toolkit.parity import parity

    fp32 = run.with_name(f"{run.name}.fp32.onnx")
    for precision in (Precision.fp32, Precision.fp16):
        out = fp32 if precision is Precision.fp32 else run.with_name(f"{run.name}.fp16.onnx")
        t0 = time.perf_counter()
        source = None if precision is Precision.fp32 else str(fp32)
        export(ExportConfig(str(run), str(out), precision=precision, fp32_source=source))
        c = parity(ParityConfig(str(run), str(out), samples=samples))
        o = c.outputs[0]
        bound = TOLERANCES[precision].abs_bound(o.scale)
        yield (f"| {run.name} | {precision.value} | {c.n} | {o.scale:.3g} | {o.max_abs:.3g} | "
               f"{o.max_abs / o.scale:.2g} | {bound:.3g} | {o.cosine:.6f} | {o.top1:.2%} | "
               f"{c.candidate_accuracy:.2%} ({c.reference_accuracy:.2%}) | "
               f"{'passed' if c.passed else 'FAILED'} | {time.perf_counter() - t0:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--scale-head", type=float, default=None)
    args = ap.parse_args()
    runs = list(args.runs)
    if args.scale_head:
        runs += [scaled_copy(r, args.scale_head) for r in args.runs]
    print("| run | precision | rows | logit range | max abs | / range | bound | cosine | top-1 | "
          "accuracy (ref) | verdict | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        for row in rows(run, args.samples):
            print(row, flush=True)


if __name__ == "__main__":
    main()
