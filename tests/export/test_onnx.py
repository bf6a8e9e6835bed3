"""FP32 export: the graph's contract, metadata, dynamic shapes, padding, and failures that leave
nothing behind."""

import json

import numpy as np
import pytest

from toolkit.artifacts import METADATA_KEY, sha256
from toolkit.compare import compare
from toolkit.config import TOLERANCES, ExportConfig, Precision


@pytest.fixture(scope="module")
def ck(tiny_run):
    from toolkit.checkpoint import load_checkpoint

    return load_checkpoint(tiny_run)


@pytest.fixture(scope="module")
def rows(ck, tiny_data):
    from toolkit.export.samples import load_rows

    return load_rows(ck, tiny_data, "val")


@pytest.fixture(scope="module")
def ort_runner(tiny_onnx):
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(tiny_onnx.path, threads=1) as r:
        yield r


def test_graph_contract(tiny_onnx, ck):
    import onnx

    m = onnx.load(str(tiny_onnx.path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in m.graph.input}
    assert dims == {"image": ["batch", 3, 32, 32], "input_ids": ["batch", "seq"],
                    "attention_mask": ["batch", "seq"]}
    assert [o.name for o in m.graph.output] == ["logits"]
    out_dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", len(ck.labels)]
    opset = {o.domain: o.version for o in m.opset_import}[""]
    assert opset >= 17
    assert any(n.op_type == "LayerNormalization" for n in m.graph.node)  # one op, not decomposed
    onnx.checker.check_model(str(tiny_onnx.path), full_check=True)


def test_single_self_contained_file(tiny_onnx):
    import onnx

    assert [p.name for p in tiny_onnx.path.parent.iterdir()] == [tiny_onnx.path.name]
    m = onnx.load(str(tiny_onnx.path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def test_metadata_describes_the_artifact(tiny_onnx, ck):
    import onnx

    from toolkit.artifacts import ArtifactMetadata

    props = {p.key: p.value for p in onnx.load(str(tiny_onnx.path)).metadata_props}
    meta = ArtifactMetadata.from_json(props[METADATA_KEY])
    assert meta.labels == ck.labels and meta.vocab == ck.tokenizer.vocab
    assert meta.precision == "fp32" and meta.image_size == ck.config.image_size
    assert meta.max_length == ck.config.text.max_length
    assert meta.source_sha256 == sha256(ck.weights)
    assert meta.extra["checked_on"] == "dataset rows"
    assert json.loads(meta.to_json())["model_config"]["dim"] == ck.config.dim


def test_export_time_check_passed_on_two_batches_and_lengths(tiny_onnx):
    # 1 and 5 rows, each at its natural length and at max_length: 2 * (1 + 5) rows
    assert tiny_onnx.comparison.passed and tiny_onnx.comparison.n == 12


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("length", [1, 2, 9, 16])  # 16 = the tiny preset's max_length
def test_dynamic_shapes_match_pytorch(ck, ort_runner, rows, batch, length):
    from toolkit.export.samples import batch as make_batch
    from toolkit.runtime.torch_runner import TorchRunner

    idx = np.arange(batch) % len(rows)
    feed = make_batch(ck, rows, idx, pad_to=length)
    assert feed["input_ids"].shape == (batch, length)
    with TorchRunner.from_checkpoint(ck) as torch_runner:
        c = compare(torch_runner.infer(feed), ort_runner.infer(feed), TOLERANCES[Precision.fp32])
    c.raise_if_failed()


def test_padding_does_not_change_the_answer(ck, ort_runner, rows):
    from toolkit.export.samples import batch as make_batch

    idx = np.array([0])
    short = ort_runner.infer(make_batch(ck, rows, idx))["logits"]
    padded_feed = make_batch(ck, rows, idx, pad_to=ck.config.text.max_length)
    assert padded_feed["attention_mask"].min() == 0  # there is padding to ignore
    padded = ort_runner.infer(padded_feed)["logits"]
    np.testing.assert_allclose(short, padded, atol=1e-4)


def test_failed_check_leaves_no_file(tiny_run, tiny_data, tmp_path, monkeypatch):
    from toolkit.compare import ParityError
    from toolkit.export import pipeline

    def broken(*a, **k):
        raise ParityError("values differ (simulated)")

    monkeypatch.setattr(pipeline, "check_against_torch", broken)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError):
        pipeline.export(ExportConfig(str(tiny_run), str(out), data=str(tiny_data)))
    assert list(tmp_path.iterdir()) == []


def test_incompatible_checkpoint_is_refused(tiny_run, tmp_path):
    import shutil

    from toolkit.checkpoint import CheckpointError
    from toolkit.export.pipeline import export

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["format_version"] = 99
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format 99"):
        export(ExportConfig(str(old), str(tmp_path / "m.onnx")))
    assert not (tmp_path / "m.onnx").exists()


def test_example_inputs_avoid_0_1_specialization(ck):
    from toolkit.export.onnx import example_inputs

    image, ids, mask = example_inputs(ck)
    b, length = ids.shape
    assert b >= 2 and length >= 2 and b != length and image.shape[0] == b
    assert mask.min() == 0  # the padding path is traced
