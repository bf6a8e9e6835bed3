"""What a TensorRT plan is, without TensorRT: its sidecar, profiles and compatibility rules.

A plan (engines/model.plan) is opaque bytes tied to one TensorRT version and one GPU. Its JSON
sidecar (engines/model.plan.json) says what it is: the model record every artifact carries
(`ArtifactMetadata`, under "model"), the TensorRT version, the GPU name and compute capability and
the platform (machine, OS, integrated GPU or not) it was built on, its optimization profiles, its
I/O tensors, the source ONNX's SHA-256, the plan's own size and SHA-256. Everything here is pure
Python so that the compatibility decision, the profile checks and a plan's integrity are settled
(and tested) before TensorRT is ever asked to deserialize.

This module is the one place that imports `tensorrt` (`import_tensorrt`), lazily; the builder
(toolkit/engines/tensorrt.py) and the runner (toolkit/runtime/trt_runner.py) both go through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from toolkit.artifacts import ArtifactMetadata, sha256, write_json
from toolkit.errors import ToolkitError
from toolkit.runtime.cuda_mem import GPU_HINT, INSTALL_HINT, GpuInfo

SIDECAR_FORMAT = "toolkit.tensorrt-plan"
SIDECAR_VERSION = 2  # 2: the build platform ("platform") is recorded and checked
SUPPORTED_MAJORS = (10, 11)  # 10.3 is JetPack 6's; 11.x needs JetPack 7 on Jetson


class TensorRTUnavailable(ToolkitError):
    """The tensorrt package cannot be imported."""


class PlanError(ToolkitError):
    """A plan or its sidecar is missing, damaged, or not for this machine."""


class ShapeOutsideProfile(ToolkitError):
    """An input shape the engine's optimization profile does not cover."""


# ------------------------------------------------------------------ importing TensorRT


def import_tensorrt():
    """`import tensorrt`, or a TensorRTUnavailable that says what to install."""
    try:
        import tensorrt
    except ImportError as e:  # also the OSError-turned-ImportError of missing libnvinfer
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({e}). Install it with {INSTALL_HINT}; "
            f"{GPU_HINT}.") from e
    return tensorrt


def version_tuple(version: str) -> tuple[int, ...]:
    """"10.3.0" -> (10, 3, 0); "11.4.0.106" -> (11, 4, 0, 106)."""
    try:
        return tuple(int(p) for p in str(version).split("."))
    except ValueError:
        raise PlanError(f"cannot read the TensorRT version {version!r}") from None


def check_supported(version: str, what: str = "this TensorRT") -> None:
    """Refuse a TensorRT major the toolkit is not written for (names are checked against 10.3 and
    11.4 only: tests/engines/test_trt_api.py)."""
    major = version_tuple(version)[0]
    if major not in SUPPORTED_MAJORS:
        raise PlanError(f"{what} is TensorRT {version}; the toolkit supports TensorRT "
                        f"{' and '.join(map(str, SUPPORTED_MAJORS))} only: install one of those "
                        f"({INSTALL_HINT})")


def trt_major() -> int:
    """The running TensorRT's major version. The API-conformance test (tests/engines/
    test_trt_api.py) reads `if trt_major() >= 11:` guards: a name present in only one supported
    TensorRT version must sit behind one."""
    return version_tuple(import_tensorrt().__version__)[0]


_LOGGERS: dict = {}  # one trt.Logger per tensorrt module: TensorRT keeps the first it is given


def trt_logger(verbose: bool = False):
    """The shared TensorRT logger (TensorRT warns when builders and runtimes get different ones),
    at WARNING, or VERBOSE for --trt-verbose."""
    trt = import_tensorrt()
    module, logger = _LOGGERS.get(id(trt), (None, None))
    if module is not trt:  # (an id is reused once its module is gone)
        logger = trt.Logger(trt.Logger.WARNING)
        _LOGGERS[id(trt)] = (trt, logger)
    logger.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return logger


# ------------------------------------------------------------------ optimization profiles


