"""Stand-ins for `tensorrt` and `cuda.bindings.runtime`, to test the code around their calls.

They implement only what the runner calls, with the real names (test_trt_api.py checks those names
against the real bindings; these fakes check our logic: order of checks, shapes, buffer reuse and
growth, copies). "Device" memory is host memory here, so copies are real memmoves and the fake
engine computes real outputs from what the runner put in its buffers.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np


class FakeCudart:
    """cuda.bindings.runtime: (err, result) tuples, errors as cudaError_t members."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2
        cudaErrorInsufficientDriver = 35
        cudaErrorNoDevice = 100

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, devices: int = 1, error: "FakeCudart.cudaError_t | None" = None,
                 cc: tuple[int, int] = (9, 0), name: str = "NVIDIA H200"):
        self.devices, self.error, self.cc, self.gpu_name = devices, error, cc, name
        self.live: dict[int, ctypes.Array] = {}  # ptr -> backing storage
        self.calls: list[str] = []
        self.streams = 0

    def _ok(self, *rest):
        return (self.cudaError_t.cudaSuccess, *rest)

    def cudaGetErrorName(self, err):
        return self._ok(self.cudaError_t(err).name.encode())

    def cudaGetDeviceCount(self):
        if self.error is not None:
            return (self.error, None)
        return self._ok(self.devices)

    def cudaGetDeviceProperties(self, device):
        props = types.SimpleNamespace(name=self.gpu_name.encode() + b"\0" * 8,
                                      major=self.cc[0], minor=self.cc[1])
        return self._ok(props)

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    # CUDA graphs: while capturing, work is recorded (FakeContext defers to `captured`), and a
    # launch replays it, as a real graph replays kernels on the captured addresses.
    capturing = False
    fail_capture = False

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append("cudaStreamBeginCapture")
        self.capturing, self.captured = True, []
        return self._ok()

    def cudaStreamEndCapture(self, stream):
        self.calls.append("cudaStreamEndCapture")
        self.capturing = False
        if self.fail_capture:
            return (self.cudaError_t.cudaErrorMemoryAllocation, None)
        return self._ok(list(self.captured))

    def cudaGraphInstantiate(self, graph, flags):
        return self._ok(("exec", graph))

    def cudaGraphDestroy(self, graph):
        return self._ok()

    def cudaGraphLaunch(self, exec_handle, stream):
        self.calls.append("cudaGraphLaunch")
        for work in exec_handle[1]:
            work()
        return self._ok()

    def cudaGraphExecDestroy(self, exec_handle):
        self.calls.append("cudaGraphExecDestroy")
        return self._ok()

    def cudaSetDevice(self, device):
        self.calls.append(f"cudaSetDevice({device})")
        return self._ok()

    def _alloc(self, kind, n):
        self.calls.append(f"{kind}({n})")
        buf = (ctypes.c_byte * n)()
        ptr = ctypes.addressof(buf)
        self.live[ptr] = buf
        return self._ok(ptr)

    def cudaMalloc(self, n):
        return self._alloc("cudaMalloc", n)

    def cudaMallocHost(self, n):
        return self._alloc("cudaMallocHost", n)

    def _free(self, kind, ptr):
        self.calls.append(kind)
        if ptr not in self.live:
            return (self.cudaError_t.cudaErrorMemoryAllocation,)
        del self.live[ptr]
        return self._ok()

    def cudaFree(self, ptr):
        return self._free("cudaFree", ptr)

    def cudaFreeHost(self, ptr):
        return self._free("cudaFreeHost", ptr)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.calls.append(f"memcpy{int(kind)}({count})")
        ctypes.memmove(dst, src, count)
        return self._ok()

    def cudaStreamCreate(self):
        self.streams += 1
        return self._ok(1000 + self.streams)

    def cudaStreamSynchronize(self, stream):
        return self._ok()

    def cudaStreamDestroy(self, stream):
        self.streams -= 1
        return self._ok()


def read(ptr: int, shape, dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_byte * max(n, 1)).from_address(ptr)
    return np.frombuffer(raw, dtype=np.uint8, count=n).view(dtype).reshape(shape).copy()


def make_fake_trt(version: str = "10.3.0", num_classes: int = 3, io_float=np.float32,
                  cudart: FakeCudart | None = None):
    """A `tensorrt` module whose engine computes logits[b, k] = k + sum(image[b]) +
    sum(input_ids[b] * attention_mask[b]) from whatever the runner put at the tensor addresses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = np.float32
        HALF = np.float16
        INT64 = np.int64
        BF16 = "bf16"

    def nptype(dt):
        if dt is DataType.BF16:
            raise TypeError("no numpy type")
        return dt.value

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, severity):
            self.min_severity = severity

    dtypes = {"image": {np.float32: DataType.FLOAT, np.float16: DataType.HALF}[io_float],
              "input_ids": DataType.INT64, "attention_mask": DataType.INT64,
              "logits": DataType.FLOAT}

    class Context:
        def __init__(self):
            self.shapes, self.addresses, self.log = {}, {}, []

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
            if cudart is not None and cudart.capturing:
                addresses, shapes = dict(self.addresses), dict(self.shapes)
                cudart.captured.append(lambda: self._compute(addresses, shapes))
            else:
                self._compute(self.addresses, self.shapes)
            return True

        def _compute(self, addresses, shapes):
            self.computed = getattr(self, "computed", 0) + 1
            img = read(addresses["image"], shapes["image"], dtypes["image"].value)
            ids = read(addresses["input_ids"], shapes["input_ids"], np.int64)
            mask = read(addresses["attention_mask"], shapes["attention_mask"], np.int64)
            base = img.reshape(len(img), -1).astype(np.float32).sum(1) + (ids * mask).sum(1)
            out = base[:, None] + np.arange(num_classes, dtype=np.float32)[None]
            ctypes.memmove(addresses["logits"], out.astype(np.float32).tobytes(), out.nbytes)

    class Engine:
        names = ["image", "input_ids", "attention_mask", "logits"]
        shapes = {"image": (-1, 3, 8, 8), "input_ids": (-1, -1), "attention_mask": (-1, -1),
                  "logits": (-1, num_classes)}

        def __init__(self):
            self.contexts = []

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.OUTPUT if name == "logits" else TensorIOMode.INPUT

        def get_tensor_dtype(self, name):
            return dtypes[name]

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def create_execution_context(self):
            self.contexts.append(Context())
            return self.contexts[-1]

    class Runtime:
        instances = []

        def __init__(self, logger):
            self.engine_host_code_allowed = False
            self.deserialized = []
            Runtime.instances.append(self)

        def deserialize_cuda_engine(self, data):
            self.deserialized.append(data)
            return Engine() if data.startswith(b"FAKEPLAN") else None

    trt.TensorIOMode, trt.DataType, trt.nptype, trt.Logger = TensorIOMode, DataType, nptype, Logger
    trt.Runtime = Runtime
    return trt
