import numpy as np
import pytest

from toolkit.sparsity import Pattern, SparsityError, format_conformance, onnx_conformance

P24 = Pattern(2, 4)


def _graph(path):
    """x (B, 8) -> MatMul by Transpose(W1) -> Gemm(transB=1, W2) -> Conv-free; W1 2:4 along its
    input channels as the MatMul reads it, W2 dense, W3 (6 inputs) not a multiple of 4."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = np.array([[1, 0, 2, 0, 0, 3, 4, 0]] * 4, np.float32)  # (out 4, in 8): 2:4 along in
    w2 = np.arange(1, 9, dtype=np.float32).reshape(2, 4)  # (out 2, in 4), transB=1: dense
    w3 = np.ones((6, 3), np.float32)  # MatMul B (in 6, out 3)
    nodes = [helper.make_node("Transpose", ["w1"], ["w1t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w1t"], ["h"], name="mm"),
             helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1, name="gemm"),
             helper.make_node("MatMul", ["z", "w3"], ["u"], name="odd"),
             helper.make_node("MatMul", ["x", "x2"], ["v"], name="activations")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
         for n, s in (("x", ["B", 8]), ("z", ["B", 6]), ("x2", [8, 8]))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "u", "v")],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(w3, "w3")])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_conformance_reads_each_weight_along_its_reduction_axis(tmp_path):
    report = onnx_conformance(_graph(tmp_path / "m.onnx"), P24)
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["mm (w1)"]["conforming"] == 1.0  # through the Transpose, along `in`
    assert rows["gemm (w2)"]["conforming"] == 0.0
    assert "odd (w3)" in report["skipped"] and "6 input channels" in report["skipped"]["odd (w3)"]
    assert not any("activations" in k for k in rows)  # no weight: not a layer
    assert report["conforming_share"] == pytest.approx(8 / 10)  # 8 of 10 groups
    text = format_conformance(report)
    assert "80.00% of 10 groups in 2 layers" in text and "dense" in text


def test_not_onnx_is_a_clear_error(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00junk" * 10)
    with pytest.raises(SparsityError, match="not a readable ONNX model"):
        onnx_conformance(tmp_path / "junk.onnx", P24)
