"""FP32 ONNX -> INT8 QDQ ONNX with ONNX Runtime's static quantization, for two targets.

API and options from onnxruntime.quantization.quantize_static's docstring and ORT's quantization
page (onnxruntime.ai/docs/performance/model-optimizations/quantization.html): "If model is targeted to GPU/TRT, symmetric activation
and weight are required. If model is targeted to CPU, asymmetric activation and symmetric weight
are recommended."
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.config import CalibMethod, ComputeOp, Int8Target
from toolkit.export.graph import ExportError

# Only the ops that carry the arithmetic: their inputs get QuantizeLinear/DequantizeLinear. Softmax,
# LayerNormalization, Gelu and the reductions stay in float, which TensorRT's explicit quantization
# expects (it fuses Q/DQ into the convolutions and matrix products).
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Recipe:
    activation: str  # QuantType name
    weight: str
    activation_symmetric: bool
    per_channel: bool
    extra: tuple = ()
    ops: tuple = QUANTIZED_OPS
    reduce_range: bool = False  # weights in 7 bits


RECIPES = {
    # Signed int8, zero point 0 everywhere, weights per output channel, activations per tensor.
    # Weights are stored int8 with a DequantizeLinear (not an FP32 Q/DQ pair) to keep the file
    # at about a quarter of FP32; TensorRT's explicit quantization accepts quantized constant
    # weights followed by DequantizeLinear.
    # Outputs of the quantized ops stay float: otherwise ORT puts Q/DQ on the attention scores
    # right before Softmax, and TensorRT keeps Softmax in float.
    Int8Target.tensorrt: Recipe("QInt8", "QInt8", True, True,
                                # Bias stays float: TensorRT has no int32 bias dequantization.
                                (("DedicatedQDQPair", True), ("QuantizeBias", False),
                                 ("OpTypesToExcludeOutputQuantization", list(QUANTIZED_OPS)))),
    # U8S8: uint8 asymmetric activations, int8 symmetric weights per channel; ORT's x86 kernels
    # (VNNI/AVX2 u8*s8) are built for it. Measured in bench/export.md against S8S8.
    # Gather too: BERT's word embedding table is a sixth of the seed model's weights, and left in
    # FP32 it keeps the file at 39% of FP32 instead of about a quarter. (Not for `tensorrt`: a
    # DequantizeLinear feeding a Gather is not one of TensorRT's documented Q/DQ fusions.)
    # Weights in 7 bits: without VNNI, ORT's x86 U8S8 kernels add pairs of uint8 x int8 products
    # in int16 (AVX2's vpmaddubsw), which 8-bit weights overflow (255 x 127 x 2 > 32,767) and 7-bit
    # ones cannot; quantize_static documents reduce_range for non-VNNI CPUs (bench/export.md).
    Int8Target.cpu: Recipe("QUInt8", "QInt8", False, True, ops=QUANTIZED_OPS + ("Gather",),
                           reduce_range=True),
}


class Reader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed batches."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):  # CalibrationDataReader's protocol also allows iteration
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def quantize(fp32_path: Path, out_path: Path, batches: list[dict[str, np.ndarray]],
             target: Int8Target, method: CalibMethod, exclude: tuple[ComputeOp, ...] = (),
             scales: dict[str, float] | None = None) -> None:
    """Write the QDQ model for `target` to `out_path`, calibrated on `batches`; the op types in
    `exclude` keep float inputs. `scales` (tensor name -> scale, zero point 0) replace the
    calibrated scales of those tensors: quantization-aware fine-tuning's learned ones."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class _Reader(Reader, CalibrationDataReader):
        pass

    recipe = RECIPES[target]
    extra = {"ActivationSymmetric": recipe.activation_symmetric, "WeightSymmetric": True,
             # BERT's linears are MatMul with the weight as input 1: its output axis is 1.
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, **dict(recipe.extra)}
    if scales:
        if target is not Int8Target.tensorrt:
            raise ExportError("learned INT8 scales follow the tensorrt target's rules (symmetric "
                              "int8); export this run with --target tensorrt")
        # TensorQuantOverrides (quantize_static's docstring): a per-tensor scale and zero point
        # replace what calibration found for that tensor.
        extra["TensorQuantOverrides"] = {name: [{"scale": np.array(s, np.float32),
                                                 "zero_point": np.array(0, np.int8)}]
                                         for name, s in scales.items()}
    calib = {CalibMethod.minmax: CalibrationMethod.MinMax,
             CalibMethod.entropy: CalibrationMethod.Entropy,
             CalibMethod.percentile: CalibrationMethod.Percentile}[method]
    try:
        quantize_static(str(fp32_path), str(out_path), _Reader(batches),
                        quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=[o for o in recipe.ops
                                              if o not in {e.value for e in exclude}],
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=getattr(QuantType, recipe.activation),
                        weight_type=getattr(QuantType, recipe.weight), calibrate_method=calib,
                        calibration_providers=["CPUExecutionProvider"], extra_options=extra)
    except Exception as e:
        raise ExportError(f"INT8 quantization of {fp32_path} failed: {type(e).__name__}: "
                          f"{str(e)[:400]}") from e


