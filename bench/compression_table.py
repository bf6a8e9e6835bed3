"""bench/results/compression.json from run directories and one `toolkit bench --json` report.

    python bench/compression_table.py --bench B.json --out bench/results/compression.json \
        --role teacher=runs/T:T.onnx --role student_kd=runs/S:S.onnx \
        --role student_alone=runs/A:A.onnx --sparse runs/T-sparse --command "..."

Accuracy is each run's best held-out accuracy (metrics.json, percent); latency the bench's compute
p50 at batch 1 of the role's ONNX file; the sparse entry's drop is against its parent's accuracy
(the parent named in its config.json) and its conforming share is over the pruned layers. A role
that was not given is written as null, so that a missing measurement is visible.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolkit.artifacts import write_json
from toolkit.checkpoint import load_checkpoint
from toolkit.model import count_parameters

ROLES = ("teacher", "student_kd", "student_alone")


def best_accuracy(run: Path) -> float:
    return 100.0 * json.loads((run / "metrics.json").read_text())["best_accuracy"]


def latency_ms(bench: dict, onnx: str, batch: int = 1) -> float | None:
    for r in bench["results"]:
        if Path(r["artifact"]).resolve() == Path(onnx).resolve() and r["batch"] == batch:
            return r["compute_only"]["p50_ms"]
    return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, required=True, help="toolkit bench --json output")
    ap.add_argument("--role", action="append", default=[], help="ROLE=RUN:ONNX")
    ap.add_argument("--sparse", type=Path, help="the pruned run directory")
    ap.add_argument("--command", default="", help="the commands, for the record")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    bench = json.loads(args.bench.read_text())
    out: dict = {role: None for role in ROLES}
    for spec in args.role:
        role, _, rest = spec.partition("=")
        run, _, onnx = rest.partition(":")
        if role not in ROLES:
            ap.error(f"--role {role}: choose one of {', '.join(ROLES)}")
        out[role] = {"run": run, "accuracy": best_accuracy(Path(run)),
                     "latency_ms": latency_ms(bench, onnx),
                     "params": count_parameters(load_checkpoint(run).model)}
    out["sparse"] = None
    if args.sparse:
        from toolkit.prune import checkpoint_conformance
        from toolkit.sparsity import parse_pattern

        meta = json.loads((args.sparse / "config.json").read_text())["train"]["prune"]
        acc = best_accuracy(args.sparse)
        report = checkpoint_conformance(load_checkpoint(args.sparse).model,
                                        parse_pattern(meta["pattern"]))
        out["sparse"] = {"run": str(args.sparse), "parent": meta["parent"], "accuracy": acc,
                         "accuracy_drop": best_accuracy(Path(meta["parent"])) - acc,
                         "conforming_share": report["conforming_share"],
                         "pattern": meta["pattern"], "fine_tune_steps": meta["fine_tune_steps"]}
    out["machine"] = {**bench.get("machine", {}),
                      "bench_threads": bench.get("config", {}).get("threads")}
    out["command"] = args.command
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
