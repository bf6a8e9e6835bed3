"""Shared fixtures: a tiny generated dataset and a tiny seeded run, made once per session."""

from __future__ import annotations

import pytest

from toolkit.config import DataConfig, TrainConfig, preset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from toolkit.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "soc",
                    DataConfig(scenes=30, image_size=32, val_fraction=0.2, seed=1))


@pytest.fixture(scope="session")
def tiny_train_config(tiny_data, tmp_path_factory) -> TrainConfig:
    return TrainConfig(data=str(tiny_data), out=str(tmp_path_factory.mktemp("runs") / "tiny"),
                       model=preset("tiny"), epochs=1, batch_size=8, lr=1e-3, warmup_steps=2,
                       vocab_size=120, device="cpu", seed=0)


@pytest.fixture(scope="session")
def tiny_run(tiny_train_config):
    """A trained (a few steps) tiny run directory."""
    from pathlib import Path

    from toolkit.train import train

    train(tiny_train_config, log=lambda *_: None)
    return Path(tiny_train_config.out)


# ------------------------------------------------------------------ exported tiny models (issue 3)


def _export_tiny(tiny_run, tiny_data, out, precision, **kw):
    from toolkit.config import ExportConfig
    from toolkit.export.pipeline import export

    return export(ExportConfig(checkpoint=str(tiny_run), out=str(out), precision=precision,
                               data=str(tiny_data), **kw))


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tiny_data, tmp_path_factory):
    """The tiny run exported once to FP32 ONNX: the ExportResult (path, comparison, ...)."""
    from toolkit.config import Precision

    return _export_tiny(tiny_run, tiny_data, tmp_path_factory.mktemp("export") / "model.onnx",
                        Precision.fp32)


@pytest.fixture(scope="session")
def tiny_fp16(tiny_run, tiny_data, tmp_path_factory):
    from toolkit.config import Precision

    return _export_tiny(tiny_run, tiny_data, tmp_path_factory.mktemp("export") / "model.fp16.onnx",
                        Precision.fp16)


@pytest.fixture(scope="session")
def tiny_int8(tiny_run, tiny_data, tmp_path_factory):
    """INT8 QDQ for TensorRT, calibrated on 32 training rows."""
    from toolkit.config import Int8Config, Precision

    return _export_tiny(tiny_run, tiny_data, tmp_path_factory.mktemp("export") / "model.int8.onnx",
                        Precision.int8, int8=Int8Config(str(tiny_data), samples=32))
