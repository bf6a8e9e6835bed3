"""FP32 ONNX -> FP16 ONNX, keeping numerically sensitive ops in FP32, every Cast explicit.

Why the project's own pass and not onnxconverter-common: its 1.16 `convert_float_to_float16`
(keep_io_types=True, op_block_list=[...]) leaves the dynamo exporter's own `Cast(to=FLOAT)` nodes
alone, so ONNX Runtime refuses the result ("Type (tensor(float16)) of output arg (_to_copy_1) of
node (node__to_copy_1) does not match expected type (tensor(float))"; reproduced here on the tiny
model; upstream: github.com/microsoft/onnxconverter-common/issues/320). Repairing that means a pass
over the same graph anyway. NVIDIA ModelOpt's AutoCast does it right but pins onnx~=1.21 and
onnxruntime~=1.24 (export-quant.md section 7), which conflicts with this project's versions. This
pass needs only `onnx`, and it works from inferred tensor types, so every float tensor gets exactly
one type and every change of type is an explicit Cast: a strongly typed graph, as TensorRT 11
builds it (it has no precision flags; export-quant.md section 7).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from toolkit.export.graph import ExportError

# Kept FP32 by default, from bench/fp16_keep.py (bench/export.md): keeping LayerNormalization cut
# the max logit error on `small` from 6.6e-4 to 5.9e-4; also keeping ReduceMean/ReduceSum made it
# worse (7.9e-4: the extra Casts round twice), so they are converted. Softmax is neutral on ONNX
# Runtime's CPU provider (no FP16 Softmax kernel there, so it ran FP32 anyway) and kept FP32 for
# FP16 engines, where its exp-sum is the classic overflow.
DEFAULT_KEEP_FP32 = ("LayerNormalization", "Softmax")

# Ops whose float input may be of any type: no Cast is inserted in front of them.
_ANY_INPUT = {"Cast", "Shape", "Size", "CastLike"}
FP16_MAX = float(np.finfo(np.float16).max)  # 65504: larger magnitudes (mask fills) are clamped


def _to_fp16_array(a: np.ndarray) -> np.ndarray:
    # Clamp first: -3.4e38 (torch's finfo.min mask fill) would become -inf, and -inf + -inf or
    # -inf * 0 in the attention path turns into NaN.
    return np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)


def _tensor_to_fp16(t):
    from onnx import numpy_helper

    return numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(t)), t.name)


def convert(model, keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32, fp16_io: bool = False,
            keep_nodes: Iterable[str] = ()):
    """A new ModelProto: float tensors FP16 except the inputs and outputs of `keep_fp32` ops and
    of the nodes named in `keep_nodes`; graph inputs and outputs FP32 unless `fp16_io`."""
    import onnx
    from onnx import TensorProto, helper

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    keep_fp32, keep_nodes = set(keep_fp32), set(keep_nodes)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    g = model.graph
    for n in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in n.attribute):
            raise ExportError(f"node {n.name} ({n.op_type}) has a subgraph; the FP16 pass handles "
                              "flat graphs only (the toolkit's exports are flat)")

    # Every tensor's element type, from the exporter's value_info plus ONNX shape inference.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + \
            list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name: t for t in g.initializer}
    for t in g.initializer:
        types[t.name] = t.data_type

    # The type each float tensor will have after the pass.
    now: dict[str, int] = {}
    for i in g.input:
        if types.get(i.name) == F32:
            now[i.name] = F16 if fp16_io else F32
            if fp16_io:
                i.type.tensor_type.elem_type = F16
    consumers_fp16 = {name for n in g.node if n.op_type not in keep_fp32
                      and n.name not in keep_nodes for name in n.input}
    consumed = {name for n in g.node for name in n.input}
    for name, t in inits.items():
        if t.data_type == F32:
            # Weights are stored FP16 (that halves the file); an FP32 op reading one gets a Cast.
            if name in consumers_fp16 or name not in consumed:
                t.CopyFrom(_tensor_to_fp16(t))
                now[name] = F16
            else:
                now[name] = F32

    casts: dict[tuple[str, int], str] = {}
    nodes = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp16' if to == F16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))
            casts[key] = out
        return casts[key]

    for n in g.node:
        want = F32 if n.op_type in keep_fp32 or n.name in keep_nodes else F16
        if n.op_type not in _ANY_INPUT:
            for k, name in enumerate(n.input):
                if name in now and now[name] != want:
                    n.input[k] = cast(name, want)
        if want == F16:
            _node_constants_to_fp16(n)
        for name in n.output:
            if types.get(name) in (F32, F16):
                # A Cast keeps its own `to`, except that a cast *to* FP32 inside the FP16
                # region (the dynamo exporter's _to_copy) now casts to FP16.
                now[name] = want if types[name] == F32 or n.op_type != "Cast" else types[name]
        nodes.append(n)

    # Graph outputs: FP32 (or FP16 with fp16_io) whatever the last op computed in.
    for o in g.output:
        if o.name not in now:
            continue
        io_type = F16 if fp16_io else F32
        o.type.tensor_type.elem_type = io_type
        if now[o.name] != io_type:
            inner = f"{o.name}__inner"
            for n in nodes:
                n.output[:] = [inner if x == o.name else x for x in n.output]
                n.input[:] = [inner if x == o.name else x for x in n.input]
            nodes.append(helper.make_node("Cast", [inner], [o.name], to=io_type,
                                          name=f"{o.name}__cast_out"))

    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale float types; the checker re-infers them
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _node_constants_to_fp16(n) -> None:
    """Float tensors inside attributes (Constant, ConstantOfShape) and Cast targets -> FP16."""
    from onnx import TensorProto

    for a in n.attribute:
        if a.name == "value" and a.type == a.TENSOR and a.t.data_type == TensorProto.FLOAT:
            a.t.CopyFrom(_tensor_to_fp16(a.t))
        elif n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif n.op_type == "Constant" and a.name in ("value_float", "value_floats"):
            raise ExportError(f"Constant {n.name} uses {a.name}; not handled by the FP16 pass")


def check_fp16(model, keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32,
               keep_nodes: Iterable[str] = ()) -> dict:
    """Structural facts: every float op outside `keep_fp32` (and the nodes named in
    `keep_nodes`) computes in FP16. Returns counts."""
    import onnx
    from onnx import TensorProto

    keep_fp32, keep_nodes = set(keep_fp32), set(keep_nodes)
    m = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output)}
    types |= {t.name: t.data_type for t in m.graph.initializer}
    fp32_ops = [n.name for n in m.graph.node if n.op_type not in keep_fp32 | _ANY_INPUT
                and n.name not in keep_nodes
                and any(types.get(x) == TensorProto.FLOAT for x in n.output)]
    if fp32_ops:
        raise ExportError(f"FP16 graph still computes {len(fp32_ops)} op(s) in FP32 outside the "
                          f"kept ones, e.g. {fp32_ops[:3]}")
    w16 = sum(t.data_type == TensorProto.FLOAT16 for t in m.graph.initializer)
    w32 = sum(t.data_type == TensorProto.FLOAT for t in m.graph.initializer)
    return {"fp16_initializers": w16, "fp32_initializers": w32,
            "casts": sum(n.op_type == "Cast" for n in m.graph.node),
            "kept_fp32": sorted(keep_fp32)}
