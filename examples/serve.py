"""A small HTTP service embedding the runtime (standard library only, plus the toolkit runtime).

    python examples/serve.py export/model.onnx --port 8000
    curl -s localhost:8000/health
    curl -s localhost:8000/predict -d '{"image": "<base64 PNG/JPEG>", "question": "..."}'

POST /predict  JSON {"image": base64 PNG or JPEG, "question": str}
               -> 200 {"label": str, "probabilities": {class: p}}; 400 {"error": msg} for bad input
GET  /health   -> 200 {"status": "ok", "backend": ..., "classes": [...]}

ThreadingHTTPServer answers each request on its own thread, all sharing one Predictor: safe, since
ONNX Runtime's session.run is thread-safe and the Predictor serializes the TensorRT and torch
backends itself (see toolkit/runtime/predictor.py).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from toolkit.errors import ToolkitError
from toolkit.runtime import Predictor

MAX_BODY = 16 << 20  # refuse bodies over 16 MiB instead of reading them


class BadRequest(Exception):
    pass


def parse_request(body: bytes) -> tuple[bytes, str]:
    """(image bytes, question) from a /predict body; BadRequest naming what is wrong."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not JSON ({e})") from e
    if not isinstance(data, dict):
        raise BadRequest('body must be a JSON object {"image": ..., "question": ...}')
    image, question = data.get("image"), data.get("question")
    if not isinstance(image, str) or not image:
        raise BadRequest('"image" must be a base64-encoded PNG or JPEG string')
    if not isinstance(question, str):
        raise BadRequest('"question" must be a string')
    try:
        raw = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f'"image" is not valid base64 ({e})') from e
    return raw, question


def make_handler(predictor: Predictor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: HTTPStatus, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(HTTPStatus.OK, {"status": "ok", "backend": predictor.backend.value,
                                           "classes": predictor.classes})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/predict":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True  # the unread body must not be parsed as a request
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           {"error": f"body over {MAX_BODY} bytes"})
                return
            try:
                image, question = parse_request(self.rfile.read(length))
                row = predictor.predict([image], [question]).rows()[0]
            except (BadRequest, ToolkitError) as e:  # the client's input: say what is wrong
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
                return
            self._send(HTTPStatus.OK, row)

        def log_message(self, fmt, *args) -> None:  # quiet by default; errors still go out
            pass

    return Handler


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000
                ) -> ThreadingHTTPServer:
    """A server bound to (host, port) (port 0: any free one; see server.server_address)."""
    server = ThreadingHTTPServer((host, port), make_handler(predictor))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a run directory, an .onnx export or a .plan engine")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = ap.parse_args(argv)
    predictor = Predictor.load(args.model, device=args.device)
    server = make_server(predictor, args.host, args.port)
    print(f"serving {args.model} ({predictor.backend.value}) on "
          f"http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        predictor.close()


if __name__ == "__main__":
    main()
