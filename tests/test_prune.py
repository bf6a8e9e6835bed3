import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toolkit.artifacts import sha256
from toolkit.checkpoint import load_checkpoint
from toolkit.cli import app
from toolkit.config import ConfigError
from toolkit.prune import (Pattern, PruneConfig, PruneError, checkpoint_conformance,
                           conforming_share, magnitude_mask, onnx_conformance, parse_pattern,
                           prunable_layers, prune)

P24 = Pattern(2, 4)


@pytest.fixture(scope="module")
def sparse_run(tiny_run, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "sparse"
    result = prune(PruneConfig(checkpoint=str(tiny_run), out=str(out), fine_tune_steps=3,
                               data=str(tiny_data), lr=1e-3, batch_size=8, warmup_steps=1,
                               device="cpu"), log=lambda *_: None)
    return out, result


def test_patterns_parse_and_bad_ones_are_refused():
    assert parse_pattern("2:4") == P24 and str(parse_pattern(" 1 : 8 ")) == "1:8"
    for bad, match in [("4:2", "1 <= N < M"), ("2:2", "1 <= N < M"), ("0:4", "1 <= N < M"),
                       ("2-4", "is not N:M"), ("two:four", "is not N:M")]:
        with pytest.raises(ConfigError, match=match):
            parse_pattern(bad)


def test_mask_keeps_the_largest_of_each_group_along_input_channels():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, 0.0]])  # Linear (1 out, 8 in)
    assert magnitude_mask(w, 1, P24).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    # Conv (K=1, C=4, R=1, S=2): the groups run over C at each kernel position
    conv = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 9.0]], [[4.0, 8.0]]]])
    mask = magnitude_mask(conv, 1, P24)
    assert mask[0, :, 0, 0].tolist() == [0, 0, 1, 1]
    assert mask[0, :, 0, 1].tolist() == [0, 0, 1, 1]
    assert conforming_share((conv * mask).numpy(), 1, P24) == 1.0
    assert conforming_share(conv.numpy(), 1, P24) == 0.5  # (1,2,3,4) dense; (0,0,9,8) conforms
    # along the wrong axis the same weights would not tile
    assert conforming_share(np.array([[1, 0, 0, 1], [1, 1, 1, 0]]), 1, P24) == 0.5


def test_layers_that_cannot_take_the_pattern_are_named(tiny_run):
    model = load_checkpoint(tiny_run).model
    layers, skipped = prunable_layers(model, P24)
    names = {layer.name for layer in layers}
    assert "vision.body.stem.0.weight" in skipped  # 3 colour channels
    assert "3 input channels" in skipped["vision.body.stem.0.weight"]
    assert "position.proj.weight" in skipped  # 2 + 16 Fourier features = 18
    assert "head.0.weight" in names and "fusion.blocks.0.text_to_visual.attn.in_proj_weight" in names
    assert any(layer.kind == "conv" for layer in layers)
    grouped = torch.nn.Conv2d(8, 8, 3, groups=2)
    assert "grouped convolution" in prunable_layers(grouped, P24)[1]["weight"]


def test_prune_and_fine_tune_keep_the_pattern(sparse_run, tiny_run):
    out, result = sparse_run
    assert result["conformance"]["conforming_share"] == 1.0
    assert result["report"]["steps"] == 3
    dense = checkpoint_conformance(load_checkpoint(tiny_run).model, P24)
    assert dense["conforming_share"] < 0.5
    for which in ("best", "last"):
        ck = load_checkpoint(out, which)  # an ordinary run directory
        report = checkpoint_conformance(ck.model, P24)
        assert all(r["conforming"] == 1.0 for r in report["layers"])
    # exactly half of each pruned weight is zero, and fine-tuning moved the rest
    ck, parent = load_checkpoint(out, "last"), load_checkpoint(tiny_run)
    w, w0 = ck.model.head[0].weight, parent.model.head[0].weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5)
    kept = w != 0
    assert not torch.equal(w[kept], w0[kept])
    meta = json.loads((out / "config.json").read_text())["train"]["prune"]
    assert meta["pattern"] == "2:4" and meta["fine_tune_steps"] == 3
    assert meta["parent_weights_sha256"] == sha256(tiny_run / "best.safetensors")
    assert "vision.body.stem.0.weight" in meta["skipped"]
    resume = torch.load(out / "resume.pt", weights_only=True)
    assert any(k.startswith("mask") for k in resume["objective"])  # --resume keeps the masks


