"""Stand-ins for `tensorrt` and `cuda.bindings.runtime`, to test the code around their calls.

They implement only what the toolkit calls, with the real names (test_trt_api.py checks those
names against the real bindings), and they refuse what the real APIs refuse, so that a test passes
only when the code would also work on a GPU:

* CUDA work is asynchronous: copies, engine launches and graph launches are queued on their stream
  and run, in order, only at cudaStreamSynchronize (reading a result early reads stale memory).
* The current device is per host thread (cudaSetDevice; a new thread starts on device 0), and a
  kernel launch into a stream of another device fails ("A kernel launch will fail if it is issued
  to a stream that is not associated to the current device", CUDA C++ Programming Guide, Stream
  and Event Behavior); a copy succeeds.
* Graph capture records instead of running; a failed capture leaves a sticky error that only
  cudaGetLastError clears, and a graph that must still be destroyed (`graphs` lists live ones).
* The engine refuses to enqueue unless every I/O tensor has an address and every input a shape
  (TensorRT's enqueueV3 returns false then); a context starts at the engine's build-time NVTX
  verbosity (DETAILED here).
* A plan that uses a standard plugin deserializes only after init_libnvinfer_plugins; a DLA plan
  only on a runtime with DLA_core set; the builder places layers on DLA only with a static profile
  (DLA has no dynamic shapes) and otherwise silently falls back to the GPU, as GPU_FALLBACK does.
* IOptimizationProfile.set_shape raises RuntimeError on inconsistent shapes (the binding's
  PY_ASSERT_RUNTIME_ERROR) and add_optimization_profile returns -1 for an invalid profile.

"Device" memory is host memory here, so copies are real memmoves and the fake engine computes real
outputs from what the toolkit put in its buffers.
"""

from __future__ import annotations

import ctypes
import enum
import json
import threading
import types

import numpy as np