@dataclass(frozen=True)
class ProfileConfig:
    """Batch and sequence ranges of the one optimization profile. None = from the model."""

    min_batch: int = 1
    opt_batch: int | None = None  # default: max_batch (throughput); set 1 for latency
    max_batch: int = 32
    min_seq: int = 1
    opt_seq: int | None = None  # default: max_seq
    max_seq: int | None = None  # default: the model's max_length


def _range(kind: str, lo: int, opt: int | None, hi: int) -> tuple[int, int, int]:
    opt = hi if opt is None else opt
    if not 1 <= lo <= opt <= hi:
        raise ToolkitError(f"{kind} range min={lo} opt={opt} max={hi} is not "
                           f"1 <= min <= opt <= max; fix --min-{kind}/--opt-{kind}/--max-{kind}")
    return lo, opt, hi


def profile_ranges(cfg: ProfileConfig, max_length: int) -> tuple[tuple, tuple]:
    """(min, opt, max) of the batch and of the sequence; a ToolkitError for a bad range."""
    max_seq = max_length if cfg.max_seq is None else cfg.max_seq
    if max_seq > max_length:
        raise ToolkitError(f"--max-seq {max_seq} exceeds the model's max_length {max_length} "
                           f"(its position embeddings end there)")
    return (_range("batch", cfg.min_batch, cfg.opt_batch, cfg.max_batch),
            _range("seq", cfg.min_seq, cfg.opt_seq, max_seq))


