"""Run directories: runs/<name>/ holds everything needed to rebuild and use a trained model.

  config.json        model and training config, toolkit version, checkpoint format version
  vocab.txt          the WordPiece vocabulary (the tokenizer)
  labels.json        class names, in logit order
  best.safetensors   weights with the best held-out accuracy
  last.safetensors   weights at the last save
  resume.pt          model + optimizer + scheduler + step, for --resume (written in one rename)
  metrics.json       per-evaluation history
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from toolkit import __version__
from toolkit.artifacts import atomic_path, write_json
from toolkit.config import ModelConfig, from_dict, to_dict
from toolkit.data.preprocess import Tokenizer
from toolkit.errors import ToolkitError
from toolkit.model import DualModalNet

# 2: the fusion's summary of the cells (a checkpoint of format 1 lacks its weights).
FORMAT_VERSION = 2


class CheckpointError(ToolkitError):
    pass


@dataclass
class Checkpoint:
    model: DualModalNet
    config: ModelConfig
    tokenizer: Tokenizer
    labels: list[str]
    path: Path
    weights: Path


def write_run_files(out: Path, cfg: ModelConfig, train: dict[str, Any], tokenizer: Tokenizer,
                    labels: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"format_version": FORMAT_VERSION, "toolkit_version": __version__,
                                     "model": to_dict(cfg), "train": train})
    with atomic_path(out / "vocab.txt") as tmp:
        tokenizer.save(tmp)
    write_json(out / "labels.json", labels)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "toolkit_version": __version__})


def read_config(run: Path) -> ModelConfig:
    if not run.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {run}; train one with "
                              "`toolkit train` or pass an existing runs/<name>")
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run} has no config.json; it is not a toolkit run directory")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e.msg}); the run is damaged") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{run} has checkpoint format {version} (toolkit "
                              f"{meta.get('toolkit_version', '?')}); this toolkit "
                              f"({__version__}) reads format {FORMAT_VERSION}: retrain, or use the "
                              "toolkit version that wrote it")
    return from_dict(ModelConfig, meta["model"])


def load_checkpoint(run: str | Path, which: str = "best", device: str = "cpu") -> Checkpoint:
    """Rebuild the model from a run directory and load `best` or `last` weights, in eval mode."""
    run = Path(run)
    cfg = read_config(run)
    weights = run / f"{which}.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run} has no {weights.name}; training did not save it yet")
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated ({e}); use the other checkpoint "
                              "(best/last) or retrain with --resume") from e
    model = DualModalNet(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match its config.json (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]})")
    tokenizer = Tokenizer.from_file(run / "vocab.txt", cfg.text.max_length)
    labels = json.loads((run / "labels.json").read_text())
    return Checkpoint(model.to(device).eval(), cfg, tokenizer, labels, run, weights)
