"""Layerwise parity (toolkit.layerwise, toolkit parity --layerwise) on the tiny seeded exports."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.layerwise import (LayerwiseError, compare_graphs, first_jump, layerwise,
                               match_tensors, tensor_types)

runner = CliRunner()


@pytest.fixture(scope="module")
def rows(tiny_run, tiny_data):
    """Three held-out rows, one feed each."""
    from toolkit.checkpoint import load_checkpoint
    from toolkit.export import samples

    ck = load_checkpoint(tiny_run)
    split = samples.load_rows(ck, tiny_data, "val")
    return [samples.batch(ck, split, np.array([i])) for i in range(3)]


def _float_outputs(model):
    from toolkit.layerwise import _is_float

    types = tensor_types(model)
    return [o for n in model.graph.node for o in n.output if o in types and _is_float(types[o])]


def test_identical_graphs_report_every_node_with_cosine_1_and_no_error(tiny_onnx, rows):
    import onnx

    m = onnx.load(str(tiny_onnx.path))
    r = layerwise(tiny_onnx.path, tiny_onnx.path, rows)
    assert [n.tensor for n in r.nodes] == _float_outputs(m)  # every float node output, in order
    assert r.rows == 3 and not r.unmatched and r.skipped_unknown_type == 0
    assert r.skipped_non_float > 0  # the shape arithmetic, integers
    assert all(n.max_abs == 0 and n.cosine == pytest.approx(1.0) for n in r.nodes)
    assert r.jump is None and r.first_jump is None


def test_a_perturbed_initializer_is_named_as_the_first_jump(tiny_onnx, rows):
    import onnx
    from onnx import numpy_helper

    ref = onnx.load(str(tiny_onnx.path))
    bad = onnx.load(str(tiny_onnx.path))
    inits = {t.name: t for t in bad.graph.initializer}
    matmuls = [n for n in bad.graph.node if n.op_type in ("MatMul", "Gemm")
               and len(n.input) > 1 and n.input[1] in inits]
    target = matmuls[len(matmuls) // 2]  # one in the middle of the graph
    w = inits[target.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 3, w.name))

    r = compare_graphs(ref, bad, rows, "fp32")
    assert r.first_jump is not None and r.first_jump.node == target.name, r.first_jump
    assert all(n.max_abs == 0 for n in r.nodes[:r.jump])  # nothing before it moved
    assert r.first_jump.rel > 0.1 and r.first_jump.added == pytest.approx(r.first_jump.rel)


@pytest.mark.parametrize("artifact", ["tiny_fp16", "tiny_int8"])
def test_reduced_graphs_match_every_reference_tensor(request, tiny_onnx, rows, artifact):
    cand = request.getfixturevalue(artifact).path
    r = layerwise(tiny_onnx.path, cand, rows)
    import onnx

    assert not r.unmatched and len(r.nodes) == len(_float_outputs(onnx.load(str(tiny_onnx.path))))
    assert r.precision == ("fp16" if "fp16" in artifact else "int8")
    assert all(np.isfinite(n.max_abs) and n.cosine > 0.5 for n in r.nodes)
    assert any(n.max_abs > 0 for n in r.nodes)
    logits = r.nodes[-1]
    assert logits.tensor == "logits" and logits.max_abs > 0
    if artifact == "tiny_fp16":  # the FP16 pass renames the output's producer, then casts back
        assert logits.candidate_tensor == "logits__inner"


def test_matching_follows_inserted_cast_and_dequantize_nodes():
    """A candidate that reads a tensor only through inserted Q/DQ and Cast nodes: the last of the
    chain stands for it; QuantizeLinear's integer output never does."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    ref = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="relu"),
         helper.make_node("Neg", ["a"], ["y"], name="neg")], "r", [x], [y]))
    sc = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    cand = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a_renamed"], name="other_relu"),  # no counterpart
         helper.make_node("QuantizeLinear", ["a_renamed", "s"], ["a_q"], name="q"),
         helper.make_node("DequantizeLinear", ["a_q", "s"], ["a_dq"], name="dq"),
         helper.make_node("Neg", ["a_dq"], ["y"], name="neg")], "c", [x], [y], [sc]))
    m = match_tensors(ref, cand)
    assert m == {"y": "y"}  # `a` is produced under another name by another node: unmatched
    cand.graph.node[0].name, cand.graph.node[0].output[0] = "relu", "a"
    cand.graph.node[1].input[0] = "a"
    assert match_tensors(ref, cand) == {"a": "a", "y": "y"}  # its own node wins over the DQ
    cand.graph.node[0].name = "renamed_relu"  # only the same tensor name: still `a`
    assert match_tensors(ref, cand)["a"] == "a"
    del cand.graph.node[0]  # `a` now reaches the candidate only through Q/DQ
    cand.graph.input[0].name = "a"
    assert match_tensors(ref, cand)["a"] == "a_dq"  # the DequantizeLinear output stands for it