def test_prune_without_fine_tuning_writes_a_run(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "p0"
    result = prune(PruneConfig(checkpoint=str(tiny_run), out=str(out), data=str(tiny_data),
                               device="cpu"), log=lambda *_: None)
    assert result["report"]["steps"] == 0
    ck = load_checkpoint(out)
    assert checkpoint_conformance(ck.model, P24)["conforming_share"] == 1.0
    assert json.loads((out / "metrics.json").read_text())["history"][0]["step"] == 0


def test_onnx_export_keeps_the_zeros(sparse_run, tiny_data, tiny_onnx, tmp_path):
    from toolkit.config import ExportConfig
    from toolkit.export.pipeline import export

    out, _ = sparse_run
    path = export(ExportConfig(checkpoint=str(out), out=str(tmp_path / "s.onnx"),
                               data=str(tiny_data))).path
    report = onnx_conformance(path, P24)
    # Every constant a MatMul multiplies is reported; the relation read's cell centres (64 cells,
    # x and y) are one, not a weight, and dense by nature. Every weight keeps its zeros.
    weights = [r for r in report["layers"] if r["shape"] != [64, 2]]
    assert len(weights) == len(report["layers"]) - 1
    assert all(r["conforming"] == 1.0 for r in weights), [r for r in weights
                                                          if r["conforming"] < 1]
    kinds = {r["kind"] for r in report["layers"]}
    assert "Conv" in kinds and kinds & {"MatMul", "Gemm"}
    assert any("3 input channels" in why for why in report["skipped"].values())  # the stem
    dense = onnx_conformance(tiny_onnx.path, P24)
    assert dense["conforming_share"] < 0.5 and len(dense["layers"]) == len(report["layers"])


def test_a_model_with_no_prunable_layer_is_refused(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "none"
    with pytest.raises(PruneError, match="has no layer the 1:1024 pattern can take"):
        prune(PruneConfig(checkpoint=str(tiny_run), out=str(out), pattern="1:1024",
                          data=str(tiny_data)), log=lambda *_: None)
    assert not out.exists()


# ------------------------------------------------------------------ CLI


def test_cli_prune_then_inspect_the_onnx(tiny_run, tiny_data, tiny_onnx, tmp_path):
    runner = CliRunner()
    out = tmp_path / "s"
    r = runner.invoke(app, ["prune", "--checkpoint", str(tiny_run), "--out", str(out),
                            "--pattern", "2:4", "--data", str(tiny_data), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "left dense: vision.body.stem.0.weight: 3 input channels" in r.output
    assert load_checkpoint(out).config == load_checkpoint(tiny_run).config
    r = runner.invoke(app, ["inspect", str(tiny_onnx.path)])
    assert r.exit_code == 0, r.output
    assert "2:4 conformance:" in r.output and "MatMul" in r.output
    r = runner.invoke(app, ["inspect", str(tiny_onnx.path), "--json"])
    assert json.loads(r.output)["sparsity"]["conforming_share"] < 0.5


@pytest.mark.parametrize("pattern,match", [("4:2", "1 <= N < M"), ("x", "is not N:M"),
                                           ("1:1024", "has no layer")])
def test_cli_prune_bad_input_is_one_line(tiny_run, tiny_data, tmp_path, pattern, match):
    out = tmp_path / "bad"
    r = CliRunner().invoke(app, ["prune", "--checkpoint", str(tiny_run), "--out", str(out),
                                 "--pattern", pattern, "--data", str(tiny_data)])
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and match in r.output
    assert not out.exists()
