"""Load on examples/serve.py: N clients x M requests, without and with batching, side by side.

    python bench/serve_load.py export/model.onnx --data data/sort-of-clevr
    python bench/serve_load.py MODEL --data DIR --clients 32 --requests 100 --max-batch 32 \\
        --max-delay-ms 5 --out bench/results/serve-load.json

For each mode the service is started as its own process on 127.0.0.1 (port 0: the kernel picks a
free one; the service prints it), warmed up, then every client thread sends its requests one after
another, each on a new connection (as curl or urllib would), all clients starting together. Every
answer is checked against the sequential Predictor's answer for the same request in this process:
the same label, and probabilities within PROB_ATOL (a batch pads questions to its longest, which the
model masks; only float32 summation order differs). Prints (and with --out writes) one JSON report:
errors by kind, mismatches, p50/p99 latency, requests/s per mode, and the batched/unbatched ratio.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROB_ATOL = 1e-5
START_TIMEOUT = 120  # s for the service to load the model and print its address


def load_requests(data: Path, n: int) -> list[tuple[bytes, str]]:
    """n distinct (image bytes, question) pairs from the dataset's val (else train) manifest."""
    manifest = data / "val.jsonl" if (data / "val.jsonl").is_file() else data / "train.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines()[:n]]
    return [((data / r["image"]).read_bytes(), r["text"]) for r in rows]


def reference(model: str, requests) -> list[dict]:
    from toolkit.runtime import Predictor

    with Predictor.load(model) as p:
        return [p.predict([image], [q]).rows()[0] for image, q in requests]


class Service:
    """examples/serve.py as a subprocess; always stopped (SIGINT, then kill) on exit."""

    def __init__(self, script: Path, model: str, flags: list[str], log: Path):
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(script), model, "--host", "127.0.0.1",
                                      "--port", "0", *flags], stdout=subprocess.PIPE,
                                     stderr=open(log, "w"), text=True, env=env)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        m = re.search(r"http://([\d.]+):(\d+)", line[0] if line else "")
        if not m:
            self.stop()
            sys.exit(f"error: the service did not start within {START_TIMEOUT} s; see {log}")
        self.host, self.port = m.group(1), int(m.group(2))

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # serve.py closes cleanly on KeyboardInterrupt
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def post(host: str, port: int, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request("POST", "/predict", body, {"Content-Type": "application/json",
                                                "Connection": "close"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def run_load(svc: Service, bodies: list[bytes], want: list[dict], clients: int, per_client: int
             ) -> dict:
    start = threading.Barrier(clients + 1)

    def client(c: int) -> list[tuple]:
        out = []
        start.wait()
        for j in range(per_client):
            k = (c * per_client + j) % len(bodies)
            t0 = time.perf_counter()
            try:
                status, body = post(svc.host, svc.port, bodies[k])
                out.append((k, time.perf_counter() - t0, status, body, None))
            except Exception as e:  # a failed request is a result: count it by kind
                out.append((k, time.perf_counter() - t0, None, None, f"{type(e).__name__}: {e}"))
        return out

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, c) for c in range(clients)]
        start.wait()
        t0 = time.perf_counter()
        results = [r for f in futures for r in f.result()]
        wall = time.perf_counter() - t0
    errors: Counter[str] = Counter()
    mismatches, max_diff, ok_latency = 0, 0.0, []
    for k, latency, status, body, exc in results:
        if exc is not None:
            errors[exc[:120]] += 1
        elif status != 200:
            errors[f"HTTP {status}: {str(body.get('error'))[:100]}"] += 1
        else:
            ok_latency.append(latency)
            w = want[k]
            diff = max(abs(body["probabilities"][c] - p) for c, p in w["probabilities"].items())
            max_diff = max(max_diff, diff)
            mismatches += body["label"] != w["label"] or diff > PROB_ATOL
    lat = np.asarray([r[1] for r in results]) * 1000
    return {"requests": len(results), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "mismatches": mismatches, "max_prob_diff": max_diff,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 2), "wall_s": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 1),
            "answered_per_s": round(len(ok_latency) / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an exported .onnx (or anything examples/serve.py loads)")
    ap.add_argument("--data", required=True, help="a dataset directory (toolkit data generate)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=100, help="per client")
    ap.add_argument("--distinct", type=int, default=64, help="distinct requests, cycled")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="the service's --threads (ONNX Runtime intra-op), both modes")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--modes", default="unbatched,batched")
    ap.add_argument("--server", default=str(REPO / "examples" / "serve.py"),
                    help="the service script (another checkout's, to compare)")
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    a = ap.parse_args()
    if a.clients < 1 or a.requests < 1 or a.distinct < 1:
        sys.exit("error: --clients, --requests and --distinct must be >= 1")
    data = Path(a.data)
    if not data.is_dir():
        sys.exit(f"error: --data {data} is not a directory")

    requests = load_requests(data, a.distinct)
    want = reference(a.model, requests)
    bodies = [json.dumps({"image": base64.b64encode(im).decode(), "question": q}).encode()
              for im, q in requests]
    flags = {"unbatched": [], "batched": ["--max-batch", str(a.max_batch),
                                          "--max-delay-ms", str(a.max_delay_ms)]}
    common = ["--threads", str(a.threads)] if a.threads else []
    report = {"command": "python bench/serve_load.py " + " ".join(sys.argv[1:]),
              "machine": {"node": platform.node(), "cpus": os.cpu_count(),
                          "python": platform.python_version(),
                          "loadavg_start": os.getloadavg()},
              "model": a.model, "clients": a.clients, "requests_per_client": a.requests,
              "distinct_requests": len(requests), "prob_atol": PROB_ATOL, "modes": {}}
    for mode in a.modes.split(","):
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-load-{mode}-{os.getpid()}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {mode}: starting the service", file=sys.stderr)
        with Service(Path(a.server), a.model, common + flags[mode], log) as svc:
            for k in range(a.warmup):
                post(svc.host, svc.port, bodies[k % len(bodies)])
            before = svc.get("/health").get("batching")
            result = run_load(svc, bodies, want, a.clients, a.requests)
            result["service"] = after = svc.get("/health").get("batching")
        stderr = log.read_text()
        result["service_tracebacks"] = stderr.count("Traceback")
        if after:  # requests per backend call during the load (the warm-up left out)
            calls = after["calls"] - before["calls"]
            result["mean_batch"] = round((after["answered"] - before["answered"]) / max(1, calls),
                                         2)
        report["modes"][mode] = result
        print(f"[{time.strftime('%H:%M:%S')}] {mode}: {json.dumps(result)}", file=sys.stderr)
    modes = report["modes"]
    if "unbatched" in modes and "batched" in modes:
        report["throughput_ratio"] = round(modes["batched"]["requests_per_s"]
                                           / modes["unbatched"]["requests_per_s"], 2)
    report["machine"]["loadavg_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        from toolkit.artifacts import write_json

        write_json(a.out, report)
    bad = sum(m["errors"] + m["mismatches"] for m in modes.values())
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
