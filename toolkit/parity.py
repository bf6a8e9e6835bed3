"""`toolkit parity`: an exported ONNX model against its PyTorch checkpoint on held-out rows.

The tolerance comes from the candidate's own metadata (its precision) and config.TOLERANCES; the
runners are run and compared by toolkit.verify, the path the export-time check takes too.
"""

from __future__ import annotations

import numpy as np

from toolkit.compare import Comparison, ParityError
from toolkit.config import TOLERANCES, ParityConfig, Precision
from toolkit.errors import ToolkitError


def parity(cfg: ParityConfig) -> Comparison:
    from toolkit.artifacts import sha256
    from toolkit.checkpoint import load_checkpoint
    from toolkit.export import samples
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner
    from toolkit.runtime.torch_runner import TorchRunner
    from toolkit.verify import verify

    with OnnxRuntimeRunner(cfg.candidate) as candidate:
        meta = candidate.artifact_metadata()
        ck = load_checkpoint(cfg.reference, cfg.which)
        if meta.source_sha256 != sha256(ck.weights):
            raise ParityError(f"{cfg.candidate} was exported from other weights than {ck.weights} "
                              f"(sha256 {meta.source_sha256[:12]} vs {sha256(ck.weights)[:12]}); "
                              "pass the run it came from, or export it again")
        data = cfg.data or samples.run_data(ck.path)
        if not data:
            raise ToolkitError(f"no data for parity: {ck.path} does not record an existing "
                               "dataset; pass --data DATA")
        rows = samples.load_rows(ck, data, cfg.split)
        n = len(rows) if cfg.samples is None else min(cfg.samples, len(rows))
        feeds = (samples.batch(ck, rows, np.arange(start, min(start + cfg.batch_size, n)))
                 for start in range(0, n, cfg.batch_size))
        return verify(TorchRunner.from_checkpoint(ck), candidate, feeds,
                      TOLERANCES[Precision(meta.precision)], labels=rows.labels[:n])


# Layerwise parity keeps every intermediate tensor of one row in memory at a time; a few rows
# show where the error starts (the decisions are judged on all rows by `parity`).
LAYERWISE_ROWS = 8


def layerwise_parity(cfg: ParityConfig):
    """Every tensor of the candidate against the FP32 export it was made from, on the first
    `cfg.samples` (default LAYERWISE_ROWS) held-out rows, one row per run."""
    from toolkit.artifacts import read_onnx_metadata, sha256
    from toolkit.checkpoint import load_checkpoint
    from toolkit.export import samples
    from toolkit.layerwise import LayerwiseError, layerwise

    if not cfg.reference_onnx:
        raise LayerwiseError("--layerwise needs --reference-onnx FP32.onnx: the FP32 export the "
                             "candidate was made from (e.g. export/model.onnx)")
    ck = load_checkpoint(cfg.reference, cfg.which)
    if read_onnx_metadata(cfg.reference_onnx).source_sha256 != sha256(ck.weights):
        raise LayerwiseError(f"{cfg.reference_onnx} was exported from other weights than "
                             f"{ck.weights}; pass the run it came from, or export it again")
    data = cfg.data or samples.run_data(ck.path)
    if not data:
        raise ToolkitError(f"no data for parity: {ck.path} does not record an existing "
                           "dataset; pass --data DATA")
    rows = samples.load_rows(ck, data, cfg.split)
    n = min(cfg.samples or LAYERWISE_ROWS, len(rows))
    feeds = (samples.batch(ck, rows, np.array([i])) for i in range(n))
    return layerwise(cfg.reference_onnx, cfg.candidate, feeds)
