"""examples/serve.py: the HTTP service answers like the Predictor it embeds; bad input is a 400."""

from __future__ import annotations

import base64
import importlib.util
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("serve_example", REPO / "examples" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def service(tiny_onnx):
    from toolkit.runtime import Predictor

    serve = _load_example()
    predictor = Predictor.load(tiny_onnx.path)
    server = serve.make_server(predictor, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", predictor
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def _call(url, body=None):
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health(service):
    url, predictor = service
    status, body = _call(url + "/health")
    assert status == 200 and body["status"] == "ok" and body["classes"] == predictor.classes


def test_predict_equals_the_predictor(service, tiny_data):
    url, predictor = service
    rows = [json.loads(x) for x in (Path(tiny_data) / "val.jsonl").read_text().splitlines()[:4]]
    for row in rows:
        image = (Path(tiny_data) / row["image"]).read_bytes()
        payload = json.dumps({"image": base64.b64encode(image).decode(),
                              "question": row["text"]}).encode()
        status, body = _call(url + "/predict", payload)
        want = predictor.predict([image], [row["text"]]).rows()[0]
        assert status == 200
        assert body["label"] == want["label"]
        assert body["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


@pytest.mark.parametrize("payload, match", [
    (b"not json", "not JSON"),
    (json.dumps({"question": "what shape?"}).encode(), "base64"),
    (json.dumps({"image": "!!!", "question": "what shape?"}).encode(), "base64"),
    (json.dumps({"image": base64.b64encode(b"not an image").decode(),
                 "question": "what shape?"}).encode(), "not a readable image"),
    (json.dumps({"image": base64.b64encode(b"x").decode(), "question": ""}).encode(), "empty"),
])
def test_bad_requests_are_400(service, payload, match):
    url, _ = service
    status, body = _call(url + "/predict", payload)
    assert status == 400 and match in body["error"]
