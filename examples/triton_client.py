"""Ask a Triton server that serves a `toolkit triton` repository: image files and questions in,
labels and class probabilities out, over HTTP or gRPC. Needs only tritonclient and numpy.

    python examples/triton_client.py --url 127.0.0.1:8000 a.png "what shape is the red object?"
    python examples/triton_client.py --protocol grpc --url 127.0.0.1:8001 \\
        a.png "what shape is the red object?" b.png "is the blue object on the left?"

It calls the repository's Python-backend model (`<name>_text`: raw image bytes and UTF-8 questions,
BYTES (B, 1) each), which preprocesses as the toolkit's Predictor does and runs the model in
Triton. `top` asks Triton's classification extension for the best classes by name (the model's
labels.txt), as "score:index:label" strings. Client API: https://github.com/triton-inference-server/
client (src/python/library/tritonclient/http and grpc).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def classify(url: str, images: list[bytes], questions: list[str], protocol: str = "http",
             model: str = "model_text", top: int = 3, timeout: float = 60.0) -> list[dict]:
    """One request of len(images) rows; [{"label", "probabilities" (list), "top"}] per row."""
    if protocol == "http":
        import tritonclient.http as client
    elif protocol == "grpc":
        import tritonclient.grpc as client
    else:
        raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
    if len(images) != len(questions) or not images:
        raise ValueError("pass one question per image, at least one")
    inputs = [client.InferInput("image_bytes", [len(images), 1], "BYTES"),
              client.InferInput("question", [len(questions), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[im] for im in images], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[q.encode("utf-8")] for q in questions], dtype=object))
    with client.InferenceServerClient(url) as triton:
        full = triton.infer(model, inputs, outputs=[client.InferRequestedOutput("label"),
                                                    client.InferRequestedOutput("probabilities")],
                            **_timeout(protocol, timeout))
        best = None
        if top > 0:
            best = triton.infer(model, inputs, outputs=[
                client.InferRequestedOutput("probabilities", class_count=top)],
                **_timeout(protocol, timeout)).as_numpy("probabilities")
    labels, probs = full.as_numpy("label"), full.as_numpy("probabilities")
    rows = []
    for i in range(len(images)):
        row = {"label": labels[i, 0].decode("utf-8"), "probabilities": probs[i].tolist()}
        if best is not None:
            row["top"] = [_class(entry) for entry in best[i]]
        rows.append(row)
    return rows


def _timeout(protocol: str, seconds: float) -> dict:
    # HTTP takes no per-call timeout argument in infer (the client's network_timeout applies);
    # gRPC takes client_timeout in seconds.
    return {"client_timeout": seconds} if protocol == "grpc" else {}


def _class(entry) -> dict:
    score, index, label = (entry.decode() if isinstance(entry, bytes) else entry).split(":", 2)
    return {"label": label, "index": int(index), "p": float(score)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="127.0.0.1:8000",
                    help="host:port: 8000 is Triton's HTTP port, 8001 its gRPC port")
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--model", default="model_text", help="the repository's NAME_text model")
    ap.add_argument("--top", type=int, default=3, help="best classes by name (0: none)")
    ap.add_argument("pairs", nargs="+", metavar="IMAGE QUESTION")
    args = ap.parse_args(argv)
    if len(args.pairs) % 2:
        ap.error("pass IMAGE QUESTION pairs")
    paths, questions = args.pairs[0::2], args.pairs[1::2]
    try:
        images = [Path(p).read_bytes() for p in paths]
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        rows = classify(args.url, images, questions, args.protocol, args.model, args.top)
    except Exception as e:  # the client's InferenceServerException carries the server's message
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, question, row in zip(paths, questions, rows):
        print(json.dumps({"image": path, "question": question, **row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
