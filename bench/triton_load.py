"""Load through a real tritonserver: N clients x M requests to the Python-backend model.

    PYTHONPATH=. python bench/triton_load.py --onnx export/model.onnx --data data/sort-of-clevr \
        --clients 32 --requests 100 --json bench/results/triton_load.json

Writes the repository with `toolkit triton` (dynamic batching on, --max-delay-ms), starts the
nvidia-pytriton wheel's tritonserver on 127.0.0.1 (toolkit/triton/local.py) and has each client
thread send M one-row requests (PNG bytes + question, over HTTP or gRPC, one connection per client)
one after another. Every answer is compared with the sequential Predictor's on the same pair.
Prints and writes p50/p99 latency, requests/s, errors, mismatches, Triton's own counts per model
(inferences, executions: fewer executions than inferences means requests were batched; mean queue
and compute time) and the machine's load average at the end.

The wheel has no onnxruntime backend, so the model itself runs in tests/triton/
onnxruntime_standin.py (ONNX Runtime in a Python-based backend, one request at a time); the
Python model batches the concurrent requests and calls it once per batch (BLS). So this measures
this CPU setup, not NVIDIA's onnxruntime or tensorrt backend on a GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolkit.artifacts import write_json  # noqa: E402
from toolkit.runtime import Predictor  # noqa: E402
from toolkit.triton import RepositoryConfig, write_repository  # noqa: E402
from toolkit.triton.local import LocalServer, find_server, make_backend_dir  # noqa: E402


def start(onnx: Path, root: Path, delay_ms: float, instances: int) -> LocalServer:
    files = find_server()
    path = files.stub_python_path(REPO, sysconfig.get_paths()["purelib"])
    write_repository(RepositoryConfig(model=str(onnx), repo=str(root / "repo"), name="model",
                                      max_delay_ms=delay_ms, instances=instances,
                                      python_path=tuple(path)), log=lambda *_: None)
    standin = root / "onnxruntime_standin.py"
    standin.write_text(f"SYS_PATH = {path!r}\n" +
                       (REPO / "tests" / "triton" / "onnxruntime_standin.py").read_text())
    backends = make_backend_dir(root / "backends", files, {"onnxruntime": standin})
    return LocalServer(root / "repo", backends, files, root / "tritonserver.log").start()


def pairs(data: Path, n: int) -> tuple[list[bytes], list[str]]:
    items = [json.loads(line) for line in (data / "val.jsonl").read_text().splitlines()[:n]]
    return ([(data / it["image"]).read_bytes() for it in items], [it["text"] for it in items])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a dataset folder (val.jsonl)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=100, help="per client")
    ap.add_argument("--distinct", type=int, default=64, help="distinct (image, question) pairs")
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--max-delay-ms", type=float, default=1.0)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    images, questions = pairs(args.data, args.distinct)
    with Predictor.load(args.onnx, device="cpu") as predictor:  # the sequential reference
        want = [predictor.predict([im], [q]) for im, q in zip(images, questions)]
    if args.protocol == "http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client

    with tempfile.TemporaryDirectory(prefix="triton-load-") as tmp:
        server = start(args.onnx, Path(tmp), args.max_delay_ms, args.instances)
        try:
            url = server.http_url if args.protocol == "http" else server.grpc_url
            latencies, errors, mismatches = [], [], []
            lock = threading.Lock()

            def stats():
                """Triton's counters per model: inferences, executions, and the total ns
                requests queued and computed (statistics extension, /v2/models/NAME/stats)."""
                import tritonclient.http as h

                out = {}
                with h.InferenceServerClient(server.http_url) as t:
                    for m in ("model_text", "model"):
                        s = t.get_inference_statistics(m)["model_stats"][0]
                        i = s["inference_stats"]
                        out[m] = (int(s["inference_count"]), int(s["execution_count"]),
                                  int(i["queue"]["ns"]), int(i["queue"]["count"]),
                                  int(i["compute_infer"]["ns"]), int(i["compute_infer"]["count"]))
                return out

            def run(c: int) -> None:
                triton = client.InferenceServerClient(url)
                try:
                    for j in range(args.requests):
                        k = (c * args.requests + j) % len(images)
                        inputs = [client.InferInput("image_bytes", [1, 1], "BYTES"),
                                  client.InferInput("question", [1, 1], "BYTES")]
                        inputs[0].set_data_from_numpy(np.array([[images[k]]], dtype=object))
                        inputs[1].set_data_from_numpy(
                            np.array([[questions[k].encode()]], dtype=object))
                        t0 = time.perf_counter()
                        try:
                            r = triton.infer("model_text", inputs)
                        except Exception as e:  # counted, not raised: the load goes on
                            with lock:
                                errors.append(f"{type(e).__name__}: {e}"[:200])
                            continue
                        dt = time.perf_counter() - t0
                        label = r.as_numpy("label")[0, 0].decode()
                        probs = r.as_numpy("probabilities")[0]
                        ok = label == want[k].labels[0] and np.allclose(
                            probs, want[k].probabilities[0], atol=1e-5)
                        with lock:
                            latencies.append(dt)
                            if not ok:
                                mismatches.append(k)
                finally:
                    triton.close()

            before = stats()
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(run, range(args.clients)))
            wall = time.perf_counter() - t0
            after = stats()
        finally:
            server.stop()

    lat = np.array(latencies) * 1000
    report = {
        "clients": args.clients, "requests_per_client": args.requests,
        "protocol": args.protocol, "max_delay_ms": args.max_delay_ms,
        "instances": args.instances, "onnx": str(args.onnx),
        "requests": args.clients * args.requests, "answered": len(latencies),
        "errors": len(errors), "error_examples": sorted(set(errors))[:5],
        "mismatches": len(mismatches), "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }
    for m in ("model_text", "model"):
        # Rows (inferences), batches run (executions); queue and compute times are summed
        # per request (a request's compute is that of the batch it ran in).
        inf, ex, q_ns, q_n, c_ns, c_n = (a - b for a, b in zip(after[m], before[m]))
        report[m] = {"inferences": inf, "executions": ex,
                     "mean_batch": round(inf / ex, 1) if ex else None,
                     "mean_queue_ms": round(q_ns / max(q_n, 1) / 1e6, 1),
                     "mean_compute_ms": round(c_ns / max(c_n, 1) / 1e6, 1)}
    report["load_average"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    if args.json:
        write_json(args.json, report)
    return 0 if not errors and not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
