import pytest

from toolkit.artifacts import ArtifactMetadata, atomic_path, sha256, write_json
from toolkit.errors import ToolkitError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{") and len(list(tmp_path.iterdir())) == 1


def test_sha256_of_a_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_metadata_round_trip_and_version_check():
    m = ArtifactMetadata(labels=["a", "b"], image_size=32, mean=[0.5] * 3, std=[0.2] * 3,
                         vocab=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], max_length=16,
                         precision="fp32", source_sha256="0" * 64, toolkit_version="0.1.0")
    assert ArtifactMetadata.from_json(m.to_json()) == m
    with pytest.raises(ToolkitError, match="metadata version 99"):
        ArtifactMetadata.from_json(m.to_json().replace('"metadata_version": 1',
                                                       '"metadata_version": 99'))
    with pytest.raises(ToolkitError, match="not valid JSON"):
        ArtifactMetadata.from_json("{", "model.onnx")


def test_metadata_for_a_checkpoint_is_complete(tiny_run):
    from toolkit.checkpoint import load_checkpoint
    from toolkit.config import Precision, to_dict

    ck = load_checkpoint(tiny_run)
    m = ArtifactMetadata.for_checkpoint(ck, Precision.fp16, {"opset": 20})
    assert m.precision == "fp16" and m.source_sha256 == sha256(ck.weights)
    assert m.model_config == to_dict(ck.config) and m.extra == {"opset": 20}
    assert m.labels == ck.labels and m.vocab == ck.tokenizer.vocab
    assert m.input_names == ["image", "input_ids", "attention_mask"]
    assert ArtifactMetadata.for_checkpoint(ck).precision == "fp32"


def test_a_missing_record_is_one_error_wherever_it_is_read(tmp_path, tiny_onnx):
    import onnx

    from toolkit.artifacts import METADATA_KEY, ArtifactError, read_onnx_metadata
    from toolkit.export.graph import get_metadata
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    model = onnx.load(str(tiny_onnx.path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    message = f"has no '{METADATA_KEY}' metadata: it was not written by toolkit export"
    with pytest.raises(ArtifactError, match=message):
        read_onnx_metadata(bare)
    with pytest.raises(ArtifactError, match=message):
        get_metadata(model, str(bare))
    with OnnxRuntimeRunner(bare) as r, pytest.raises(ArtifactError, match=message):
        r.artifact_metadata()
    assert read_onnx_metadata(tiny_onnx.path) == get_metadata(onnx.load(str(tiny_onnx.path)))
