"""Build a TensorRT plan from an exported ONNX model, and inspect one.

Precision lives in the ONNX graph (docs/architecture.md): the network is created STRONGLY_TYPED on TensorRT 10
and 11 alike, with `1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)` (the enum's own
value: 1 on 10.x, 0 on 11.x where strong typing is always on; NVIDIA's samples/python/
introductory_parser_samples/onnx_resnet50.py does the same). No precision builder flags, no INT8
calibrators: TensorRT 11 removed both, and on 10.x they conflict with strong typing.

TensorRT names used here must exist in TensorRT 10.3 and 11.4, or sit behind `trt_major()` guards;
tests/engines/test_trt_api.py checks that against the real bindings' name lists. By convention the
variables `builder`, `network`, `parser`, `config`, `profile`, `cache`, `error`, `tensor`, `layer`,
`engine`, `runtime`, `inspector` always hold the TensorRT object of that name, so the test can check
the methods called on them too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.artifacts import read_onnx_metadata, write_bytes
from toolkit.config import HardwareCompat
from toolkit.errors import ToolkitError
from toolkit.runtime.cuda_mem import device_info
from toolkit.runtime.trt_plan import (ProfileConfig, check_compatibility, check_plan_file,
                                      check_supported, host_platform, import_tensorrt,
                                      profile_ranges, profile_shapes, read_sidecar, trt_logger,
                                      trt_major, write_sidecar)

__all__ = ["BuildConfig", "EngineBuildError", "HardwareCompat", "ProfileConfig", "build_engine",
           "check_compatibility", "inspect_engine", "layer_precisions"]


class EngineBuildError(ToolkitError):
    """TensorRT could not parse the ONNX model or build the engine."""


@dataclass(frozen=True)
class BuildConfig:
    onnx: str
    out: str = "engines/model.plan"
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    workspace_mb: int | None = None  # None: TensorRT's default (all device memory)
    opt_level: int = 3  # builder optimization level, 0..5; TensorRT's default is 3
    timing_cache: str | None = None  # a file loaded before and saved after the build
    version_compatible: bool = False  # runnable by later TensorRT releases (may be slower)
    hardware_compat: HardwareCompat = HardwareCompat.none
    dla_core: int | None = None  # TensorRT 10 on Jetson AGX Orin only
    # Let TensorRT use its sparse tensor-core kernels (Ampere and later) on weights with the 2:4
    # pattern (toolkit prune); it picks them per layer where they are faster.
    sparse_weights: bool = False
    verbose: bool = False  # TensorRT's own log at VERBOSE instead of WARNING


def _validate(cfg: BuildConfig) -> None:
    if not 0 <= cfg.opt_level <= 5:
        raise ToolkitError(f"--opt-level {cfg.opt_level} is outside TensorRT's 0..5")
    if cfg.workspace_mb is not None and cfg.workspace_mb < 1:
        raise ToolkitError(f"--workspace-mb {cfg.workspace_mb} must be at least 1")
    if cfg.dla_core is not None and cfg.dla_core < 0:
        raise ToolkitError(f"--dla-core {cfg.dla_core} must be 0 or more")
    if not Path(cfg.onnx).is_file():
        raise ToolkitError(f"{cfg.onnx} does not exist; export one with toolkit export")


def format_parser_error(error) -> str:
    """One parser error with the node name and operator (ParserError in 10.3 and 11.4 alike)."""
    where = f"node {error.node()}"
    if error.node_name():
        where += f" {error.node_name()!r}"
    if error.node_operator():
        where += f" ({error.node_operator()})"
    return f"{where}: {error.desc()} [{error.code()}]"


def _dtype_name(trt, dtype) -> str:
    """numpy's name for a TensorRT DataType, or TensorRT's where numpy has none (bf16, fp8)."""
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:
        return str(dtype.name).lower()


def _io(trt, tensor) -> dict:
    return {"name": tensor.name, "dtype": _dtype_name(trt, tensor.dtype),
            "shape": [int(d) for d in tensor.shape]}


def _check_dla_profile(cfg: BuildConfig, max_length: int) -> None:
    """DLA runs fixed shapes only: "DLA does not support dynamic dimensions, so the profile's min,
    max, and opt values must be equal" (TensorRT docs, DLA Supported Layers and Restrictions).
    With a range and GPU fallback TensorRT would quietly build a GPU engine instead."""
    if cfg.dla_core is None:
        return
    batch, seq = profile_ranges(cfg.profile, max_length)
    if len(set(batch)) > 1 or len(set(seq)) > 1:
        raise EngineBuildError(
            f"--dla-core needs a static profile (DLA has no dynamic shapes), but batch is "
            f"min/opt/max {'/'.join(map(str, batch))} and sequence {'/'.join(map(str, seq))}; "
            f"fix both, e.g. --min-batch {batch[2]} --max-batch {batch[2]} --min-seq {seq[2]} "
            f"--max-seq {seq[2]}")


def _apply_hardware_compat(trt, config, level: HardwareCompat, gpu) -> None:
    if level is not HardwareCompat.none and gpu.integrated:
        # "hardware compatibility is ... not supported on NVIDIA DRIVE OS or JetPack" (TensorRT
        # developer guide, Hardware Compatibility): a Jetson plan is for that Jetson.
        raise EngineBuildError(f"--hardware-compat {level.value} is not supported on Jetson "
                               f"({gpu.name} is an integrated GPU); build with --hardware-compat "
                               f"none on the device that runs the plan")
    if level is HardwareCompat.ampere_plus:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif level is HardwareCompat.same_compute_capability:
        if trt_major() < 11:
            raise EngineBuildError("--hardware-compat same_compute_capability needs TensorRT 11 "
                                   "(TensorRT 10.3, JetPack 6's, lacks it); use none or "
                                   "ampere_plus")
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY


def _apply_dla(trt, builder, network, config, core: int) -> None:
    # DLA (Jetson AGX Orin) is supported here on TensorRT 10 only: JetPack 6 ships 10.3, and
    # TensorRT 11.0-11.3 had no DLA at all (docs.nvidia.com/deeplearning/tensorrt/11.3.0/api/
    # migration/tensorrt-10x-to-11x-jetson.html).
    if trt_major() >= 11:
        raise EngineBuildError("--dla-core is supported with TensorRT 10 on Jetson (JetPack 6) "
                               "only; build without --dla-core on TensorRT 11")
    if builder.num_DLA_cores == 0:
        raise EngineBuildError("--dla-core: this device has no DLA (only Jetson AGX Orin / "
                               "Xavier do); build without --dla-core")
    if core >= builder.num_DLA_cores:
        raise EngineBuildError(f"--dla-core {core}: this device has {builder.num_DLA_cores} DLA "
                               f"cores (0..{builder.num_DLA_cores - 1})")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    # DLA runs FP16/INT8 layers only; the rest must fall back to the GPU (inspect shows where).
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    able = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        able += bool(config.can_run_on_DLA(layer))
    if able == 0:
        raise EngineBuildError("--dla-core: no layer of this network can run on DLA (it runs "
                               "FP16 and INT8 convolutions, pooling, activations...: TensorRT's "
                               "DLA Supported Layers); export FP16 or INT8, or build without "
                               "--dla-core")


_DLA_MARK = re.compile(r"\bDLA\b|DlaLayer| (to|from) nvm\b", re.IGNORECASE)


def dla_layer_names(info: dict) -> list[str]:
    """Names of the layers the engine inspector's JSON places on DLA.

    TensorRT does not document how the inspector names DLA work; what NVIDIA's own output shows is
    a DLA subgraph as one "{ForeignNode[...]}" layer ("[DlaLayer]" in the build log, NVIDIA-AI-IOT/
    jetson_dla_tutorial) with "<tensor> to nvm" / "<tensor> from nvm" copies into and out of DLA
    memory around it (layer profile of an Orin DLA engine, NVIDIA/TensorRT issue 3143). A layer
    counts when its type or name says DLA or it is such a copy. Unconfirmed on a Jetson so far.
    """
    names = []
    for entry in info.get("Layers", []):
        name = entry if isinstance(entry, str) else str(entry.get("Name", ""))
        kind = "" if isinstance(entry, str) else str(entry.get("LayerType", ""))
        if _DLA_MARK.search(kind) or _DLA_MARK.search(name):
            names.append(name)
    return names


def _engine_layers(trt, runtime_engine) -> dict:
    """The inspector's JSON of a deserialized (runtime, engine)."""
    _, engine = runtime_engine
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    del inspector
    return info


