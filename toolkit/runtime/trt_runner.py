"""The TensorRT backend: a .plan run through the one Runner interface (dict in, dict out).

Activation checks, in order, everything that can be known before TensorRT touches the plan: the
sidecar is there and well formed, the plan's bytes are the ones it describes (size, SHA-256: a
truncated or foreign file is refused; the bytes checked are the bytes deserialized), TensorRT and a
GPU are present, and the plan was built for this TensorRT version, GPU and platform. Only then is
it deserialized (standard plugins registered first; a DLA plan on its DLA core). Each call sets
the calling thread's device, checks the input shapes against the sidecar's profile (a clear error,
not TensorRT's), sets them, points every I/O tensor at a device buffer (reused across calls, grown
when shapes grow), copies through pinned host buffers and runs `execute_async_v3` on a non-default
CUDA stream, as NVIDIA's samples/python/common_runtime.py does. Token inputs stay int64 (TensorRT
keeps ONNX INT64 inputs as INT64).

As in toolkit/engines/tensorrt.py, `engine`, `context` and `runtime` always hold the TensorRT
object of that name (plain or as `self.`), so tests/engines/test_trt_api.py can check the calls.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from toolkit.runtime import cuda_mem
from toolkit.runtime.base import Runner, RunnerError, TensorSpec
from toolkit.runtime.trt_plan import (PlanError, ShapeOutsideProfile, check_compatibility,
                                      check_shapes, import_tensorrt, read_plan, read_sidecar,
                                      trt_logger)


def deserialize(data: bytes, build: dict, what: str):
    """(runtime, engine) from plan bytes already checked against their sidecar; `build` is the
    sidecar's build record. Keep the runtime alive as long as the engine (TensorRT requires
    engines to be destroyed before the runtime that made them)."""
    trt = import_tensorrt()
    logger = trt_logger()
    # The standard plugins must be registered before a plan that uses one is deserialized
    # (Polygraphy's EngineFromBytes/EngineFromPath call this first, every time).
    trt.init_libnvinfer_plugins(logger, "")
    runtime = trt.Runtime(logger)
    if build.get("version_compatible"):
        # A version-compatible plan embeds the lean runtime, host code TensorRT runs only when
        # allowed (docs: engine-compatibility.html, "Version Compatibility").
        runtime.engine_host_code_allowed = True
    core = build.get("dla_core")
    if core is not None:
        # The runtime must know the DLA core before deserializing a DLA plan, as trtexec's
        # loader does (samples/common/sampleEngines.cpp: setDLACore before deserializeCudaEngine).
        if core >= runtime.num_DLA_cores:
            raise PlanError(f"{what} was built for DLA core {core}; this device has "
                            f"{runtime.num_DLA_cores} DLA cores: run it on the Jetson it was "
                            f"built for, or rebuild without --dla-core")
        runtime.DLA_core = core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        # deserialize_cuda_engine returns None rather than raising; TensorRT's own log (above,
        # on stderr) has its reason.
        raise PlanError(f"TensorRT {trt.__version__} could not deserialize {what} although its "
                        f"sidecar matches (deserialize_cuda_engine returned None; TensorRT's log "
                        f"above says why: usually a plan from another TensorRT build or device, "
                        f"a missing plugin, or too little GPU memory); rebuild it on this machine "
                        f"with toolkit build")
    return runtime, engine


def load_engine(plan: str | os.PathLike, sidecar: dict):
    """Read a plan, check its bytes against the sidecar's size and SHA-256 (before TensorRT
    sees them) and deserialize those same bytes: (runtime, engine)."""
    data = read_plan(plan, sidecar)
    return deserialize(data, sidecar.get("build", {}), str(plan))


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, plan: str | os.PathLike, device: int = 0, cuda_graph: bool = False):
        """cuda_graph: replay TensorRT's launch as a CUDA graph while the input shapes stay the
        same (recaptured when they change); for fixed-shape serving, where launch overhead
        matters. Falls back to plain launches, with a warning, if the engine cannot be captured."""
        super().__init__()
        self.plan, self.device, self.cuda_graph = Path(plan), device, cuda_graph
        self._graph: cuda_mem.CudaGraph | None = None
        self._graph_key = None
        self.sidecar = None
        self.runtime = self.engine = self.context = self.stream = None
        self._specs: dict[str, TensorSpec] = {}
        self._outputs: dict[str, np.dtype] = {}
        self._device_buffers: dict[str, cuda_mem.DeviceBuffer] = {}
        self._host_buffers: dict[str, cuda_mem.PinnedBuffer] = {}

    @property
    def shape_profile(self) -> dict:
        return self.sidecar["profiles"][0]

    def _activate(self) -> None:
        try:
            self._load()
        except BaseException:
            self._deactivate()  # free what was allocated before the failure
            raise

    def _load(self) -> None:
        self.sidecar = read_sidecar(self.plan)
        data = read_plan(self.plan, self.sidecar)  # size and SHA-256, before TensorRT
        trt = import_tensorrt()
        gpu = cuda_mem.device_info(self.device)
        cuda_mem.use_device(self.device)
        mismatch = check_compatibility(self.sidecar, trt.__version__, gpu)
        if mismatch is not None:
            raise mismatch
        self.runtime, self.engine = deserialize(data, self.sidecar.get("build", {}),
                                                str(self.plan))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise PlanError(f"TensorRT could not create an execution context for {self.plan} "
                            f"(out of GPU memory?)")
        # The plan is built with DETAILED profiling verbosity for the inspector, and a context
        # defaults to it, which "will generally increase latency in enqueueV3()"
        # (IExecutionContext.nvtx_verbosity, TensorRT's Python API docs): names only at run time.
        self.context.nvtx_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        self.stream = cuda_mem.Stream()
        self._specs, self._outputs = {}, {}
        for i in range(self.engine.num_io_tensors):
            tensor_name = self.engine.get_tensor_name(i)
            try:
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(tensor_name)))
            except TypeError:
                raise PlanError(f"tensor {tensor_name!r} has type "
                                f"{self.engine.get_tensor_dtype(tensor_name)}, which numpy "
                                f"cannot hold; re-export with float32/float16 I/O") from None
            if self.engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT:
                shape = tuple(None if d < 0 else int(d)
                              for d in self.engine.get_tensor_shape(tensor_name))
                self._specs[tensor_name] = TensorSpec(tensor_name, dtype, shape)
            else:
                self._outputs[tensor_name] = dtype
        if set(self._specs) != set(self.shape_profile):
            raise PlanError(f"{self.plan}: the engine's inputs {sorted(self._specs)} are not the "
                            f"sidecar's {sorted(self.shape_profile)}; rebuild with toolkit build")
        self._allocate_limits()

    def _allocate_limits(self) -> None:
        """Buffers grow up to the bytes each tensor needs at the profile's max shapes."""
        prof = self.shape_profile
        limits = {}
        for tensor_name, spec in self._specs.items():
            limits[tensor_name] = cuda_mem.nbytes(prof[tensor_name]["max"], spec.dtype)
            self._set_shape(tensor_name, tuple(prof[tensor_name]["max"]))
        for tensor_name, dtype in self._outputs.items():
            limits[tensor_name] = cuda_mem.nbytes(
                tuple(self.context.get_tensor_shape(tensor_name)), dtype)
        self._device_buffers = {n: cuda_mem.DeviceBuffer(v) for n, v in limits.items()}
        self._host_buffers = {n: cuda_mem.PinnedBuffer(v) for n, v in limits.items()}

    def _set_shape(self, tensor_name: str, shape: tuple) -> None:
        if not self.context.set_input_shape(tensor_name, shape):
            raise ShapeOutsideProfile(f"TensorRT refused shape {shape} for input "
                                      f"{tensor_name!r}; the profile is "
                                      f"{self.shape_profile.get(tensor_name)}")

    def _deactivate(self) -> None:
        if self.stream is not None:
            cuda_mem.use_device(self.device)  # the closing thread may not be the opening one
            self.stream.synchronize()
        if self._graph is not None:
            self._graph.free()
            self._graph, self._graph_key = None, None
        for buf in [*self._device_buffers.values(), *self._host_buffers.values()]:
            buf.free()
        self._device_buffers, self._host_buffers = {}, {}
        if self.stream is not None:
            self.stream.free()
        # Context before engine before runtime, the order TensorRT destroys them in.
        self.context = None
        self.engine = None
        self.runtime = self.stream = None

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RunnerError(f"TensorRT failed to enqueue {self.plan}; see TensorRT's log above")

    def _enqueue_captured(self) -> bool:
        # While capturing, a false return is a capture failure, not a run failure: CudaGraph
        # ends the capture and clears the error (trtexec's order, see CudaGraph.capture).
        return self.context.execute_async_v3(self.stream.handle)

    def _launch_graph(self, shapes: tuple) -> None:
        # A graph replays fixed kernels on fixed addresses: reuse it only for the same shapes
        # and buffers, else launch normally once (TensorRT updates its shape-dependent state
        # outside capture, as the TensorRT developer guide's "CUDA Graphs" section asks) and
        # capture anew.
        key = (shapes, tuple(b.ptr for b in self._device_buffers.values()))
        if self._graph is not None and key == self._graph_key:
            self._graph.launch(self.stream)
            return
        if self._graph is not None:
            self._graph.free()
            self._graph, self._graph_key = None, None
        self._enqueue()
        # This call's results come from the launch above; capture only after it has finished,
        # so that no initialization work of TensorRT's first launch is recorded (trtexec:
        # sampleInference.cpp, "Avoid capturing initialization calls ...", then synchronize).
        self.stream.synchronize()
        try:
            self._graph = cuda_mem.CudaGraph.capture(self.stream, self._enqueue_captured)
            self._graph_key = key
        except cuda_mem.CudaError as e:
            warnings.warn(f"{self.plan}: {e}; running without CUDA graphs")
            self.cuda_graph = False

    def input_specs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_shapes(self.shape_profile, {n: x.shape for n, x in feed.items()})
        # The current device is per host thread and a server calls from threads of its own: set
        # it on every call, before any copy or launch (cuda_mem.use_device).
        cuda_mem.use_device(self.device)
        for tensor_name, x in feed.items():
            self._set_shape(tensor_name, x.shape)
            host, dev = self._host_buffers[tensor_name], self._device_buffers[tensor_name]
            host.reserve(x.nbytes)
            dev.reserve(x.nbytes)
            host.view(x.shape, x.dtype)[...] = x
            cuda_mem.copy_to_device(dev, host, x.nbytes, self.stream)
            self.context.set_tensor_address(tensor_name, dev.ptr)
        shapes = {}
        for tensor_name, dtype in self._outputs.items():
            shapes[tensor_name] = tuple(self.context.get_tensor_shape(tensor_name))
            size = cuda_mem.nbytes(shapes[tensor_name], dtype)
            self._host_buffers[tensor_name].reserve(size)
            self._device_buffers[tensor_name].reserve(size)
            self.context.set_tensor_address(tensor_name, self._device_buffers[tensor_name].ptr)
        if self.cuda_graph:
            self._launch_graph(tuple((n, x.shape) for n, x in feed.items()))
        else:
            self._enqueue()
        for tensor_name, dtype in self._outputs.items():
            cuda_mem.copy_to_host(self._host_buffers[tensor_name],
                                  self._device_buffers[tensor_name],
                                  cuda_mem.nbytes(shapes[tensor_name], dtype), self.stream)
        self.stream.synchronize()
        # Copies: the pinned buffers are overwritten by the next call.
        return {n: self._host_buffers[n].view(shapes[n], dtype).copy()
                for n, dtype in self._outputs.items()}
