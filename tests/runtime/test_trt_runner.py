"""The TensorRT runner around its calls: check order, shapes, buffers, errors (fakes, no GPU).

The real thing (marker `tensorrt`) is in tests/engines/test_trt_build.py.
"""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pytest
from trt_fakes import FakeCudart, fake_plan_bytes, make_fake_trt

from toolkit.artifacts import ArtifactMetadata
from toolkit.runtime import cuda_mem
from toolkit.runtime.base import RunnerError
from toolkit.runtime.cuda_mem import CudaUnavailable, GpuInfo
from toolkit.runtime.trt_plan import (PlanError, ProfileConfig, ShapeOutsideProfile,
                                      TensorRTUnavailable, profile_shapes, write_sidecar)
from toolkit.runtime.trt_runner import TensorRTRunner, load_engine

INPUTS = {"image": (-1, 3, 8, 8), "input_ids": (-1, -1), "attention_mask": (-1, -1)}


def metadata(**kw) -> ArtifactMetadata:
    base = dict(labels=["a", "b", "c"], image_size=8, mean=[0.5] * 3, std=[0.25] * 3,
                vocab=["[PAD]", "[UNK]", "x"], max_length=6, precision="fp32",
                source_sha256="0" * 64, toolkit_version="0.0")
    base.update(kw)
    return ArtifactMetadata(**base)


HERE = {"machine": "x86_64", "system": "Linux", "integrated_gpu": False}


