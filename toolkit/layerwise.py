"""Layerwise parity: where in the graph a candidate's error starts.

Both graphs (a copy of each) get every intermediate tensor whose type ONNX shape inference knows
marked as a graph output, as Polygraphy's `--onnx-outputs mark all` does
(docs.nvidia.com/deeplearning/tensorrt/polygraphy/docs/); both run in ONNX Runtime (CPU) on the same
rows, one row per run, and each reference node's output is compared with the candidate tensor that
stands for it.

Matching rule (candidate tensor -> the reference tensor it stands for):
  1. An output of a Cast, QuantizeLinear or DequantizeLinear node that the reference does not
     have (by node name) stands for whatever that node's
     input stands for: such nodes are what the FP16 and INT8 passes insert, and they change a
     tensor's type, not its meaning. QuantizeLinear outputs are integers and never compared.
  2. Any other node's output k stands for output k of the reference node of the same name and op
     type (both passes keep node names); failing that, for the reference tensor of the same name.
Of the candidate tensors that stand for one reference tensor, the output of a computing node
(rule 2) is compared; where there is none, the last of the Cast/DequantizeLinear chain (the value
the next node reads). So an INT8 node is measured on its own output, computed from its
dequantized inputs, and an FP16 node on its FP16 output.

With every tensor marked as an output, ONNX Runtime cannot fuse QuantizeLinear/DequantizeLinear
into integer kernels: an INT8 graph runs as float arithmetic on quantized values (what TensorRT's
int8 kernels compute, up to their rounding), so its final error can differ slightly from
`toolkit parity`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from toolkit.compare import EPS, ParityError

# The inserted nodes that change a tensor's type, not what it stands for.
TRANSPARENT = ("Cast", "QuantizeLinear", "DequantizeLinear")
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")

# A node "jumps" when its error (max abs over the reference tensor's range) exceeds both JUMP_FACTOR
# times the median error of the nodes before it and its precision's floor: the error one rounding
# step of that precision leaves, below which nothing is a jump (a correct FP32 graph stays near
# 1e-6 of the range; FP16 has an 11-bit significand, 5e-4 per rounding; one int8 rounding is up to
# half of 1/127 of a symmetric range, 0.4%, and the floor allows a dozen of them).
JUMP_FACTOR = 10.0
JUMP_FLOOR = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}
# Below this share of matched reference tensors the candidate is not a transform of the reference.
MIN_MATCHED = 0.9


class LayerwiseError(ParityError):
    """The two graphs cannot be compared tensor by tensor; the message names the fix."""


@dataclass(frozen=True)
class NodeError:
    index: int  # position in the reference graph (topological order)
    node: str
    op_type: str
    tensor: str  # the reference tensor
    candidate_tensor: str  # the candidate tensor compared with it
    shape: tuple
    max_abs: float
    scale: float  # the reference tensor's range over the rows (or its largest magnitude)
    rel: float  # max_abs / scale: what the jump rule reads
    mean_abs: float
    cosine: float  # of the flattened tensor, the worst row
    input_rel: float  # the largest rel among this node's compared inputs (0 for graph inputs)

    @property
    def added(self) -> float:
        """The error this node adds to what it reads (rel - input_rel)."""
        return self.rel - self.input_rel


@dataclass
class LayerwiseReport:
    reference: str
    candidate: str
    precision: str
    rows: int
    nodes: list[NodeError]
    jump: int | None  # position in `nodes` of the first jump; None if none
    jump_rule: str
    skipped_unknown_type: int  # reference tensors shape inference gave no type: not compared
    skipped_non_float: int  # integer/bool tensors (shapes, masks): exact by construction
    unmatched: list[str] = field(default_factory=list)  # reference tensors with no counterpart
    notes: list[str] = field(default_factory=list)

    @property
    def first_jump(self) -> NodeError | None:
        return None if self.jump is None else self.nodes[self.jump]

    def to_dict(self) -> dict:
        d = asdict(self)
        for n, row in zip(self.nodes, d["nodes"]):
            row["added"] = n.added
        d["first_jump"] = None if self.jump is None else d["nodes"][self.jump]
        return d


# ------------------------------------------------------------------ graph side (no running)


def tensor_types(model) -> dict[str, int]:
    """Element type of every tensor shape inference can type (inputs, initializers, values)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(g.input) + list(g.value_info) + list(g.output)
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    types |= {t.name: t.data_type for t in g.initializer}
    return types


def _is_float(elem_type: int) -> bool:
    from onnx import TensorProto

    return elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                         TensorProto.BFLOAT16)


