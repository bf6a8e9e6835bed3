"""`toolkit parity`: an exported ONNX model against its PyTorch checkpoint on held-out rows.

The tolerance comes from the candidate's own metadata (its precision) and config.TOLERANCES; the
comparison is the one in toolkit.compare.
"""

from __future__ import annotations

import numpy as np

from toolkit.compare import Comparison, ParityError, compare
from toolkit.config import TOLERANCES, ParityConfig, Precision
from toolkit.errors import ToolkitError


def candidate_metadata(path):
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path) as r:
        return r.artifact_metadata()


def parity(cfg: ParityConfig) -> Comparison:
    from toolkit.artifacts import sha256
    from toolkit.checkpoint import load_checkpoint
    from toolkit.export import samples
    from toolkit.export.onnx import torch_outputs
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    meta = candidate_metadata(cfg.candidate)
    ck = load_checkpoint(cfg.reference, cfg.which)
    if meta.source_sha256 != sha256(ck.weights):
        raise ParityError(f"{cfg.candidate} was exported from other weights than {ck.weights} "
                          f"(sha256 {meta.source_sha256[:12]} vs {sha256(ck.weights)[:12]}); "
                          "pass the run it came from, or export it again")
    data = cfg.data or samples.run_data(ck.path)
    if not data:
        raise ToolkitError(f"no data for parity: {ck.path} does not record an existing dataset; "
                           "pass --data DATA")
    rows = samples.load_rows(ck, data, cfg.split)
    n = len(rows) if cfg.samples is None else min(cfg.samples, len(rows))
    ref, cand = [], []
    with OnnxRuntimeRunner(cfg.candidate) as runner:
        dtype = runner.input_specs()["image"].dtype
        for start in range(0, n, cfg.batch_size):
            feed = samples.batch(ck, rows, np.arange(start, min(start + cfg.batch_size, n)))
            ref.append(torch_outputs(ck, feed)["logits"])
            out = runner.infer({**feed, "image": feed["image"].astype(dtype)})
            cand.append(out["logits"].astype(np.float32))
    tol = TOLERANCES[Precision(meta.precision)]
    return compare({"logits": np.concatenate(ref)}, {"logits": np.concatenate(cand)}, tol,
                   labels=rows.labels[:n])