@pytest.fixture(autouse=True)
def on_x86_linux(monkeypatch):
    """This machine, as the runner sees it: Linux x86_64 (a test may move it to a Jetson)."""
    from toolkit.runtime import trt_plan

    monkeypatch.setattr(trt_plan.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(trt_plan.platform, "system", lambda: "Linux")


def write_fake_plan(tmp_path, trt_version="10.3.0", cc="9.0", build=None, io_float="float32",
                    data=None, built_on=None):
    """A plan file (fake bytes) with a real sidecar, as build_engine would write them."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really onnx")
    plan = tmp_path / "engines" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(data if data is not None else b"FAKEPLAN" + bytes(range(256)))
    shapes = profile_shapes(INPUTS, ProfileConfig(max_batch=4), image_size=8, max_length=6)
    io = [{"name": n, "dtype": io_float if n == "image" else "int64", "shape": list(d)}
          for n, d in INPUTS.items()]
    write_sidecar(plan, source_onnx=onnx, tensorrt_version=trt_version,
                  gpu=GpuInfo("NVIDIA H200", cc), metadata=metadata(),
                  build=build or {"version_compatible": False, "hardware_compat": "none"},
                  profiles=[shapes], inputs=io,
                  outputs=[{"name": "logits", "dtype": "float32", "shape": [-1, 3]}],
                  build_platform=built_on or HERE)
    return plan


def install(monkeypatch, rt=None, **kw):
    """The fake tensorrt and cudart, sharing one CUDA state; returns (trt, rt)."""
    rt = rt or FakeCudart()
    trt = make_fake_trt(cudart=rt, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_mem, "cudart", lambda: rt)
    return trt, rt


@pytest.fixture
def fakes(monkeypatch):
    return install(monkeypatch)


def feed(batch=2, seq=5, image_dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[:, -1] = 0
    return {"image": rng.random((batch, 3, 8, 8)).astype(image_dtype),
            "input_ids": rng.integers(0, 3, (batch, seq)).astype(np.int64),
            "attention_mask": mask}


def expected(f):
    base = f["image"].reshape(len(f["image"]), -1).astype(np.float32).sum(1) + \
        (f["input_ids"] * f["attention_mask"]).sum(1)
    return base[:, None] + np.arange(3, dtype=np.float32)[None]


def test_runs_a_plan_by_tensor_name_and_keeps_tokens_int64(tmp_path, fakes):
    plan = write_fake_plan(tmp_path)
    with TensorRTRunner(plan) as runner:
        specs = runner.input_specs()
        assert specs["input_ids"].dtype == np.int64 and specs["image"].shape == (None, 3, 8, 8)
        f = feed()
        out = runner.infer(f)
    assert list(out) == ["logits"] and out["logits"].shape == (2, 3)
    np.testing.assert_allclose(out["logits"], expected(f), rtol=1e-6)


def test_buffers_are_reused_and_grow_only_when_shapes_grow(tmp_path, fakes):
    _, rt = fakes
    plan = write_fake_plan(tmp_path)
    with TensorRTRunner(plan) as runner:
        runner.infer(feed(batch=2, seq=5))
        allocs = [c for c in rt.calls if c.startswith("cudaMalloc")]
        ptr = runner._device_buffers["image"].ptr
        out = runner.infer(feed(batch=1, seq=3, seed=1))  # smaller: no new allocation
        assert [c for c in rt.calls if c.startswith("cudaMalloc")] == allocs
        assert runner._device_buffers["image"].ptr == ptr
        f = feed(batch=4, seq=6, seed=2)  # larger: the buffers grow
        out = runner.infer(f)
        assert len([c for c in rt.calls if c.startswith("cudaMalloc")]) > len(allocs)
        np.testing.assert_allclose(out["logits"], expected(f), rtol=1e-6)
        # never beyond what the profile's max shapes need
        assert runner._device_buffers["image"].capacity <= cuda_mem.round_up(4 * 3 * 8 * 8 * 4)
    assert rt.live == {}  # deactivate frees every buffer
    assert rt.streams == 0


def test_shape_outside_profile_is_refused_before_tensorrt_sees_it(tmp_path, fakes):
    trt, _ = fakes
    plan = write_fake_plan(tmp_path)
    with TensorRTRunner(plan) as runner:
        context = runner.context
        before = len(context.log)
        with pytest.raises(ShapeOutsideProfile, match=r"batch 5 is outside .*\[1, 4\]"):
            runner.infer(feed(batch=5))
        with pytest.raises(ShapeOutsideProfile, match=r"sequence 7 is outside .*\[1, 6\]"):
            runner.infer(feed(seq=7))
        assert context.log[before:] == []  # neither shape nor enqueue reached TensorRT


def test_wrong_dtype_is_the_base_runner_error(tmp_path, fakes):
    plan = write_fake_plan(tmp_path)
    f = feed()
    f["input_ids"] = f["input_ids"].astype(np.int32)
    with TensorRTRunner(plan) as runner, pytest.raises(RunnerError, match="int64"):
        runner.infer(f)


def test_fp16_io_engine_takes_float16_images(tmp_path, monkeypatch):
    install(monkeypatch, io_float=np.float16)
    plan = write_fake_plan(tmp_path, io_float="float16")
    with TensorRTRunner(plan) as runner:
        f = feed(image_dtype=np.float16)
        np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-3)


def test_plan_from_another_tensorrt_version_is_refused_before_deserializing(tmp_path, fakes):
    trt, _ = fakes
    plan = write_fake_plan(tmp_path, trt_version="11.4.0.106")
    trt.Runtime.instances.clear()
    with pytest.raises(PlanError, match=r"TensorRT 11.4.0.106 .* this is TensorRT 10.3.0"):
        TensorRTRunner(plan).activate()
    assert trt.Runtime.instances == []


def test_plan_from_another_gpu_is_refused(tmp_path, fakes):
    plan = write_fake_plan(tmp_path, cc="8.7")
    with pytest.raises(PlanError, match=r"compute capability 8.7.*9.0"):
        TensorRTRunner(plan).activate()


def test_version_compatible_plan_allows_host_code(tmp_path, monkeypatch):
    trt, _ = install(monkeypatch, version="11.4.0.106")
    plan = write_fake_plan(tmp_path, trt_version="10.3.0",
                           build={"version_compatible": True, "hardware_compat": "none"})
    with TensorRTRunner(plan):
        assert trt.Runtime.instances[-1].engine_host_code_allowed is True


def test_truncated_plan_is_refused(tmp_path, fakes):
    plan = write_fake_plan(tmp_path)
    plan.write_bytes(plan.read_bytes()[:100])
    with pytest.raises(PlanError, match="truncated"):
        TensorRTRunner(plan).activate()


def test_a_file_that_is_not_a_plan_is_refused(tmp_path, fakes):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"hello")
    with pytest.raises(PlanError, match="sidecar"):
        TensorRTRunner(plan).activate()
    # With a sidecar made for it, TensorRT's refusal is still one clear error.
    real = write_fake_plan(tmp_path)
    real.write_bytes(b"GARBAGE!" + real.read_bytes()[8:])
    import json

    side = real.with_name("model.plan.json")
    data = json.loads(side.read_text())
    from toolkit.artifacts import sha256

    data["plan_sha256"] = sha256(real)
    side.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="could not deserialize"):
        TensorRTRunner(real).activate()


def test_without_tensorrt_the_error_names_the_package_and_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    plan = write_fake_plan(tmp_path)
    with pytest.raises(TensorRTUnavailable) as e:
        TensorRTRunner(plan).activate()
    msg = str(e.value)
    assert "pip install 'dualmodal-toolkit[tensorrt-cu12]'" in msg
    assert "'dualmodal-toolkit[tensorrt-cu13]'" in msg and "CUDA 12" in msg and "CUDA 13" in msg
    assert "NVIDIA GPU" in msg and "driver" in msg


def test_without_a_gpu_the_error_says_so(tmp_path, monkeypatch):
    install(monkeypatch, FakeCudart(error=FakeCudart.cudaError_t.cudaErrorInsufficientDriver))
    plan = write_fake_plan(tmp_path)
    with pytest.raises(CudaUnavailable, match="NVIDIA GPU.*driver"):
        TensorRTRunner(plan).activate()


def test_infer_before_activate_is_a_clear_error(tmp_path):
    with pytest.raises(RunnerError, match="not active"):
        TensorRTRunner(tmp_path / "x.plan").infer({})


def test_cuda_graph_is_captured_once_per_shape_and_replayed(tmp_path, fakes):
    _, rt = fakes
    plan = write_fake_plan(tmp_path)
    with TensorRTRunner(plan, cuda_graph=True) as runner:
        for seed in range(3):  # same shapes, new data each time
            f = feed(batch=2, seq=5, seed=seed)
            np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)
        assert rt.calls.count("cudaStreamBeginCapture") == 1
        assert rt.calls.count("cudaGraphLaunch") == 2
        f = feed(batch=3, seq=6, seed=9)  # new shapes: recaptured, old graph freed
        np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)
        assert rt.calls.count("cudaStreamBeginCapture") == 2
        assert rt.calls.count("cudaGraphExecDestroy") == 1
        f = feed(batch=3, seq=6, seed=10)
        np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)
        assert rt.calls.count("cudaGraphLaunch") == 3
    assert rt.calls.count("cudaGraphExecDestroy") == 2  # freed on deactivate


@pytest.mark.parametrize("how", ["engine refuses", "capture invalidated"])
def test_cuda_graph_capture_failure_cleans_up_and_falls_back(tmp_path, fakes, how):
    """As trtexec: the failed capture is ended, the graph it returned destroyed, the sticky
    error cleared (cudaGetLastError); then plain launches."""
    _, rt = fakes
    plan = write_fake_plan(tmp_path)
    with TensorRTRunner(plan, cuda_graph=True) as runner:
        if how == "engine refuses":
            runner.context.refuse_capture = True  # its enqueue returns false while capturing
        else:
            rt.invalidate_capture = True  # cudaStreamEndCapture: cudaErrorStreamCaptureInvalidated
        with pytest.warns(UserWarning, match="CUDA graph capture failed"):
            f = feed(seed=1)
            np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)
        assert runner.cuda_graph is False
        assert rt.graphs == {} and rt.execs == {}  # nothing leaked
        assert rt.last_error is None  # the error the failed capture left was cleared
        assert rt.capturing == {}  # the stream is out of capture mode
        f = feed(seed=2)
        np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)
    assert "cudaGraphLaunch" not in rt.calls


def test_cuda_graph_is_captured_on_an_idle_stream(tmp_path, fakes):
    """The warm-up launch has finished (stream synchronized) before cudaStreamBeginCapture,
    trtexec's order, so none of TensorRT's first-launch work is recorded."""
    _, rt = fakes
    plan = write_fake_plan(tmp_path)
    with TensorRTRunner(plan, cuda_graph=True) as runner:
        f = feed(seed=3)
        np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)
    assert rt.calls.count("cudaStreamBeginCapture") == 1
    assert rt.began_capture_on_busy_stream is False


def test_a_sidecar_describing_other_inputs_is_refused_and_nothing_leaks(tmp_path, fakes):
    import json

    _, rt = fakes
    plan = write_fake_plan(tmp_path)
    side = plan.with_name("model.plan.json")
    data = json.loads(side.read_text())
    data["profiles"][0]["pixel_values"] = data["profiles"][0].pop("image")
    side.write_text(json.dumps(data))
    runner = TensorRTRunner(plan)
    with pytest.raises(PlanError, match="are not the sidecar's"):
        runner.activate()
    assert not runner.is_active and rt.streams == 0 and rt.live == {}


# ------------------------------------------------------------------ issue 19: as it will really run


def test_contexts_run_with_layer_names_only_nvtx(tmp_path, fakes):
    """DETAILED build verbosity (for the inspector) is a context's default, and it slows
    enqueueV3: the runner lowers it (IExecutionContext.nvtx_verbosity)."""
    trt, _ = fakes
    with TensorRTRunner(write_fake_plan(tmp_path)) as runner:
        assert runner.context.nvtx_verbosity is trt.ProfilingVerbosity.LAYER_NAMES_ONLY


def test_calls_from_other_threads_set_the_device_first(tmp_path, monkeypatch):
    """The current device is per host thread: a server thread on a runner of GPU 1 must not
    launch on GPU 0's default (the fake fails such a launch, as CUDA does)."""
    _, rt = install(monkeypatch, FakeCudart(devices=2))
    plan = write_fake_plan(tmp_path)
    runner = TensorRTRunner(plan, device=1).activate()
    f, out, errors = feed(seed=4), [], []

    def call():
        try:
            out.append(runner.infer(f)["logits"])
            runner.deactivate()  # closing from another thread is fine too
        except Exception as e:  # collected for the assertion below
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    t.join(timeout=60)
    assert errors == []
    np.testing.assert_allclose(out[0], expected(f), rtol=1e-6)
    assert rt.live == {} and rt.streams == 0
    assert all(d == 1 for d in rt.device_of.values())


def test_a_plan_using_a_standard_plugin_is_deserialized_after_registering_plugins(tmp_path,
                                                                                 fakes):
    trt, _ = fakes
    plan = write_fake_plan(tmp_path, data=fake_plan_bytes(plugins=True))
    with TensorRTRunner(plan) as runner:
        assert trt.plugins_initialized
        f = feed(seed=5)
        np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)


