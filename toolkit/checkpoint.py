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


def check_run_dir(out: str | Path, create: bool = True) -> Path:
    """A run directory that exists or can be made (made, with `create`): a CheckpointError where
    a file sits at `out` or at one of its parents, or the OS refuses the folder."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise CheckpointError(f"run directory {out}: {p} is a file, not a folder; pass "
                                  "another --out or remove the file")
    if not create:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the run directory {out} ({e.strerror}); pass an "
                              "--out in a writable folder") from e
    return out


def write_run_files(out: Path, cfg: ModelConfig, train: dict[str, Any], tokenizer: Tokenizer,
                    labels: list[str]) -> None:
    check_run_dir(out)
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
    meta = _read_json(cfg_path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_path} holds a JSON {type(meta).__name__}, not an object; "
                              "the run is damaged")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{run} has checkpoint format {version} (toolkit "
                              f"{meta.get('toolkit_version', '?')}); this toolkit "
                              f"({__version__}) reads format {FORMAT_VERSION}: retrain, or use the "
                              "toolkit version that wrote it")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{cfg_path} has no model config object; the run is damaged")
    try:
        return from_dict(ModelConfig, meta["model"])
    except ToolkitError as e:
        raise CheckpointError(f"{cfg_path}: {e}; the run is damaged or from another toolkit") from e
    except (TypeError, ValueError, KeyError) as e:  # a field of the wrong type or value
        raise CheckpointError(f"{cfg_path} has an invalid model config ({e}); the run is "
                              "damaged") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the run is damaged") from e
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror})") from e


def read_labels(run: Path, num_classes: int) -> list[str]:
    """labels.json: a list of distinct class names, one per output of the model's head."""
    path = run / "labels.json"
    if not path.is_file():
        raise CheckpointError(f"{run} has no labels.json (the class names); the run is damaged")
    labels = _read_json(path)
    if (not isinstance(labels, list) or not labels
            or not all(isinstance(x, str) and x for x in labels)):
        raise CheckpointError(f"{path} must be a JSON list of class names (strings); the run is "
                              "damaged")
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"{path} repeats class names; the run is damaged")
    if len(labels) != num_classes:
        raise CheckpointError(f"{path} names {len(labels)} classes but the model's head has "
                              f"{num_classes} outputs; labels.json and config.json disagree")
    return labels


WHICH = ("best", "last")


def load_checkpoint(run: str | Path, which: str = "best", device: str = "cpu") -> Checkpoint:
    """Rebuild the model from a run directory and load `best` or `last` weights, in eval mode.

    Every file is checked against the others: weights against config.json, labels.json against
    the head, vocab.txt against the embedding; a mismatch is a CheckpointError, not a model."""
    run = Path(run)
    if which not in WHICH:
        raise CheckpointError(f"unknown weights {which!r}; use one of {list(WHICH)}")
    cfg = read_config(run)
    weights = run / f"{which}.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run} has no {weights.name}; training did not save it yet")
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated ({e}); use the other checkpoint "
                              "(best/last) or retrain with --resume") from e
    try:
        model = DualModalNet(cfg)
    except ToolkitError:
        raise
    except Exception as e:  # noqa: BLE001 -- torch and transformers' own validation errors alike
        # (transformers raises huggingface_hub's StrictDataclassFieldValidationError, no TypeError)
        raise CheckpointError(f"{run / 'config.json'} describes no buildable model ({e}); the "
                              "run is damaged") from e
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # "size mismatch for ...": same names, other shapes
        first = str(e).strip().splitlines()[1:2] or [str(e)[:200]]
        raise CheckpointError(f"{weights} does not match its config.json ({first[0].strip()}); "
                              "the config was edited or the weights come from another run") from e
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match its config.json (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]})")
    tokenizer = Tokenizer.from_file(run / "vocab.txt", cfg.text.max_length)
    rows = _embedding_rows(model)
    # A trained vocabulary sized the embedding; a pretrained one may leave spare rows.
    if rows is not None and (len(tokenizer.vocab) > rows or
                             (cfg.text.model_dir is None and len(tokenizer.vocab) != rows)):
        raise CheckpointError(f"{run / 'vocab.txt'} has {len(tokenizer.vocab)} tokens but the "
                              f"model's embedding has {rows} rows; vocab.txt does not belong to "
                              "these weights")
    labels = read_labels(run, cfg.num_classes)
    return Checkpoint(model.to(device).eval(), cfg, tokenizer, labels, run, weights)


def _embedding_rows(model: torch.nn.Module) -> int | None:
    """Rows of the text tower's word embedding (the vocabulary size the weights were trained on)."""
    for name, module in model.named_modules():
        if name.endswith("word_embeddings") and isinstance(module, torch.nn.Embedding):
            return module.num_embeddings
    return None