def profile_shapes(inputs: dict[str, tuple], cfg: ProfileConfig, image_size: int,
                   max_length: int) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape of every network input, from its ONNX dims (-1 = dynamic).

    Axis 0 is the batch; axis 1 of a rank-2 input is the sequence (input_ids, attention_mask);
    dynamic spatial axes of a rank-4 input (the image) take the model's image_size. Fixed axes
    stay as the graph has them.
    """
    batch, seq = profile_ranges(cfg, max_length)
    out = {}
    for name, dims in inputs.items():
        shapes = {"min": [], "opt": [], "max": []}
        for axis, d in enumerate(dims):
            d = int(d)
            if d >= 0:
                values = (d, d, d)
            elif axis == 0:
                values = batch
            elif len(dims) == 2 and axis == 1:
                values = seq
            elif len(dims) == 4 and axis in (2, 3):
                values = (image_size,) * 3
            else:
                raise ToolkitError(f"input {name!r} {tuple(dims)} has a dynamic axis {axis} the "
                                   f"toolkit cannot size (only batch, sequence and image sides); "
                                   f"re-export with that axis fixed")
            for key, v in zip(("min", "opt", "max"), values):
                shapes[key].append(int(v))
        out[name] = shapes
    return out


def check_shapes(profile: dict[str, dict[str, list[int]]], shapes: dict[str, tuple]) -> None:
    """Raise ShapeOutsideProfile, naming input, axis and range, for a shape the profile lacks."""
    for name, shape in shapes.items():
        if name not in profile:
            continue  # name checks are the Runner base's job
        lo, hi = profile[name]["min"], profile[name]["max"]
        if len(shape) != len(lo):
            raise ShapeOutsideProfile(f"input {name!r} has shape {tuple(shape)}; the engine takes "
                                      f"rank {len(lo)}")
        for axis, (v, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= v <= b:
                what = {0: "batch"}.get(axis, "sequence" if len(lo) == 2 else f"axis {axis}")
                raise ShapeOutsideProfile(
                    f"input {name!r} has shape {tuple(shape)}: its {what} {v} is outside the "
                    f"engine's profile [{a}, {b}] (min {tuple(lo)}, max {tuple(hi)}); split the "
                    f"batch, or rebuild with a wider range (toolkit build --max-batch/--max-seq)")


# ------------------------------------------------------------------ the platform


def host_platform(gpu: GpuInfo) -> dict:
    """What a plan is tied to besides TensorRT and the GPU's compute capability: "Serialized
    engines are not portable across platforms" (TensorRT support matrix, Engine Portability). An
    integrated GPU (Jetson) is told apart from a discrete one of the same compute capability."""
    return {"machine": platform.machine(), "system": platform.system(),
            "integrated_gpu": bool(gpu.integrated)}


def describe_platform(p: dict) -> str:
    kind = "integrated (Jetson)" if p.get("integrated_gpu") else "discrete"
    return f"{p.get('system')} {p.get('machine')} with a {kind} GPU"


# ------------------------------------------------------------------ the sidecar


def sidecar_path(plan: str | os.PathLike) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def write_sidecar(plan: str | os.PathLike, *, source_onnx: str | os.PathLike,
                  tensorrt_version: str, gpu: GpuInfo, metadata: ArtifactMetadata, build: dict,
                  profiles: list[dict], inputs: list[dict], outputs: list[dict],
                  build_platform: dict | None = None) -> dict:
    """Describe a written plan in plan + ".json" (atomically); returns the record.
    `build_platform`: where it was built (default: this machine, host_platform).

    Write it after the plan: a crash in between leaves a sidecar whose size and SHA-256 no longer
    match the plan, which check_plan_file refuses instead of running a wrong plan.
    """
    plan = Path(plan)
    record = {
        "format": SIDECAR_FORMAT,
        "sidecar_version": SIDECAR_VERSION,
        "plan": plan.name,
        "plan_bytes": plan.stat().st_size,
        "plan_sha256": sha256(plan),
        "source_onnx": str(source_onnx),
        "source_onnx_sha256": sha256(source_onnx),
        "tensorrt_version": str(tensorrt_version),
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "platform": dict(build_platform or host_platform(gpu)),
        "precision": metadata.precision,  # from the graph; TensorRT adds none of its own
        "build": dict(build),
        "profiles": list(profiles),
        "inputs": list(inputs),  # [{"name", "dtype" (numpy's name), "shape" (-1 = dynamic)}]
        "outputs": list(outputs),
        "model": json.loads(metadata.to_json()),  # the same record the ONNX file carries
    }
    write_json(sidecar_path(plan), record)
    return record


def read_sidecar(plan: str | os.PathLike) -> dict:
    """The sidecar of a plan, checked for form; PlanError naming the problem and the fix."""
    path = sidecar_path(plan)
    if not path.exists():
        raise PlanError(f"{path} is missing: a plan needs the sidecar `toolkit build` writes "
                        f"next to it; rebuild with toolkit build")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"{path} is not valid JSON ({e}); rebuild with toolkit build") from e
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise PlanError(f"{path} is not a toolkit plan sidecar; rebuild with toolkit build")
    if data.get("sidecar_version") != SIDECAR_VERSION:
        raise PlanError(f"{path} has sidecar version {data.get('sidecar_version')}, this toolkit "
                        f"reads {SIDECAR_VERSION}; rebuild with toolkit build")
    missing = [k for k in ("tensorrt_version", "gpu", "platform", "profiles", "inputs", "outputs",
                           "plan_bytes", "plan_sha256", "model") if k not in data]
    if missing:
        raise PlanError(f"{path} lacks {missing}; rebuild with toolkit build")
    return data


def read_plan(plan: str | os.PathLike, sidecar: dict) -> bytes:
    """The plan's bytes, read once and checked against the sidecar (size, then SHA-256) before
    TensorRT sees them: a truncated, damaged or foreign file is refused, and the bytes checked are
    the very bytes deserialized (no window for the file to change in between)."""
    plan = Path(plan)
    if not plan.is_file():
        raise PlanError(f"{plan} does not exist; build it with toolkit build")
    data = plan.read_bytes()
    if len(data) != sidecar["plan_bytes"]:
        raise PlanError(f"{plan} has {len(data)} bytes but its sidecar says "
                        f"{sidecar['plan_bytes']}: the plan is truncated or was replaced; rebuild "
                        f"with toolkit build")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar["plan_sha256"]:
        raise PlanError(f"{plan} does not match its sidecar's SHA-256 (the plan's is "
                        f"{digest[:12]}, the sidecar records {str(sidecar['plan_sha256'])[:12]}): "
                        f"another or damaged plan; rebuild it and its sidecar with toolkit build")
    return data


def check_plan_file(plan: str | os.PathLike, sidecar: dict) -> None:
    """The plan exists and is the very file the sidecar describes (read_plan, bytes dropped)."""
    read_plan(plan, sidecar)


# ------------------------------------------------------------------ compatibility


def _compute_capability(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def check_compatibility(sidecar: dict, running_trt_version: str, gpu: GpuInfo,
                        here: dict | None = None) -> PlanError | None:
    """Can this TensorRT version on this GPU and platform run the plan the sidecar describes?

    None when it can, else the error to raise (not raised here, so callers and tests can look at
    it). `here`: this machine's host_platform(gpu) (the default). Rules:
    * Both TensorRT majors must be ones the toolkit supports (SUPPORTED_MAJORS).
    * A plan runs only on the TensorRT version that built it, all four parts of it: TensorRT
      compares major, minor, patch and build when it deserializes ("expecting library version
      8.5.1.7 got 8.5.3.1"; TensorRT for DRIVE OS release properties: "version numbers must match
      (in major, minor, patch, and build)"). Built version-compatible it also runs on a later
      release of the same major, and a TensorRT 10 one on 11 (docs.nvidia.com/deeplearning/
      tensorrt/11.4.1/getting-started/support-matrix.html, Engine Portability).
    * Plans are not portable across platforms (same page): machine, OS and integrated-or-discrete
      GPU must match.
    * Without a hardware-compatibility level the GPU must have the compute capability it was
      built on; AMPERE_PLUS runs on compute capability 8.0 and later.
    """
    rebuild = "rebuild the engine on this machine with toolkit build"
    for version, what in ((sidecar["tensorrt_version"], "the engine's TensorRT"),
                          (running_trt_version, "this TensorRT")):
        try:
            check_supported(version, what)
        except PlanError as e:
            return e
    built = version_tuple(sidecar["tensorrt_version"])
    running = version_tuple(running_trt_version)
    build = sidecar.get("build", {})
    if build.get("version_compatible"):
        ok = built[:3] <= running[:3] and (running[0] == built[0] or (built[0], running[0]) ==
                                           (10, 11))
        if not ok:
            return PlanError(f"the engine was built version-compatible with TensorRT "
                             f"{sidecar['tensorrt_version']}, which TensorRT {running_trt_version} "
                             f"cannot run (same major and newer, or 10 -> 11, only); {rebuild}")
    elif built != running:
        return PlanError(f"the engine was built with TensorRT {sidecar['tensorrt_version']} and "
                         f"this is TensorRT {running_trt_version}; an engine runs only on the "
                         f"TensorRT version (major.minor.patch.build) that built it: {rebuild}")
    here = host_platform(gpu) if here is None else here
    there = sidecar.get("platform", {})
    if any(there.get(k) != here.get(k) for k in ("machine", "system", "integrated_gpu")):
        return PlanError(f"the engine was built on {describe_platform(there)}; this is "
                         f"{describe_platform(here)}, and engines are not portable across "
                         f"platforms: {rebuild}")
    want = _compute_capability(sidecar["gpu"]["compute_capability"])
    have = _compute_capability(gpu.compute_capability)
    level = build.get("hardware_compat", "none")
    if level == "ampere_plus":
        if have < (8, 0):
            return PlanError(f"the engine was built for Ampere and newer GPUs (compute capability "
                             f">= 8.0); this {gpu.name} has {gpu.compute_capability}: {rebuild}")
    elif have != want:
        return PlanError(f"the engine was built on a {sidecar['gpu']['name']} (compute capability "
                         f"{sidecar['gpu']['compute_capability']}); this {gpu.name} has "
                         f"{gpu.compute_capability}: {rebuild}")
    return None
