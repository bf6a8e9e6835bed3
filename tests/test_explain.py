"""toolkit.explain: captured attention, its pictures, and the pointing game."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.config import Fusion, VisualTokens, preset
from toolkit.explain import (AttentionCapture, ExplainError, cell_contributions, cells_on, explain,
                             figure, load_predictor, point, score_row, summarize)
from toolkit.model import DualModalNet

PNG = b"\x89PNG\r\n\x1a\n"


def _val_rows(data, n):
    return [json.loads(line) for line in (data / "val.jsonl").read_text().splitlines()][:n]


@pytest.fixture(scope="module")
def predictor(tiny_run):
    p = load_predictor(tiny_run, device="cpu")
    yield p
    p.close()


def _assert_softmaxes(weights: dict):
    for name, w in weights.items():
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5, err_msg=name)
        assert (w >= 0).all(), name


def test_every_softmax_sums_to_one_and_the_logits_are_the_models(predictor, tiny_data):
    rows = _val_rows(tiny_data, 6)
    images, texts = [str(tiny_data / r["image"]) for r in rows], [r["text"] for r in rows]
    results = explain(predictor, images, texts, batch_size=4)  # two batches, padded differently
    cfg = predictor.runner.ck.config
    for r in results:
        n = r.grid[0] * r.grid[1]
        assert r.grid == (8, 8)  # 32 px through the stem (stride 4) and one stage of stride 1
        assert set(r.weights) == {"block0.text_to_visual", "block0.text_to_visual.norm",
                                  "block0.visual_to_text", "relation.pick", "kept_share"}
        assert r.weights["block0.text_to_visual.norm"].shape == (n,)
        assert r.weights["block0.text_to_visual"].shape == (cfg.heads, n)
        assert r.weights["block0.visual_to_text"].shape == (cfg.heads, n, len(r.tokens))
        assert r.weights["relation.pick"].shape == (cfg.heads, n)
        _assert_softmaxes(r.weights)
        _assert_softmaxes(r.cell_maps())
        assert r.token_attention()[0].sum() == pytest.approx(1.0, abs=1e-5)
        assert r.tokens[0] == "[question]" and r.tokens[1] == "[CLS]" and r.tokens[-1] == "[SEP]"
    plain = predictor.predict(images, texts)
    assert [r.answer for r in results] == plain.labels
    np.testing.assert_allclose([r.probability for r in results], plain.probabilities.max(1),
                               atol=1e-6)
    feed = predictor.preprocess(images, texts)
    with AttentionCapture(predictor.runner.ck.model):
        hooked = predictor.infer(feed)
    np.testing.assert_array_equal(hooked, predictor.infer(feed))  # the hooks change nothing


@torch.no_grad()
def test_captured_weights_reproduce_the_attention_output(predictor, tiny_data):
    """The text-to-visual weights, applied to the values, give what the module returned."""
    mha = predictor.runner.ck.model.fusion.blocks[0].text_to_visual.attn
    seen = {}
    handle = mha.register_forward_hook(
        lambda m, args, out: seen.update(ctx=args[1], out=out[0]))
    rows = _val_rows(tiny_data, 3)
    try:
        results = explain(predictor, [str(tiny_data / r["image"]) for r in rows],
                          [r["text"] for r in rows])
    finally:
        handle.remove()
    d, h = mha.embed_dim, mha.num_heads
    v = seen["ctx"] @ mha.in_proj_weight[2 * d:].T + mha.in_proj_bias[2 * d:]  # (B, N, D)
    v = v.view(v.shape[0], v.shape[1], h, d // h)  # (B, N, H, D/H)
    w = torch.from_numpy(np.stack([r.weights["block0.text_to_visual"] for r in results]))
    read = torch.einsum("bhn,bnhe->bhe", w, v).reshape(len(rows), 1, d)
    torch.testing.assert_close(mha.out_proj(read), seen["out"], atol=1e-5, rtol=1e-4)
    # The norm map's vectors: each cell's part of the output, which they add up to.
    sent = cell_contributions(mha, seen["ctx"], w)  # (B, N, D)
    torch.testing.assert_close(sent.sum(1, keepdim=True) + mha.out_proj.bias, seen["out"],
                               atol=1e-5, rtol=1e-4)
    norm = sent.norm(dim=-1)
    np.testing.assert_allclose(np.stack([r.weights["block0.text_to_visual.norm"] for r in results]),
                               (norm / norm.sum(1, keepdim=True)).numpy(), atol=1e-6)


def test_explain_writes_a_png_and_the_raw_weights(tiny_run, tiny_data, tmp_path):
    row = _val_rows(tiny_data, 1)[0]
    out, weights = tmp_path / "map.png", tmp_path / "w.json"
    res = CliRunner().invoke(app, ["explain", "--checkpoint", str(tiny_run), "--image",
                                   str(tiny_data / row["image"]), "--text", row["text"],
                                   "--out", str(out), "--json", str(weights), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000  # a real picture, not a blank file
    from PIL import Image

    with Image.open(out) as im:
        im.verify()
    report = json.loads(weights.read_text())
    (q,) = report["questions"]
    assert q["text"] == row["text"] and q["answer"] in q["probabilities"]
    _assert_softmaxes({k: np.asarray(v) for k, v in q["weights"].items()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png", "w.json"]  # no temporaries


def test_explain_a_manifest_into_a_folder(tiny_run, tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["explain", "--checkpoint", str(tiny_run), "--manifest",
                                   str(tiny_data), "--limit", "3", "--out", str(tmp_path / "maps"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rows = _val_rows(tiny_data, 3)
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == [f"{i:03d}-{r['question_type']}.png" for i, r in enumerate(rows)]
    assert all((tmp_path / "maps" / n).read_bytes()[:8] == PNG for n in names)


@pytest.mark.parametrize("args, message", [
    (["--text", "what shape is the red object?", "--json", "{tmp}/w.json"],
     "one --text per --image"),
    (["--manifest", "{data}", "--out", "{tmp}/one.png"], "pass a folder as --out"),
    ([], "nothing to write"),
])
def test_explain_bad_input_is_one_line(args, message, tiny_run, tiny_data, tmp_path):
    args = [a.format(data=tiny_data, tmp=tmp_path) for a in args]
    if "--manifest" not in args and "--text" not in args:
        args += ["--manifest", str(tiny_data)]
    res = CliRunner().invoke(app, ["explain", "--checkpoint", str(tiny_run), "--device", "cpu",
                                   *args])
    assert res.exit_code == 1 and message in res.output, res.output


def _seeded_run(tiny_run, out, **model_fields):
    """A run directory of an untrained model with the tiny run's vocabulary and labels."""
    from toolkit.checkpoint import read_config, save_weights, write_run_files
    from toolkit.data.preprocess import Tokenizer

    cfg = dataclasses.replace(read_config(tiny_run), **model_fields)
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_file(tiny_run / "vocab.txt", cfg.text.max_length)
    write_run_files(out, cfg, {}, tokenizer, json.loads((tiny_run / "labels.json").read_text()))
    save_weights(DualModalNet(cfg), out / "best.safetensors")
    return out