def match_tensors(reference, candidate) -> dict[str, str]:
    """{reference tensor: candidate tensor} by the module's matching rule."""
    ref_nodes = {n.name: n for n in reference.graph.node if n.name}
    ref_tensors = {o for n in reference.graph.node for o in n.output} | \
        {i.name for i in reference.graph.input}
    stands: dict[str, str] = {i.name: i.name for i in candidate.graph.input
                              if i.name in ref_tensors}
    computed: dict[str, str] = {}  # reference tensor -> candidate output of a computing node
    chained: dict[str, str] = {}  # reference tensor -> last Cast/DequantizeLinear output
    for n in candidate.graph.node:
        r = ref_nodes.get(n.name)
        inserted = r is None or r.op_type != n.op_type
        if n.op_type in TRANSPARENT and inserted:
            src = stands.get(n.input[0]) if n.input else None
            if src is None:
                continue
            for o in n.output:
                stands[o] = src
            if n.op_type != "QuantizeLinear":  # integers: never compared
                chained[src] = n.output[0]
            continue
        same = not inserted and len(r.output) == len(n.output)
        for k, o in enumerate(n.output):
            src = r.output[k] if same else (o if o in ref_tensors else None)
            if src:
                stands[o] = src
                computed.setdefault(src, o)
    return {ref: computed.get(ref) or chained[ref] for ref in computed.keys() | chained.keys()}