class FakeCudart:
    """cuda.bindings.runtime: (err, result...) tuples, errors as cudaError_t members."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorMemoryAllocation = 2
        cudaErrorInsufficientDriver = 35
        cudaErrorNoDevice = 100
        cudaErrorInvalidDevice = 101
        cudaErrorInvalidResourceHandle = 400
        cudaErrorStreamCaptureUnsupported = 900
        cudaErrorStreamCaptureInvalidated = 901

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    class cudaGraph_t(int):
        """A graph handle; 0 is the null graph."""

    def __init__(self, devices: int = 1, error: "FakeCudart.cudaError_t | None" = None,
                 cc: tuple[int, int] = (9, 0), name: str = "NVIDIA H200",
                 integrated: bool = False, total_memory: int = 141 << 30):
        self.devices, self.error, self.cc, self.gpu_name = devices, error, cc, name
        self.integrated, self.total_memory = integrated, total_memory
        self.live: dict[int, ctypes.Array] = {}  # ptr -> backing storage
        self.device_of: dict[int, int] = {}  # cudaMalloc'd ptr -> its device
        self.calls: list[str] = []
        self.queues: dict[int, list] = {}  # stream handle -> pending work, run at synchronize
        self.stream_device: dict[int, int] = {}
        self.capturing: dict[int, list] = {}  # stream handle -> work recorded so far
        self.invalidate_capture = False  # the next capture ends invalidated (no graph)
        self.graphs: dict[int, list] = {}  # live (not yet destroyed) graphs -> their work
        self.execs: dict[int, list] = {}  # instantiated graphs -> their work
        self.last_error = None  # sticky error, returned and cleared by cudaGetLastError
        self.began_capture_on_busy_stream = False
        self._thread = threading.local()
        self._next = 1000

    def _ok(self, *rest):
        return (self.cudaError_t.cudaSuccess, *rest)

    def _handle(self) -> int:
        self._next += 1
        return self._next

    @property
    def streams(self) -> int:
        return len(self.queues)

    @property
    def current_device(self) -> int:
        return getattr(self._thread, "device", 0)

    # ---------------------------------------------------------------- devices

    def cudaGetErrorName(self, err):
        return self._ok(self.cudaError_t(err).name.encode())

    def cudaGetDeviceCount(self):
        if self.error is not None:
            return (self.error, None)
        return self._ok(self.devices)

    def cudaGetDeviceProperties(self, device):
        props = types.SimpleNamespace(name=self.gpu_name.encode() + b"\0" * 8, major=self.cc[0],
                                      minor=self.cc[1], integrated=int(self.integrated))
        return self._ok(props)

    def cudaSetDevice(self, device):
        self.calls.append(f"cudaSetDevice({device})")
        if not 0 <= device < self.devices:
            return (self.cudaError_t.cudaErrorInvalidDevice,)
        self._thread.device = device
        return self._ok()

    def cudaGetDevice(self):
        return self._ok(self.current_device)

    def cudaGetLastError(self):
        err, self.last_error = self.last_error or self.cudaError_t.cudaSuccess, None
        return (err,)

    def cudaMemGetInfo(self):
        used = sum(len(b) for p, b in self.live.items() if p in self.device_of)
        return self._ok(self.total_memory - used, self.total_memory)

    # ---------------------------------------------------------------- memory

    def _alloc(self, kind, n, device=None):
        self.calls.append(f"{kind}({n})")
        buf = (ctypes.c_byte * n)()
        ptr = ctypes.addressof(buf)
        self.live[ptr] = buf
        if device is not None:
            self.device_of[ptr] = device
        return self._ok(ptr)

    def cudaMalloc(self, n):
        return self._alloc("cudaMalloc", n, self.current_device)

    def cudaMallocHost(self, n):
        return self._alloc("cudaMallocHost", n)

    def _free(self, kind, ptr):
        self.calls.append(kind)
        if ptr not in self.live:
            return (self.cudaError_t.cudaErrorMemoryAllocation,)
        del self.live[ptr]
        self.device_of.pop(ptr, None)
        return self._ok()

    def cudaFree(self, ptr):
        return self._free("cudaFree", ptr)

    def cudaFreeHost(self, ptr):
        return self._free("cudaFreeHost", ptr)

    # ---------------------------------------------------------------- streams and work

    def cudaStreamCreate(self):
        handle = self._handle()
        self.queues[handle] = []
        self.stream_device[handle] = self.current_device
        return self._ok(handle)

    def _submit(self, stream, work) -> None:
        if stream in self.capturing:
            self.capturing[stream].append(work)
        else:
            self.queues[stream].append(work)

    def launch(self, stream: int, work) -> bool:
        """A kernel launch (what an engine's enqueue does): False, as CUDA fails it, into a stream
        of another device than the calling thread's current one, or into an unknown stream."""
        if stream not in self.queues or self.stream_device[stream] != self.current_device:
            self.last_error = self.cudaError_t.cudaErrorInvalidResourceHandle
            return False
        self._submit(stream, work)
        return True

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.calls.append(f"memcpy{int(kind)}({count})")
        if stream not in self.queues:
            return (self.cudaError_t.cudaErrorInvalidResourceHandle,)
        self._submit(stream, lambda: ctypes.memmove(dst, src, count))
        return self._ok()

    def cudaStreamSynchronize(self, stream):
        self.calls.append("cudaStreamSynchronize")
        if stream not in self.queues:
            return (self.cudaError_t.cudaErrorInvalidResourceHandle,)
        pending, self.queues[stream] = self.queues[stream], []
        for work in pending:
            work()
        return self._ok()

    def cudaStreamDestroy(self, stream):
        self.cudaStreamSynchronize(stream)  # the real one waits for the stream's work, too
        del self.queues[stream]
        del self.stream_device[stream]
        return self._ok()

    # ---------------------------------------------------------------- CUDA graphs

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append("cudaStreamBeginCapture")
        if stream in self.capturing or stream not in self.queues:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        self.began_capture_on_busy_stream |= bool(self.queues[stream])
        self.capturing[stream] = []
        return self._ok()

    def fail_capture(self) -> None:
        """What an uncapturable operation does: the capture is invalidated, an error sticks."""
        self.last_error = self.cudaError_t.cudaErrorStreamCaptureUnsupported
        self.invalidate_capture = True

    def cudaStreamEndCapture(self, stream):
        self.calls.append("cudaStreamEndCapture")
        if stream not in self.capturing:
            return (self.cudaError_t.cudaErrorInvalidValue, None)
        work = self.capturing.pop(stream)
        if self.invalidate_capture:
            self.invalidate_capture = False
            self.last_error = self.cudaError_t.cudaErrorStreamCaptureInvalidated
            return (self.cudaError_t.cudaErrorStreamCaptureInvalidated, self.cudaGraph_t(0))
        graph = self.cudaGraph_t(self._handle())
        self.graphs[graph] = work
        return self._ok(graph)

    def cudaGraphInstantiate(self, graph, flags):
        if graph not in self.graphs:
            return (self.cudaError_t.cudaErrorInvalidValue, None)
        handle = self._handle()
        self.execs[handle] = list(self.graphs[graph])
        return self._ok(handle)

    def cudaGraphDestroy(self, graph):
        if self.graphs.pop(graph, None) is None:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return self._ok()

    def cudaGraphLaunch(self, exec_handle, stream):
        self.calls.append("cudaGraphLaunch")
        if exec_handle not in self.execs:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        work = self.execs[exec_handle]
        if not self.launch(stream, lambda: [w() for w in work]):
            return (self.cudaError_t.cudaErrorInvalidResourceHandle,)
        return self._ok()

    def cudaGraphExecDestroy(self, exec_handle):
        self.calls.append("cudaGraphExecDestroy")
        if exec_handle not in self.execs:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        del self.execs[exec_handle]
        return self._ok()


def read(ptr: int, shape, dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_byte * max(n, 1)).from_address(ptr)
    return np.frombuffer(raw, dtype=np.uint8, count=n).view(dtype).reshape(shape).copy()


# A fake plan: this prefix, then a JSON description (what the fake engine and inspector show).
PLAN_MAGIC = b"FAKEPLAN"


def fake_plan_bytes(layers: list | None = None, plugins: bool = False,
                    dla_core: int | None = None) -> bytes:
    info = {"layers": layers or [{"Name": "conv1 + relu1", "LayerType": "CaskConvolution"}],
            "plugins": plugins, "dla_core": dla_core}
    return PLAN_MAGIC + json.dumps(info).encode()


def make_fake_trt(version: str = "10.3.0", num_classes: int = 3, io_float=np.float32,
                  cudart: FakeCudart | None = None, dla_cores: int = 0):
    """A `tensorrt` module whose engine computes logits[b, k] = k + sum(image[b]) +
    sum(input_ids[b] * attention_mask[b]) from whatever the toolkit put at the tensor addresses,
    on `cudart`'s streams (a FakeCudart is made when none is given)."""
    cudart = FakeCudart() if cudart is None else cudart
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.cudart = cudart
    trt.plugins_initialized = False

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = np.float32
        HALF = np.float16
        INT64 = np.int64
        BF16 = "bf16"

    class ProfilingVerbosity(enum.Enum):
        NONE = 0
        LAYER_NAMES_ONLY = 1
        DETAILED = 2

    def nptype(dt):
        if dt is DataType.BF16:
            raise TypeError("no numpy type")
        return dt.value

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, severity):
            self.min_severity = severity

    def init_libnvinfer_plugins(logger, namespace):
        assert isinstance(logger, Logger) and namespace == ""
        trt.plugins_initialized = True
        return True

    dtypes = {"image": {np.float32: DataType.FLOAT, np.float16: DataType.HALF}[io_float],
              "input_ids": DataType.INT64, "attention_mask": DataType.INT64,
              "logits": DataType.FLOAT}
    names = ["image", "input_ids", "attention_mask", "logits"]
    shapes = {"image": (-1, 3, 8, 8), "input_ids": (-1, -1), "attention_mask": (-1, -1),
              "logits": (-1, num_classes)}

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.shapes, self.addresses, self.log = {}, {}, []
            self.nvtx_verbosity = ProfilingVerbosity.DETAILED  # the build's verbosity
            self.refuse_capture = False  # an engine with work CUDA graphs cannot capture
            self.computed = 0

        def set_input_shape(self, name, shape):
            self.log.append(("set_input_shape", name, tuple(shape)))
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            assert name == "logits"
            return (self.shapes["image"][0], num_classes)

        def set_tensor_address(self, name, ptr):
            assert isinstance(ptr, int) and ptr != 0
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            self.log.append(("execute_async_v3",))
            missing = [n for n in names if n not in self.addresses]
            unset = [n for n in names[:3] if n not in self.shapes]
            if missing or unset:
                return False  # enqueueV3: "address is not set" / input shape not specified
            if self.refuse_capture and stream_handle in cudart.capturing:
                cudart.fail_capture()
                return False
            addresses, current = dict(self.addresses), dict(self.shapes)
            return cudart.launch(stream_handle, lambda: self._compute(addresses, current))

        def _compute(self, addresses, shapes_now):
            self.computed += 1
            img = read(addresses["image"], shapes_now["image"], dtypes["image"].value)
            ids = read(addresses["input_ids"], shapes_now["input_ids"], np.int64)
            mask = read(addresses["attention_mask"], shapes_now["attention_mask"], np.int64)
            base = img.reshape(len(img), -1).astype(np.float32).sum(1) + (ids * mask).sum(1)
            out = base[:, None] + np.arange(num_classes, dtype=np.float32)[None]
            ctypes.memmove(addresses["logits"], out.astype(np.float32).tobytes(), out.nbytes)

    class Inspector:
        def __init__(self, info):
            self.info = info

        def get_engine_information(self, fmt):
            assert fmt is LayerInformationFormat.JSON
            return json.dumps({"Layers": self.info["layers"]})

    class Engine:
        def __init__(self, info):
            self.info = info
            self.contexts = []

        @property
        def num_io_tensors(self):
            return len(names)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.OUTPUT if name == "logits" else TensorIOMode.INPUT

        def get_tensor_dtype(self, name):
            return dtypes[name]

        def get_tensor_shape(self, name):
            return shapes[name]

        def create_execution_context(self):
            self.contexts.append(Context(self))
            return self.contexts[-1]

        def create_engine_inspector(self):
            return Inspector(self.info)

    class Runtime:
        instances = []

        def __init__(self, logger):
            self.engine_host_code_allowed = False
            self.num_DLA_cores = dla_cores
            self.DLA_core = -1
            self.deserialized = []
            Runtime.instances.append(self)

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            self.deserialized.append(data)
            if not data.startswith(PLAN_MAGIC):
                return None  # "Engine deserialization failed", as TensorRT logs it
            try:
                info = json.loads(data[len(PLAN_MAGIC):])
            except ValueError:  # bytes written by a test: a plain GPU plan
                info = json.loads(fake_plan_bytes()[len(PLAN_MAGIC):])
            if info.get("plugins") and not trt.plugins_initialized:
                return None  # "getPluginCreator could not find plugin"
            if info.get("dla_core") is not None and self.DLA_core != info["dla_core"]:
                return None  # a DLA loadable for a core the runtime was not set to
            return Engine(info)

    class LayerInformationFormat(enum.Enum):
        ONELINE = 0
        JSON = 1

    trt.TensorIOMode, trt.DataType, trt.nptype, trt.Logger = TensorIOMode, DataType, nptype, Logger
    trt.ProfilingVerbosity, trt.LayerInformationFormat = ProfilingVerbosity, LayerInformationFormat
    trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    trt.Runtime = Runtime
    _add_builder(trt, shapes, dtypes, dla_cores)
    return trt


