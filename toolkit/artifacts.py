"""Artifact plumbing shared by every stage: atomic writes and content hashes.

Nothing half-written is ever left at an output path: writers produce a temporary sibling and
rename it into place (atomic on POSIX and Windows within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError


class OutputPathError(ToolkitError):
    """An output path cannot be written: it is a folder, its folder cannot be made, or the OS
    refused the write (read-only, no space); the message names the path and the reason."""


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`, else delete it.

    OS errors of the folder, the temporary file or the rename become one OutputPathError, and
    nothing is left at `path` or beside it.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output {path} is a folder; pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, a read-only place, ...
        raise OutputPathError(f"cannot create the folder of {path} ({_os_reason(e)}); pass an "
                              "output path in a writable folder") from e
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OutputPathError(f"cannot write {path} ({_os_reason(e)}); pass an output path in a "
                              "writable folder with free space") from e
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ self-describing artifacts
# Every exported model carries this record: in an ONNX file as the metadata_props entry
# METADATA_KEY (a JSON string), in a TensorRT plan's sidecar (model.plan.json) under "model". A
# Predictor needs nothing else to turn raw images and text into the model's inputs.

METADATA_KEY = "toolkit.metadata"
METADATA_VERSION = 1

# The model's interface, written here once: the exporter names the graph's inputs and outputs
# with these, every runner takes and returns them, and the record lists them.
INPUT_NAMES = ("image", "input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)


class ArtifactError(ToolkitError):
    """An artifact's record is missing or unreadable; the message names the file and the fix."""


@dataclass(frozen=True)
class ArtifactMetadata:
    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    vocab: list[str]  # WordPiece vocabulary, in id order
    max_length: int
    precision: str  # fp32 | fp16 | int8
    source_sha256: str  # SHA-256 of the checkpoint weights the artifact was made from
    toolkit_version: str
    model_config: dict = field(default_factory=dict)
    input_names: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    output_names: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    extra: dict = field(default_factory=dict)  # stage-specific facts (opset, calibration, ...)
    metadata_version: int = METADATA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def for_checkpoint(cls, ck, precision="fp32", extra: dict | None = None
                       ) -> "ArtifactMetadata":
        """The record of an artifact made from checkpoint `ck` (a toolkit.checkpoint.Checkpoint):
        the one place it is built, for exports and for a run directory loaded as a Predictor."""
        from toolkit import __version__
        from toolkit.config import Precision, to_dict

        cfg = ck.config
        return cls(labels=list(ck.labels), image_size=cfg.image_size, mean=list(cfg.mean),
                   std=list(cfg.std), vocab=list(ck.tokenizer.vocab),
                   max_length=cfg.text.max_length, precision=Precision(precision).value,
                   source_sha256=sha256(ck.weights), toolkit_version=__version__,
                   model_config=to_dict(cfg), extra=dict(extra or {}))

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> "ArtifactMetadata":
        """The record from an ONNX model's metadata_props (as a dict), however they were read:
        the one place a missing record is reported."""
        if METADATA_KEY not in props:
            raise ArtifactError(f"{source} has no {METADATA_KEY!r} metadata: it was not written by "
                                "toolkit export; export the model again with `toolkit export`")
        return cls.from_json(props[METADATA_KEY], source)

    @classmethod
    def from_json(cls, text: str, source: str = "artifact") -> "ArtifactMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{source}: metadata is not valid JSON ({e.msg})") from e
        if data.get("metadata_version") != METADATA_VERSION:
            raise ArtifactError(f"{source}: metadata version {data.get('metadata_version')} is not "
                                f"{METADATA_VERSION}; re-export it with this toolkit")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_onnx_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """The record of an .onnx file, read without its weights (needs the onnx package; a runtime
    without it reads the record through its ONNX Runtime session, OnnxRuntimeRunner)."""
    try:
        import onnx
    except ImportError as e:
        raise ArtifactError("reading an ONNX model's metadata needs the onnx package: "
                            "pip install onnx") from e
    from toolkit.onnx_file import check_external_data  # only where an ONNX file is opened

    check_external_data(path)  # also guards the TensorRT parser, which reads the same file next
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(e).__name__}); export "
                            "it again with `toolkit export`") from e
    return ArtifactMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