def test_first_jump_rule():
    assert first_jump([0, 0, 0], 1e-4) is None
    assert first_jump([0, 0, 0.5, 0.6], 1e-4) == 2  # over the floor, median 0
    assert first_jump([0.01, 0.02, 0.03, 0.3, 0.5], 0.05) == 3  # 0.3 > 10 x median 0.02
    assert first_jump([0.01, 0.02, 0.03, 0.04], 0.05) is None  # never over the floor
    assert first_jump([0.1, 0.12, 0.5], 0.05) == 0  # the first node itself, over the floor


def test_an_overflow_on_one_side_shows_in_cosine_and_stays():
    import warnings

    from toolkit.layerwise import _Acc

    a = _Acc()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing on stderr
        a.add(np.array([70407.5, 3.0], np.float32), np.array([np.inf, 3.0], np.float16))
    a.add(np.array([1.0, 2.0]), np.array([1.0, 2.0]))  # a later row that agrees
    assert np.isnan(a.cosine) and a.max_abs == np.inf


def test_graphs_from_other_weights_are_refused(tiny_onnx, tmp_path, rows):
    import onnx

    from toolkit.artifacts import ArtifactMetadata
    from toolkit.export.graph import get_metadata, set_metadata

    m = onnx.load(str(tiny_onnx.path))
    meta = get_metadata(m).__dict__ | {"source_sha256": "0" * 64}
    set_metadata(m, ArtifactMetadata(**meta))
    other = tmp_path / "other.onnx"
    onnx.save(m, str(other))
    with pytest.raises(LayerwiseError, match="different weights"):
        layerwise(tiny_onnx.path, other, rows)


def test_tensor_names_that_cannot_be_matched_are_refused(tiny_onnx, rows):
    import onnx

    ref = onnx.load(str(tiny_onnx.path))
    cand = onnx.load(str(tiny_onnx.path))
    g = cand.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output} | {t.name for t in g.initializer}

    def rename(x):
        return x if not x or x in keep else f"x_{x}"

    for n in g.node:  # another exporter's names for the same computation
        n.name = f"x_{n.name}"
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]
    del g.value_info[:]
    with pytest.raises(LayerwiseError, match="--from-onnx"):
        compare_graphs(ref, cand, rows, "fp32")


def test_cli_parity_layerwise_table_and_json(tiny_run, tiny_data, tiny_onnx, tiny_int8, tmp_path):
    out = tmp_path / "lw.json"
    r = runner.invoke(app, ["parity", "--layerwise", "--reference", str(tiny_run),
                            "--candidate", str(tiny_int8.path), "--reference-onnx",
                            str(tiny_onnx.path), "--data", str(tiny_data), "--samples", "2",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "first jump:" in r.output and "jump rule:" in r.output and "logits" in r.output
    report = json.loads(out.read_text())
    assert report["rows"] == 2 and report["precision"] == "int8" and report["nodes"]
    assert {"node", "op_type", "cosine", "max_abs", "rel", "added"} <= set(report["nodes"][0])
    if report["jump"] is not None:
        assert report["first_jump"] == report["nodes"][report["jump"]]


def test_cli_parity_layerwise_needs_the_fp32_reference(tiny_run, tiny_data, tiny_int8):
    r = runner.invoke(app, ["parity", "--layerwise", "--reference", str(tiny_run),
                            "--candidate", str(tiny_int8.path), "--data", str(tiny_data)])
    assert r.exit_code == 1 and "--reference-onnx" in r.output and "Traceback" not in r.output


def test_cli_parity_layerwise_refuses_a_reduced_reference(tiny_run, tiny_data, tiny_int8,
                                                          tiny_fp16):
    r = runner.invoke(app, ["parity", "--layerwise", "--reference", str(tiny_run),
                            "--candidate", str(tiny_int8.path), "--reference-onnx",
                            str(tiny_fp16.path), "--data", str(tiny_data)])
    assert r.exit_code == 1 and "FP32 export" in r.output