def mark_outputs(model, names: Iterable[str], types: Mapping[str, int]):
    """A copy of `model` whose graph outputs are its own plus `names` (typed from `types`)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, types[n], None)
                          for n in names if n not in have)
    return m


# ------------------------------------------------------------------ running


def session(model, threads: int | None = None):
    """An ONNX Runtime CPU session on an in-memory ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    try:
        return ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own Fail/InvalidGraph types
        raise LayerwiseError(f"ONNX Runtime cannot load the graph with its intermediate tensors "
                             f"marked as outputs ({str(e).strip().splitlines()[0][:300]})") from e


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def run(sess, feed: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """`names` from one run; float inputs cast to the session's own input types (FP16 I/O)."""
    want = {i.name: _NP.get(i.type) for i in sess.get_inputs()}
    feed = {k: v.astype(want[k]) if want.get(k) is not None and v.dtype.kind == "f" else v
            for k, v in feed.items() if k in want}
    return dict(zip(names, sess.run(names, feed)))


class _Acc:
    """Running statistics of one tensor pair over rows (one row per feed)."""

    def __init__(self):
        self.max_abs, self.sum_abs, self.count = 0.0, 0.0, 0
        self.lo, self.hi, self.cosine, self.shape = np.inf, -np.inf, 1.0, ()

    def add(self, r: np.ndarray, c: np.ndarray) -> None:
        r, c = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
        if r.shape != c.shape:
            raise LayerwiseError(f"a matched tensor pair has {r.size} and {c.size} elements")
        d = np.abs(r - c)
        self.max_abs = max(self.max_abs, float(d.max(initial=0)))
        self.sum_abs += float(d.sum())
        self.count += d.size
        if r.size:
            self.lo, self.hi = min(self.lo, float(r.min())), max(self.hi, float(r.max()))
        den = np.linalg.norm(r) * np.linalg.norm(c)
        with np.errstate(invalid="ignore"):  # an inf on one side (an overflow) gives NaN
            cos = float(r @ c / den) if den > 0 else float(np.array_equal(r, c))
        # NaN stays once seen: min() would drop it, and the row would read 1.000000
        self.cosine = np.nan if np.isnan(cos) or np.isnan(self.cosine) else min(self.cosine, cos)

    @property
    def scale(self) -> float:
        # The range, or the largest magnitude where that is larger: a tensor sitting near a
        # large constant (a sum over a mask) has a small range but rounds at its magnitude.
        return max(self.hi - self.lo, abs(self.hi), abs(self.lo)) if self.hi >= self.lo else 0.0


def first_jump(rels: list[float], floor: float, factor: float = JUMP_FACTOR) -> int | None:
    """The first i with rels[i] > max(factor x median(rels[:i]), floor) (median of none: 0)."""
    for i, e in enumerate(rels):
        med = float(np.median(rels[:i])) if i else 0.0
        if np.isnan(e) or e > max(factor * med, floor):
            return i
    return None


def compare_graphs(reference, candidate, feeds: Iterable[Mapping[str, np.ndarray]],
                   precision: str, threads: int | None = None, names=("reference", "candidate")
                   ) -> LayerwiseReport:
    """Layerwise errors of `candidate` against `reference` (both ModelProtos) on `feeds` (each
    one row). Raises LayerwiseError when the candidate's tensors do not match the reference's."""
    ref_types, cand_types = tensor_types(reference), tensor_types(candidate)
    match = match_tensors(reference, candidate)
    inits = {t.name for t in reference.graph.initializer}
    order: list[tuple[int, object, str]] = []  # (index, node, tensor) in graph order
    unknown = non_float = 0
    unmatched = []
    for i, n in enumerate(reference.graph.node):
        for o in n.output:
            if not o:
                continue
            if o not in ref_types:
                unknown += 1
            elif not _is_float(ref_types[o]):
                non_float += 1
            elif o not in match or match[o] not in cand_types:
                unmatched.append(o)
            else:
                order.append((i, n, o))
    n_float = len(order) + len(unmatched)
    if not order or len(order) < MIN_MATCHED * n_float:
        raise LayerwiseError(
            f"{names[1]}: only {len(order)} of the {n_float} float tensors of {names[0]} have a "
            f"counterpart (e.g. {unmatched[:3]}); the candidate was not made from this FP32 graph: "
            "export it again from it with `toolkit export --from-onnx FP32.onnx`")

    ref_names = [o for _, _, o in order]
    cand_names = [match[o] for o in ref_names]
    ref_sess = session(mark_outputs(reference, ref_names, ref_types), threads)
    cand_sess = session(mark_outputs(candidate, set(cand_names), cand_types), threads)
    accs = {o: _Acc() for o in ref_names}
    rows = 0
    for feed in feeds:
        r_out, c_out = run(ref_sess, feed, ref_names), run(cand_sess, feed, sorted(set(cand_names)))
        for ref_name, cand_name in zip(ref_names, cand_names):
            accs[ref_name].add(r_out[ref_name], c_out[cand_name])
            accs[ref_name].shape = tuple(r_out[ref_name].shape)
        rows += 1
    if not rows:
        raise LayerwiseError("no rows to compare: pass held-out data with at least one row")

    rel = {o: a.max_abs / max(a.scale, EPS) for o, a in accs.items()}
    nodes = []
    for i, n, o in order:
        a = accs[o]
        ins = [rel[x] for x in n.input if x in rel and x not in inits]
        nodes.append(NodeError(i, n.name, n.op_type, o, match[o], a.shape, a.max_abs, a.scale,
                               rel[o], a.sum_abs / max(a.count, 1), a.cosine,
                               max(ins, default=0.0)))
    floor = JUMP_FLOOR.get(precision, JUMP_FLOOR["int8"])
    jump = first_jump([x.rel for x in nodes], floor)
    rule = (f"the first node whose max abs error over the reference tensor's range exceeds both "
            f"{JUMP_FACTOR:g} x the median of the nodes before it and {floor:g} ({precision})")
    notes = [f"{unknown} tensor(s) without an inferred type were not compared"] if unknown else []
    if unmatched:
        notes.append(f"{len(unmatched)} reference tensor(s) have no counterpart, e.g. "
                     f"{unmatched[:3]}")
    return LayerwiseReport(names[0], names[1], precision, rows, nodes, jump, rule, unknown,
                           non_float, unmatched, notes)


def layerwise(reference_onnx: str | Path, candidate_onnx: str | Path,
              feeds: Iterable[Mapping[str, np.ndarray]], threads: int | None = None
              ) -> LayerwiseReport:
    """compare_graphs on two files, once their records show the same FP32 export."""
    import onnx

    from toolkit.artifacts import read_onnx_metadata

    ref_meta, cand_meta = read_onnx_metadata(reference_onnx), read_onnx_metadata(candidate_onnx)
    if ref_meta.precision != "fp32":
        raise LayerwiseError(f"{reference_onnx} is a {ref_meta.precision} model; the reference "
                             "must be the FP32 export (e.g. export/model.onnx)")
    if ref_meta.source_sha256 != cand_meta.source_sha256:
        raise LayerwiseError(
            f"{candidate_onnx} and {reference_onnx} come from different weights (sha256 "
            f"{cand_meta.source_sha256[:12]} vs {ref_meta.source_sha256[:12]}); pass the FP32 "
            "export the candidate was made from, or export both again from one checkpoint")
    # Both files were read by read_onnx_metadata above: they are ONNX.
    return compare_graphs(onnx.load(str(reference_onnx)), onnx.load(str(candidate_onnx)), feeds,
                          cand_meta.precision, threads, (str(reference_onnx), str(candidate_onnx)))
