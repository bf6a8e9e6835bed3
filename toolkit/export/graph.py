"""ONNX file plumbing for every export step: single-file atomic saves, the full checker, metadata."""

from __future__ import annotations

from pathlib import Path

from toolkit.artifacts import METADATA_KEY, ArtifactMetadata, atomic_path
from toolkit.errors import ToolkitError

TWO_GB = 2**31 - 1  # protobuf's hard limit for a single-file ONNX model


class ExportError(ToolkitError):
    pass


def load(path: str | Path):
    import onnx

    from toolkit.onnx_file import check_external_data

    path = Path(path)
    check_external_data(path)
    try:
        return onnx.load(str(path))  # also pulls external data sitting next to the file
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise ExportError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); "
                          "export it again with `toolkit export --precision fp32`") from e


def set_metadata(model, meta: ArtifactMetadata) -> None:
    """Store the toolkit's record under METADATA_KEY (replacing an older one) in metadata_props."""
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()


def get_metadata(model, source: str = "model") -> ArtifactMetadata:
    """The record of an in-memory ModelProto (a file: artifacts.read_onnx_metadata)."""
    return ArtifactMetadata.from_props({p.key: p.value for p in model.metadata_props}, source)


def save(model, path: str | Path) -> Path:
    """Write one self-contained .onnx (no external data), run the full checker, then rename into
    place: a model that fails the checker never appears at `path`."""
    import onnx

    size = model.ByteSize()
    if size > TWO_GB:
        raise ExportError(f"the model is {size / 2**30:.1f} GiB, over ONNX's 2 GiB single-file "
                          "limit; external-data output is not supported by this toolkit yet")
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        try:
            # full_check also runs strict shape inference (onnx.checker docs).
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the exported graph for {path} fails onnx.checker: "
                              f"{str(e).splitlines()[0]}") from e
    return path


def tmp_sibling(path: Path, tag: str) -> Path:
    """A scratch file next to `path` (same filesystem) for intermediate graphs."""
    import os

    return path.with_name(f".{path.name}.{tag}-{os.getpid()}.onnx")
