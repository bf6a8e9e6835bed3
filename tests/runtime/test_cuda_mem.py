"""The cuda-python memory layer: size arithmetic (pure), call checking (fake), the real GPU (`gpu`)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from trt_fakes import FakeCudart

from toolkit.runtime import cuda_mem
from toolkit.runtime.cuda_mem import (CudaError, CudaUnavailable, DeviceBuffer, PinnedBuffer,
                                      grown_capacity, nbytes, round_up)


def test_nbytes():
    assert nbytes((2, 3, 32, 32), np.float32) == 2 * 3 * 32 * 32 * 4
    assert nbytes((8, 128), np.int64) == 8 * 128 * 8
    assert nbytes((4, 2), np.float16) == 16
    assert nbytes((), np.float32) == 4
    with pytest.raises(ValueError, match="dynamic"):
        nbytes((-1, 3), np.float32)


def test_grown_capacity_reuses_grows_doubles_and_caps():
    assert grown_capacity(1024, 1000) == 1024  # fits: reuse
    assert grown_capacity(1024, 1024) == 1024
    assert grown_capacity(0, 100) == 256  # aligned
    assert grown_capacity(1024, 1500) == 2048  # at least double
    assert grown_capacity(1024, 5000) == round_up(5000)  # or what is needed
    assert grown_capacity(1024, 1500, limit=1600) == round_up(1600)  # capped at the profile max
    assert grown_capacity(1024, 3000, limit=1600) == round_up(3000)  # never below the need
    assert all(c % 256 == 0 for c in (grown_capacity(0, n) for n in range(1, 2000, 37)))


def test_growth_is_logarithmic():
    cap, allocations = 0, 0
    for batch in range(1, 257):
        new = grown_capacity(cap, nbytes((batch, 3, 224, 224), np.float32))
        allocations += new != cap
        cap = new
    assert allocations <= 9


@pytest.fixture
def rt(monkeypatch):
    fake = FakeCudart()
    monkeypatch.setattr(cuda_mem, "cudart", lambda: fake)
    return fake


def test_buffers_round_trip_and_free(rt):
    stream = cuda_mem.Stream()
    host, dev, back = PinnedBuffer(), DeviceBuffer(), PinnedBuffer()
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    for b in (host, dev, back):
        assert b.reserve(x.nbytes) is True
    assert host.reserve(x.nbytes) is False  # reused
    host.view(x.shape, x.dtype)[...] = x
    cuda_mem.copy_to_device(dev, host, x.nbytes, stream)
    cuda_mem.copy_to_host(back, dev, x.nbytes, stream)
    stream.synchronize()
    np.testing.assert_array_equal(back.view(x.shape, x.dtype), x)
    with pytest.raises(CudaError, match="cannot hold"):
        host.view((1000,), np.int64)
    for b in (host, dev, back):
        b.free()
    stream.free()
    assert rt.live == {} and rt.streams == 0


def test_every_error_code_is_checked(rt):
    buf = DeviceBuffer()
    buf.reserve(10)
    rt.live.clear()  # the fake now reports an error on free
    with pytest.raises(CudaError, match="cudaFree failed with cudaErrorMemoryAllocation"):
        buf.free()


def test_device_info_and_missing_gpu(monkeypatch):
    fake = FakeCudart(cc=(8, 7), name="Orin")
    monkeypatch.setattr(cuda_mem, "cudart", lambda: fake)
    assert cuda_mem.device_info() == cuda_mem.GpuInfo("Orin", "8.7")
    with pytest.raises(CudaUnavailable, match="no NVIDIA GPU number 1"):
        cuda_mem.device_info(1)
    fake.error = FakeCudart.cudaError_t.cudaErrorNoDevice
    with pytest.raises(CudaUnavailable, match="cudaErrorNoDevice: no usable NVIDIA GPU.*driver"):
        cuda_mem.device_info()


def test_missing_cuda_python_names_the_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(CudaUnavailable, match=r"dualmodal-toolkit\[tensorrt-cu12\].*"
                                              r"dualmodal-toolkit\[tensorrt-cu13\].*NVIDIA GPU"):
        cuda_mem.cudart()


# ------------------------------------------------------------------ on a real GPU


def _real_gpu_or_skip():
    try:
        cuda_mem.cudart()
        return cuda_mem.device_info()
    except CudaUnavailable as e:
        pytest.skip(f"needs cuda-python and an NVIDIA GPU: {e}")


@pytest.mark.gpu
def test_real_gpu_round_trip_reuse_and_bandwidth():
    gpu = _real_gpu_or_skip()
    stream = cuda_mem.Stream()
    host, dev, back = PinnedBuffer(), DeviceBuffer(), PinnedBuffer()
    try:
        for n in (1 << 10, 1 << 20, 1 << 26):
            x = np.random.default_rng(0).integers(0, 1 << 30, n // 8, dtype=np.int64)
            for b in (host, dev, back):
                b.reserve(x.nbytes)
            host.view(x.shape, x.dtype)[...] = x
            t0 = time.perf_counter()
            cuda_mem.copy_to_device(dev, host, x.nbytes, stream)
            cuda_mem.copy_to_host(back, dev, x.nbytes, stream)
            stream.synchronize()
            dt = time.perf_counter() - t0
            np.testing.assert_array_equal(back.view(x.shape, x.dtype), x)
            print(f"{gpu.name}: {n} bytes there and back, {2 * n / dt / 1e9:.2f} GB/s")
        ptr = dev.ptr
        assert dev.reserve(1 << 20) is False and dev.ptr == ptr  # reused, not reallocated
    finally:
        for b in (host, dev, back):
            b.free()
        stream.free()


@pytest.mark.gpu
def test_real_graph_capture_replays_and_a_failed_capture_leaves_the_stream_usable():
    """CudaGraph on the real driver: a captured copy replays; a capture broken by an operation
    capture forbids (synchronizing the capturing stream) is a CudaError, its error is cleared and
    the stream takes plain work again (the order of trtexec's endCaptureOnError)."""
    _real_gpu_or_skip()
    rt = cuda_mem.cudart()
    stream = cuda_mem.Stream()
    host, dev, back = PinnedBuffer(), DeviceBuffer(), PinnedBuffer()
    try:
        x = np.arange(4096, dtype=np.float32)
        for b in (host, dev, back):
            b.reserve(x.nbytes)
        host.view(x.shape, x.dtype)[...] = x

        def copies():
            cuda_mem.copy_to_device(dev, host, x.nbytes, stream)
            cuda_mem.copy_to_host(back, dev, x.nbytes, stream)
            return True

        graph = cuda_mem.CudaGraph.capture(stream, copies)
        back.view(x.shape, x.dtype)[...] = 0
        graph.launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(back.view(x.shape, x.dtype), x)
        graph.free()

        def forbidden():
            rt.cudaStreamSynchronize(stream._stream)  # not allowed while capturing
            return True

        with pytest.raises(CudaError, match="CUDA graph capture failed"):
            cuda_mem.CudaGraph.capture(stream, forbidden)
        assert rt.cudaGetLastError()[0] == rt.cudaError_t.cudaSuccess
        back.view(x.shape, x.dtype)[...] = 0
        copies()
        stream.synchronize()
        np.testing.assert_array_equal(back.view(x.shape, x.dtype), x)
    finally:
        for b in (host, dev, back):
            b.free()
        stream.free()


@pytest.mark.gpu
def test_real_device_memory_and_integrated_flag():
    gpu = _real_gpu_or_skip()
    before = cuda_mem.device_memory_used()
    buf = DeviceBuffer()
    try:
        buf.reserve(64 << 20)
        assert cuda_mem.device_memory_used() - before >= 32 << 20  # other processes may free
    finally:
        buf.free()
    assert isinstance(gpu.integrated, bool)


def test_real_bindings_accept_our_arguments_up_to_the_driver():
    """On a machine with cuda-python but no GPU/driver (CI), every call we make reaches the
    driver check: argument types and result tuples are the real bindings' (no TypeError)."""
    try:
        rt = cuda_mem.cudart()
    except CudaUnavailable as e:
        pytest.skip(str(e))
    if rt.cudaGetDeviceCount()[0] == rt.cudaError_t.cudaSuccess:
        pytest.skip("a GPU is present: the `gpu` test covers the real calls")
    for call in (lambda: cuda_mem.Stream(), lambda: DeviceBuffer().reserve(1024),
                 lambda: PinnedBuffer().reserve(1024), lambda: cuda_mem.use_device(0),
                 lambda: cuda_mem.device_info(), lambda: cuda_mem.device_memory_used()):
        with pytest.raises(CudaUnavailable, match="NVIDIA GPU"):
            call()
    stream = cuda_mem.Stream.__new__(cuda_mem.Stream)
    stream._stream = rt.cudaStream_t(0)
    dev, host = DeviceBuffer(), PinnedBuffer()
    with pytest.raises(CudaUnavailable, match="cudaMemcpyAsync"):
        cuda_mem.copy_to_device(dev, host, 0, stream)
    with pytest.raises(CudaUnavailable, match="cudaStreamSynchronize"):
        stream.synchronize()


def test_every_cudart_name_used_exists_in_the_installed_bindings():
    """The CUDA runtime names cuda_mem.py uses (`rt.<name>` / `cudart().<name>`) exist
    in the cuda-python installed here; their call signatures are checked just above."""
    import ast
    from pathlib import Path

    try:
        rt = cuda_mem.cudart()
    except CudaUnavailable as e:
        pytest.skip(str(e))
    tree = ast.parse(Path(cuda_mem.__file__).read_text())
    chains = set()
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if (isinstance(node, ast.Name) and node.id == "rt") or (
                    isinstance(node, ast.Call) and getattr(node.func, "id", None) == "cudart"):
                chains.add(tuple(reversed(parts)))
    assert len(chains) > 15  # the walker found the calls
    for chain in sorted(chains):
        obj = rt
        for part in chain:
            assert hasattr(obj, part), ".".join(chain)
            obj = getattr(obj, part)


# ------------------------------------------------------------------ CUDA graphs, devices (fake)


def test_a_failed_capture_is_ended_destroyed_and_cleared(rt):
    """trtexec's endCaptureOnError: end the capture, destroy any graph it returned, clear the
    error with cudaGetLastError; the stream then takes plain work again."""
    stream = cuda_mem.Stream()
    with pytest.raises(CudaError, match="its enqueue returned false"):
        cuda_mem.CudaGraph.capture(stream, lambda: (rt.fail_capture(), False)[1])
    assert rt.graphs == {} and rt.capturing == {} and rt.last_error is None
    with pytest.raises(CudaError, match="cudaStreamEndCapture failed with "
                                        "cudaErrorStreamCaptureInvalidated"):
        rt.invalidate_capture = True
        cuda_mem.CudaGraph.capture(stream, lambda: True)
    assert rt.graphs == {} and rt.last_error is None
    with pytest.raises(ZeroDivisionError):  # the caller's own error passes through, cleaned up
        cuda_mem.CudaGraph.capture(stream, lambda: 1 / 0)
    assert rt.capturing == {} and rt.graphs == {}
    box = []
    graph = cuda_mem.CudaGraph.capture(stream, lambda: rt.launch(stream.handle,
                                                                   lambda: box.append(1)))
    assert rt.graphs == {}  # instantiated, the graph itself destroyed
    graph.launch(stream)
    stream.synchronize()
    assert box == [1]
    graph.free()
    stream.free()
    assert rt.execs == {}


def test_device_info_says_whether_the_gpu_is_integrated(monkeypatch):
    fake = FakeCudart(cc=(8, 7), name="Orin", integrated=True)
    monkeypatch.setattr(cuda_mem, "cudart", lambda: fake)
    assert cuda_mem.device_info() == cuda_mem.GpuInfo("Orin", "8.7", integrated=True)


def test_device_memory_used_counts_allocations(rt):
    before = cuda_mem.device_memory_used()
    buf = DeviceBuffer()
    buf.reserve(1 << 20)
    assert cuda_mem.device_memory_used() - before == 1 << 20
    buf.free()
