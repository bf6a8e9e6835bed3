"""Training throughput of the `small` preset: the whole `toolkit train` loop against the model alone.

    python bench/train_throughput.py --data data/sort-of-clevr --threads 2 \
        [--baseline /path/to/another/checkout] [--repeats 3] [--model-config M.json]

Per checkout (this one, and the baseline's toolkit when given), in its own subprocess, alternately:
- `loop`: `train()` for S and 3S steps; the difference over 2S steps is the time of a step with
  its data, optimizer and bookkeeping, without the start-up and the final evaluation;
- `model`: the same model, loss and optimizer on one fixed random batch, the same 2S steps: the
  rate the loop could reach if its input cost nothing.
`--model-config` overrides this checkout's `small` as `toolkit train --model-config` does (the
baseline keeps its own preset), so that two pipelines can be compared on one model when the preset
has changed in between.
Prints samples/s per repeat and the medians, and writes `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, tempfile, time, dataclasses
import torch
from toolkit.config import TrainConfig, preset
from toolkit.train import train
data, steps, batch, overrides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
if overrides:  # only this checkout gets them: a baseline may predate model_config
    from toolkit.config import model_config
    small = model_config("small", json.loads(overrides))
else:
    small = preset("small")
cfg = TrainConfig(data=data, out="", model=small, epochs=100, batch_size=batch, lr=1e-3,
                  warmup_steps=10, device="cpu", eval_every=10**9)

def loop(n):
    with tempfile.TemporaryDirectory() as d:
        c = dataclasses.replace(cfg, out=d, max_steps=n)
        t = time.perf_counter()
        train(c, log=lambda *_: None)
        return time.perf_counter() - t

def model_only(n):
    from toolkit.model import DualModalNet
    m = small
    net = DualModalNet(dataclasses.replace(m, num_classes=12, text=dataclasses.replace(
        m.text, vocab_size=500)))
    try:
        from toolkit.train import build_optimizer
        opt = build_optimizer(net, cfg)
    except ImportError:  # a checkout from before build_optimizer
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, foreach=True)
    g = torch.Generator().manual_seed(0)
    x = dict(image=torch.randn(batch, 3, m.image_size, m.image_size, generator=g),
             input_ids=torch.randint(1, 500, (batch, 16), generator=g),
             attention_mask=torch.ones(batch, 16, dtype=torch.long))
    y = torch.randint(0, 12, (batch,), generator=g)
    def run(k):
        for _ in range(k):
            loss = torch.nn.functional.cross_entropy(net(**x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
    run(5)
    t = time.perf_counter()
    run(n)
    return time.perf_counter() - t

mode = sys.argv[4]
if mode == "loop":
    loop(1)  # builds what a checkout caches next to the dataset (decoded images), once
    short = loop(steps)
    print(json.dumps({"seconds": loop(3 * steps) - short}))
else:
    print(json.dumps({"seconds": model_only(2 * steps)}))
"""


def measure(checkout: Path, mode: str, args, overrides: str = "") -> float:
    """Samples/s of `mode` for the toolkit in `checkout`, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    out = subprocess.run([sys.executable, "-c", CHILD, str(Path(args.data).resolve()),
                          str(args.steps), str(args.batch), mode, overrides],
                         env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                         check=True)
    seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    return 2 * args.steps * args.batch / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--baseline", type=Path, help="another checkout's root, measured alternately")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model-config", type=Path,
                   help="JSON overrides of this checkout's small preset (toolkit train's format)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    model_cfg = json.loads(args.model_config.read_text()) if args.model_config else {}
    overrides = json.dumps(model_cfg) if model_cfg else ""
    here = Path(__file__).resolve().parents[1]
    checkouts = {"this": here} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rates: dict[str, list[float]] = {f"{c} {m}": [] for c in checkouts for m in ("loop", "model")}
    for r in range(args.repeats):
        for name, root in checkouts.items():
            for mode in ("loop", "model"):
                rates[f"{name} {mode}"].append(
                    measure(root, mode, args, overrides if name == "this" else ""))
                print(f"repeat {r + 1}: {name} {mode} {rates[f'{name} {mode}'][-1]:.0f} samples/s",
                      flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in medians.items():
        print(f"median {k}: {v:.0f} samples/s")
    print(f"this loop / this model: {medians['this loop'] / medians['this model']:.2f}")
    if args.baseline:
        print(f"this loop / baseline loop: {medians['this loop'] / medians['baseline loop']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "medians": medians,
                                         "threads": args.threads, "steps": args.steps,
                                         "model_config": model_cfg,
                                         "batch": args.batch, "date": time.strftime("%F")},
                                        indent=1))


if __name__ == "__main__":
    main()