def test_a_dla_plan_is_loaded_on_its_dla_core(tmp_path, monkeypatch):
    """trtexec sets IRuntime::setDLACore before deserializing a DLA plan; so does the runner,
    from the sidecar, and a device without that core is a clear error."""
    trt, _ = install(monkeypatch, FakeCudart(cc=(8, 7), name="Orin", integrated=True),
                     dla_cores=2)
    monkeypatch.setattr("toolkit.runtime.trt_plan.platform.machine", lambda: "aarch64")
    orin = {"machine": "aarch64", "system": "Linux", "integrated_gpu": True}
    build = {"version_compatible": False, "hardware_compat": "none", "dla_core": 1}
    plan = write_fake_plan(tmp_path, cc="8.7", build=build, built_on=orin,
                           data=fake_plan_bytes(dla_core=1))
    with TensorRTRunner(plan) as runner:
        assert trt.Runtime.instances[-1].DLA_core == 1
        f = feed(seed=6)
        np.testing.assert_allclose(runner.infer(f)["logits"], expected(f), rtol=1e-6)
    install(monkeypatch, FakeCudart(cc=(8, 7), name="Orin Nano", integrated=True), dla_cores=0)
    with pytest.raises(PlanError, match="DLA core 1; this device has 0 DLA cores"):
        TensorRTRunner(plan).activate()