def test_pooled_visual_tokens_say_there_is_one(tiny_run, tiny_data, tmp_path):
    run = _seeded_run(tiny_run, tmp_path / "pooled", visual_tokens=VisualTokens.pooled,
                      fusion_relation=0)
    p = load_predictor(run, device="cpu")
    row = _val_rows(tiny_data, 1)[0]
    (r,) = explain(p, [str(tiny_data / row["image"])], [row["text"]])
    assert r.grid is None
    np.testing.assert_array_equal(r.weights["block0.text_to_visual"], 1.0)  # one key: always 1
    _assert_softmaxes(r.weights)
    fig = figure(r)
    texts = [t.get_text() for ax in fig.axes for t in (ax.title,)]
    assert any("single (pooled) visual token" in t for t in texts), texts


def test_fusion_without_attention_is_a_clear_error():
    cfg = preset("tiny", fusion=Fusion.concat, fusion_cell_mlp=0, fusion_relation=0)
    with pytest.raises(ExplainError, match="no attention"):
        AttentionCapture(DualModalNet(cfg))


def test_missing_matplotlib_names_the_plot_extra(predictor, tiny_data, monkeypatch):
    row = _val_rows(tiny_data, 1)[0]
    (r,) = explain(predictor, [str(tiny_data / row["image"])], [row["text"]])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(ExplainError, match=r"dualmodal-toolkit\[plot\]"):
        figure(r)


# ------------------------------------------------------------------ the pointing game

# Six objects on a 64 px image (radius 5: each covers pixels x-5..x+5). From red at (12, 12):
# green (12, 30) is the closest (18 px), yellow (52, 52) the furthest (56.6 px).
SCENE = {"objects": [
    {"colour": "red", "x": 12, "y": 12, "shape": "square"},
    {"colour": "green", "x": 12, "y": 30, "shape": "circle"},
    {"colour": "blue", "x": 40, "y": 12, "shape": "square"},
    {"colour": "orange", "x": 30, "y": 44, "shape": "circle"},
    {"colour": "gray", "x": 52, "y": 30, "shape": "square"},
    {"colour": "yellow", "x": 52, "y": 52, "shape": "circle"},
]}


