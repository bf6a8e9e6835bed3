"""Fixtures of artifacts free to damage, and the bad-input count in the terminal summary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

MODEL_INPUTS = {"image": (-1, 3, 32, 32), "input_ids": (-1, -1), "attention_mask": (-1, -1)}


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A fresh copy of the tiny run, free to damage."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


@pytest.fixture
def onnx_copy(tiny_onnx, tmp_path) -> Path:
    dst = tmp_path / "export" / "model.onnx"
    dst.parent.mkdir()
    shutil.copy(tiny_onnx.path, dst)
    return dst


@pytest.fixture
def fake_plan(tiny_onnx, tmp_path) -> Path:
    """A plan of fake bytes with a real sidecar (TensorRT is not needed to check either)."""
    from toolkit.artifacts import read_onnx_metadata
    from toolkit.runtime.cuda_mem import GpuInfo
    from toolkit.runtime.trt_plan import ProfileConfig, profile_shapes, write_sidecar

    plan = tmp_path / "engines" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"\x00plan" * 100)
    meta = read_onnx_metadata(tiny_onnx.path)
    write_sidecar(plan, source_onnx=tiny_onnx.path, tensorrt_version="10.3.0",
                  gpu=GpuInfo("NVIDIA H200", "9.0"), metadata=meta,
                  build={"version_compatible": False, "hardware_compat": "none"},
                  profiles=[profile_shapes(MODEL_INPUTS, ProfileConfig(max_batch=4),
                                           meta.image_size, meta.max_length)],
                  inputs=[{"name": "image", "dtype": "float32", "shape": [-1, 3, 32, 32]}],
                  outputs=[{"name": "logits", "dtype": "float32", "shape": [-1, 12]}])
    return plan


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


# ------------------------------------------------------------------ the count


def pytest_terminal_summary(terminalreporter):
    stats = terminalreporter.stats
    counted = {k: sum(1 for r in stats.get(k, []) if getattr(r, "when", "call") == "call"
                      and "bad_input" in getattr(r, "keywords", {}))
               for k in ("passed", "failed", "skipped")}
    if any(counted.values()):
        terminalreporter.write_line(
            f"bad-input corpus: {counted['passed']} passed, {counted['failed']} failed, "
            f"{counted['skipped']} skipped (pytest -m bad_input tests/reliability)")
