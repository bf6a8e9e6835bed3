"""The architecture document's fusion and backbone tables, measured on the embedded dataset.

  python bench/seed_tables.py --data data/sort-of-clevr --steps 1500 --threads 1
  python bench/seed_tables.py --rows xattn-grid,concat --seeds 0,1     # some rows, two seeds
  python bench/seed_tables.py --preset tiny --steps 20 --out /tmp/t.json --work /tmp/t  # a check

Every row trains one model through `toolkit.train.train` with the same budget: the same steps,
batch, rate, warmup and seed, and the curriculum of `make demo` (left/right and top/bottom, then
with shape, the binding held in the second stage; each stage ends once learned, after
--curriculum-steps at most), then all question types until --steps. Each row's model is the
preset's with the overrides of ROWS (what `toolkit train --model-config` takes); only the named
part changes. Then, on the final weights (not the best held-out checkpoint, so that nothing is
chosen on the split it is scored on): held-out accuracy overall, per group and per question type
(toolkit.evaluate), parameters, an FP32 ONNX export (toolkit.export, checked against PyTorch),
and for grid cross-attention models the pointing game on the first --pointing held-out questions
(toolkit.explain). Once every row is trained, all the exports are timed side by side at batch 1
(time_exports).

Run directories go to --work/<row>-s<seed>; a row whose directory holds result.json is not run
again, and one with a resume.pt but no result continues from it, so a long campaign can be
stopped and restarted with the same command. After every row the results JSON (--out) is written
again: {"fusion": [rows], "backbones": [rows], "machine", "command", "budget"}.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

# `make demo`'s recipe (Makefile): batch, rate, warmup and curriculum.
DEMO = {"batch_size": 64, "lr": 1e-3, "warmup_steps": 300, "curriculum_steps": 3000,
        "curriculum": (("horizontal", "vertical"), ("horizontal", "vertical", "shape"))}

# A vision override names every field the presets set, so that nothing of the preset's convnet
# (its width, its multiscale maps) leaks into another backbone.
_VISION = {"stages": 4, "width": None, "multiscale": False, "patch_size": None, "layers": None,
           "heads": None, "weights": None}


def _vision(**fields) -> dict:
    return {"vision": {**_VISION, **fields}}


@dataclass(frozen=True)
class RowSpec:
    table: str  # fusion | backbones
    label: str
    overrides: dict = field(default_factory=dict)  # replaces the preset's fields (model_config)


# The seed's fusion is one plain cross-attention block on one pooled visual token (no cell MLP and
# no relation read, which need a grid); concat and elementwise fuse the preset's tokens summed
# over the cells (fusion.py), with neither. The backbones keep the preset's fusion.
_NO_CELLS = {"fusion_cell_mlp": 0, "fusion_relation": 0, "fusion_relation_tally": False}

ROWS: dict[str, RowSpec] = {
    "xattn-pooled": RowSpec("fusion", "cross-attention, pooled visual token (the document's)",
                            {"visual_tokens": "pooled", **_NO_CELLS}),
    "xattn-grid": RowSpec("fusion", "cross-attention, grid tokens (the preset's)"),
    "concat": RowSpec("fusion", "concatenation",
                      {"fusion": "concat", **_NO_CELLS}),
    "elementwise": RowSpec("fusion", "element-wise product",
                           {"fusion": "elementwise", **_NO_CELLS}),
    # Two residual stages keep a stride-8 grid (8x8 cells on 64 px, as the preset's convnet).
    "resnet18": RowSpec("backbones", "ResNet-18, 2 stages, base width 32",
                        _vision(backbone="resnet18", stages=2, width=32)),
    # torchvision's whole feature stack: stride 32, a 2x2 grid on 64 px images.
    "efficientnet_b0": RowSpec("backbones", "EfficientNet-B0 (torchvision, unreduced)",
                               _vision(backbone="efficientnet_b0")),
    # vit_b_16's design at 2 layers, 4 heads, width 128; 8 px patches give an 8x8 grid on 64 px.
    "vit": RowSpec("backbones", "ViT-B/16 reduced: 8 px patches, 2 layers, 4 heads, width 128",
                   _vision(backbone="vit_b_16", patch_size=8, layers=2, heads=4, width=128)),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_rows(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise SystemExit(f"error: unknown row(s) {', '.join(unknown) or '(none)'}; choose from: "
                         f"{', '.join(ROWS)}")
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s]
    except ValueError:
        raise SystemExit(f"error: --seeds {text!r} is not a comma-separated list of integers")


def train_config(name: str, seed: int, a: argparse.Namespace, run: Path):
    from toolkit.config import Device, TrainConfig, model_config

    model = model_config(a.preset, ROWS[name].overrides)
    return TrainConfig(
        data=str(a.data), out=str(run), model=model, epochs=10_000, max_steps=a.steps,
        batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps, seed=seed,
        device=Device.cpu, eval_every=a.steps,  # held-out only at stage ends and at the end
        resume=(run / "resume.pt").is_file(),
        curriculum=DEMO["curriculum"] if a.curriculum_steps else (),
        curriculum_steps=a.curriculum_steps, freeze_binding=bool(a.curriculum_steps))


def pointing_summary(report: dict) -> dict:
    """The pointing game's headline figures: per map, the named-object hit rate and mass per
    group, and for relational questions the answer object's hit rate."""
    out = {}
    for name, targets in report["pointing"].items():
        named = targets.get("named", {})
        row = {f"named_hit_{k}": named[k]["hit_rate"] for k in
               ("overall", "non-relational", "relational") if k in named}
        row.update({f"named_mass_{k}": named[k]["mass"] for k in ("non-relational",)
                    if k in named})
        if "overall" in named:
            row["chance"] = named["overall"]["chance"]
        if "relational" in targets.get("answer", {}):
            row["answer_hit_relational"] = targets["answer"]["relational"]["hit_rate"]
        out[name] = row
    return out


