"""FP16: a strongly typed graph (explicit Casts only), sensitive ops kept FP32, weights halved."""

import numpy as np
import pytest

from toolkit.config import TOLERANCES, Precision


def _types(model):
    import onnx

    m = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    t = {vi.name: vi.type.tensor_type.elem_type
         for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output)}
    t |= {i.name: i.data_type for i in m.graph.initializer}
    return m, t


def test_sensitive_ops_compute_in_fp32_and_the_rest_in_fp16(tiny_fp16):
    import onnx
    from onnx import TensorProto as T

    from toolkit.export.fp16 import DEFAULT_KEEP_FP32

    m, types = _types(onnx.load(str(tiny_fp16.path)))
    kept = [n for n in m.graph.node if n.op_type in DEFAULT_KEEP_FP32]
    assert kept, "the tiny model has LayerNorm and Softmax"
    for n in kept:
        assert types[n.output[0]] == T.FLOAT, n.name
    matmuls = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert matmuls and all(types[n.output[0]] == T.FLOAT16 for n in matmuls)


def test_no_op_mixes_float_types(tiny_fp16):
    """What TensorRT's strongly typed builder needs: apart from Cast, every op's float inputs
    and outputs share one type."""
    import onnx
    from onnx import TensorProto as T

    m, types = _types(onnx.load(str(tiny_fp16.path)))
    for n in m.graph.node:
        if n.op_type in ("Cast", "Shape", "Size"):
            continue
        floats = {types[x] for x in list(n.input) + list(n.output)
                  if x and types.get(x) in (T.FLOAT, T.FLOAT16)}
        assert len(floats) <= 1, f"{n.op_type} {n.name} mixes float types"


def test_io_stays_fp32_by_default(tiny_fp16):
    import onnx
    from onnx import TensorProto as T

    m = onnx.load(str(tiny_fp16.path))
    assert m.graph.input[0].type.tensor_type.elem_type == T.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == T.FLOAT


def test_weights_take_at_most_51_percent_of_fp32(tiny_onnx, tiny_fp16):
    import onnx

    def weight_bytes(path):
        return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)

    assert weight_bytes(tiny_fp16.path) <= 0.51 * weight_bytes(tiny_onnx.path)


@pytest.mark.parametrize("fp16_io", [False, True])
def test_fp16_matches_pytorch_within_its_tolerance(tiny_run, tiny_data, tmp_path, fp16_io):
    import onnx
    from onnx import TensorProto as T

    from toolkit.config import ExportConfig
    from toolkit.export.pipeline import export

    r = export(ExportConfig(str(tiny_run), str(tmp_path / "m.onnx"), Precision.fp16,
                            data=str(tiny_data), fp16_io=fp16_io))
    assert r.comparison.passed and r.comparison.tolerance == TOLERANCES[Precision.fp16]
    assert r.comparison.outputs[0].max_abs > 0  # it really is a different precision
    m = onnx.load(str(r.path))
    want = T.FLOAT16 if fp16_io else T.FLOAT
    assert m.graph.input[0].type.tensor_type.elem_type == want
    assert m.graph.output[0].type.tensor_type.elem_type == want


def test_mask_fill_is_clamped_not_infinite():
    from toolkit.export.fp16 import _to_fp16_array

    out = _to_fp16_array(np.array([-3.4e38, 1.0, 7e4], np.float32))
    assert np.isfinite(out).all() and out[0] == -65504 and out[1] == 1


def test_subgraphs_are_refused():
    from onnx import TensorProto, helper

    from toolkit.export.fp16 import convert
    from toolkit.export.graph import ExportError

    branch = helper.make_graph([], "b", [], [helper.make_tensor_value_info("x", 1, [1])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ExportError, match="subgraph"):
        convert(helper.make_model(g))


def test_fp16_from_an_existing_fp32_export(tiny_run, tiny_data, tiny_onnx, tmp_path):
    from toolkit.config import ExportConfig
    from toolkit.export.pipeline import export

    before = tiny_onnx.path.read_bytes()
    r = export(ExportConfig(str(tiny_run), str(tmp_path / "m.fp16.onnx"), Precision.fp16,
                            data=str(tiny_data), fp32_source=str(tiny_onnx.path)))
    assert r.comparison.passed and r.path.is_file()
    assert tiny_onnx.path.read_bytes() == before  # the source is left as it was


def test_an_excluded_op_type_computes_in_fp32(tiny_run, tiny_data, tiny_onnx, tmp_path):
    import onnx
    from onnx import TensorProto as T

    from toolkit.config import ComputeOp, ExportConfig
    from toolkit.export.graph import get_metadata
    from toolkit.export.pipeline import export

    r = export(ExportConfig(str(tiny_run), str(tmp_path / "m.fp16.onnx"), Precision.fp16,
                            data=str(tiny_data), fp32_source=str(tiny_onnx.path),
                            exclude_op_types=(ComputeOp.Conv,)))
    m, types = _types(onnx.load(str(r.path)))
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert convs and all(types[x] == T.FLOAT for n in convs for x in [*n.input[:2], n.output[0]])
    matmuls = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert matmuls and all(types[n.output[0]] == T.FLOAT16 for n in matmuls)
    assert "Conv" in get_metadata(m).extra["kept_fp32"]


def test_fp32_source_from_other_weights_is_refused(tiny_run, tiny_data, tiny_onnx, tmp_path):
    import shutil

    from toolkit.config import ExportConfig
    from toolkit.export.graph import ExportError
    from toolkit.export.pipeline import export

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    _perturb(other / "best.safetensors")
    with pytest.raises(ExportError, match="other weights"):
        export(ExportConfig(str(other), str(tmp_path / "m.onnx"), Precision.fp16,
                            data=str(tiny_data), fp32_source=str(tiny_onnx.path)))
    assert not (tmp_path / "m.onnx").exists()


def _perturb(weights):
    """Other weights with the same structure: one tensor shifted."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 1
    save_file(state, str(weights))
