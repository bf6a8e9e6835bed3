"""How fast the `seed` preset can run on this CPU at all: its FLOPs against the machine's GEMM peak.

  python bench/roofline.py --threads 2 --json bench/results/roofline.json [MODEL.onnx ...]

Counts the model's floating-point work at batch 1, L = 128 (torch's FlopCounterMode: matrix
products and convolutions, 2 FLOPs per multiply-add), times PyTorch eager on it, and times single
matrix products of the model's own shapes in PyTorch and in ONNX Runtime (MatMul in FP32,
MatMulInteger with uint8 x int8 for the CPU INT8 graph). The fastest product is taken as the peak:
no graph can do the model's work in less than FLOPs / peak, so that time over eager is the lowest
ratio an export can reach on this machine (bench/export.md). ONNX files of the `seed` preset given
as arguments are timed on the same feed, against that floor.
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
from latency import median_ms  # bench/latency.py: bench/ is on sys.path when run as a script

# (M, K, N) of the seed's heaviest products at batch 1, L = 128: BERT's feed-forward layers and
# attention projections, and one large square product for the machine's best case.
SHAPES = [(128, 768, 3072), (128, 3072, 768), (128, 768, 768), (1024, 1024, 1024)]


def ort_matmul(m: int, k: int, n: int, integer: bool, threads: int):
    """A one-node ONNX Runtime session computing (M, K) @ (K, N), weights as an initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        w = rng.integers(-64, 64, (k, n), dtype=np.int8)  # 7 bits, as the cpu target's weights
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"a": a})


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines()
             if line.startswith("model name")]
    simd = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
    return f"{names[0] if names else platform.machine()} ({simd})"


def main() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from toolkit.config import preset
    from toolkit.model.net import DualModalNet

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("onnx", nargs="*", help="exports of the seed preset to time on the same feed")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    cfg = preset("seed")
    model = DualModalNet(cfg).eval()
    s = cfg.image_size
    feed = {"image": torch.randn(1, 3, s, s),
            # ids under 100 fit any export's vocabulary; which ids they are does not change the work
            "input_ids": torch.randint(5, 100, (1, a.length)),
            "attention_mask": torch.ones(1, a.length, dtype=torch.long)}
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model(**feed)
        flops = counter.get_total_flops()
        eager = median_ms(lambda: model(**feed), a.reps)

    gemm = []
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k), torch.randn(k, n)
        row = {"shape": [m, k, n], "flop": 2 * m * k * n}
        row["torch_fp32_ms"] = median_ms(lambda: torch.mm(x, w), a.reps * 3)
        row["ort_fp32_ms"] = median_ms(ort_matmul(m, k, n, False, a.threads), a.reps * 3)
        row["ort_u8s8_ms"] = median_ms(ort_matmul(m, k, n, True, a.threads), a.reps * 3)
        for key in ("torch_fp32", "ort_fp32", "ort_u8s8"):
            row[f"{key}_gflops"] = row["flop"] / row[f"{key}_ms"] / 1e6
        gemm.append(row)
        print(f"{m}x{k}x{n}: torch fp32 {row['torch_fp32_gflops']:.0f} GFLOP/s, ORT fp32 "
              f"{row['ort_fp32_gflops']:.0f}, ORT u8s8 {row['ort_u8s8_gflops']:.0f} GOP/s",
              flush=True)

    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    exports = []
    np_feed = {k: v.numpy() for k, v in feed.items()}
    for path in a.onnx:
        with OnnxRuntimeRunner(path, threads=a.threads) as r:
            exports.append({"onnx": path, "ms": median_ms(lambda: r.infer(np_feed), a.reps)})

    peak_fp32 = max(max(r["torch_fp32_gflops"], r["ort_fp32_gflops"]) for r in gemm)
    peak_int8 = max(r["ort_u8s8_gflops"] for r in gemm)
    floor_fp32 = flops / peak_fp32 / 1e6  # ms
    floor_int8 = flops / peak_int8 / 1e6
    out = {
        "machine": f"{cpu_name()}, {a.threads} threads",
        "command": f"python bench/roofline.py --threads {a.threads} --length {a.length} "
                   f"--reps {a.reps} " + " ".join(a.onnx),
        "model_gflop": flops / 1e9, "eager_ms": eager,
        "eager_gflops": flops / eager / 1e6,
        "peak_fp32_gflops": peak_fp32, "peak_u8s8_gops": peak_int8,
        "floor_fp32_ms": floor_fp32, "floor_fp32_over_eager": floor_fp32 / eager,
        "floor_u8s8_ms": floor_int8, "floor_u8s8_over_eager": floor_int8 / eager,
        "gemm": gemm,
        "exports": [{**e, "over_eager": e["ms"] / eager, "over_fp32_floor": e["ms"] / floor_fp32,
                     "over_u8s8_floor": e["ms"] / floor_int8} for e in exports],
    }
    print(f"seed at batch 1, L = {a.length}: {flops / 1e9:.1f} GFLOP; eager {eager:.1f} ms "
          f"({out['eager_gflops']:.0f} GFLOP/s)\n"
          f"FP32 peak {peak_fp32:.0f} GFLOP/s -> at least {floor_fp32:.1f} ms, "
          f"{out['floor_fp32_over_eager']:.2f}x eager\n"
          f"U8S8 peak {peak_int8:.0f} GOP/s -> at least {floor_int8:.1f} ms, "
          f"{out['floor_u8s8_over_eager']:.2f}x eager")
    for e in out["exports"]:
        print(f"{e['onnx']}: {e['ms']:.1f} ms, {e['over_eager']:.2f}x eager, "
              f"{e['over_fp32_floor']:.2f}x the FP32 floor, {e['over_u8s8_floor']:.2f}x the U8S8 floor")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
