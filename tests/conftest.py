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
