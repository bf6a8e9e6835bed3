"""Write a Triton model repository for an exported model, from the artifact's own record.

    repo/<name>/config.pbtxt        the model for Triton's onnxruntime or tensorrt backend
    repo/<name>/labels.txt          class names, one a line (label_filename of `logits`)
    repo/<name>/1/model.onnx        (or model.plan), copied; an ONNX file's external data too
    repo/<name>_text/config.pbtxt   a Python-backend model: raw image bytes + question strings in,
    repo/<name>_text/1/model.py     label + probabilities out, preprocessing as the Predictor's
    repo/<name>_text/1/toolkit.json (toolkit.triton.text), the model itself called through BLS;
                                    toolkit.json also lists folders for its sys.path

Everything comes from the artifact: I/O names, Triton data types and dims (-1 where dynamic, the
batch axis left out), max_batch_size (a plan's profile maximum; an ONNX file's dynamic batch takes
--max-batch, 32 by default), dynamic batching and instance groups. Each config.pbtxt is parsed
with protobuf's text format into Triton's own ModelConfig message (tritonclient's
model_config_pb2) before anything is renamed into place. Model configuration reference:
https://github.com/triton-inference-server/common/blob/main/protobuf/model_config.proto and
https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/model_configuration.html

Each model directory is built in a staging folder next to the repository (so that a running
Triton never sees a half-written model) and renamed into place whole.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.artifacts import INPUT_NAMES, OUTPUT_NAMES, ArtifactError, ArtifactMetadata
from toolkit.errors import ToolkitError

TEXT_SUFFIX = "_text"
TEXT_INPUTS = ("image_bytes", "question")  # TYPE_STRING (bytes) each, dims [1]
TEXT_OUTPUTS = ("label", "probabilities")
TEXT_SPEC = "toolkit.json"
LABELS_FILE = "labels.txt"
DEFAULT_MAX_BATCH = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TritonRepoError(ToolkitError):
    """The repository cannot be written as asked; the message names the problem and the fix."""


class InstanceKind(str, enum.Enum):
    """Where Triton runs the model's instances: auto = the GPUs where there are any, else CPU."""

    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class RepositoryConfig:
    model: str  # an exported .onnx or a built .plan (with its sidecar)
    repo: str = "triton_repo"
    name: str | None = None  # default: the file's name without its suffixes' dots (model_fp16)
    max_batch: int | None = None  # default: the plan's profile maximum; ONNX: DEFAULT_MAX_BATCH
    max_delay_ms: float = 1.0  # dynamic batching: how long a request may wait for others
    instances: int = 1  # instances of each model (instance_group count)
    kind: InstanceKind = InstanceKind.auto
    text_model: bool = True  # also write <name>_text, the Python-backend model
    python_path: tuple[str, ...] = ()  # folders the Python model puts first on sys.path
    force: bool = False  # replace existing model directories
    validate: bool = True  # parse each config.pbtxt into Triton's ModelConfig (needs tritonclient)


@dataclass(frozen=True)
class RepositoryResult:
    repo: Path
    models: list[str]
    configs: dict[str, str]  # model name -> config.pbtxt text
    max_batch_size: int
    validated: bool


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str  # numpy's name
    shape: tuple[int, ...]  # -1 = dynamic


@dataclass(frozen=True)
class _Artifact:
    kind: str  # onnx | plan
    path: Path
    metadata: ArtifactMetadata
    inputs: list[_Tensor]
    outputs: list[_Tensor]
    files: list[tuple[Path, str]] = field(default_factory=list)  # (source, name in version dir)
    profile_max_batch: int | None = None


# numpy dtype name -> Triton data type (model_config.proto's DataType).
_TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                 "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                 "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
                 "bfloat16": "TYPE_BF16"}


def triton_type(dtype: str, where: str) -> str:
    try:
        return _TRITON_TYPES[str(dtype)]
    except KeyError:
        raise TritonRepoError(f"{where} has the data type {dtype!r}, which the toolkit does not "
                              f"map to a Triton type (it maps {sorted(_TRITON_TYPES)})") from None


# ------------------------------------------------------------------ reading the artifact