def run_row(name: str, seed: int, a: argparse.Namespace) -> dict:
    """Train, evaluate, count, export and time one row; its result.json, written last."""
    import json

    import torch

    from toolkit.artifacts import write_json
    from toolkit.checkpoint import load_checkpoint
    from toolkit.config import Device, ExportConfig, Fusion, VisualTokens, to_dict
    from toolkit.evaluate import evaluate_checkpoint
    from toolkit.export.pipeline import export
    from toolkit.model import count_parameters
    from toolkit.train import train

    run = Path(a.work) / f"{name}-s{seed}"
    done = run / "result.json"
    if done.is_file():
        log(f"{name} seed {seed}: {done} exists, kept")
        return json.loads(done.read_text(encoding="utf-8"))
    spec = ROWS[name]
    cfg = train_config(name, seed, a, run)
    log(f"{name} seed {seed}: training {a.steps} steps into {run}"
        + (" (resumed)" if cfg.resume else ""))
    t0 = time.perf_counter()
    result = train(cfg, log=lambda m: log(f"  {name}: {m}"))
    train_wall = time.perf_counter() - t0
    state = torch.load(run / "resume.pt", map_location="cpu", weights_only=True)
    # train() scored the final weights at its last step; a run resumed after its last step
    # trained nothing and is scored here
    report = result["report"] or evaluate_checkpoint(run, a.data, which="last", device="cpu")

    ck = load_checkpoint(run, "last")
    mcfg = ck.config
    with torch.no_grad():
        cells = ck.model.visual_tokens(torch.zeros(1, 3, mcfg.image_size, mcfg.image_size))
    onnx = run / "model.onnx"
    exported = export(ExportConfig(checkpoint=str(run), out=str(onnx), which="last",
                                   data=str(a.data)))

    pointing = None
    # A 1x1 grid (EfficientNet's stride 32 on 32 px images) has no cell to point at.
    if (a.pointing and mcfg.fusion is Fusion.cross_attention
            and mcfg.visual_tokens is VisualTokens.grid and cells.shape[1] > 1):
        from toolkit.explain import PointingConfig, pointing_game

        log(f"{name} seed {seed}: pointing game on {a.pointing} held-out questions")
        pointing = pointing_summary(pointing_game(
            PointingConfig(str(run), str(a.data), limit=a.pointing, which="last",
                           device=Device.cpu), log=lambda _: None))

    row = {
        "row": name, "table": spec.table, "label": spec.label, "seed": seed,
        "preset": a.preset, "overrides": spec.overrides,
        "steps": state["step"], "curriculum_ends": state.get("curriculum_ends", []),
        "train_seconds": (result["report"] or {}).get("train_seconds", train_wall),
        "accuracy": report["accuracy"], "groups": report["groups"],
        "per_type": report["per_type"], "priors": report["priors"], "n": report["n"],
        "parameters": count_parameters(ck.model),
        "vision_parameters": count_parameters(ck.model.vision),
        "visual_tokens": int(cells.shape[1]),
        "onnx_bytes": onnx.stat().st_size,
        "onnx_check": {"passed": exported.comparison.passed, "rows": exported.comparison.n},
        "pointing": pointing,
        "model": to_dict(mcfg), "run": str(run),
    }
    write_json(done, row)
    log(f"{name} seed {seed}: accuracy {row['accuracy']:.1%} "
        + " ".join(f"{k} {v:.1%}" for k, v in row["groups"].items())
        + f", {row['parameters']:,} parameters")
    return row


