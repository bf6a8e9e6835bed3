"""A real tritonserver (2.51, from the nvidia-pytriton wheel) serving a `toolkit triton` repository.

Requests go over HTTP and gRPC with tritonclient, to the model (logits) and to the Python-backend
model (image bytes and questions in), and the answers must equal the Predictor's. The wheel has no
onnxruntime backend: onnxruntime_standin.py, beside this file, takes its place as a Python-based
backend, and refuses a config.pbtxt that does not match the ONNX file. The server is always
stopped (the fixture's finally; SIGKILL after a bounded wait).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import toolkit

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOOLKIT_ROOT = Path(toolkit.__file__).resolve().parents[1]  # this checkout's toolkit
DELAY_MS = 100.0  # long enough that concurrent requests of the batching test meet in the queue


def _files():
    from toolkit.triton.local import TritonServerUnavailable, find_server

    try:
        return find_server()
    except TritonServerUnavailable as e:
        pytest.skip(f"tritonserver is not installed: {e}")


def start_server(onnx: Path, root: Path, delay_ms: float = DELAY_MS, instances: int = 1):
    """Write the repository for `onnx` under root and start tritonserver on it (a LocalServer,
    started); the caller stops it. bench/triton_load.py starts its server the same way."""
    from toolkit.triton import RepositoryConfig, write_repository
    from toolkit.triton.local import LocalServer, make_backend_dir

    files = _files()
    site = sysconfig.get_paths()["purelib"]  # the virtual environment's site-packages
    path = files.stub_python_path(TOOLKIT_ROOT, site)
    write_repository(RepositoryConfig(model=str(onnx), repo=str(root / "repo"), name="model",
                                      max_delay_ms=delay_ms, instances=instances,
                                      python_path=tuple(path)), log=lambda *_: None)
    standin = root / "onnxruntime_standin.py"
    standin.write_text(f"SYS_PATH = {path!r}\n" +
                       (Path(__file__).with_name("onnxruntime_standin.py")).read_text())
    backends = make_backend_dir(root / "backends", files, {"onnxruntime": standin})
    return LocalServer(root / "repo", backends, files, root / "tritonserver.log").start()


@pytest.fixture(scope="module")
def server(tiny_onnx, tmp_path_factory):
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the serve "
                        "extra: pip install '.[serve]')")
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    s = start_server(Path(tiny_onnx.path), tmp_path_factory.mktemp("triton"))
    try:
        yield s
    finally:
        s.stop()
        assert s.process.poll() is not None, "tritonserver is still running"


@pytest.fixture(scope="module")
def predictor(tiny_onnx):
    from toolkit.runtime import Predictor

    with Predictor.load(tiny_onnx.path, device="cpu") as p:
        yield p


@pytest.fixture(scope="module")
def rows(tiny_data):
    """Ten held-out (PNG bytes, question) pairs."""
    lines = (Path(tiny_data) / "val.jsonl").read_text().splitlines()[:10]
    items = [json.loads(line) for line in lines]
    return ([(Path(tiny_data) / it["image"]).read_bytes() for it in items],
            [it["text"] for it in items])


def _client(protocol: str, server):
    if protocol == "http":
        import tritonclient.http as client

        return client, client.InferenceServerClient(server.http_url, connection_timeout=30,
                                                    network_timeout=60)
    import tritonclient.grpc as client

    return client, client.InferenceServerClient(server.grpc_url)


def _text_inputs(client, images, questions):
    inputs = [client.InferInput("image_bytes", [len(images), 1], "BYTES"),
              client.InferInput("question", [len(questions), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[im] for im in images], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[q.encode()] for q in questions], dtype=object))
    return inputs


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_answers_the_predictors_logits(server, predictor, rows, protocol):
    client, triton = _client(protocol, server)
    feed = predictor.preprocess(*rows)
    inputs = []
    for name, array in feed.items():
        tensor = client.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32
                                   else "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        got = triton.infer("model", inputs).as_numpy("logits")
    finally:
        triton.close()
    np.testing.assert_allclose(got, predictor.infer(feed), rtol=0, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_text_model_answers_like_the_predictor(server, predictor, rows, protocol):
    images, questions = rows
    client, triton = _client(protocol, server)
    try:
        result = triton.infer("model_text", _text_inputs(client, images, questions))
        meta = triton.get_model_metadata("model_text")
    finally:
        triton.close()
    want = predictor.predict(images, questions)
    assert [x.decode() for x in result.as_numpy("label")[:, 0]] == want.labels
    np.testing.assert_allclose(result.as_numpy("probabilities"), want.probabilities, atol=1e-5)
    names = [t["name"] for t in (meta["inputs"] if protocol == "http" else
                                 [{"name": i.name} for i in meta.inputs])]
    assert names == ["image_bytes", "question"]


def test_a_bad_image_fails_its_request_only(server, predictor, rows):
    from tritonclient.utils import InferenceServerException

    client, triton = _client("http", server)
    images, questions = rows
    try:
        with pytest.raises(InferenceServerException, match="not a readable image"):
            triton.infer("model_text", _text_inputs(client, [b"not an image"], questions[:1]))
        ok = triton.infer("model_text", _text_inputs(client, images[:2], questions[:2]))
    finally:
        triton.close()
    assert [x.decode() for x in ok.as_numpy("label")[:, 0]] == \
        predictor.predict(images[:2], questions[:2]).labels


def test_concurrent_requests_are_batched_and_answered_alike(server, predictor, rows):
    """16 one-row requests at once: each answer equals the sequential Predictor's, and Triton's
    statistics show fewer executions than inferences (the dynamic batcher joined them)."""
    import tritonclient.http as client

    images, questions = rows
    want = predictor.predict(images, questions)

    def stats():
        with client.InferenceServerClient(server.http_url) as t:
            s = t.get_inference_statistics("model_text")["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    before = stats()

    def one(i):
        k = i % len(images)
        with client.InferenceServerClient(server.http_url, network_timeout=60) as t:
            r = t.infer("model_text", _text_inputs(client, [images[k]], [questions[k]]))
        return k, r.as_numpy("label")[0, 0].decode(), r.as_numpy("probabilities")[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    for k, label, probs in answers:
        assert label == want.labels[k]
        np.testing.assert_allclose(probs, want.probabilities[k], atol=1e-5)
    after = stats()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions < inferences


def _load_example():
    spec = importlib.util.spec_from_file_location("triton_client",
                                                  REPO / "examples" / "triton_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_example(server, predictor, rows, protocol):
    images, questions = rows
    example = _load_example()
    url = server.http_url if protocol == "http" else server.grpc_url
    got = example.classify(url, images[:3], questions[:3], protocol=protocol, top=2)
    want = predictor.predict(images[:3], questions[:3])
    assert [r["label"] for r in got] == want.labels
    for row, p in zip(got, want.probabilities):
        np.testing.assert_allclose(row["probabilities"], p, atol=1e-5)
        assert row["top"][0]["label"] == row["label"]  # labels.txt names the classes
        assert len(row["top"]) == 2


def test_client_example_command_line(server, predictor, tiny_data, rows, tmp_path):
    images, questions = rows
    image = tmp_path / "a.png"
    image.write_bytes(images[0])
    out = subprocess.run([sys.executable, str(REPO / "examples" / "triton_client.py"),
                          "--url", server.http_url, str(image), questions[0]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[0])
    assert row["label"] == predictor.predict(images[:1], questions[:1]).labels[0]
