"""A small HTTP service embedding the runtime (standard library only, plus the toolkit runtime).

    python examples/serve.py export/model.onnx --port 8000
    python examples/serve.py export/model.onnx --max-batch 32 --max-delay-ms 5   # batching
    curl -s localhost:8000/health
    curl -s localhost:8000/predict -d '{"image": "<base64 PNG/JPEG>", "question": "..."}'

POST /predict  JSON {"image": base64 PNG or JPEG, "question": str}
               -> 200 {"label": str, "probabilities": {class: p}}; 400 {"error": msg} for bad input
               503 {"error": msg} when the service is shutting down
GET  /health   -> 200 {"status": "ok", "backend": ..., "classes": [...], "batching": null or
                  {"max_batch", "max_delay_ms", "calls", "answered"}}

ThreadingHTTPServer answers each request on its own thread, all sharing one Predictor: safe, since
ONNX Runtime's session.run is thread-safe and the Predictor serializes the TensorRT and torch
backends itself (see toolkit/runtime/predictor.py). By default each request is one backend call;
with --max-batch N > 1 the threads hand their (checked, preprocessed) requests to a
toolkit.runtime.batching.Batcher, which runs up to N of them as one call, waiting at most
--max-delay-ms for company.

The listen backlog is the kernel's maximum, not socketserver's default of 5: with 32 clients each
opening a connection per request, five pending connections overflowed the accept queue whenever
the accept loop fell behind, and Linux then dropped SYNs (the client retries after about 1 s) or
answered with a reset (see bench/serving.md).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from toolkit.errors import ToolkitError
from toolkit.runtime import Predictor
from toolkit.runtime.batching import BatchConfig, Batcher, BatcherClosedError

MAX_BODY = 16 << 20  # refuse bodies over 16 MiB instead of reading them
ANSWER_TIMEOUT = 120  # s a handler waits on the batcher before answering 503


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


def make_handler(predictor: Predictor, batcher: Batcher | None = None
                 ) -> type[BaseHTTPRequestHandler]:
    def answer(image: bytes, question: str) -> dict:
        if batcher is None:
            return predictor.predict([image], [question]).rows()[0]
        return batcher.predict(image, question, timeout=ANSWER_TIMEOUT).rows()[0]

    def batching() -> dict | None:
        if batcher is None:
            return None
        return {"max_batch": batcher.max_batch, "max_delay_ms": batcher.config.max_delay_ms,
                "calls": batcher.calls, "answered": batcher.answered}

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
                                           "classes": predictor.classes,
                                           "batching": batching()})
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
                row = answer(image, question)
            except (BatcherClosedError, TimeoutError) as e:  # ours, not the client's
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
                return
            except (BadRequest, ToolkitError) as e:  # the client's input: say what is wrong
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
                return
            self._send(HTTPStatus.OK, row)

        def log_message(self, fmt, *args) -> None:  # quiet by default; errors still go out
            pass

    return Handler


class Server(ThreadingHTTPServer):
    # listen()'s backlog; socketserver's default is 5. The kernel caps it at net.core.somaxconn.
    # docs.python.org/3/library/socketserver.html#socketserver.BaseServer.request_queue_size
    request_queue_size = socket.SOMAXCONN
    daemon_threads = True


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
                batcher: Batcher | None = None) -> Server:
    """A server bound to (host, port) (port 0: any free one; see server.server_address).
    With a batcher, requests go through it; the caller closes it (after the server)."""
    return Server((host, port), make_handler(predictor, batcher))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a run directory, an .onnx export or a .plan engine")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads [its default: one per core]")
    ap.add_argument("--max-batch", type=int, default=1,
                    help="batch up to this many concurrent requests per backend call "
                         "(1, the default: no batching)")
    ap.add_argument("--max-delay-ms", type=float, default=2.0,
                    help="with --max-batch > 1: longest a request waits for others [2]")
    args = ap.parse_args(argv)
    try:
        batching = BatchConfig(args.max_batch, args.max_delay_ms)
        if args.threads is not None and args.threads < 1:
            raise ToolkitError(f"--threads must be >= 1, got {args.threads}")
        predictor = Predictor.load(args.model, device=args.device, threads=args.threads)
    except ToolkitError as e:
        sys.exit(f"error: {e}")
    batcher = Batcher(predictor, batching) if batching.max_batch > 1 else None
    try:
        server = make_server(predictor, args.host, args.port, batcher)
    except OSError as e:  # the port is taken, or the host is not this machine's
        if batcher is not None:
            batcher.close()
        predictor.close()
        sys.exit(f"error: cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                 "pick another --port or --host")
    mode = (f", batches of up to {batcher.max_batch} within {batching.max_delay_ms:g} ms"
            if batcher else "")
    print(f"serving {args.model} ({predictor.backend.value}{mode}) on "
          f"http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if batcher is not None:
            batcher.close()  # fails requests still queued with a 503 instead of leaving them
        predictor.close()


if __name__ == "__main__":
    main()
