"""The CUDA memory layer under the TensorRT runner: device and pinned buffers, one stream.

Through cuda-python's runtime bindings (`cuda.bindings.runtime`), as NVIDIA's current TensorRT
samples do (samples/python/common_runtime.py: cudaMalloc, cudaMallocHost, cudaMemcpyAsync on a
cudaStreamCreate stream). `from cuda import cudart` is the pre-12.9 spelling, removed in
cuda-bindings 13, so it is not used. Every call returns a tuple whose first item is a cudaError_t;
`_check` turns anything but cudaSuccess into a CudaError naming the call and the error.

Kept apart from TensorRT so it can be tested on a GPU without TensorRT (tests marker `gpu`). The
size arithmetic (`nbytes`, `grown_capacity`) is plain Python, testable anywhere.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from toolkit.errors import ToolkitError

# One extra per CUDA major (pyproject.toml): pip's `tensorrt` meta-package follows the newest
# TensorRT, whose wheels need CUDA 13, which a CUDA 12 driver cannot load.
INSTALL_HINT = ("pip install 'dualmodal-toolkit[tensorrt-cu12]' (CUDA 12 driver: TensorRT 10, "
                "cuda-python 12) or 'dualmodal-toolkit[tensorrt-cu13]' (CUDA 13 driver: TensorRT "
                "11, cuda-python 13), the one nvidia-smi's CUDA version names; on Jetson, TensorRT "
                "comes with JetPack (add only cuda-python: the gpu-cu12 extra on JetPack 6)")
GPU_HINT = "an NVIDIA GPU and its driver are needed (check with nvidia-smi)"

# Allocations are rounded up to this many bytes: a multiple of 256 keeps every buffer aligned the
# way cudaMalloc's own allocations are, so growth never hands TensorRT a misaligned pointer.
ALIGN = 256


class CudaError(ToolkitError):
    """A CUDA runtime call failed."""


class CudaUnavailable(CudaError):
    """cuda-python is missing, or no NVIDIA GPU / driver is visible."""


# ------------------------------------------------------------------ pure size arithmetic


def nbytes(shape, dtype) -> int:
    """Bytes of a dense tensor of this shape and numpy dtype."""
    n = 1
    for d in shape:
        if int(d) < 0:
            raise ValueError(f"shape {tuple(shape)} has a dynamic (-1) axis; set the shape first")
        n *= int(d)
    return n * np.dtype(dtype).itemsize


def round_up(n: int, align: int = ALIGN) -> int:
    return max(align, -(-n // align) * align)


def grown_capacity(current: int, needed: int, limit: int | None = None) -> int:
    """The capacity a buffer should have to hold `needed` bytes.

    Unchanged when it already fits (buffers are reused across calls). Otherwise at least double
    (so a batch growing one by one reallocates O(log n) times), capped at `limit` (the size at the
    profile's max shape, beyond which no call can go), never below what is needed.
    """
    if needed <= current:
        return current
    target = max(needed, 2 * current)
    if limit is not None:
        target = min(target, max(limit, needed))
    return round_up(target)


# ------------------------------------------------------------------ the CUDA runtime


def cudart():
    """The `cuda.bindings.runtime` module, or a CudaUnavailable naming the package."""
    try:
        from cuda.bindings import runtime
    except ImportError as e:
        raise CudaUnavailable(f"cuda-python is not installed ({e}); install it with "
                              f"{INSTALL_HINT}. {GPU_HINT[0].upper() + GPU_HINT[1:]}.") from e
    return runtime


def _check(result, call: str):
    """Unpack a cuda-python result tuple, raising CudaError unless the error is cudaSuccess."""
    rt = cudart()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        name = _decode(name, err)
        if err in (rt.cudaError_t.cudaErrorNoDevice, rt.cudaError_t.cudaErrorInsufficientDriver):
            raise CudaUnavailable(f"{call} failed with {name}: no usable NVIDIA GPU; {GPU_HINT}")
        raise CudaError(f"{call} failed with {name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "major.minor", e.g. "9.0" (H100/H200), "8.7" (Orin)
    integrated: bool = False  # shares memory with the CPU (Jetson), cudaDeviceProp.integrated


def device_info(device: int = 0) -> GpuInfo:
    """Name, compute capability and kind of a GPU; CudaUnavailable when there is none."""
    rt = cudart()
    count = _check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count <= device:
        raise CudaUnavailable(f"no NVIDIA GPU number {device} (found {count}); {GPU_HINT}")
    props = _check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else props.name
    return GpuInfo(name=name, compute_capability=f"{props.major}.{props.minor}",
                   integrated=bool(props.integrated))


def use_device(device: int) -> None:
    """Make `device` current for the calling host thread: later allocations, streams and launches
    from this thread land on it. Per thread (CUDA Runtime API, cudaSetDevice: "Sets device as the
    current device for the calling host thread"), so every thread that uses a buffer or stream
    must call it; a new thread starts on device 0."""
    _check(cudart().cudaSetDevice(device), "cudaSetDevice")


def device_memory_used(device: int = 0) -> int:
    """Bytes of `device`'s memory in use by every process (cudaMemGetInfo: total - free)."""
    use_device(device)
    free, total = _check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(total) - int(free)


class Stream:
    """A non-default CUDA stream (TensorRT warns that the default stream adds synchronizations)."""

    def __init__(self) -> None:
        self._stream = _check(cudart().cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        return int(self._stream)  # TensorRT's execute_async_v3 takes the handle as an int

    def synchronize(self) -> None:
        _check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def free(self) -> None:
        if self._stream is not None:
            _check(cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class _GrowingBuffer:
    """Memory that grows (never shrinks) to fit what it is asked to hold; a subclass allocates
    and releases it."""

    def __init__(self, limit: int | None = None) -> None:
        self.ptr, self.capacity, self.limit = 0, 0, limit

    def reserve(self, needed: int) -> bool:
        """Make room for `needed` bytes; True when it had to reallocate (the address changed)."""
        capacity = grown_capacity(self.capacity, needed, self.limit)
        if capacity == self.capacity:
            return False
        self.free()
        self.ptr = self._allocate(capacity)
        self.capacity = capacity
        return True

    def free(self) -> None:
        if self.ptr:
            self._release(self.ptr)
        self.ptr, self.capacity = 0, 0


class DeviceBuffer(_GrowingBuffer):
    """Device memory (cudaMalloc)."""

    @staticmethod
    def _allocate(size: int) -> int:
        return _check(cudart().cudaMalloc(size), "cudaMalloc")

    @staticmethod
    def _release(ptr: int) -> None:
        _check(cudart().cudaFree(ptr), "cudaFree")


class PinnedBuffer(_GrowingBuffer):
    """Page-locked host memory (cudaMallocHost): asynchronous copies need it to overlap."""

    @staticmethod
    def _allocate(size: int) -> int:
        return _check(cudart().cudaMallocHost(size), "cudaMallocHost")

    @staticmethod
    def _release(ptr: int) -> None:
        _check(cudart().cudaFreeHost(ptr), "cudaFreeHost")

    def view(self, shape, dtype) -> np.ndarray:
        """A numpy array over the first bytes of the buffer (no copy)."""
        size = nbytes(shape, dtype)
        if size > self.capacity:
            raise CudaError(f"pinned buffer of {self.capacity} bytes cannot hold {size}")
        raw = (ctypes.c_byte * max(size, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=size).view(dtype).reshape(tuple(shape))


class CudaGraph:
    """One captured stream launch, replayed with cudaGraphLaunch (less CPU launch overhead).

    Valid only for the shapes and buffer addresses it was captured with; the caller keeps track.
    """

    def __init__(self, exec_handle) -> None:
        self._exec = exec_handle

    @classmethod
    def capture(cls, stream: Stream, enqueue) -> "CudaGraph":
        """Record what `enqueue()` puts on `stream` (nothing runs) and instantiate it.

        `enqueue` returns False (or raises) when it cannot be captured. As trtexec does
        (samples/common/sampleInference.cpp, createEnqueueFunction; sampleDevice.h,
        TrtCudaGraph::endCaptureOnError), the caller runs the work once and synchronizes the stream
        before capturing; on a failure the capture is still ended, any graph it returns is
        destroyed, and the CUDA error is cleared with cudaGetLastError, so the stream stays usable
        for plain launches. Then a CudaError says why.
        """
        rt = cudart()
        _check(rt.cudaStreamBeginCapture(
            stream._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture")
        try:
            ok = enqueue() is not False
        except BaseException:
            _end_failed_capture(rt, stream._stream)  # leave the stream usable; report the cause
            raise
        err, graph = rt.cudaStreamEndCapture(stream._stream)
        if not ok or err != rt.cudaError_t.cudaSuccess:
            _end_failed_capture(rt, None, graph)
            why = (f"cudaStreamEndCapture failed with {_decode(rt.cudaGetErrorName(err)[1], err)}"
                   if ok else "the work cannot be captured (its enqueue returned false)")
            raise CudaError(f"CUDA graph capture failed: {why}")
        try:
            return cls(_check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))
        finally:
            _check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, stream: Stream) -> None:
        _check(cudart().cudaGraphLaunch(self._exec, stream._stream), "cudaGraphLaunch")

    def free(self) -> None:
        if self._exec is not None:
            _check(cudart().cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None


def _decode(name, err) -> str:
    return name.decode() if isinstance(name, bytes) else str(err)


def _end_failed_capture(rt, stream, graph=None) -> None:
    """End a capture that failed (when `stream` is given), destroy the graph it returned, if any
    (None or a null handle when the capture was invalidated), and clear the CUDA error."""
    if stream is not None:
        _, graph = rt.cudaStreamEndCapture(stream)
    if graph is not None and int(graph) != 0:
        rt.cudaGraphDestroy(graph)
    rt.cudaGetLastError()


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, size: int, stream: Stream) -> None:
    rt = cudart()
    _check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, size, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                              stream.handle), "cudaMemcpyAsync (host to device)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, size: int, stream: Stream) -> None:
    rt = cudart()
    _check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, size, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                              stream.handle), "cudaMemcpyAsync (device to host)")
