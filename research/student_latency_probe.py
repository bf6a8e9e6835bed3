"""ONNX Runtime latency at batch 1 of candidate student widths against `small`, seeded weights.

    PYTHONPATH=. OMP_NUM_THREADS=1 python research/student_latency_probe.py --work /tmp/probe [NAME...]

Each candidate is `small` with the model fields below replaced (`micro` is "m2"), exported with
toolkit.export.onnx.to_onnx and timed on one thread, 32 tokens, 20 warm-up and 300 timed calls;
prints parameters, p50 and the minimum. Latency does not depend on the weights. The quick look that
chose the `micro` preset (bench/compression.md); `toolkit bench` is the measurement of record.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from toolkit.checkpoint import load_checkpoint, save_weights, write_run_files
from toolkit.config import model_config
from toolkit.data.preprocess import SPECIAL_TOKENS, Tokenizer
from toolkit.export.onnx import to_onnx
from toolkit.model import DualModalNet, count_parameters

CANDIDATES = {
    "small": {},
    "m1": {"vision": {"width": 16}, "text": {"hidden_size": 64, "num_heads": 2,
                                             "intermediate_size": 128},
           "dim": 64, "heads": 2, "fusion_cell_mlp": 128, "fusion_relation": 64, "head_hidden": 128},
    "m2": {"vision": {"width": 12}, "text": {"hidden_size": 32, "num_heads": 2,
                                             "intermediate_size": 64},
           "dim": 32, "heads": 2, "fusion_cell_mlp": 64, "fusion_relation": 32, "head_hidden": 64},
    "m3": {"vision": {"width": 16}, "text": {"hidden_size": 48, "num_heads": 2,
                                             "intermediate_size": 96},
           "dim": 48, "heads": 2, "fusion_cell_mlp": 96, "fusion_relation": 48, "head_hidden": 96},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(CANDIDATES))
    ap.add_argument("--work", type=Path, required=True, help="where the run directories go")
    args = ap.parse_args()
    torch.set_num_threads(1)
    vocab = list(SPECIAL_TOKENS) + [chr(c) for c in range(97, 123)] + [f"w{i}" for i in range(100)]
    for name in args.names:
        cfg = model_config("small", CANDIDATES[name])
        cfg = dataclasses.replace(cfg, num_classes=12,
                                  text=dataclasses.replace(cfg.text, vocab_size=len(vocab)))
        torch.manual_seed(0)
        model = DualModalNet(cfg)
        run = args.work / name
        write_run_files(run, cfg, {}, Tokenizer(vocab, 32), [f"l{i}" for i in range(12)])
        save_weights(model, run / "best.safetensors")
        onnx.save(to_onnx(load_checkpoint(run), 20), str(run / "model.onnx"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        s = ort.InferenceSession(str(run / "model.onnx"), so, providers=["CPUExecutionProvider"])
        feed = {"image": np.random.rand(1, 3, 64, 64).astype(np.float32),
                "input_ids": np.ones((1, 32), np.int64),
                "attention_mask": np.ones((1, 32), np.int64)}
        for _ in range(20):
            s.run(None, feed)
        ms = []
        for _ in range(300):
            t = time.perf_counter()
            s.run(None, feed)
            ms.append(1e3 * (time.perf_counter() - t))
        print(f"{name} {count_parameters(model)} params p50 {np.median(ms):.3f} ms "
              f"min {min(ms):.3f}", flush=True)


if __name__ == "__main__":
    main()
