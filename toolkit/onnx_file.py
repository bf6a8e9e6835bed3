"""ONNX files as untrusted input: external data must stay in the model's folder.

An ONNX tensor may keep its bytes in another file (`data_location = EXTERNAL`, with a "location"
entry in `external_data`, relative to the model's folder: onnx.ai, "External Data" in
docs/ExternalData.md of github.com/onnx/onnx). A location that is absolute or climbs out with ".."
would make a loader read any file on the machine into a weight. ONNX Runtime refuses some such
paths itself, but the toolkit reads ONNX in other places too (metadata, the TensorRT parser, the
FP16/INT8 transforms), so `check_external_data` is called before any of them opens the file.

This reads the protobuf wire format directly (protobuf.dev/programming-guides/encoding) so that
the runtime, which has no `onnx` package, checks the same way. Field numbers are onnx.proto's.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from toolkit.errors import ToolkitError


class UnsafeOnnxError(ToolkitError):
    """An ONNX file is malformed or points outside its folder for external data."""


# (message, field) -> what it holds; only the paths that can reach a TensorProto are walked.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_MAX_DEPTH = 64  # subgraphs nest (If/Loop bodies); a deeper file is not one we wrote


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise UnsafeOnnxError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one message: ints for varints and fixed, a memoryview
    for length-delimited fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:  # groups (3, 4) are not used by onnx.proto
            raise UnsafeOnnxError(f"unsupported wire type {wire}")
        if i > len(buf) or number == 0:
            raise UnsafeOnnxError("truncated or malformed message")
        yield number, wire, value


def _sub(buf: memoryview, *numbers: int):
    for number, wire, value in _fields(buf):
        if number in numbers and wire == 2:
            yield number, value


def _tensor_locations(tensor: memoryview):
    name = ""
    for number, value in _sub(tensor, _TENSOR_NAME, _TENSOR_EXTERNAL_DATA):
        if number == _TENSOR_NAME:
            name = bytes(value).decode("utf-8", "replace")
            continue
        entry = dict(_sub(value, _ENTRY_KEY, _ENTRY_VALUE))
        if bytes(entry.get(_ENTRY_KEY, b"")) == b"location":
            yield name, bytes(entry.get(_ENTRY_VALUE, b"")).decode("utf-8", "replace")


def _sparse(sparse: memoryview):
    for _, tensor in _sub(sparse, _SPARSE_VALUES, _SPARSE_INDICES):
        yield from _tensor_locations(tensor)


def _nodes(nodes, depth: int):
    for node in nodes:
        for _, attr in _sub(node, _NODE_ATTRIBUTE):
            for number, value in _sub(attr, _ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS,
                                      _ATTR_SPARSE, _ATTR_SPARSES):
                if number in (_ATTR_T, _ATTR_TENSORS):
                    yield from _tensor_locations(value)
                elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                    yield from _sparse(value)
                else:
                    yield from _graph(value, depth + 1)


def _graph(graph: memoryview, depth: int):
    if depth > _MAX_DEPTH:
        raise UnsafeOnnxError(f"subgraphs nested deeper than {_MAX_DEPTH}")
    nodes = []
    for number, value in _sub(graph, _GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE):
        if number == _GRAPH_INITIALIZER:
            yield from _tensor_locations(value)
        elif number == _GRAPH_SPARSE:
            yield from _sparse(value)
        else:
            nodes.append(value)
    yield from _nodes(nodes, depth)


def external_locations(data: bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor in a serialized ModelProto that keeps its data in
    another file. UnsafeOnnxError if the bytes are not a well-formed protobuf message."""
    model = memoryview(data)
    found = []
    for number, value in _sub(model, _MODEL_GRAPH, _MODEL_FUNCTIONS):
        if number == _MODEL_GRAPH:
            found += _graph(value, 0)
        else:
            found += _nodes([n for _, n in _sub(value, _FUNCTION_NODE)], 0)
    return found


def _escapes(location: str, folder: Path) -> bool:
    if not location:
        return True
    for flavour in (PurePosixPath, PureWindowsPath):  # a model may come from either system
        p = flavour(location)
        if p.is_absolute() or p.anchor or ".." in p.parts:
            return True
    target = (folder / location).resolve()  # a symlink inside the folder may still point out
    return not target.is_relative_to(folder.resolve())


def check_external_data(path: str | os.PathLike) -> None:
    """Refuse an ONNX file whose external data would be read from outside its own folder (an
    absolute location, "..", or a symlink leading out). A missing or unreadable file is left to
    the loader that follows, which names it in its own words; bytes that are no protobuf message
    are refused here, since a loader reading them otherwise could find locations this does not."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        return
    try:
        locations = external_locations(data)
    except UnsafeOnnxError as e:
        raise UnsafeOnnxError(f"{path} is not a readable ONNX model ({e}); the file is damaged, "
                              "truncated or not ONNX: export it again with `toolkit export`") from e
    for name, location in locations:
        if _escapes(location, path.parent):
            raise UnsafeOnnxError(f"{path}: tensor {name!r} keeps its data at {location!r}, "
                                  f"outside the model's folder; refusing to read it. External "
                                  f"data must sit in {path.parent} under a relative name: export "
                                  "the model again with `toolkit export`")