def test_an_x86_plan_is_refused_on_a_jetson_before_deserializing(tmp_path, monkeypatch):
    """Plans are not portable across platforms: an `ampere_plus` plan of an x86 H200 passes the
    compute-capability rule on an Orin (8.7 >= 8.0) but must not reach TensorRT there."""
    trt, _ = install(monkeypatch, FakeCudart(cc=(8, 7), name="Orin", integrated=True))
    monkeypatch.setattr("toolkit.runtime.trt_plan.platform.machine", lambda: "aarch64")
    plan = write_fake_plan(tmp_path, cc="9.0",
                           build={"version_compatible": False, "hardware_compat": "ampere_plus"})
    trt.Runtime.instances.clear()
    with pytest.raises(PlanError, match=r"built on Linux x86_64 with a discrete GPU; this is "
                                        r"Linux aarch64 with a integrated \(Jetson\) GPU"):
        TensorRTRunner(plan).activate()
    assert trt.Runtime.instances == []


def test_a_failed_deserialization_says_why(tmp_path, fakes):
    plan = write_fake_plan(tmp_path, data=b"NOTAPLAN" * 8)
    with pytest.raises(PlanError, match=r"deserialize_cuda_engine returned None.*log above.*"
                                        r"rebuild it on this machine"):
        TensorRTRunner(plan).activate()


