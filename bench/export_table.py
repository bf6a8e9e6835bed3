"""Export a run at every precision and print one markdown row per artifact (bench/export.md).

  python bench/export_table.py --run runs/small --data data/sort-of-clevr --out-dir export/bench
  python bench/export_table.py --untrained seed --data DATA --out-dir DIR   # size/time/error only
  ... --latency   also time ONNX Runtime (2 threads) vs PyTorch eager at batch 1, L=128

Columns: file size, export time (wall, includes the post-export check), and parity on the held-out
split (max abs error, worst-row cosine, top-1 agreement, accuracy) from toolkit.parity.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np


def make_untrained_run(preset_name: str, data: str, out: Path) -> Path:
    """A run directory with freshly initialized weights (seed 0): enough for size, time and error
    columns; agreement and accuracy of an untrained model mean nothing."""
    import torch

    from toolkit.checkpoint import save_weights, write_run_files
    from toolkit.config import preset
    from toolkit.data.manifest import dataset_labels, read_manifest, resolve_manifest
    from toolkit.data.preprocess import Tokenizer, train_vocab
    from toolkit.model import DualModalNet

    torch.manual_seed(0)
    rows = read_manifest(resolve_manifest(data, "train"))
    labels = dataset_labels(data, rows)
    base = preset(preset_name, num_classes=len(labels))
    tok = Tokenizer(train_vocab([r.text for r in rows], 1000), base.text.max_length)
    # A trained vocabulary sizes the embedding, as in toolkit train (the run files are checked).
    cfg = dataclasses.replace(base, text=dataclasses.replace(base.text,
                                                             vocab_size=len(tok.vocab)))
    write_run_files(out, cfg, {"data": str(Path(data).resolve())}, tok, labels)
    save_weights(DualModalNet(cfg).eval(), out / "best.safetensors")
    return out


def latency(run: Path, onnx_path: Path, threads: int = 2, length: int = 128, reps: int = 20):
    """Median ms at batch 1, sequence `length`: PyTorch eager vs ONNX Runtime, same feed."""
    import torch

    from toolkit.checkpoint import load_checkpoint
    from toolkit.export.samples import generated_batch
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    torch.set_num_threads(threads)
    ck = load_checkpoint(run)
    feed = generated_batch(ck, 1, min(length, ck.config.text.max_length),
                           np.random.default_rng(0))
    feed["attention_mask"][:] = 1
    args = {k: torch.from_numpy(v) for k, v in feed.items()}

    from latency import median_ms  # bench/latency.py, beside this script

    with torch.inference_mode():
        t_torch = median_ms(lambda: ck.model(**args), reps)
    with OnnxRuntimeRunner(onnx_path, threads=threads) as r:
        t_ort = median_ms(lambda: r.infer(feed), reps)
    return t_torch, t_ort


def main() -> None:
    from toolkit.config import (CalibMethod, ExportConfig, Int8Config, Int8Target, ParityConfig,
                                Precision)
    from toolkit.export.pipeline import export
    from toolkit.parity import parity

    ap = argparse.ArgumentParser()
    ap.add_argument("--run")
    ap.add_argument("--untrained")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-method", default="minmax")
    ap.add_argument("--parity-samples", type=int, default=None)
    ap.add_argument("--only", default="fp32,fp16,int8-tensorrt,int8-cpu")
    ap.add_argument("--latency", action="store_true")
    a = ap.parse_args()
    out_dir = Path(a.out_dir)
    run = Path(a.run) if a.run else make_untrained_run(a.untrained, a.data, out_dir / "run")
    kinds = {"fp32": (Precision.fp32, None), "fp16": (Precision.fp16, None),
             "int8-tensorrt": (Precision.int8, Int8Target.tensorrt),
             "int8-cpu": (Precision.int8, Int8Target.cpu)}
    fp32_size = None
    print("| artifact | size MiB | % of FP32 | export s | max abs | cosine | top-1 | accuracy "
          "(ref) |" + (" torch ms | ORT ms | ratio |" if a.latency else ""))
    for name in a.only.split(","):
        prec, target = kinds[name]
        int8 = None if target is None else Int8Config(a.data, samples=a.calib_samples,
                                                      target=target,
                                                      method=CalibMethod(a.calib_method))
        path = out_dir / f"model.{name}.onnx"
        t = time.perf_counter()
        export(ExportConfig(str(run), str(path), prec, data=a.data, int8=int8))
        secs = time.perf_counter() - t
        size = path.stat().st_size / 2**20
        fp32_size = fp32_size or (size if name == "fp32" else None)
        c = parity(ParityConfig(str(run), str(path), data=a.data, samples=a.parity_samples))
        o = c.outputs[0]
        pct = f"{100 * size / fp32_size:.1f}%" if fp32_size else "-"
        row = (f"| {name} | {size:.2f} | {pct} | {secs:.1f} | {o.max_abs:.3g} | {o.cosine:.6f} | "
               f"{o.top1:.2%} | {c.candidate_accuracy:.2%} ({c.reference_accuracy:.2%}) |")
        if a.latency:
            tt, to = latency(run, path)
            row += f" {tt:.1f} | {to:.1f} | {to / tt:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
