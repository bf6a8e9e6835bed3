"""The `toolkit` command line: each command builds a config and calls the library."""

from __future__ import annotations

import dataclasses
import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from toolkit.bench import TorchMode, TorchPrecision
from toolkit.config import (CURRICULUM_WINDOW, ArtifactFormat, BatchBy, CalibMethod, ComputeOp,
                            Device, HardwareCompat, Int8Target, Precision)
from toolkit.errors import ToolkitError
from toolkit.triton.repository import InstanceKind

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Train, export, verify and benchmark the dual-modal classifier.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate the embedded default.")
app.add_typer(data_app, name="data")
# Piped into a log, rich would squeeze tables into 80 columns; a log can be wide.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)
_state = {"verbose": False}


class Preset(str, Enum):
    seed = "seed"
    small = "small"
    tiny = "tiny"
    micro = "micro"


class Phrasing(str, Enum):
    single = "single"
    varied = "varied"


def friendly(fn):
    """Turn a ToolkitError into one line on stderr and exit 1 (the traceback with --verbose)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolkitError as e:
            if _state["verbose"]:
                raise
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: the last complete checkpoint is kept; continue with --resume")
            raise typer.Exit(130) from None

    return wrapper


def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ToolkitError(f"{path} is not a readable JSON file ({e})") from e
    if not isinstance(data, dict):
        raise ToolkitError(f"{path} must hold a JSON object of config fields, not "
                           f"{type(data).__name__}")
    return data


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show full tracebacks on errors.")) -> None:
    _state["verbose"] = verbose


@data_app.command("generate")
@friendly
def data_generate(
    out: Path = typer.Option(Path("data/sort-of-clevr"), help="Output folder."),
    scenes: int = typer.Option(10000, min=2, help="Number of scenes (images)."),
    image_size: int = typer.Option(64, min=16, help="Image side in pixels."),
    questions_per_type: int = typer.Option(1, min=1, max=6,
                                           help="Questions per scene and question type."),
    phrasing: Phrasing = typer.Option(Phrasing.varied, help="One template per type, or several."),
    val_fraction: float = typer.Option(0.1, min=0.01, max=0.9, help="Held-out share of scenes."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
) -> None:
    """Write the Sort-of-CLEVR-style dataset: images/*.png, train.jsonl, val.jsonl."""
    from toolkit.config import DataConfig
    from toolkit.data.synthetic import generate

    cfg = DataConfig(scenes=scenes, image_size=image_size, questions_per_type=questions_per_type,
                     phrasing=phrasing.value, val_fraction=val_fraction, seed=seed)
    path = generate(out, cfg)
    console.print(f"wrote {scenes} scenes to {path}")


# Training options shared by `train` and `distill`: one definition each (name: type, option).
TRAINING_OPTIONS = {
    "epochs": (int, typer.Option(10, min=1)),
    "max_steps": (Optional[int], typer.Option(None, min=1, help="Stop after this many steps.")),
    "max_train_seconds": (Optional[float], typer.Option(None, min=1,
                                                        help="Stop (and save) after this long.")),
    "batch_size": (int, typer.Option(32, min=1)),
    "batch_by": (BatchBy, typer.Option(
        BatchBy.question, help="Draw questions one by one, or whole images with all theirs.")),
    "lr": (float, typer.Option(1e-4, min=0)),
    "warmup_steps": (int, typer.Option(200, min=0)),
    "eval_every": (int, typer.Option(0, min=0, help="Steps between evaluations; 0 = each epoch.")),
    "device": (Device, typer.Option(Device.auto, help="Where to train.")),
    "seed": (int, typer.Option(0)),
    "resume": (bool, typer.Option(False, "--resume", help="Continue from OUT/resume.pt.")),
    "skip_bad_rows": (bool, typer.Option(False, "--skip-bad-rows",
                                         help="Leave out bad manifest rows instead of stopping.")),
    "curriculum_types": (list[str], typer.Option(
        [], help="Comma-separated question types of a curriculum stage, trained on before the "
        "epochs, e.g. horizontal,vertical; repeat the option for further stages.")),
    "curriculum_steps": (int, typer.Option(0, min=0,
                                           help="Steps of each curriculum stage, at most.")),
    "curriculum_loss": (float, typer.Option(
        0.05, min=0.0, help="End a curriculum stage early once its mean training loss over the "
        f"last {CURRICULUM_WINDOW} steps is below this; 0 runs every curriculum step.")),
    "freeze_binding": (bool, typer.Option(
        False, "--freeze-binding", help="In the curriculum stages after the first, hold the "
        "text tower and the fusion's cell readers as the first stage left them.")),
}


def training_options(fn):
    """Give a command the shared training options; they reach it as one dict, `training`.

    Typer reads a command's options from its signature, so the wrapper's signature is the
    command's own parameters followed by TRAINING_OPTIONS."""
    import inspect

    own = [p for p in inspect.signature(fn).parameters.values() if p.name != "training"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                annotation=kind) for name, (kind, option) in TRAINING_OPTIONS.items()]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        training = {name: kwargs.pop(name) for name in TRAINING_OPTIONS}
        return fn(training=training, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + shared)
    wrapper.__annotations__ = {**{p.name: p.annotation for p in own + shared}, "return": None}
    return wrapper


def _train_config(data: Path, out: Path, model, training: dict):
    """The TrainConfig of the shared training options."""
    from toolkit.config import TrainConfig

    opts = dict(training)
    stages = tuple(tuple(t for t in stage.split(",") if t) for stage in opts.pop("curriculum_types"))
    return TrainConfig(data=str(data), out=str(out), model=model, curriculum=stages, **opts)


@app.command()
@friendly
@training_options
def train(
    data: Path = typer.Option(..., exists=True, help="Dataset folder (train/val manifests)."),
    out: Path = typer.Option(..., help="Run directory, e.g. runs/small."),
    preset: Preset = typer.Option(Preset.small, help="Model size."),
    model_config: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False,
        help="A JSON file of model fields that replace the preset's, e.g. {\"fusion\": \"concat\"}."),
    vision_weights: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                                  help="A local torchvision state dict."),
    text_model: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                              help="A local Hugging Face BERT-family directory."),
    training: dict = None,
) -> None:
    """Train a model; best and last checkpoints land in OUT."""
    from toolkit import config as C
    from toolkit.checkpoint import check_run_dir
    from toolkit.train import train as run_train

    check_run_dir(out, create=False)  # a file at --out is one line here, before any data is read
    model = C.model_config(preset.value, _read_json(model_config) if model_config else None)
    if vision_weights:
        model = dataclasses.replace(model, vision=dataclasses.replace(
            model.vision, weights=str(vision_weights)))
    if text_model:
        model = dataclasses.replace(model, text=dataclasses.replace(
            model.text, model_dir=str(text_model)))
    result = run_train(_train_config(data, out, model, training), log=console.print)
    if result["report"] is not None:
        console.print(f"best checkpoint: {out / 'best.safetensors'}")


@app.command()
@friendly
@training_options
def distill(
    teacher: Path = typer.Option(..., help="The trained teacher's run directory (runs/<name>)."),
    data: Path = typer.Option(..., exists=True, help="Dataset folder (train/val manifests)."),
    out: Path = typer.Option(..., help="The student's run directory, e.g. runs/micro-kd."),
    student_preset: Preset = typer.Option(Preset.micro, help="The student's size."),
    student_config: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False,
        help="A JSON file of model fields that replace the student preset's."),
    alpha: float = typer.Option(0.9, help="Weight of the teacher's softened answers, in [0, 1]; "
                                "1 - alpha goes to the labels."),
    temperature: float = typer.Option(4.0, help="Softmax temperature of both, > 0."),
    feature_weight: float = typer.Option(0.0, help="Weight of matching the teacher's fused "
                                         "features through a learned projection; 0 = off."),
    teacher_which: str = typer.Option("best", help="The teacher's best or last weights."),
    training: dict = None,
) -> None:
    """Distil a trained teacher into a smaller student (an ordinary run directory in OUT)."""
    from toolkit import config as C
    from toolkit.distill import DistillConfig
    from toolkit.distill import distill as run_distill

    model = C.model_config(student_preset.value,
                           _read_json(student_config) if student_config else None)
    cfg = DistillConfig(teacher=str(teacher), train=_train_config(data, out, model, training),
                        alpha=alpha, temperature=temperature, feature_weight=feature_weight,
                        teacher_which=teacher_which)
    result = run_distill(cfg, log=console.print)
    if result["report"] is not None:
        console.print(f"best checkpoint: {out / 'best.safetensors'}")


@app.command()
@friendly
def prune(
    checkpoint: Path = typer.Option(..., help="The dense run directory (runs/<name>)."),
    out: Path = typer.Option(..., help="The pruned run directory, e.g. runs/small-sparse."),
    pattern: str = typer.Option("2:4", help="N:M: at most N non-zero weights in every M "
                                "consecutive input-channel weights."),
    fine_tune_steps: int = typer.Option(0, min=0, help="Masked fine-tuning steps after pruning."),
    data: Optional[Path] = typer.Option(None, exists=True,
                                        help="Fine-tuning data [the run's training data]."),
    lr: float = typer.Option(2e-4, min=0, help="Fine-tuning peak learning rate."),
    batch_size: int = typer.Option(64, min=1),
    warmup_steps: int = typer.Option(50, min=0),
    eval_every: int = typer.Option(0, min=0, help="Steps between evaluations; 0 = at the end."),
    which: str = typer.Option("best", help="The parent's best or last weights."),
    device: Device = typer.Option(Device.auto),
    seed: int = typer.Option(0),
) -> None:
    """Prune Conv/Linear weights to N:M (2:4) sparsity by magnitude, then fine-tune masked."""
    from toolkit.prune import PruneConfig
    from toolkit.prune import prune as run_prune

    cfg = PruneConfig(checkpoint=str(checkpoint), out=str(out), pattern=pattern,
                      fine_tune_steps=fine_tune_steps, data=str(data) if data else None,
                      which=which, lr=lr, batch_size=batch_size, warmup_steps=warmup_steps,
                      eval_every=eval_every, seed=seed, device=device)
    result = run_prune(cfg, log=console.print)
    console.print(f"held-out accuracy {result['report']['accuracy']:.2%}; wrote {out}")


@app.command("eval")
@friendly
def eval_(
    checkpoint: Path = typer.Option(..., help="Run directory (runs/<name>)."),
    data: Path = typer.Option(..., exists=True, help="Dataset folder or manifest file."),
    split: str = typer.Option("val", help="Split inside a dataset folder."),
    which: str = typer.Option("best", help="best or last weights."),
    device: Device = typer.Option(Device.auto),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report here."),
    min_accuracy: Optional[float] = typer.Option(
        None, min=0, max=100, help="Exit 1 if overall accuracy (percent) is below this."),
    min_group_accuracy: Optional[float] = typer.Option(
        None, min=0, max=100, help="Exit 1 if non-relational or relational accuracy is below."),
    min_type_accuracy: Optional[float] = typer.Option(
        None, min=0, max=100, help="Exit 1 if any question type's accuracy is below this."),
) -> None:
    """Accuracy overall and per question type, and the confusion matrix; optional floors."""
    from toolkit.config import AccuracyFloors
    from toolkit.evaluate import below_floors, evaluate_checkpoint, format_report

    floors = AccuracyFloors(overall=min_accuracy, group=min_group_accuracy,
                            per_type=min_type_accuracy)
    report = evaluate_checkpoint(checkpoint, data, split=split, which=which, device=device)
    console.print(format_report(report))
    if json_out:
        from toolkit.artifacts import write_json

        write_json(json_out, report)
    failures = below_floors(report, floors)
    for line in failures:
        err.print(f"FAILED: {line}", highlight=False, markup=False)
    if failures:
        raise typer.Exit(1)


# ---- export and parity (issue 3)


@app.command("export")
@friendly
def export_(
    checkpoint: Path = typer.Option(..., exists=True, file_okay=False,
                                    help="Run directory (runs/<name>)."),
    precision: Precision = typer.Option(Precision.fp32),
    out: Optional[Path] = typer.Option(None, help="Output .onnx (default: export/model.onnx, "
                                       "export/model.fp16.onnx, export/model.int8.onnx)."),
    data: Optional[Path] = typer.Option(None, exists=True,
                                        help="Rows for the post-export check (default: the "
                                        "run's data)."),
    fp16_io: bool = typer.Option(False, "--fp16-io", help="FP16 graph inputs and outputs."),
    from_onnx: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                             help="fp16/int8: transform this FP32 export of the "
                                             "same checkpoint instead of exporting again."),
    calibration: Optional[Path] = typer.Option(None, exists=True,
                                               help="INT8: calibration dataset or manifest."),
    calib_samples: int = typer.Option(256, min=1, help="INT8: calibration rows."),
    calib_method: CalibMethod = typer.Option(CalibMethod.minmax),
    target: Int8Target = typer.Option(Int8Target.tensorrt, help="INT8: QDQ flavour."),
    exclude_op_type: list[ComputeOp] = typer.Option(
        [], help="fp16/int8: keep this op type in FP32 (repeat for more)."),
    auto_fallback: bool = typer.Option(
        False, "--auto-fallback", help="fp16/int8: keep the fewest Conv/MatMul/Gemm nodes in "
        "float that meet the precision's tolerance on held-out rows (recorded in the metadata)."),
    fallback_samples: int = typer.Option(1000, min=1,
                                         help="--auto-fallback: held-out rows of each trial."),
    which: str = typer.Option("best", help="best or last weights."),
    format: ArtifactFormat = typer.Option(ArtifactFormat.onnx,
                                          help="engine: also build a TensorRT plan from the "
                                          "export (default build options; see toolkit build)."),
    engine_out: Path = typer.Option(Path("engines/model.plan"), help="With --format engine."),
) -> None:
    """Export a checkpoint to ONNX (FP32, FP16 or INT8 QDQ), checked against PyTorch."""
    from toolkit import config as C
    from toolkit.export.pipeline import default_out, export

    int8 = None
    if precision is C.Precision.int8:
        if calibration is None:
            raise ToolkitError("--precision int8 needs --calibration DATA (a dataset folder or "
                               "manifest)")
        int8 = C.Int8Config(calibration=str(calibration), samples=calib_samples,
                            method=calib_method, target=target)
    out = out or default_out(precision, target.value)
    cfg = C.ExportConfig(checkpoint=str(checkpoint), out=str(out), precision=precision, which=which,
                         data=str(data) if data else None, fp16_io=fp16_io, int8=int8,
                         fp32_source=str(from_onnx) if from_onnx else None,
                         exclude_op_types=tuple(exclude_op_type), auto_fallback=auto_fallback,
                         fallback_samples=fallback_samples)
    result = export(cfg, log=console.print)
    console.print(result.comparison.report())
    size = result.path.stat().st_size / 2**20
    console.print(f"wrote {result.path} ({size:.1f} MiB) in {result.seconds:.1f} s")
    if format is ArtifactFormat.engine:
        from toolkit.engines.tensorrt import BuildConfig, build_engine

        plan = build_engine(BuildConfig(onnx=str(result.path), out=str(engine_out)),
                            log=console.print)
        console.print(f"wrote {plan} and {plan.name}.json")


@app.command()
@friendly
def parity(
    reference: Path = typer.Option(..., exists=True, file_okay=False,
                                   help="Run directory (runs/<name>)."),
    candidate: Path = typer.Option(..., exists=True, dir_okay=False, help="An exported .onnx."),
    data: Optional[Path] = typer.Option(None, exists=True,
                                        help="Dataset (default: the run's data)."),
    split: str = typer.Option("val", help="Split inside a dataset folder."),
    samples: Optional[int] = typer.Option(
        None, min=1, help="First N rows (default: all; with --layerwise 8)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the evidence here."),
    layerwise: bool = typer.Option(
        False, "--layerwise", help="Instead: every intermediate tensor against the FP32 export "
        "(--reference-onnx), per node in graph order, naming the first node whose error jumps."),
    reference_onnx: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False,
        help="With --layerwise: the FP32 .onnx the candidate was made from."),
) -> None:
    """Compare an exported model with PyTorch; exit 1 when its precision's tolerance is exceeded.
    With --layerwise, a diagnosis (exit 0 whatever it finds): where the error starts."""
    from toolkit.config import ParityConfig
    from toolkit.parity import layerwise_parity
    from toolkit.parity import parity as run_parity

    cfg = ParityConfig(reference=str(reference), candidate=str(candidate),
                       data=str(data) if data else None, split=split, samples=samples,
                       reference_onnx=str(reference_onnx) if reference_onnx else None)
    if layerwise:
        _print_layerwise(layerwise_parity(cfg), json_out)
        return
    if reference_onnx:
        raise ToolkitError("--reference-onnx only applies with --layerwise")
    result = run_parity(cfg)
    console.print(result.report())
    if json_out:
        from toolkit.artifacts import write_json

        write_json(json_out, result.to_dict())
    if not result.passed:
        raise typer.Exit(1)


@app.command()
@friendly
def qat(
    checkpoint: Path = typer.Option(..., exists=True, file_okay=False,
                                    help="Run directory to fine-tune (runs/<name>)."),
    out: Path = typer.Option(..., help="The new run directory, e.g. runs/<name>-qat."),
    calibration: Optional[Path] = typer.Option(None, exists=True,
                                               help="Calibration dataset or manifest: the "
                                               "activation ranges, as for --precision int8."),
    steps: int = typer.Option(300, help="Fine-tuning steps."),
    lr: float = typer.Option(1e-5, help="Learning rate (AdamW, constant)."),
    batch_size: int = typer.Option(32),
    calib_samples: int = typer.Option(256, help="Calibration rows."),
    calib_method: CalibMethod = typer.Option(CalibMethod.minmax),
    data: Optional[Path] = typer.Option(None, exists=True,
                                        help="Fine-tuning rows (default: the run's data)."),
    distill: float = typer.Option(0.5, help="Weight of agreeing with the FP32 model (KL) "
                                  "against fitting the labels (cross-entropy), 0..1."),
    eval_samples: int = typer.Option(1000, help="Held-out rows for the before/after numbers."),
    which: str = typer.Option("best", help="best or last weights."),
    seed: int = typer.Option(0),
) -> None:
    """Quantization-aware fine-tuning for INT8 (tensorrt target); export OUT with --precision int8."""
    from toolkit.config import QatConfig
    from toolkit.export.qat import qat as run_qat

    cfg = QatConfig(checkpoint=str(checkpoint), calibration=str(calibration) if calibration
                    else None, out=str(out), steps=steps, lr=lr, batch_size=batch_size,
                    calib_samples=calib_samples, calib_method=calib_method,
                    data=str(data) if data else None, distill=distill, eval_samples=eval_samples,
                    which=which, seed=seed)
    path = run_qat(cfg, log=console.print)
    console.print(f"wrote {path}; export it with `toolkit export --checkpoint {path} "
                  "--precision int8 --calibration DATA`")


def _print_layerwise(report, json_out: Optional[Path]) -> None:
    from rich.table import Table

    table = Table(title=f"layerwise: {report.candidate} ({report.precision}) vs {report.reference}"
                        f", {report.rows} rows; rel = max abs / the reference tensor's range")
    for name in ("#", "node", "op", "tensor", "cosine", "max abs", "rel", "added"):
        table.add_column(name, justify="left" if name in ("node", "op", "tensor") else "right")
    for k, n in enumerate(report.nodes):
        style = "bold red" if k == report.jump else None
        table.add_row(str(n.index), n.node, n.op_type, n.tensor, f"{n.cosine:.6f}",
                      f"{n.max_abs:.3g}", f"{n.rel:.3g}", f"{n.added:+.3g}", style=style)
    console.print(table)
    j = report.first_jump
    console.print(f"first jump: {j.node} ({j.op_type}, tensor {j.tensor}): rel {j.rel:.3g}, "
                  f"cosine {j.cosine:.6f}" if j else "first jump: none", highlight=False)
    console.print(f"jump rule: {report.jump_rule}", highlight=False)
    console.print(f"{len(report.nodes)} node outputs compared; {report.skipped_non_float} integer "
                  f"tensor(s) and {report.skipped_unknown_type} without an inferred type skipped",
                  highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if json_out:
        from toolkit.artifacts import write_json

        write_json(json_out, report.to_dict())
        console.print(f"wrote {json_out}")


# ---- TensorRT build and inspect (issue 4)


@app.command()
@friendly
def build(
    onnx: Path = typer.Option(..., help="An ONNX model from toolkit export (precision is in it)."),
    out: Path = typer.Option(Path("engines/model.plan"), help="The plan; its sidecar is OUT.json."),
    min_batch: int = typer.Option(1, min=1, help="Profile: smallest batch."),
    opt_batch: Optional[int] = typer.Option(None, min=1, help="Profile: tuned batch [max]."),
    max_batch: int = typer.Option(32, min=1, help="Profile: largest batch."),
    min_seq: int = typer.Option(1, min=1, help="Profile: shortest token sequence."),
    opt_seq: Optional[int] = typer.Option(None, min=1, help="Profile: tuned length [max]."),
    max_seq: Optional[int] = typer.Option(None, min=1,
                                          help="Profile: longest sequence [the model's]."),
    workspace_mb: Optional[int] = typer.Option(None, min=1, help="Builder workspace limit."),
    opt_level: int = typer.Option(3, min=0, max=5, help="Builder optimization level."),
    timing_cache: Optional[Path] = typer.Option(None, help="Timing cache reused across builds."),
    version_compatible: bool = typer.Option(False, "--version-compatible",
                                            help="Runnable by later TensorRT releases."),
    hardware_compat: HardwareCompat = typer.Option(HardwareCompat.none,
                                                         help="Which GPUs may run the plan."),
    dla_core: Optional[int] = typer.Option(None, min=0,
                                           help="Build for this DLA core (TensorRT 10, Jetson)."),
    sparse: bool = typer.Option(False, "--sparse", help="Let TensorRT use sparse tensor-core "
                                "kernels on 2:4-sparse weights (toolkit prune; Ampere+)."),
    trt_verbose: bool = typer.Option(False, "--trt-verbose", help="TensorRT's verbose log."),
) -> None:
    """Build a TensorRT engine (strongly typed) for this GPU from an exported ONNX model."""
    from toolkit.engines.tensorrt import BuildConfig, ProfileConfig, build_engine

    cfg = BuildConfig(
        onnx=str(onnx), out=str(out),
        profile=ProfileConfig(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                              min_seq=min_seq, opt_seq=opt_seq, max_seq=max_seq),
        workspace_mb=workspace_mb, opt_level=opt_level,
        timing_cache=str(timing_cache) if timing_cache else None,
        version_compatible=version_compatible,
        hardware_compat=hardware_compat, dla_core=dla_core, sparse_weights=sparse,
        verbose=trt_verbose)
    path = build_engine(cfg, log=console.print)
    console.print(f"wrote {path} and {path.name}.json")


@app.command()
@friendly
def inspect(
    artifact: Path = typer.Argument(..., exists=True, help="A plan (toolkit build), an .onnx "
                                    "(toolkit export) or a run directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    pattern: str = typer.Option("2:4", help="The N:M sparsity pattern to check weights against."),
) -> None:
    """Show what a plan was built from and for (with TensorRT, each layer's precision); for an
    .onnx or a run, each weight's N:M sparsity conformance."""
    import json

    if artifact.is_dir() or artifact.suffix == ".onnx":
        from toolkit.sparsity import format_conformance, onnx_conformance, parse_pattern

        if artifact.is_dir():
            from toolkit.prune import conformance_of as check
        else:  # numpy and onnx only: no PyTorch needed on a deployment machine
            check = onnx_conformance
        report = check(artifact, parse_pattern(pattern))
        if json_out:
            print(json.dumps({"artifact": str(artifact), "sparsity": report}, indent=2))
        else:
            console.print(format_conformance(report), highlight=False, markup=False)
        return
    from toolkit.engines.tensorrt import format_inspection, inspect_engine

    result = inspect_engine(artifact)
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        console.print(format_inspection(result), highlight=False, markup=False)


# ---- runtime and bench (issue 5)


@app.command()
@friendly
def bench(
    engine: list[Path] = typer.Option([], help="A TensorRT plan (repeatable)."),
    onnx: list[Path] = typer.Option([], help="An ONNX export (repeatable)."),
    checkpoint: list[Path] = typer.Option([], help="A run directory, PyTorch eager (repeatable)."),
    device: Device = typer.Option(Device.cpu, help="Where to run (auto: cuda if there)."),
    batch: str = typer.Option("1,8,32", help="Batch sizes, comma-separated."),
    seq: int = typer.Option(128, help="Tokens per question (at most the model's max_length)."),
    warmup: int = typer.Option(3, help="Untimed calls before timing."),
    iters: Optional[int] = typer.Option(None, help="Timed calls per configuration [20]."),
    duration: Optional[float] = typer.Option(None, help="Or: seconds of timed calls each."),
    threads: Optional[int] = typer.Option(None, min=1, help="Intra-op threads (ORT, torch)."),
    compare: bool = typer.Option(True, "--compare/--no-compare",
                                 help="Also PyTorch eager of the source checkpoint, with ratio."),
    reference: Optional[Path] = typer.Option(None, help="The source checkpoint [found by hash]."),
    torch_precision: TorchPrecision = typer.Option(
        TorchPrecision.fp32, help="Checkpoints on CUDA: fp16 = torch.autocast float16."),
    torch_mode: TorchMode = typer.Option(
        TorchMode.eager, help="Checkpoints on CUDA: cuda_graph = replay a captured graph."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report here."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Latency/throughput PNG."),
) -> None:
    """Latency (p50/p90/p99/mean), throughput, size and peak memory of artifacts, per batch."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from toolkit.bench import (TABLE_HEADER, Artifact, ArtifactKind, BenchConfig,
                               check_plot_available, parse_batches, plot, run_bench, table_rows,
                               write_json)

    if plot_path is not None:
        check_plot_available()
    if iters is None and duration is None:
        iters = 20
    artifacts = tuple([Artifact(ArtifactKind.engine, str(p)) for p in engine]
                      + [Artifact(ArtifactKind.onnx, str(p)) for p in onnx]
                      + [Artifact(ArtifactKind.checkpoint, str(p)) for p in checkpoint])
    cfg = BenchConfig(artifacts=artifacts, device=device, batches=parse_batches(batch), seq=seq,
                      warmup=warmup, iters=iters, duration=duration, threads=threads,
                      compare=compare, reference=str(reference) if reference else None,
                      torch_precision=torch_precision, torch_mode=torch_mode)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task("bench", total=None)
        report = run_bench(cfg, step=lambda what: progress.update(task, description=what),
                           log=lambda msg: err.print(msg, highlight=False, markup=False))
    table = Table(title=f"toolkit bench ({cfg.device.value}, L={seq}); compute = backend call "
                        "on a prepared feed, end-to-end = PNG + text -> probabilities")
    for name in TABLE_HEADER:
        table.add_column(name, justify="left" if name in ("artifact", "backend", "precision")
                         else "right")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    if json_path is not None:
        write_json(report, json_path)
        console.print(f"wrote {json_path}")
    if plot_path is not None:
        plot(report, plot_path)
        console.print(f"wrote {plot_path}")


# ---- attention maps and the pointing game (issue 18)


@app.command()
@friendly
def explain(
    checkpoint: Path = typer.Option(..., exists=True, file_okay=False,
                                    help="Run directory (runs/<name>)."),
    image: list[Path] = typer.Option([], exists=True, dir_okay=False,
                                     help="An image (repeatable, one --text each)."),
    text: list[str] = typer.Option([], help="The question about the --image of the same place."),
    manifest: Optional[Path] = typer.Option(None, exists=True,
                                            help="Or: questions from a dataset folder/manifest."),
    split: str = typer.Option("val", help="With --manifest: the split inside a dataset folder."),
    limit: int = typer.Option(8, min=1, help="With --manifest: its first N questions."),
    out: Optional[Path] = typer.Option(None, help="The PNG for one question, else a folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the raw weights here."),
    which: str = typer.Option("best", help="best or last weights."),
    device: Device = typer.Option(Device.auto),
) -> None:
    """Draw the fusion's attention for each question: cells, question tokens, answer."""
    from toolkit.explain import ExplainConfig, explain_to_files

    cfg = ExplainConfig(checkpoint=str(checkpoint), out=str(out) if out else None,
                        images=tuple(map(str, image)), texts=tuple(text),
                        manifest=str(manifest) if manifest else None, split=split,
                        limit=limit if manifest else None,
                        json=str(json_out) if json_out else None, which=which, device=device)
    for path in explain_to_files(cfg, log=console.print):
        console.print(f"wrote {path}")


@app.command()
@friendly
def pointing(
    checkpoint: Path = typer.Option(..., exists=True, file_okay=False,
                                    help="Run directory (runs/<name>)."),
    data: Path = typer.Option(..., exists=True, help="The embedded dataset (folder or JSONL)."),
    split: str = typer.Option("val", help="Split inside a dataset folder."),
    limit: Optional[int] = typer.Option(None, min=1, help="First N questions (default: all)."),
    which: str = typer.Option("best", help="best or last weights."),
    device: Device = typer.Option(Device.auto),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report here."),
) -> None:
    """The pointing game: how often each attention map's top cell lies on the named object."""
    from toolkit.explain import PointingConfig, format_pointing, pointing_game

    cfg = PointingConfig(checkpoint=str(checkpoint), data=str(data), split=split, limit=limit,
                         which=which, device=device)
    report = pointing_game(cfg, log=lambda msg: err.print(msg, highlight=False, markup=False))
    console.print(format_pointing(report), highlight=False, markup=False)
    if json_out:
        from toolkit.artifacts import write_json

        write_json(json_out, report)
        console.print(f"wrote {json_out}")


@app.command()
@friendly
def triton(
    model: Path = typer.Option(..., help="An exported .onnx or a built .plan (with its sidecar)."),
    repo: Path = typer.Option(Path("triton_repo"), help="The Triton model repository to write."),
    name: Optional[str] = typer.Option(
        None, help="Model name (default: the file's, e.g. model_fp16)."),
    max_batch: Optional[int] = typer.Option(
        None, min=1, help="max_batch_size (default: a plan's profile maximum; ONNX: 32)."),
    max_delay_ms: float = typer.Option(1.0, min=0, help="Dynamic batching's queue delay."),
    instances: int = typer.Option(1, min=1, help="Instances of each model."),
    kind: InstanceKind = typer.Option(InstanceKind.auto, help="Where the model's instances run."),
    text_model: bool = typer.Option(True, "--text-model/--no-text-model",
                                    help="Also write NAME_text (image bytes + question in)."),
    python_path: list[Path] = typer.Option(
        [], help="A folder the Python model puts on sys.path, e.g. a venv's site-packages "
        "(repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace existing model directories."),
    validate: bool = typer.Option(True, "--validate/--no-validate",
                                  help="Parse each config.pbtxt as Triton's ModelConfig."),
) -> None:
    """Write a Triton model repository for an exported model, from its own metadata."""
    from toolkit.triton import RepositoryConfig, write_repository

    cfg = RepositoryConfig(model=str(model), repo=str(repo), name=name, max_batch=max_batch,
                           max_delay_ms=max_delay_ms, instances=instances, kind=kind,
                           text_model=text_model, python_path=tuple(map(str, python_path)),
                           force=force, validate=validate)
    result = write_repository(cfg, log=console.print)
    checked = "validated as Triton's ModelConfig" if result.validated else "not validated"
    console.print(f"{', '.join(result.models)}: max_batch_size {result.max_batch_size}, "
                  f"config.pbtxt {checked}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
