"""Configuration: frozen dataclasses, presets and enums.

Ground floor of the package: imports nothing of the toolkit. Every stage takes one of these configs,
and every config round-trips through JSON (``to_dict`` / ``from_dict``) so that artifacts can carry
the exact configuration that produced them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

# ImageNet statistics: torchvision's pretrained towers expect them, so every preset uses them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ToolkitError):
    """A configuration value is not allowed; the message names the value and the allowed ones."""


class VisualTokens(str, enum.Enum):
    pooled = "pooled"  # one token: the globally pooled feature map (the seed's design)
    grid = "grid"  # one token per cell of the final feature map (7x7 = 49 for ResNet-50 at 224 px)


class Fusion(str, enum.Enum):
    cross_attention = "cross_attention"
    concat = "concat"
    elementwise = "elementwise"


class BatchBy(str, enum.Enum):
    question = "question"  # rows drawn one by one; an image drawn twice is still encoded once
    image = "image"  # whole images with all their questions: fewer vision passes, fewer images


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass(frozen=True)
class VisionConfig:
    # A torchvision model name (resnet*, efficientnet_*, vit_*), or "convnet": `stages` plain
    # 3x3 stride-2 convolutions of `width` channels (24 if unset), the Sort-of-CLEVR paper's CNN.
    backbone: str = "resnet50"
    # ResNet only: how many of the four residual stages to keep. Fewer stages keep a finer grid
    # (stride 8 after two stages), which small images need to keep objects apart.
    stages: int = 4
    # ResNet and convnet: also offer each earlier stage's (layer's) features, average-pooled to
    # the final grid, as extra channels of every visual token (the seed's "multi-scale
    # features"). Early stages keep colour nearly linear, which the question's colour word must
    # bind to.
    multiscale: bool = False
    # ResNet: base width of the stem and first stage (torchvision's is 64; each later stage
    # doubles it). Same layout and blocks, fewer channels. ViT: the hidden width (vit_b_*: 768),
    # with torchvision's MLP ratio of 4 kept.
    width: int | None = None
    # ViT only, each None = the named model's own (vit_b_16: 16, 12, 12): the patch side, the
    # encoder's layers and its heads. Patches of 16 px leave a 4x4 grid on 64 px images.
    patch_size: int | None = None
    layers: int | None = None
    heads: int | None = None
    weights: str | None = None  # local torchvision state dict; never downloaded


@dataclass(frozen=True)
class TextConfig:
    # Either a local Hugging Face directory (config + weights + vocab) or a BERT config built here.
    model_dir: str | None = None
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522  # replaced by the tokenizer's size when a vocabulary is trained
    max_length: int = 512
    # A tower built here (no model_dir) only: BERT's dropout, and the spread of its initial word
    # embeddings. BERT's own 0.02 suits pretraining; trained from scratch at a learning rate of
    # 1e-3 on the embedded dataset, a tower with 0.02 and dropout 0.1 never let the question's
    # colour word reach the image (bench/training.md), while 1.0 and no dropout did.
    dropout: float = 0.1
    embedding_std: float = 0.02


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 10
    image_size: int = 224
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    dim: int = 512  # fusion width: both towers are projected to it
    heads: int = 8
    dropout: float = 0.1
    visual_tokens: VisualTokens = VisualTokens.pooled
    fusion: Fusion = Fusion.cross_attention
    # Number of stacked bidirectional cross-attention blocks. The seed has one; relational questions
    # need a second hop (find the object, then compare the others with it).
    fusion_layers: int = 1
    # Hidden width of the per-cell ReLU MLP on [cell, what it read from the question]
    # (fusion.py says why); 0 = the seed's plain attention residual.
    fusion_cell_mlp: int = 0
    # Negative slope of the cell MLP's activations (LeakyReLU); 0 = ReLU. A ReLU unit that no
    # colour of the training stage turns on gets no gradient again (fusion.py says what that cost).
    fusion_cell_slope: float = 0.0
    # Hidden width of the relation read (fusion.py's RelationRead): after the cells have found the
    # object the question names, every cell is scored against it and read by a softmax, which
    # "closest to" and "furthest from" need. 0 = none. Needs grid tokens and `fusion_cell_mlp`.
    fusion_relation: int = 0
    # The relation read also sums its cells through a sigmoid of each head's score (a tally),
    # since a softmax's weights sum to one whatever the number of cells it picks: "how many
    # objects share its shape" is a count (fusion.py). Needs `fusion_relation`.
    fusion_relation_tally: bool = False
    head_hidden: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.fusion_layers < 1:
            raise ConfigError(f"fusion_layers must be >= 1, got {self.fusion_layers}")
        cell_grid = (self.fusion is Fusion.cross_attention and self.fusion_cell_mlp > 0
                     and self.visual_tokens is VisualTokens.grid)
        if self.fusion_relation and not cell_grid:
            raise ConfigError("fusion_relation reads the cells against the object the cell MLP "
                              "kept: it needs fusion=cross_attention, visual_tokens=grid and "
                              "fusion_cell_mlp > 0")
        if self.fusion_relation_tally and not self.fusion_relation:
            raise ConfigError("fusion_relation_tally sums the relation read's cells: it needs "
                              "fusion_relation > 0")
        if not 1 <= self.vision.stages <= 4:
            raise ConfigError(f"vision.stages must be 1..4, got {self.vision.stages}")


@dataclass(frozen=True)
class DataConfig:
    """Options of the embedded Sort-of-CLEVR generator."""

    scenes: int = 10000
    image_size: int = 64
    questions_per_type: int = 1  # per scene and per question type (6 types)
    phrasing: str = "varied"  # "single": one template per question type; "varied": several
    val_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class AccuracyFloors:
    """Held-out accuracy a trained model must reach, in percent; None = not checked."""

    overall: float | None = None
    group: float | None = None  # each of non-relational and relational
    per_type: float | None = None  # each question type

    def __post_init__(self) -> None:
        for name in ("overall", "group", "per_type"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 100:
                raise ConfigError(f"accuracy floor {name}={v} is not a percentage in 0..100")


# Steps whose mean training loss decides that a curriculum has been learned (--curriculum-loss).
CURRICULUM_WINDOW = 100


@dataclass(frozen=True)
class TrainConfig:
    data: str  # a dataset directory (train.jsonl, val.jsonl) or a manifest file
    out: str  # runs/<name>
    model: ModelConfig
    epochs: int = 10
    max_steps: int | None = None  # stops early when reached
    batch_size: int = 32
    # `image` batches run the vision tower once per image, but a batch of 64 questions then holds
    # only about 11 scenes; on the embedded dataset that stalled learning (bench/training.md).
    batch_by: BatchBy = BatchBy.question
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    seed: int = 0
    device: Device = Device.auto
    vocab_size: int = 1000  # WordPiece vocabulary trained on the training text (no text model given)
    eval_every: int = 0  # steps between held-out evaluations; 0 = once per epoch
    skip_bad_rows: bool = False
    resume: bool = False
    max_train_seconds: float | None = None  # stop (and save) once this wall-clock budget is spent
    # Curriculum: stages of question types (the manifest's `question_type`) trained on one after
    # the other before the epochs run on every row. On the embedded dataset, questions that no image
    # statistic answers (left/right, top/bottom) force the model to find the object the question
    # names; trained on everything at once it settles on image statistics instead; a second stage
    # that adds "shape" then puts the object's shape into its cell (bench/training.md). Each stage
    # lasts `curriculum_steps` at most, and ends earlier once the mean training loss of its last
    # CURRICULUM_WINDOW steps is below `curriculum_loss` (0: never early). The rate warms up at the
    # start of each stage and stays at its peak until the stage ends.
    curriculum: tuple[tuple[str, ...], ...] = ()
    curriculum_steps: int = 0
    curriculum_loss: float = 0.05
    # In the curriculum stages after the first, hold the parts that find the object a question
    # names (the text tower and the fusion's cell readers: DualModalNet.binding_parameters) as the
    # first stage left them; they train again in the epochs. On the embedded dataset a second stage
    # that adds "shape" questions otherwise learns to ignore the object instead of growing its
    # shape features (bench/training.md).
    freeze_binding: bool = False

    def __post_init__(self) -> None:
        if bool(self.curriculum) != bool(self.curriculum_steps):
            raise ConfigError("a curriculum needs both --curriculum-types and --curriculum-steps "
                              f"(got stages {[list(s) for s in self.curriculum]}, "
                              f"steps {self.curriculum_steps})")
        if not all(self.curriculum):
            raise ConfigError("every curriculum stage needs at least one question type "
                              "(--curriculum-types T1,T2, once per stage)")
        if self.freeze_binding and not self.curriculum:
            raise ConfigError("--freeze-binding holds what the first curriculum stage learned "
                              "through the later stages: give --curriculum-types (once per "
                              "stage) and --curriculum-steps, or drop it")
        if self.curriculum_loss < 0:
            raise ConfigError(f"--curriculum-loss must be >= 0 (0: run every curriculum step), "
                              f"got {self.curriculum_loss}")


# Presets name sizes. `seed` is the architecture document's model; `small` keeps its structure with
# towers small enough to train on a laptop CPU; `micro` is a distillation student; `tiny` exists
# for tests.
PRESETS: dict[str, ModelConfig] = {
    "seed": ModelConfig(),
    "small": ModelConfig(
        image_size=64,
        # (B, 24 + 24 + 24, 8, 8): the last stage with both earlier ones pooled to its grid
        vision=VisionConfig(backbone="convnet", stages=3, width=24, multiscale=True),
        text=TextConfig(hidden_size=128, num_layers=1, num_heads=4, intermediate_size=256,
                        max_length=32, dropout=0.0, embedding_std=1.0),
        dim=128,
        heads=4,
        dropout=0.0,
        visual_tokens=VisualTokens.grid,
        fusion_layers=1,
        fusion_cell_mlp=256,
        fusion_cell_slope=0.1,
        fusion_relation=128,
        fusion_relation_tally=True,
        head_hidden=256,
    ),
    "tiny": ModelConfig(
        image_size=32,
        vision=VisionConfig(backbone="resnet18", stages=1, multiscale=True),
        text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                        vocab_size=200, max_length=16),
        dim=32,
        heads=2,
        visual_tokens=VisualTokens.grid,
        fusion_layers=1,
        fusion_cell_mlp=32,
        fusion_relation=32,
        head_hidden=32,
    ),
    # A distillation student (toolkit distill): `small`'s layout at a quarter of its widths, 13x
    # fewer parameters; 4.3x faster than `small` in a first ONNX Runtime probe at batch 1 on a
    # loaded CPU (bench/compression.md; not yet a `toolkit bench` run).
    # Widths stay multiples of 4 so that 2:4 sparsity takes every layer `small` lets it take.
    "micro": ModelConfig(
        image_size=64,
        vision=VisionConfig(backbone="convnet", stages=3, width=12),  # (B, 12, 8, 8)
        text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                        max_length=32, dropout=0.0, embedding_std=1.0),
        dim=32,
        heads=2,
        dropout=0.0,
        visual_tokens=VisualTokens.grid,
        fusion_layers=1,
        fusion_cell_mlp=64,
        fusion_relation=32,
        head_hidden=64,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with top-level fields replaced; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def model_config(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The named preset with fields replaced from a (nested) dict, e.g. the JSON of
    `--model-config`: {"fusion": "concat", "vision": {"width": 32}}. Unknown fields are an error."""
    base = to_dict(preset(name))
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    try:
        return from_dict(ModelConfig, base)
    except (TypeError, ValueError) as e:  # a wrong type or enum value in the overrides
        raise ConfigError(f"model config overrides {overrides}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; enums become their values."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, Path):
            v = str(v)
        out[f.name] = v
    return out