def time_exports(rows: list[dict], a: argparse.Namespace) -> None:
    """Every row's FP32 export timed side by side once all are trained, so that no row is timed
    beside another row's training: --rounds passes over all of them (one ONNX Runtime session per
    file, the same threads, the median of --iters calls each), the median of each file's p50s."""
    import statistics

    from toolkit.bench import Artifact, ArtifactKind, BenchConfig, run_bench
    from toolkit.config import Device

    seq = min(a.seq, *(r["model"]["text"]["max_length"] for r in rows))
    files = tuple(Artifact(ArtifactKind.onnx, str(Path(r["run"]) / "model.onnx")) for r in rows)
    p50s: list[list[float]] = [[] for _ in rows]
    for i in range(a.rounds):
        log(f"timing {len(rows)} exports at batch 1, {seq} tokens: round {i + 1} of {a.rounds}")
        bench = run_bench(BenchConfig(files, device=Device.cpu, batches=(1,), seq=seq,
                                      warmup=a.warmup_iters, iters=a.iters, threads=a.threads,
                                      compare=False))
        for times, res in zip(p50s, bench["results"]):
            times.append(res["compute_only"]["p50_ms"])
    for r, times in zip(rows, p50s):
        r["latency_ms"] = {"p50": statistics.median(times), "p50_rounds": times,
                           "iters": a.iters, "batch": 1, "seq": seq, "threads": a.threads}


def tables(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"fusion": [], "backbones": []}
    for r in rows:
        out[r["table"]].append(r)
    return out


TYPES = ("shape", "horizontal", "vertical", "closest", "furthest", "count")


def markdown(report: dict) -> str:
    """Both tables as markdown: accuracy in percent, parameters in millions, latency in ms."""
    head = ("| row | seed | steps | overall | non-relational | relational | "
            + " | ".join(TYPES) + " | parameters | visual tokens | ONNX FP32 p50 ms |")
    out = []
    for table in ("fusion", "backbones"):
        out += [f"\n### {table}\n", head, "|" + "---|" * (head.count("|") - 1)]
        for r in report[table]:
            cells = [r["label"], str(r["seed"]), f"{r['steps']:,}", f"{r['accuracy']:.1%}",
                     f"{r['groups']['non_relational']:.1%}", f"{r['groups']['relational']:.1%}"]
            cells += [f"{100 * r['per_type'].get(t, float('nan')):.1f}" for t in TYPES]
            cells += [f"{r['parameters'] / 1e6:.3f}M", str(r["visual_tokens"]),
                      f"{r['latency_ms']['p50']:.2f}"]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/sort-of-clevr"),
                    help="the embedded dataset (toolkit data generate)")
    ap.add_argument("--preset", default="small", help="the model every row starts from")
    ap.add_argument("--rows", type=parse_rows, default=list(ROWS),
                    help=f"comma-separated, of: {', '.join(ROWS)} [all]")
    ap.add_argument("--seeds", type=parse_seeds, default=[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps, every row")
    ap.add_argument("--batch-size", type=int, default=DEMO["batch_size"])
    ap.add_argument("--lr", type=float, default=DEMO["lr"])
    ap.add_argument("--warmup-steps", type=int, default=DEMO["warmup_steps"])
    ap.add_argument("--curriculum-steps", type=int, default=DEMO["curriculum_steps"],
                    help="each curriculum stage's steps at most; 0: no curriculum")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and ONNX Runtime intra-op threads")
    ap.add_argument("--seq", type=int, default=32, help="question tokens for the latency")
    ap.add_argument("--iters", type=int, default=200, help="timed ONNX Runtime calls per row")
    ap.add_argument("--warmup-iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3,
                    help="passes over all rows' exports when timing them, side by side")
    ap.add_argument("--pointing", type=int, default=1000,
                    help="held-out questions for the pointing game (grid cross-attention "
                    "rows); 0: none")
    ap.add_argument("--work", type=Path, default=Path("runs/seed-tables"),
                    help="run directories, one per row and seed")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "seed-tables.json")
    return ap


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    if a.steps < 1 or a.rounds < 1:
        raise SystemExit(f"error: --steps ({a.steps}) and --rounds ({a.rounds}) must be at least 1")
    if not (a.data / "dataset.json").is_file():
        raise SystemExit(f"error: {a.data} is not a dataset folder (no dataset.json); make one "
                         "with: toolkit data generate --out DIR --scenes 10000 --image-size 64")
    import torch

    from toolkit.artifacts import write_json
    from toolkit.bench import machine_info

    torch.set_num_threads(a.threads)
    argv = sys.argv[1:] if argv is None else argv
    command = "python bench/seed_tables.py " + " ".join(argv)
    machine = {**machine_info(), "torch": torch.__version__,
               "onnxruntime_threads": a.threads, "torch_threads": torch.get_num_threads()}
    budget = {"steps": a.steps, "batch_size": a.batch_size, "lr": a.lr,
              "warmup_steps": a.warmup_steps, "curriculum_steps": a.curriculum_steps,
              "curriculum": [list(s) for s in DEMO["curriculum"]] if a.curriculum_steps else [],
              "freeze_binding": bool(a.curriculum_steps), "data": str(a.data),
              "evaluated": "final weights (last.safetensors), held-out split (val)"}
    rows: list[dict] = []

    def report() -> dict:
        return {**tables(rows), "machine": machine, "command": command, "budget": budget}

    for seed in a.seeds:
        for name in a.rows:
            rows.append(run_row(name, seed, a))
            write_json(a.out, report())
    time_exports(rows, a)
    write_json(a.out, report())
    log(f"wrote {a.out} ({len(rows)} rows)")
    print(markdown(tables(rows)))
    return report()


if __name__ == "__main__":
    main()