def _add_builder(trt, shapes: dict, dtypes: dict, dla_cores: int) -> None:
    """Builder, network, parser, config, profile: the fake network is the one the fake engine runs
    (image, input_ids, attention_mask -> logits); `trt.model` says what the "ONNX file" holds."""
    trt.model = types.SimpleNamespace(uses_plugin=False, dla_ok=True, invalid_profile=False)
    trt.built = []  # (network, config) of each build

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1 if trt.__version__.startswith("10.") else 0

    MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    BuilderFlag = enum.Enum("BuilderFlag", "GPU_FALLBACK VERSION_COMPATIBLE SPARSE_WEIGHTS")
    DeviceType = enum.Enum("DeviceType", "GPU DLA")
    HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel",
                                           "NONE AMPERE_PLUS SAME_COMPUTE_CAPABILITY")

    class Tensor:
        def __init__(self, name):
            self.name, self.shape, self.dtype = name, shapes[name], dtypes[name]

    class Layer:
        def __init__(self, name, type_, dla_ok):
            self.name, self.type, self.dla_ok = name, type_, dla_ok

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.parsed = False
            self.layers = [Layer("conv1", "CONVOLUTION", trt.model.dla_ok),
                           Layer("relu1", "ACTIVATION", trt.model.dla_ok),
                           Layer("text/attention", "MATRIX_MULTIPLY", False)]

        num_inputs = property(lambda self: 3 if self.parsed else 0)
        num_outputs = property(lambda self: 1 if self.parsed else 0)
        num_layers = property(lambda self: len(self.layers) if self.parsed else 0)

        def get_input(self, i):
            return Tensor(["image", "input_ids", "attention_mask"][i])

        def get_output(self, i):
            return Tensor("logits")

        def get_layer(self, i):
            return self.layers[i]

    class ParserError:
        def __init__(self, desc):
            self._desc = desc

        def node(self):
            return 3

        def node_name(self):
            return "custom"

        def node_operator(self):
            return "CustomPluginOp"

        def desc(self):
            return self._desc

        def code(self):
            return "ErrorCode.UNSUPPORTED_NODE"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            if trt.model.uses_plugin and not trt.plugins_initialized:
                self.errors.append(ParserError("Plugin not found, are the plugin name, version, "
                                               "and namespace correct?"))
                return False
            self.network.parsed = True
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            # The binding's lambda (python/src/infer/pyCore.cpp): PY_ASSERT_RUNTIME_ERROR.
            lo, opt, hi = tuple(lo), tuple(opt), tuple(hi)
            if not len(lo) == len(opt) == len(hi) == len(shapes[name]):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            for a, b, c, real in zip(lo, opt, hi, shapes[name]):
                if not 0 <= a <= b <= c or (real != -1 and not a == b == c == real):
                    raise RuntimeError("Shape provided for opt is inconsistent with other "
                                       "shapes.")
            self.shapes[name] = (lo, opt, hi)

        def __bool__(self):
            return bool(self.shapes)

        @property
        def static(self):
            return all(lo == hi for lo, _, hi in self.shapes.values())

    class Cache:
        def serialize(self):
            return b"TIMINGCACHE"

    class Config:
        def __init__(self):
            self.flags, self.profiles = set(), []
            self.default_device_type = DeviceType.GPU
            self.DLA_core = -1
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE

        def set_memory_pool_limit(self, pool, size):
            assert pool is MemoryPoolType.WORKSPACE and size > 0

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            if trt.model.invalid_profile or not profile:
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def can_run_on_DLA(self, layer):
            return layer.dla_ok

        def create_timing_cache(self, data):
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

    class Builder:
        def __init__(self, logger):
            self.num_DLA_cores = dla_cores

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            if not config.profiles:
                return None  # "Network has dynamic or shape inputs, but no optimization profile"
            on_dla = (config.default_device_type is DeviceType.DLA
                      and config.profiles[0].static)  # DLA: static shapes only
            layers = []
            for layer in network.layers:
                if on_dla and layer.dla_ok:  # the names an Orin DLA engine's layer profile shows
                    layers += [{"Name": "image to nvm", "LayerType": "Reformat"},
                               {"Name": f"{{ForeignNode[{layer.name}]}}"},
                               {"Name": f"{layer.name} from nvm", "LayerType": "Reformat"}]
                else:
                    layers.append({"Name": layer.name, "LayerType": "CaskConvolution",
                                   "Outputs": [{"Name": layer.name, "Format/Datatype":
                                                "Row major linear FP32"}]})
            return fake_plan_bytes(layers, plugins=trt.model.uses_plugin,
                                   dla_core=config.DLA_core if on_dla else None)

    trt.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    trt.MemoryPoolType, trt.BuilderFlag, trt.DeviceType = MemoryPoolType, BuilderFlag, DeviceType
    trt.HardwareCompatibilityLevel = HardwareCompatibilityLevel
    trt.Builder, trt.OnnxParser = Builder, OnnxParser