_NESTED = {"vision": VisionConfig, "text": TextConfig, "model": ModelConfig}
_ENUMS = {"visual_tokens": VisualTokens, "fusion": Fusion, "device": Device}


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from ``to_dict`` output; unknown keys are an error."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k in _NESTED and isinstance(v, dict):
            v = from_dict(_NESTED[k], v)
        elif k in _ENUMS:
            v = _ENUMS[k](v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


# --------------------------------------------------------------------------- export and parity


class Precision(str, enum.Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class ComputeOp(str, enum.Enum):
    """The op types that carry the arithmetic; an FP16 or INT8 export can keep them in FP32."""
    Conv = "Conv"
    MatMul = "MatMul"
    Gemm = "Gemm"


class Int8Target(str, enum.Enum):
    # Explicit QDQ that TensorRT's strongly typed builder accepts: signed int8, every zero point 0.
    tensorrt = "tensorrt"
    # The fastest QDQ graph for ONNX Runtime's CPU kernels: uint8 asymmetric activations, int8
    # weights (U8S8). Measured in bench/export.md; symmetric S8S8 QDQ was slower than FP32.
    cpu = "cpu"


class ArtifactFormat(str, enum.Enum):
    onnx = "onnx"
    engine = "engine"  # ONNX, then a TensorRT plan built from it


class HardwareCompat(str, enum.Enum):
    """Which GPUs a TensorRT plan may run on (TensorRT's HardwareCompatibilityLevel)."""

    none = "none"  # the compute capability it was built on; fastest
    ampere_plus = "ampere_plus"  # any Ampere or newer GPU; fewer tactics, slower
    same_compute_capability = "same_compute_capability"  # TensorRT 11 only (10.3 lacks it)


class CalibMethod(str, enum.Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


@dataclass(frozen=True)
class Int8Config:
    calibration: str  # a dataset folder or manifest file; rows feed the shared preprocessing
    split: str = "train"  # calibrate on training rows; parity measures on the held-out split
    samples: int = 256
    method: CalibMethod = CalibMethod.minmax
    target: Int8Target = Int8Target.tensorrt
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"calib samples must be >= 1, got {self.samples}")


@dataclass(frozen=True)
class QatConfig:
    """Quantization-aware fine-tuning of a run for the `tensorrt` INT8 target (toolkit.export.qat)."""

    checkpoint: str  # runs/<name>: the FP32 run to fine-tune
    calibration: str | None  # dataset folder or manifest: the activation ranges (as the PTQ path)
    out: str  # the new run directory, e.g. runs/<name>-qat
    steps: int = 300
    lr: float = 1e-5  # a small step: the weights only move to fit the INT8 grid
    batch_size: int = 32
    calib_samples: int = 256
    calib_method: CalibMethod = CalibMethod.minmax
    # Fine-tuning rows (the training split); None: the run's own training data.
    data: str | None = None
    # Weight of the distillation term (KL to the FP32 model's answers) against cross-entropy on
    # the labels: 1 = only agree with FP32, 0 = only fit the labels.
    distill: float = 0.5
    eval_samples: int = 1000  # held-out rows for the before/after accuracy of the fake-INT8 model
    which: str = "best"
    seed: int = 0
    opset: int = 20

    def __post_init__(self) -> None:
        if not self.calibration:
            raise ConfigError("QAT needs calibration data for the activation ranges: pass "
                              "--calibration DATA (a dataset folder or manifest)")
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.batch_size < 2:  # the exported graph's batch axis is dynamic from 2 up
            raise ConfigError(f"--batch-size must be >= 2, got {self.batch_size}")
        if self.calib_samples < 1 or self.eval_samples < 0:
            raise ConfigError("--calib-samples must be >= 1 and --eval-samples >= 0")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"--distill must be in [0, 1], got {self.distill}")


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str  # runs/<name>
    out: str  # the .onnx file to write
    precision: Precision = Precision.fp32
    which: str = "best"
    # Real rows for the post-export check (None: the run's own training data, if still there).
    data: str | None = None
    opset: int = 20
    fp16_io: bool = False  # fp16 only: FP16 graph inputs/outputs instead of FP32
    int8: Int8Config | None = None
    # fp16/int8: transform this FP32 export (of the same weights) instead of exporting again.
    fp32_source: str | None = None
    # fp16/int8: op types kept in FP32. The embedded `small` model's three convolutions carry the
    # colours the fusion binds: in INT8 they cost 4 points of held-out accuracy, in FP16 they
    # made 8x the logit error of everything else (bench/export.md).
    exclude_op_types: tuple[ComputeOp, ...] = ()
    # fp16/int8: keep the fewest compute nodes in float that meet the precision's tolerance on
    # `fallback_samples` held-out rows (export/fallback.py).
    auto_fallback: bool = False
    fallback_samples: int = 1000

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ConfigError(f"opset {self.opset} is too old; use 17 or newer (LayerNormalization "
                              "is one op from opset 17)")
        if self.precision is Precision.int8 and self.int8 is None:
            raise ConfigError("INT8 export needs calibration data; pass --calibration DATA")
        if self.fp16_io and self.precision is not Precision.fp16:
            raise ConfigError("--fp16-io only applies to --precision fp16")
        if self.fp32_source and self.precision is Precision.fp32:
            raise ConfigError("--from-onnx only applies to --precision fp16 or int8")
        if self.exclude_op_types and self.precision is Precision.fp32:
            raise ConfigError("--exclude-op-type only applies to --precision fp16 or int8")
        if self.auto_fallback and self.precision is Precision.fp32:
            raise ConfigError("--auto-fallback only applies to --precision fp16 or int8")
        if self.fallback_samples < 1:
            raise ConfigError(f"fallback samples must be >= 1, got {self.fallback_samples}")
        if set(self.exclude_op_types) >= set(ComputeOp) and self.precision is Precision.int8:
            raise ConfigError("--exclude-op-type names every quantized op type "
                              f"({', '.join(o.value for o in ComputeOp)}): nothing would be INT8; "
                              "export --precision fp16 instead")


@dataclass(frozen=True)
class Tolerance:
    """What a candidate must meet against the reference; None = not checked.

    The elementwise bound scales with the reference, as numpy.allclose's atol + rtol * |b| does,
    except that the scale is the whole output's range (max - min): rounding error follows the size
    of the activations, so a logit near zero errs as much as the largest one."""

    atol: float | None = None  # max abs error <= atol + rtol * range, on every output element
    rtol: float = 0.0
    min_cosine: float | None = None  # per row (sample), the worst row
    min_top1: float | None = None  # share of rows whose argmax agrees
    max_accuracy_drop: float | None = None  # reference accuracy - candidate accuracy (0..1)

    def abs_bound(self, scale: float) -> float | None:
        """The max abs error allowed on an output whose reference spans `scale`."""
        return None if self.atol is None else self.atol + self.rtol * scale


# Bounds grow with the logits' range: training longer cannot fail a correct export (bench/export.md)
TOLERANCES: dict[Precision, Tolerance] = {
    Precision.fp32: Tolerance(atol=1e-4, rtol=1e-5, min_cosine=0.99999, min_top1=0.999,
                              max_accuracy_drop=0.001),
    Precision.fp16: Tolerance(atol=1e-2, rtol=1e-2, min_cosine=0.9999, min_top1=0.995,
                              max_accuracy_drop=0.005),
    Precision.int8: Tolerance(min_top1=0.99, max_accuracy_drop=0.01),
}


@dataclass(frozen=True)
class ParityConfig:
    reference: str  # runs/<name>: the PyTorch model
    candidate: str  # an exported .onnx
    data: str | None = None  # dataset folder or manifest (None: the run's training data)
    split: str = "val"  # held out
    samples: int | None = None  # first N rows of the split; None = all
    batch_size: int = 32
    which: str = "best"
    # --layerwise: the FP32 .onnx the candidate was made from (every tensor is compared with it).
    reference_onnx: str | None = None

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"samples must be >= 1, got {self.samples}")
