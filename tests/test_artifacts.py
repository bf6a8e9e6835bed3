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