def _cell(r, c):
    return 8 * r + c


def test_the_cells_an_object_covers():
    from toolkit.data.synthetic import object_mask, scene_from_record

    scene = scene_from_record(SCENE, 64)
    # red covers pixels 7..17 both ways: cells 0 (0-7), 1 (8-15) and 2 (16-23) of each axis
    on = cells_on(object_mask(scene, 0), (8, 8))
    assert sorted(np.flatnonzero(on)) == [_cell(r, c) for r in range(3) for c in range(3)]
    # green (12, 30): x cells 0-2, y pixels 25..35: cells 3 (24-31) and 4 (32-39)
    on = cells_on(object_mask(scene, 1), (8, 8))
    assert sorted(np.flatnonzero(on)) == [_cell(r, c) for r in (3, 4) for c in range(3)]


def test_point_hit_and_mass():
    on = np.zeros(64, bool)
    on[[_cell(1, 1), _cell(1, 2)]] = True
    peaked = np.zeros(64)
    peaked[_cell(1, 1)] = 1.0
    assert point(peaked, on) == (True, 1.0)
    split = np.zeros(64)
    split[_cell(7, 7)], split[_cell(1, 1)], split[_cell(1, 2)] = 0.5, 0.3, 0.2
    hit, mass = point(split, on)
    assert hit is False and mass == pytest.approx(0.5)


def test_score_row_names_the_question_object_and_the_answer_object():
    on_green = np.zeros(64)
    on_green[_cell(3, 1)] = 1.0  # on green: the object closest to red
    on_red = np.zeros(64)
    on_red[_cell(1, 1)] = 1.0
    maps = {"green": on_green, "red": on_red}
    closest = score_row(maps, SCENE, "closest", "red", 64, (8, 8))
    assert closest["green"]["named"]["hit"] is False and closest["green"]["answer"]["hit"] is True
    assert closest["red"]["named"]["hit"] is True and closest["red"]["answer"]["hit"] is False
    assert closest["red"]["named"]["chance"] == pytest.approx(9 / 64)
    furthest = score_row(maps, SCENE, "furthest", "red", 64, (8, 8))
    assert furthest["green"]["answer"]["hit"] is False  # the furthest is yellow
    shape = score_row(maps, SCENE, "shape", "green", 64, (8, 8))
    assert "answer" not in shape["green"] and shape["green"]["named"]["hit"] is True
    report = summarize([("closest", closest), ("furthest", furthest), ("shape", shape)])
    green = report["green"]
    assert green["named"]["overall"] == pytest.approx(
        {"n": 3, "hit_rate": 1 / 3, "mass": 1 / 3, "chance": (9 + 9 + 6) / 3 / 64})
    assert green["named"]["non-relational"]["hit_rate"] == 1.0
    assert green["answer"]["relational"]["n"] == 2
    assert green["answer"]["relational"]["hit_rate"] == 0.5


def test_pointing_cli_scores_the_held_out_split(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "pointing.json"
    res = CliRunner().invoke(app, ["pointing", "--checkpoint", str(tiny_run), "--data",
                                   str(tiny_data), "--device", "cpu", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    rows = _val_rows(tiny_data, 10_000)
    assert report["rows"] == len(rows) and report["grid"] == [8, 8]
    relational = sum(r["question_type"] in ("closest", "furthest") for r in rows)
    for name in ("block0.text_to_visual", "block0.text_to_visual.norm", "relation.pick",
                 "relation.pick.head1", "kept_share"):
        named, answer = report["pointing"][name]["named"], report["pointing"][name]["answer"]
        assert named["overall"]["n"] == len(rows)
        assert answer["overall"]["n"] == relational
        assert 0 <= named["overall"]["hit_rate"] <= 1
        assert 0 < named["overall"]["chance"] < named["overall"]["mass"] + 1
    assert 0 <= report["accuracy"]["overall"] <= 1


def test_pointing_needs_the_scene_records(tiny_run, tiny_data, tmp_path):
    plain = tmp_path / "plain.jsonl"
    rows = _val_rows(tiny_data, 2)
    plain.write_text("".join(json.dumps({k: r[k] for k in ("image", "text", "label")}) + "\n"
                             for r in rows))
    res = CliRunner().invoke(app, ["pointing", "--checkpoint", str(tiny_run), "--data",
                                   str(plain), "--device", "cpu"])
    assert res.exit_code == 1 and "colour and scene.objects" in res.output, res.output
