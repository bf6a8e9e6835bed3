"""PyTorch -> ONNX FP32 with torch.onnx's dynamo exporter.

Facts relied on (torch.onnx.export's docstring and docs.pytorch.org/docs/stable/onnx_dynamo.html;
the default changed in github.com/pytorch/pytorch/pull/159646): `dynamo=True` is the default and
the TorchScript exporter is deprecated; string names in `dynamic_shapes` become dynamic dims renamed
to those names; an example batch or sequence of 1 lets the exporter specialize the axis ("0/1
specialization", docs.pytorch.org/docs/stable/export.html), so the example uses batch 3 and a
sequence of another size >= 2; the exporter writes external data by default, so the in-memory
ModelProto is saved here as one file.
"""

from __future__ import annotations

import contextlib
import io
import warnings

from toolkit.artifacts import INPUT_NAMES, OUTPUT_NAMES
from toolkit.export.graph import ExportError

_IMAGE, _IDS, _MASK = INPUT_NAMES
DYNAMIC = {_IMAGE: {0: "batch"}, _IDS: {0: "batch", 1: "seq"}, _MASK: {0: "batch", 1: "seq"}}


def example_inputs(ck):
    """Traced inputs: batch 3, sequence != 3 and >= 2, some padding (the mask path is traced)."""
    import torch

    s, max_len = ck.config.image_size, ck.config.text.max_length
    length = 7 if max_len >= 7 else max(2, max_len)
    b = 3 if length != 3 else 2
    g = torch.Generator().manual_seed(0)
    image = torch.randn(b, 3, s, s, generator=g)  # (B, 3, S, S)
    ids = torch.randint(5, len(ck.tokenizer.vocab), (b, length), generator=g)  # (B, L)
    mask = torch.ones(b, length, dtype=torch.int64)
    mask[0, length // 2:] = 0
    ids[0, length // 2:] = ck.tokenizer.pad_id
    return image, ids, mask


def to_onnx(ck, opset: int):
    """The checkpoint's model as an in-memory ONNX ModelProto (FP32, dynamic batch and seq)."""
    model = export_program(ck, opset).model_proto
    check_io(model, ck)
    return model


def export_program(ck, opset: int):
    """torch.onnx's ONNXProgram for the checkpoint: `.model_proto`, and `.exported_program`, the
    torch.export program it was translated from (QAT rewrites that graph)."""
    import torch

    log = io.StringIO()
    try:
        # The exporter prints progress and constant-folding notes; keep them for the error message.
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(ck.model.eval(), example_inputs(ck), dynamo=True,
                                        input_names=list(INPUT_NAMES),
                                        output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes=DYNAMIC, opset_version=opset,
                                        external_data=False, verbose=False)
    except Exception as e:
        tail = "\n".join(log.getvalue().strip().splitlines()[-5:])
        raise ExportError(f"torch.onnx.export (dynamo) failed for {ck.path}: "
                          f"{type(e).__name__}: {str(e)[:500]}\n{tail}") from e
    return program


def check_io(model, ck) -> None:
    """The graph's interface is the toolkit's contract: names, dtypes, and symbolic batch/seq axes
    (a specialized axis would silently accept only the example's size)."""
    from onnx import TensorProto

    s = ck.config.image_size
    want = {_IMAGE: (TensorProto.FLOAT, ["batch", 3, s, s]),
            _IDS: (TensorProto.INT64, ["batch", "seq"]),
            _MASK: (TensorProto.INT64, ["batch", "seq"])}
    got = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        got[i.name] = (t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim])
    if got != want:
        raise ExportError(f"exported inputs {got} differ from the contract {want}; the exporter "
                          "specialized an axis or renamed an input")
    outs = [o.name for o in model.graph.output]
    if outs != list(OUTPUT_NAMES):
        raise ExportError(f"exported outputs {outs}, expected {list(OUTPUT_NAMES)}")

