"""The CLI through Typer's CliRunner: commands call the library; bad input exits non-zero with a
one-line error and no traceback."""

import json

import pytest
from typer.testing import CliRunner

from toolkit.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_data_generate_writes_the_manifests(tmp_path):
    r = _run("data", "generate", "--out", tmp_path / "d", "--scenes", 5, "--image-size", 32)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "train.jsonl").is_file() and (tmp_path / "d" / "val.jsonl").is_file()
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 5


def test_train_then_eval(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = _run("train", "--data", tiny_data, "--out", out, "--preset", "tiny", "--max-steps", 3,
             "--batch-size", 8, "--device", "cpu", "--curriculum-types", "horizontal,vertical",
             "--curriculum-types", "shape", "--curriculum-steps", 1, "--freeze-binding")
    assert r.exit_code == 0, r.output
    assert "answer priors" in r.output and "held-out accuracy" in r.output
    assert (out / "best.safetensors").is_file()
    train_cfg = json.loads((out / "config.json").read_text())["train"]
    assert train_cfg["curriculum"] == [["horizontal", "vertical"], ["shape"]]
    assert train_cfg["freeze_binding"] is True
    r = _run("eval", "--checkpoint", out, "--data", tiny_data, "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert "confusion" in r.output and "majority answer" in r.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["n"] == sum(sum(row) for row in report["confusion"])
    assert set(report["groups"]) == {"non_relational", "relational"}
    # floors: a barely trained model is far under 99% on some type, and the line says which
    r = _run("eval", "--checkpoint", out, "--data", tiny_data, "--min-type-accuracy", 99)
    assert r.exit_code == 1 and "is below the floor of 99%" in r.output
    r = _run("eval", "--checkpoint", out, "--data", tiny_data, "--min-accuracy", 0)
    assert r.exit_code == 0, r.output
    r = _run("eval", "--checkpoint", out, "--data", tiny_data, "--min-accuracy", 101)
    assert r.exit_code == 2 and "less than or equal to" in r.output


@pytest.mark.parametrize("args,message", [
    (["eval", "--checkpoint", "{tmp}/missing", "--data", "{data}"], "checkpoint directory not found"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--resume"], "resume.pt not found"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--device", "cuda"], "no CUDA GPU"),
    (["train", "--data", "{tmp}/empty", "--out", "{tmp}/r"], "zero rows"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--curriculum-types", "shape"],
     "a curriculum needs both --curriculum-types and --curriculum-steps"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--freeze-binding"],
     "--freeze-binding holds what the first curriculum stage learned"),
])
def test_bad_input_is_one_line_and_exit_1(args, message, tiny_data, tmp_path):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present, so --device cuda is not an error here")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.jsonl").write_text("")
    args = [a.format(tmp=tmp_path, data=tiny_data) for a in args]
    r = _run(*args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert r.output.startswith("error: ")
    assert message is None or message in r.output
    assert not list(tmp_path.glob("r/*.safetensors"))


def test_unknown_preset_is_a_usage_error(tiny_data, tmp_path):
    r = _run("train", "--data", tiny_data, "--out", tmp_path / "r", "--preset", "huge")
    assert r.exit_code == 2 and "huge" in r.output


def test_verbose_shows_the_traceback(tmp_path, tiny_data):
    r = _run("--verbose", "eval", "--checkpoint", tmp_path / "missing", "--data", tiny_data)
    assert r.exit_code != 0 and r.exception is not None


def test_train_reads_model_overrides_from_a_json_file(tiny_data, tmp_path):
    (tmp_path / "m.json").write_text('{"fusion": "concat", "fusion_relation": 0}')
    r = _run("train", "--data", tiny_data, "--out", tmp_path / "run", "--preset", "tiny",
             "--model-config", tmp_path / "m.json", "--max-steps", 1, "--batch-size", 4,
             "--device", "cpu")
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["fusion"] == "concat"
    (tmp_path / "bad.json").write_text("[1, 2]")
    r = _run("train", "--data", tiny_data, "--out", tmp_path / "r2", "--model-config",
             tmp_path / "bad.json")
    assert r.exit_code == 1 and "must hold a JSON object" in r.output