def _read_onnx(path: Path) -> _Artifact:
    try:
        import onnx
        from onnx import helper
    except ImportError as e:
        raise TritonRepoError("reading an ONNX model needs the onnx package: pip install onnx "
                              "(the export extra)") from e
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a file that is not ONNX
        raise TritonRepoError(f"{path} is not a readable ONNX model ({type(e).__name__}); export "
                              "it again with `toolkit export`") from e
    meta = ArtifactMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    graph = model.graph
    weights = {t.name for t in graph.initializer}

    def tensors(values) -> list[_Tensor]:
        out = []
        for v in values:
            if v.name in weights:  # older graphs list initializers among the inputs
                continue
            t = v.type.tensor_type
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
            shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1
                          for d in t.shape.dim)
            out.append(_Tensor(v.name, dtype, shape))
        return out

    files = [(path, "model.onnx")]
    for location in sorted(_external_locations(model)):
        src = (path.parent / location).resolve()
        if Path(location).is_absolute() or not src.is_relative_to(path.parent.resolve()):
            raise TritonRepoError(f"{path} keeps weights in {location!r}, outside its folder; the "
                                  "toolkit copies only external data next to the model: export it "
                                  "again with `toolkit export`")
        if not src.is_file():
            raise TritonRepoError(f"{path} keeps weights in {location!r}, which is missing next "
                                  "to it; copy it there or export again")
        files.append((src, location))
    return _Artifact("onnx", path, meta, tensors(graph.input), tensors(graph.output), files)


def _external_locations(model) -> set[str]:
    from onnx import TensorProto

    out = set()
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in t.external_data}
            out.add(entry.get("location", ""))
    return out


def _read_plan(path: Path) -> _Artifact:
    from toolkit.runtime.trt_plan import check_plan_file, read_sidecar, sidecar_path

    sidecar = read_sidecar(path)
    check_plan_file(path, sidecar)  # the very plan its sidecar describes (size and SHA-256)
    meta = ArtifactMetadata.from_json(json.dumps(sidecar["model"]), source=str(sidecar_path(path)))
    try:
        inputs = [_Tensor(t["name"], t["dtype"], tuple(int(d) for d in t["shape"]))
                  for t in sidecar["inputs"]]
        outputs = [_Tensor(t["name"], t["dtype"], tuple(int(d) for d in t["shape"]))
                   for t in sidecar["outputs"]]
        profile = sidecar["profiles"][0] if sidecar["profiles"] else {}
        mins = [int(profile[t.name]["min"][0]) for t in inputs if t.name in profile]
        maxes = [int(profile[t.name]["max"][0]) for t in inputs if t.name in profile]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise TritonRepoError(f"{sidecar_path(path)} has no readable inputs/outputs/profiles "
                              f"({type(e).__name__}: {e}); rebuild with toolkit build") from e
    if maxes and max(mins) > 1:
        raise TritonRepoError(f"{path}'s profile starts at batch {max(mins)}; Triton's dynamic "
                              "batcher sends any batch from 1: rebuild with --min-batch 1")
    return _Artifact("plan", path, meta, inputs, outputs, [(path, "model.plan")],
                     profile_max_batch=min(maxes) if maxes else None)