def quantized_inputs(model, exclude: tuple[ComputeOp, ...] = ()) -> list[tuple]:
    """Where `quantize` puts Q/DQ: (node, input index, is an initializer) for inputs 0 and 1 of
    every Conv/MatMul/Gemm not excluded (input 2, the bias, stays float). An initializer is a
    weight (int8 per channel); anything else is an activation (one scale per tensor)."""
    inits = {t.name for t in model.graph.initializer}
    floats = {e.value for e in exclude}
    return [(n, i, n.input[i] in inits) for n in model.graph.node
            if n.op_type in QUANTIZED_OPS and n.op_type not in floats for i in (0, 1)]


def calibrate(fp32_path: Path, batches: list[dict[str, np.ndarray]], method: CalibMethod,
              work_dir: Path) -> dict[str, tuple[float, float]]:
    """Each calibrated tensor's (min, max) over `batches`: the calibrator quantize_static builds
    (same op types, method and defaults), run on its own so that its ranges can be kept."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calib = {CalibMethod.minmax: CalibrationMethod.MinMax,
             CalibMethod.entropy: CalibrationMethod.Entropy,
             CalibMethod.percentile: CalibrationMethod.Percentile}[method]
    try:
        calibrator = create_calibrator(Path(fp32_path), list(QUANTIZED_OPS),
                                       augmented_model_path=str(work_dir / "augmented.onnx"),
                                       calibrate_method=calib,
                                       providers=["CPUExecutionProvider"])
        calibrator.collect_data(Reader(batches))
        ranges = calibrator.compute_data()
    except Exception as e:
        raise ExportError(f"INT8 calibration of {fp32_path} failed: {type(e).__name__}: "
                          f"{str(e)[:400]}") from e
    return {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in ranges[name].range_value)
            for name in ranges.data}


def symmetric_scale(lo: float, hi: float) -> float:
    """The tensorrt recipe's scale for a calibrated range, computed as quantize_static does
    (onnxruntime.quantization.quant_utils.compute_scale_zp, symmetric int8 [-127, 127])."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True)
    _, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax,
                                symmetric=True)
    return float(np.float32(scale))