def test_the_loader_refuses_bytes_that_do_not_match_the_sidecar_hash(tmp_path, fakes):
    """load_engine itself (not only the runner's earlier checks) hashes the bytes it hands to
    TensorRT: a same-size replacement is refused before deserialization."""
    from toolkit.runtime.trt_plan import read_sidecar

    trt, _ = fakes
    plan = write_fake_plan(tmp_path)
    sidecar = read_sidecar(plan)
    data = plan.read_bytes()
    plan.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    trt.Runtime.instances.clear()
    with pytest.raises(PlanError, match=r"does not match its sidecar's SHA-256.*rebuild it and its "
                                        r"sidecar with toolkit build"):
        load_engine(plan, sidecar)
    assert trt.Runtime.instances == []


# ------------------------------------------------------------------ the fakes refuse what CUDA does


def test_fake_engine_refuses_to_enqueue_without_every_address(monkeypatch):
    trt, rt = install(monkeypatch)
    context = trt.Runtime(None).deserialize_cuda_engine(fake_plan_bytes()) \
        .create_execution_context()
    stream = rt.cudaStreamCreate()[1]
    for name in ("image", "input_ids", "attention_mask"):
        context.set_input_shape(name, (1, 3, 8, 8) if name == "image" else (1, 4))
        context.set_tensor_address(name, rt.cudaMalloc(1024)[1])
    assert context.execute_async_v3(stream) is False  # "logits" has no address
    context.set_tensor_address("logits", rt.cudaMalloc(64)[1])
    assert context.execute_async_v3(stream) is True


def test_fake_copies_land_only_at_synchronize_and_launches_need_the_stream_device():
    rt = FakeCudart(devices=2)
    stream = rt.cudaStreamCreate()[1]  # on device 0
    src, dst = rt.cudaMallocHost(8)[1], rt.cudaMalloc(8)[1]
    rt.live[src][:] = bytes(range(8))
    rt.cudaMemcpyAsync(dst, src, 8, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    assert bytes(rt.live[dst]) == b"\0" * 8  # not yet: the copy is queued
    rt.cudaStreamSynchronize(stream)
    assert bytes(rt.live[dst]) == bytes(range(8))
    rt.cudaSetDevice(1)
    assert rt.launch(stream, lambda: None) is False  # a kernel into device 0's stream
    box = []
    t = threading.Thread(target=lambda: box.append(rt.current_device))
    t.start()
    t.join()
    assert box == [0]  # a new thread starts on device 0