def _check_on_dla(trt, plan, build: dict, out: str) -> int:
    """With GPU fallback TensorRT builds without complaint when nothing runs on DLA (TensorRT
    docs, DLA GPU Fallback Mode: "layers that cannot run on DLA silently fall back to GPU ...
    Verify DLA layer assignments in the engine inspector output"): refuse such a plan."""
    from toolkit.runtime.trt_runner import deserialize

    runtime_engine = deserialize(plan, build, out)
    names = dla_layer_names(_engine_layers(trt, runtime_engine))
    del runtime_engine  # engine before runtime
    if not names:
        raise EngineBuildError(f"--dla-core {build['dla_core']}: TensorRT placed no layer on DLA "
                               f"(the inspector shows every layer on the GPU), so the plan would "
                               f"be a GPU engine; export FP16 or INT8 with DLA-supported layers, "
                               f"or build without --dla-core")
    return len(names)


def _set_profile(builder, config, shapes: dict) -> None:
    """One optimization profile; TensorRT's refusals become build errors naming input and shapes.
    set_shape raises on an inconsistency (RuntimeError in the binding's source, python/src/infer/
    pyCore.cpp; ValueError in its docstring) and add_optimization_profile returns -1 for an
    invalid profile (its docstring)."""
    def shown(name):
        s = shapes[name]
        return f"{name!r} min {tuple(s['min'])} opt {tuple(s['opt'])} max {tuple(s['max'])}"

    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        try:
            profile.set_shape(name, s["min"], s["opt"], s["max"])
        except (RuntimeError, ValueError) as e:
            raise EngineBuildError(f"TensorRT refused the profile of input {shown(name)}: {e}; "
                                   f"fix the --min/--opt/--max batch and sequence options, or "
                                   f"re-export the model") from e
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError("TensorRT refused the optimization profile as invalid (" +
                               "; ".join(shown(n) for n in shapes) + "); fix the --min/--opt/"
                               "--max batch and sequence options")


