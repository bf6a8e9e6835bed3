"""Run directories that are damaged or disagree with themselves, through every command that reads
one (eval, export, parity, bench --checkpoint) and Predictor.load: one clear error each."""

from __future__ import annotations

import json
import shutil

import pytest
from corpus import DAMAGE, damage, invoke, raises_toolkit_error

from toolkit.runtime import Predictor

pytestmark = pytest.mark.bad_input

RUN_FILES = ("config.json", "labels.json", "vocab.txt", "best.safetensors")
CONSUMERS = ("eval", "export", "parity", "bench", "predictor")


def consume(consumer, run, tiny_data, tiny_onnx, tmp_path):
    """Run `consumer` on `run`: the CliResult, or the Predictor's ToolkitError."""
    if consumer == "predictor":
        return raises_toolkit_error(Predictor.load, run, device="cpu")
    args = {
        "eval": ("eval", "--checkpoint", run, "--data", tiny_data, "--device", "cpu"),
        "export": ("export", "--checkpoint", run, "--out", tmp_path / "out" / "m.onnx"),
        "parity": ("parity", "--reference", run, "--candidate", tiny_onnx.path),
        "bench": ("bench", "--checkpoint", run, "--batch", "1", "--iters", "1", "--warmup", "0",
                  "--seq", "8", "--no-compare"),
    }[consumer]
    result = invoke(*args)
    result.assert_clean_error()
    return result


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", RUN_FILES)
def test_damaged_run_file(name, how, consumer, run_copy, tiny_data, tiny_onnx, tmp_path):
    damage(run_copy / name, how)
    consume(consumer, run_copy, tiny_data, tiny_onnx, tmp_path)
    assert not (tmp_path / "out").exists()  # export left nothing behind


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("how", ("missing", "empty-folder", "a-file", "random-file"))
def test_damaged_run_directory(how, consumer, run_copy, tiny_data, tiny_onnx, tmp_path):
    shutil.rmtree(run_copy)
    if how == "empty-folder":
        run_copy.mkdir()
    elif how == "a-file":
        run_copy.write_text("not a run\n")
    elif how == "random-file":
        run_copy.write_bytes(b"\xff" * 100)
    consume(consumer, run_copy, tiny_data, tiny_onnx, tmp_path)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("consumer", ("eval", "predictor"))
def test_metrics_json_is_not_on_the_loading_path(how, consumer, run_copy, tiny_data):
    """metrics.json is the training history, for people: a damaged one changes nothing."""
    damage(run_copy / "metrics.json", how)
    if consumer == "predictor":
        with Predictor.load(run_copy, device="cpu") as p:
            assert len(p.classes) == 12
    else:
        invoke("eval", "--checkpoint", run_copy, "--data", tiny_data, "--device", "cpu").assert_ok()


# ------------------------------------------------------------------ files that disagree


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    data = fn(data) or data
    path.write_text(json.dumps(data))


def _model(key, value):
    def edit(cfg):
        cfg["model"][key] = value
    return edit


def _text(key, value):
    def edit(cfg):
        cfg["model"]["text"][key] = value
    return edit


def _vocab(fn):
    def edit(run):
        lines = (run / "vocab.txt").read_text().splitlines()
        (run / "vocab.txt").write_text("\n".join(fn(lines)) + "\n")
    return edit


DISAGREE = {
    # config.json vs the weights
    "config-hidden-size": (lambda r: _edit_json(r / "config.json", _text("hidden_size", 48)),
                           "does not match its config.json"),
    "config-more-layers": (lambda r: _edit_json(r / "config.json", _text("num_layers", 2)),
                           "does not match its config.json"),
    "config-head-hidden": (lambda r: _edit_json(r / "config.json", _model("head_hidden", 64)),
                           "does not match its config.json"),
    "config-fusion": (lambda r: _edit_json(r / "config.json", _model("fusion", "concat")),
                      "config.json"),
    "config-num-classes": (lambda r: _edit_json(r / "config.json", _model("num_classes", 13)),
                           "config.json"),
    "config-bad-enum": (lambda r: _edit_json(r / "config.json", _model("fusion", "magic")),
                        "config.json"),
    "config-wrong-type": (lambda r: _edit_json(r / "config.json", _text("hidden_size", "big")),
                          "config.json"),
    "config-unknown-field": (lambda r: _edit_json(r / "config.json", _model("colour", 1)),
                             "unknown"),
    "config-format-version": (lambda r: _edit_json(r / "config.json",
                                                   lambda c: c.update(format_version=1)),
                              "format"),
    "config-no-model": (lambda r: _edit_json(r / "config.json", lambda c: {k: v for k, v in c.items() if k != "model"}),
                        "config"),
    "config-a-list": (lambda r: (r / "config.json").write_text("[1, 2]"), "config.json"),
    # vocab.txt vs the embedding
    "vocab-extra-token": (_vocab(lambda v: v + ["zebra"]), "embedding"),
    "vocab-one-short": (_vocab(lambda v: v[:-1]), "embedding"),
    "vocab-repeated-token": (_vocab(lambda v: v[:-1] + [v[-2]]), "repeats"),
    "vocab-no-specials": (_vocab(lambda v: v[5:] + [f"zz{i}" for i in range(5)]), "special"),
    # labels.json vs the head
    "labels-one-short": (lambda r: _edit_json(r / "labels.json", lambda x: x[:-1]), "head"),
    "labels-one-more": (lambda r: _edit_json(r / "labels.json", lambda x: x + ["purple"]),
                        "head"),
    "labels-repeated": (lambda r: _edit_json(r / "labels.json", lambda x: x[:-1] + [x[0]]),
                        "repeats"),
    "labels-numbers": (lambda r: (r / "labels.json").write_text(json.dumps(list(range(12)))),
                       "class names"),
    "labels-an-object": (lambda r: (r / "labels.json").write_text('{"a": 1}'), "class names"),
    # weights of another run
    "weights-swapped": (lambda r: _swap_weights(r), "does not match"),
}


def _swap_weights(run):
    """Weights of a model with other sizes under the same name (a copied-in file)."""
    from safetensors.numpy import save_file
    import numpy as np

    save_file({"head.0.weight": np.zeros((3, 3), np.float32)}, str(run / "best.safetensors"))


@pytest.mark.parametrize("consumer", ("eval", "parity", "predictor"))
@pytest.mark.parametrize("case", sorted(DISAGREE))
def test_run_files_that_disagree(case, consumer, run_copy, tiny_data, tiny_onnx, tmp_path):
    edit, needle = DISAGREE[case]
    edit(run_copy)
    outcome = consume(consumer, run_copy, tiny_data, tiny_onnx, tmp_path)
    assert needle.lower() in str(getattr(outcome, "output", outcome)).lower()


@pytest.mark.parametrize("which", ("../best", "worst", "best.safetensors", ""))
def test_unknown_weights_name(which, run_copy, tiny_data):
    """--which picks best or last; anything else (a path climbing out included) is refused."""
    invoke("eval", "--checkpoint", run_copy, "--data", tiny_data, "--which", which,
           "--device", "cpu").assert_clean_error("best")