def read_artifact(path: str | os.PathLike) -> _Artifact:
    path = Path(path)
    if not path.is_file():
        raise TritonRepoError(f"{path} does not exist (or is not a file); pass an exported .onnx "
                              "(toolkit export) or a built .plan (toolkit build)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".onnx":
            art = _read_onnx(path)
        elif suffix in (".plan", ".engine"):
            art = _read_plan(path)
        else:
            raise TritonRepoError(f"{path} has the unknown extension {suffix!r}; pass an .onnx "
                                  "export or a .plan engine")
    except ArtifactError as e:
        raise TritonRepoError(str(e)) from e
    _check_interface(art)
    return art


def _check_interface(art: _Artifact) -> None:
    names = [t.name for t in art.inputs]
    if set(names) != set(INPUT_NAMES) or [t.name for t in art.outputs] != list(OUTPUT_NAMES):
        raise TritonRepoError(f"{art.path} has inputs {names} and outputs "
                              f"{[t.name for t in art.outputs]}, not the toolkit's "
                              f"{list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}; export it with "
                              "`toolkit export`")
    for t in art.inputs + art.outputs:
        if not t.shape or t.shape[0] != -1:
            raise TritonRepoError(f"{art.path}: {t.name!r} has shape {t.shape}, without a dynamic "
                                  "batch axis first; Triton's batching needs one: export it again "
                                  "with `toolkit export` (dynamic batch and seq)")
    classes = art.outputs[0].shape[-1]
    if classes not in (-1, len(art.metadata.labels)):
        raise TritonRepoError(f"{art.path}: logits have {classes} classes but the record lists "
                              f"{len(art.metadata.labels)} labels; export it again")


# ------------------------------------------------------------------ config.pbtxt


class _Enum(str):
    """A protobuf enum value: written without quotes."""


def _scalar(v) -> str:
    if isinstance(v, _Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    if any(ord(c) < 32 for c in s):
        raise TritonRepoError(f"{s!r} has control characters; a config.pbtxt string cannot")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_pbtxt(msg: dict, indent: int = 0) -> str:
    """A dict as protobuf text format: dicts are messages, lists of dicts repeated messages, lists
    of scalars repeated scalars (https://protobuf.dev/reference/protobuf/textformat-spec/)."""
    pad = "  " * indent
    lines = []
    for key, value in msg.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, v in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{", to_pbtxt(v, indent + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _kind(kind: InstanceKind, art_kind: str) -> _Enum:
    if art_kind == "plan":
        if kind is InstanceKind.cpu:
            raise TritonRepoError("a TensorRT plan runs on the GPU only; drop --kind cpu (or serve "
                                  "the .onnx it was built from on CPU)")
        return _Enum("KIND_GPU")
    return _Enum({"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}[kind.value])


def _batching(cfg: RepositoryConfig) -> dict:
    # max_queue_delay_microseconds: how long the scheduler holds a request to batch it with later
    # ones (model_configuration.md, Dynamic Batcher).
    return {"max_queue_delay_microseconds": int(round(cfg.max_delay_ms * 1000))}


def model_config(art: _Artifact, name: str, max_batch: int, cfg: RepositoryConfig) -> dict:
    def io(t: _Tensor, what: str) -> dict:
        d = {"name": t.name, "data_type": _Enum(triton_type(t.dtype, f"{what} {t.name!r}")),
             "dims": list(t.shape[1:])}  # the batch axis is implied by max_batch_size > 0
        if what == "output" and t.name == OUTPUT_NAMES[0]:
            d["dims"] = [len(art.metadata.labels)]
            d["label_filename"] = LABELS_FILE
        return d

    head = ({"backend": "onnxruntime"} if art.kind == "onnx"
            else {"platform": "tensorrt_plan"})
    return {"name": name, **head, "max_batch_size": max_batch,
            "input": [io(t, "input") for t in art.inputs],
            "output": [io(t, "output") for t in art.outputs],
            "dynamic_batching": _batching(cfg),
            "instance_group": [{"count": cfg.instances, "kind": _kind(cfg.kind, art.kind)}]}


def text_model_config(art: _Artifact, name: str, max_batch: int, cfg: RepositoryConfig) -> dict:
    string = _Enum("TYPE_STRING")  # Triton's BYTES: raw image bytes and UTF-8 questions
    config = {"name": name, "backend": "python", "max_batch_size": max_batch,
              "input": [{"name": n, "data_type": string, "dims": [1]} for n in TEXT_INPUTS],
              "output": [{"name": TEXT_OUTPUTS[0], "data_type": string, "dims": [1]},
                         {"name": TEXT_OUTPUTS[1], "data_type": _Enum("TYPE_FP32"),
                          "dims": [len(art.metadata.labels)], "label_filename": LABELS_FILE}],
              "dynamic_batching": _batching(cfg),
              # Decoding and tokenizing are CPU work; the model itself runs where its kind says.
              "instance_group": [{"count": cfg.instances, "kind": _Enum("KIND_CPU")}]}
    return config


def validate_config(text: str, name: str):
    """Parse config.pbtxt text into Triton's ModelConfig message (tritonclient's model_config_pb2):
    an unknown field, a wrong type or an unknown enum value fails here, not in the server."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise TritonRepoError(f"validating config.pbtxt needs tritonclient ({e}): pip install "
                              "'dualmodal-toolkit[serve]', or write without the check "
                              "(--no-validate)") from e
    try:
        msg = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise TritonRepoError(f"the config.pbtxt written for {name!r} is not a valid Triton "
                              f"ModelConfig ({e}); this is a toolkit bug: please report it") from e
    invalid = model_config_pb2.DataType.Value("TYPE_INVALID")
    for t in list(msg.input) + list(msg.output):
        if t.data_type == invalid or not t.dims:
            raise TritonRepoError(f"the config.pbtxt written for {name!r} gives {t.name!r} no data "
                                  "type or dims; this is a toolkit bug: please report it")
    if msg.name != name:
        raise TritonRepoError(f"the config.pbtxt written for {name!r} names {msg.name!r}")
    return msg


# ------------------------------------------------------------------ writing


def _check_config(cfg: RepositoryConfig) -> None:
    if isinstance(cfg.instances, bool) or not isinstance(cfg.instances, int) or cfg.instances < 1:
        raise TritonRepoError(f"--instances {cfg.instances!r} must be 1 or more")
    if cfg.max_batch is not None and (isinstance(cfg.max_batch, bool) or cfg.max_batch < 1):
        raise TritonRepoError(f"--max-batch {cfg.max_batch!r} must be 1 or more")
    if not 0 <= cfg.max_delay_ms <= 60_000:
        raise TritonRepoError(f"--max-delay-ms {cfg.max_delay_ms} must be in 0..60000")
    if cfg.name is not None and not _NAME.match(cfg.name):
        raise TritonRepoError(f"--name {cfg.name!r} is not a usable model name: letters, digits, "
                              "'_', '-' and '.', starting with a letter or digit")


def _max_batch(art: _Artifact, asked: int | None) -> int:
    if art.profile_max_batch is None:
        return asked or DEFAULT_MAX_BATCH
    if asked is not None and asked > art.profile_max_batch:
        raise TritonRepoError(f"--max-batch {asked} exceeds {art.path}'s profile maximum "
                              f"{art.profile_max_batch}; pass at most that, or rebuild the plan "
                              f"with toolkit build --max-batch {asked}")
    return asked or art.profile_max_batch


def default_name(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "model"


def _text_spec(art: _Artifact, target: str, max_batch: int, python_path: tuple[str, ...]) -> dict:
    image = next(t for t in art.inputs if t.name == INPUT_NAMES[0])
    # python_path: read by model.py when Triton imports it, before triton_python_backend_utils
    # (which needs numpy) is imported: the model's config is not available that early.
    return {"format": "toolkit.triton-text", "version": 1, "target_model": target,
            "python_path": [str(Path(p).resolve()) for p in python_path],
            "backend": "onnxruntime" if art.kind == "onnx" else "tensorrt",
            "image_dtype": image.dtype, "max_batch_size": max_batch,
            "model": json.loads(art.metadata.to_json())}


def write_repository(cfg: RepositoryConfig, log=print) -> RepositoryResult:
    """Write the repository's model directories (see the module docstring); returns what was
    written. Existing non-empty model directories are refused unless cfg.force."""
    _check_config(cfg)
    art = read_artifact(cfg.model)
    name = cfg.name or default_name(art.path)
    max_batch = _max_batch(art, cfg.max_batch)
    repo = Path(cfg.repo)
    if repo.exists() and not repo.is_dir():
        raise TritonRepoError(f"{repo} exists and is not a folder; pass another --repo")
    models = {name: model_config(art, name, max_batch, cfg)}
    if cfg.text_model:
        models[name + TEXT_SUFFIX] = text_model_config(art, name + TEXT_SUFFIX, max_batch, cfg)
    for model in models:
        target = repo / model
        if target.exists() and any(target.iterdir()) and not cfg.force:
            raise TritonRepoError(f"{target} already exists and is not empty; pass --force to "
                                  "replace it, or another --name")
    texts = {model: to_pbtxt(c) + "\n" for model, c in models.items()}
    if cfg.validate:
        for model, text in texts.items():
            validate_config(text, model)

    labels = "".join(label + "\n" for label in art.metadata.labels)
    staging = repo.resolve().parent / f".{repo.resolve().name}.staging-{os.getpid()}"
    try:
        if staging.exists():
            shutil.rmtree(staging)
        main = staging / name
        (main / "1").mkdir(parents=True)
        for src, dest in art.files:
            (main / "1" / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, main / "1" / dest)
        if cfg.text_model:
            version = staging / (name + TEXT_SUFFIX) / "1"
            version.mkdir(parents=True)
            shutil.copyfile(Path(__file__).with_name("python_model.py"), version / "model.py")
            spec = _text_spec(art, name, max_batch, cfg.python_path)
            (version / TEXT_SPEC).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        for model, config_text in texts.items():
            (staging / model / "config.pbtxt").write_text(config_text, encoding="utf-8")
            (staging / model / LABELS_FILE).write_text(labels, encoding="utf-8")
        repo.mkdir(parents=True, exist_ok=True)
        # The Python model first: a crash between the two renames leaves a model that answers
        # logits, never a Python model whose target is missing.
        for model in reversed(list(models)):
            _replace_dir(staging / model, repo / model, staging)
    except OSError as e:
        raise TritonRepoError(f"cannot write {repo} ({e}); check the path and its permissions") \
            from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for model in models:
        log(f"wrote {repo / model}")
    return RepositoryResult(repo, list(models), texts, max_batch, cfg.validate)


def _replace_dir(new: Path, final: Path, staging: Path) -> None:
    if final.exists():
        old = staging / f".old-{final.name}"
        os.replace(final, old)  # (an empty dir, or --force); removed with the staging folder
    os.replace(new, final)