def build_engine(cfg: BuildConfig, log=print) -> Path:
    """Parse the ONNX model, build a plan for this GPU, write it and its sidecar atomically."""
    _validate(cfg)
    meta = read_onnx_metadata(cfg.onnx)
    profile_ranges(cfg.profile, meta.max_length)  # a bad range fails here, before TensorRT
    _check_dla_profile(cfg, meta.max_length)
    trt = import_tensorrt()
    check_supported(trt.__version__)
    gpu = device_info()  # a clear error without a GPU, before TensorRT tries

    logger = trt_logger(cfg.verbose)
    # Plugins registered before parsing, so a node the parser maps to a standard plugin finds it
    # (Polygraphy's NetworkFromOnnxPath does the same).
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so weights stored next to the model are found.
    if not parser.parse_from_file(str(cfg.onnx)):
        errors = [format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {cfg.onnx}: "
                               + "; ".join(errors or ["no error reported"]))

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    shapes = profile_shapes({tensor.name: tuple(tensor.shape) for tensor in inputs}, cfg.profile,
                            meta.image_size, meta.max_length)

    config = builder.create_builder_config()
    if cfg.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.opt_level
    # DETAILED keeps per-layer precision and tactics in the plan for the engine inspector (the
    # runner lowers its contexts' NVTX verbosity again: TensorRTRunner._load).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    _set_profile(builder, config, shapes)
    if cfg.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if cfg.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    _apply_hardware_compat(trt, config, cfg.hardware_compat, gpu)
    if cfg.dla_core is not None:
        _apply_dla(trt, builder, network, config, cfg.dla_core)

    # Timing cache: reuse the measurements of earlier builds (NVIDIA's refactored sample
    # 1_run_onnx_with_tensorrt: create_timing_cache(bytes) + set_timing_cache(cache, ...)).
    cache_path = Path(cfg.timing_cache) if cfg.timing_cache else None
    cache_reused = bool(cache_path and cache_path.is_file())
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_reused else b"")
    if cache is None or not config.set_timing_cache(cache, False):
        # Unreadable, or recorded on another device: start afresh rather than fail the build.
        log(f"timing cache {cache_path} is unreadable or from another GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        cache_reused = False

    log(f"building with TensorRT {trt.__version__} on {gpu.name} (this takes a while)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not build an engine from "
                               f"{cfg.onnx}; rerun with --trt-verbose to see TensorRT's log")

    build = {"workspace_mb": cfg.workspace_mb, "opt_level": cfg.opt_level,
             "version_compatible": cfg.version_compatible,
             "hardware_compat": cfg.hardware_compat.value, "dla_core": cfg.dla_core,
             "strongly_typed": True, "timing_cache": str(cache_path) if cache_path else None,
             "timing_cache_reused": cache_reused, "sparse_weights": cfg.sparse_weights}
    if cfg.dla_core is not None:  # before anything is written: a GPU-only plan is refused
        build["dla_layers"] = _check_on_dla(trt, plan, build, cfg.out)

    out = Path(cfg.out)
    write_bytes(out, memoryview(plan))  # IHostMemory has the buffer protocol
    if cache_path is not None:
        write_bytes(cache_path, memoryview(cache.serialize()))

    write_sidecar(out, source_onnx=cfg.onnx, tensorrt_version=trt.__version__, gpu=gpu,
                  metadata=meta, build=build, profiles=[shapes],
                  inputs=[_io(trt, tensor) for tensor in inputs],
                  outputs=[_io(trt, tensor) for tensor in outputs],
                  build_platform=host_platform(gpu))
    return out


# ------------------------------------------------------------------ inspect


_DTYPE_WORD = re.compile(r"\b(FP32|FP16|BF16|FP8|FP4|U?INT(4|8|32|64)|BOOL|FLOAT|HALF)\b",
                         re.IGNORECASE)


def layer_precisions(info: dict) -> list[dict]:
    """Name, type and output precision of each layer from the inspector's JSON.

    TensorRT 10 writes each output's format and type as one "Format/Datatype" string ("Row major
    linear FP32"); TensorRT 11 splits it (docs.nvidia.com/deeplearning/tensorrt/11.3.0/api/
    migration/tensorrt-10x-to-11x-IEngineInspector.html). Without DETAILED verbosity layers are bare
    names, and the precision is unknown.
    """
    rows = []
    for entry in info.get("Layers", []):
        if isinstance(entry, str):
            rows.append({"name": entry, "type": "?", "precision": "?"})
            continue
        types = []
        for out in entry.get("Outputs", []):
            dtype = out.get("DataType") or out.get("Datatype")
            if dtype is None and "Format/Datatype" in out:
                # e.g. "Row major linear FP32", "Channel major FP16 format where channel % 8 == 0"
                found = _DTYPE_WORD.search(str(out["Format/Datatype"]))
                dtype = found.group(0) if found else str(out["Format/Datatype"])
            if dtype and dtype not in types:
                types.append(str(dtype))
        rows.append({"name": entry.get("Name", "?"), "type": entry.get("LayerType", "?"),
                     "precision": ",".join(types) or "?"})
    return rows


def inspect_engine(path: str | os.PathLike) -> dict:
    """The plan's sidecar and, where TensorRT and a compatible GPU are here, its layers.

    Returns {"sidecar": ..., "layers": [...] or None, "note": why there are no layers}.
    """
    sidecar = read_sidecar(path)
    check_plan_file(path, sidecar)
    sparsity = plan_sparsity(sidecar)
    try:
        trt = import_tensorrt()
        gpu = device_info()
    except ToolkitError as e:
        return {"sidecar": sidecar, "layers": None, "note": f"no layer information: {e}",
                "sparsity": sparsity}
    mismatch = check_compatibility(sidecar, trt.__version__, gpu)
    if mismatch is not None:
        return {"sidecar": sidecar, "layers": None, "note": f"no layer information: {mismatch}",
                "sparsity": sparsity}

    from toolkit.runtime.trt_runner import load_engine

    runtime_engine = load_engine(path, sidecar)
    info = _engine_layers(trt, runtime_engine)
    del runtime_engine  # the inspector went first, then engine and runtime, TensorRT's order
    return {"sidecar": sidecar, "layers": layer_precisions(info), "note": None,
            "sparsity": sparsity}


def plan_sparsity(sidecar: dict, pattern: str = "2:4") -> dict:
    """What can be said of a plan's sparsity: TensorRT's inspector does not give weights, so the
    sidecar's build flag, and the 2:4 conformance of the source ONNX when it is still there with
    the hash the plan was built from."""
    from toolkit.artifacts import sha256
    from toolkit.sparsity import onnx_conformance, parse_pattern

    out = {"sparse_weights": bool(sidecar.get("build", {}).get("sparse_weights", False)),
           "source_conformance": None, "note": None}
    source = Path(sidecar.get("source_onnx", ""))
    if not source.is_file():
        out["note"] = f"source ONNX {source} is not here: its weights cannot be checked"
    elif sha256(source) != sidecar.get("source_onnx_sha256"):
        out["note"] = f"{source} changed since the build: its weights are not the plan's"
    else:
        report = onnx_conformance(source, parse_pattern(pattern))
        out["source_conformance"] = {"pattern": report["pattern"],
                                     "conforming_share": report["conforming_share"],
                                     "layers": len(report["layers"])}
    return out


def format_inspection(result: dict) -> str:
    """Human-readable text of inspect_engine's result (the CLI prints it)."""
    s = result["sidecar"]
    lines = [f"plan: {s['plan']} ({s['plan_bytes']} bytes, sha256 {s['plan_sha256'][:12]})",
             f"built with TensorRT {s['tensorrt_version']} on {s['gpu']['name']} "
             f"(compute capability {s['gpu']['compute_capability']})",
             f"precision (from the graph): {s['precision']}",
             f"source ONNX: {s['source_onnx']} (sha256 {s['source_onnx_sha256'][:12]})",
             "build: " + ", ".join(f"{k}={v}" for k, v in s.get("build", {}).items())]
    for i, prof in enumerate(s["profiles"]):
        lines.append(f"profile {i}:")
        for name, sh in prof.items():
            lines.append(f"  {name}: min {tuple(sh['min'])} opt {tuple(sh['opt'])} "
                         f"max {tuple(sh['max'])}")
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for t in s[kind]:
            lines.append(f"  {t['name']}: {t['dtype']} {tuple(t['shape'])}")
    model = s["model"]
    lines.append(f"model: {len(model.get('labels', []))} labels, image {model.get('image_size')} "
                 f"px, max_length {model.get('max_length')}, toolkit {model.get('toolkit_version')}")
    sparsity = result.get("sparsity")
    if sparsity is not None:
        conf = sparsity["source_conformance"]
        lines.append(f"sparse weights (builder flag): {'on' if sparsity['sparse_weights'] else 'off'}"
                     + (f"; source ONNX {conf['pattern']} conformance "
                        f"{conf['conforming_share']:.2%} over {conf['layers']} layers" if conf
                        else f"; {sparsity['note']}"))
    if result["layers"] is None:
        lines.append(result["note"])
    else:
        lines.append(f"layers ({len(result['layers'])}):")
        for row in result["layers"]:
            lines.append(f"  {row['precision']:<10} {row['type']:<20} {row['name']}")
    return "\n".join(lines)