def keep_float(qdq, fp32, nodes) -> object:
    """A copy of the QDQ graph in which the named nodes read the float tensors they read in the
    FP32 graph it was quantized from (node names are kept by quantize_static): their
    DequantizeLinear inputs are bypassed, float weights come back from `fp32`, and the Q/DQ
    nodes and int8 weights nobody reads any more are dropped. Keeping every compute node float
    gives back the FP32 graph."""
    import onnx

    nodes = set(nodes)
    m = onnx.ModelProto.FromString(qdq.SerializeToString())
    g = m.graph
    ref = {n.name: n for n in fp32.graph.node}
    ref_inits = {t.name: t for t in fp32.graph.initializer}
    have = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    missing = sorted((nodes - {n.name for n in g.node}) | (nodes - set(ref)))
    if missing:
        raise ExportError(f"nodes to keep in float are not in both graphs, e.g. {missing[:3]}; "
                          "the QDQ graph was not quantized from this FP32 graph")
    for n in g.node:
        if n.name not in nodes:
            continue
        r = ref[n.name]
        for i, x in enumerate(n.input):
            p = producer.get(x)
            if p is not None and p.op_type == "DequantizeLinear" and i < len(r.input):
                n.input[i] = r.input[i]
                if r.input[i] in ref_inits and r.input[i] not in have:
                    g.initializer.append(ref_inits[r.input[i]])
                    have.add(r.input[i])
    # ORT's quantizer also hands the dequantized tensor to the float ops that read it (Shape, a
    # residual Add); once no INT8 compute op reads a QDQ pair, they get the float tensor back.
    readers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    for dq in g.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or dq.output[0] in outputs:
            continue
        users = readers.get(dq.output[0], [])
        if not any(u.op_type in QUANTIZED_OPS and u.name not in nodes for u in users):
            for u in users:
                u.input[:] = [q.input[0] if x == dq.output[0] else x for x in u.input]
    # Dead-code elimination, last node first: keep what the outputs need.
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    keep.reverse()
    inits = [t for t in g.initializer if t.name in needed]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)
    return m


def check_qdq(model, target: Int8Target, exclude: tuple[ComputeOp, ...] = (),
              float_nodes=()) -> dict:
    """The structural check every INT8 export passes: each Conv/MatMul/Gemm weight comes through a
    DequantizeLinear (float, for the op types in `exclude`), Softmax is not quantized, and for
    `tensorrt` every zero point is int8 0. `float_nodes` (by name) are kept float, like the
    excluded op types."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    floats = {e.value for e in exclude}
    float_nodes = set(float_nodes)

    def kept(n) -> bool:
        return n.op_type in floats or n.name in float_nodes

    def dequantized(n) -> bool:
        return any(producer.get(x) is not None and producer[x].op_type == "DequantizeLinear"
                   for x in n.input[:2])

    # Weights stored quantized: an int8 initializer read by a DequantizeLinear.
    weights = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == TensorProto.INT8]
    missing = [n.name for n in g.node
               if n.op_type in QUANTIZED_OPS and not kept(n) and not dequantized(n)]
    if missing or not weights:
        raise ExportError(f"INT8 graph: {len(missing)} Conv/MatMul/Gemm node(s) have no "
                          f"DequantizeLinear input, e.g. {missing[:3]}; quantization did not "
                          "cover the model")
    stray = [n.name for n in g.node if kept(n) and dequantized(n)]
    if stray:
        raise ExportError(f"INT8 graph quantizes {len(stray)} node(s) kept in float (an "
                          f"excluded op type or a node --auto-fallback kept), e.g. {stray[:3]}; "
                          "they should have stayed float")
    soft = [n.name for n in g.node if n.op_type == "Softmax" and dequantized(n)]
    if soft and target is Int8Target.tensorrt:
        raise ExportError(f"INT8 graph quantizes Softmax input(s) {soft[:3]}; TensorRT keeps "
                          "Softmax in float")
    zps = []
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = inits.get(n.input[2])
            if zp is not None:
                zps.append(zp)
    if target is Int8Target.tensorrt:
        bad = [z.name for z in zps if z.data_type != TensorProto.INT8
               or np.any(numpy_helper.to_array(z) != 0)]
        if bad:
            raise ExportError(f"INT8 (tensorrt) graph has {len(bad)} zero point(s) that are not "
                              f"int8 0, e.g. {bad[:3]}; TensorRT accepts symmetric QDQ only")
    return {"quantize_linear": sum(n.op_type == "QuantizeLinear" for n in g.node),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in g.node),
            "quantized_ops": sum(n.op_type in QUANTIZED_OPS and not kept(n) for n in g.node),
            "float_ops": sum(n.op_type in QUANTIZED_OPS and kept(n) for n in g.node),
            "int8_weights": len(weights),
            "zero_points": len(zps)}
