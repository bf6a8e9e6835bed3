"""The standard benchmark matrix on this machine, through `toolkit bench`'s library.

  python bench/run_matrix.py                              # seed and small, untrained weights
  python bench/run_matrix.py --presets tiny --iters 5     # a quick check
  python bench/run_matrix.py --run small=runs/small       # a trained run instead of fresh weights

Per preset: a run directory (fresh seeded weights unless --run NAME=DIR; latency does not depend on
the weights), exported to ONNX FP32, FP16 and INT8 for each target (tensorrt: symmetric QDQ;
cpu: U8S8 QDQ), TensorRT engines of FP32/FP16/INT8-tensorrt where TensorRT and a GPU are present,
then every artifact at batch 1, 8 and 32 with L = 128 (or the preset's max_length if shorter),
PyTorch eager of the run side by side (the "vs torch" column).

Writes bench/results/<machine>-<date>.json (every row, machine, config) and .md (one table per
preset, with the command). Artifacts go to --work (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # export_table.make_untrained_run


def has_tensorrt() -> bool:
    from toolkit.errors import ToolkitError
    from toolkit.runtime.cuda_mem import device_info
    from toolkit.runtime.trt_plan import import_tensorrt

    try:
        import_tensorrt()
        device_info()
    except ToolkitError:
        return False
    return True


def make_artifacts(run: Path, data: Path, work: Path, calib: int, engines: bool, log
                   ) -> list:
    from toolkit.bench import Artifact, ArtifactKind
    from toolkit.config import ExportConfig, Int8Config, Int8Target, Precision
    from toolkit.export.pipeline import export

    fp32 = work / "model.onnx"
    jobs = [("model.onnx", Precision.fp32, None), ("model.fp16.onnx", Precision.fp16, None),
            ("model.int8.onnx", Precision.int8, Int8Target.tensorrt),
            ("model.int8-cpu.onnx", Precision.int8, Int8Target.cpu)]
    out = []
    for name, precision, target in jobs:
        log(f"export {name}")
        int8 = None if target is None else Int8Config(str(data), samples=calib, target=target)
        export(ExportConfig(str(run), str(work / name), precision, data=str(data), int8=int8,
                            fp32_source=None if precision is Precision.fp32 else str(fp32)))
        out.append(Artifact(ArtifactKind.onnx, str(work / name)))
    if engines:
        from toolkit.engines.tensorrt import BuildConfig, ProfileConfig, build_engine

        for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
            plan = work / name.replace(".onnx", ".plan")
            log(f"build {plan.name}")
            build_engine(BuildConfig(str(work / name), str(plan), ProfileConfig(max_batch=32)),
                         log=lambda *_: None)
            out.append(Artifact(ArtifactKind.engine, str(plan)))
    return out


def main() -> None:
    from toolkit.bench import Artifact, ArtifactKind, BenchConfig, markdown_table, run_bench
    from toolkit.checkpoint import read_config
    from toolkit.config import DataConfig, Device
    from toolkit.data.synthetic import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="seed,small")
    ap.add_argument("--run", action="append", default=[], help="PRESET=RUN_DIR (trained weights)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--work", default=None, help="where runs and artifacts go [a temp dir]")
    ap.add_argument("--results", default=str(HERE / "results"))
    a = ap.parse_args()

    from export_table import make_untrained_run  # bench/export_table.py

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    runs = dict(item.split("=", 1) for item in a.run)
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-matrix-"))
    engines = a.device == "cuda" and has_tensorrt()
    batches = tuple(int(b) for b in a.batches.split(","))
    command = "python bench/run_matrix.py " + " ".join(sys.argv[1:])
    report = {"command": command, "presets": {}}
    md = [f"# {platform.node()} {time.strftime('%Y-%m-%d')}\n", f"`{command}`\n"]
    for name in a.presets.split(","):
        pdir = work / name
        data = generate(pdir / "data", DataConfig(scenes=80, image_size=64, seed=0)) \
            if not (pdir / "data" / "dataset.json").exists() else pdir / "data"
        run = Path(runs[name]) if name in runs else make_untrained_run(name, str(data),
                                                                         pdir / "run")
        seq = min(a.seq, read_config(run).text.max_length)
        artifacts = make_artifacts(run, data, pdir, a.calib_samples, engines, log)
        artifacts.insert(0, Artifact(ArtifactKind.checkpoint, str(run)))
        log(f"bench {name}: {len(artifacts)} artifacts, batches {batches}, L={seq}")
        cfg = BenchConfig(tuple(artifacts), device=Device(a.device), batches=batches, seq=seq,
                          warmup=a.warmup, iters=a.iters, threads=a.threads, compare=True,
                          reference=str(run))
        result = run_bench(cfg, step=log, log=log)  # the run is measured once, listed first
        report["presets"][name] = result
        md += [f"\n## {name} (L={seq}, device {a.device}, {a.iters} iterations)\n",
               markdown_table(result)]
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = f"{platform.node() or 'machine'}-{time.strftime('%Y-%m-%d')}"
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))
    log(f"wrote {results / stem}.json and .md")


if __name__ == "__main__":
    main()
