"""bench/seed_tables.py: each row changes only what it names, every row gets the same budget, and
(slow) the whole script on the tiny preset: the JSON's tables, one row per run, and resuming."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from toolkit.config import DataConfig, Fusion, VisualTokens, model_config, preset, to_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import seed_tables  # noqa: E402  (bench/ is not a package)


def _changed(name: str, base: str = "small") -> set[str]:
    """Top-level model fields (and vision.<field>) that the row changes from the preset."""
    a, b = to_dict(preset(base)), to_dict(model_config(base, seed_tables.ROWS[name].overrides))
    out = {k for k in a if k != "vision" and a[k] != b[k]}
    return out | {f"vision.{k}" for k in a["vision"] if a["vision"][k] != b["vision"][k]}


def test_fusion_rows_change_only_the_fusion():
    assert _changed("xattn-grid") == set()  # the preset itself
    cells = {"fusion_cell_mlp", "fusion_relation", "fusion_relation_tally"}
    assert _changed("concat") == {"fusion"} | cells
    assert _changed("elementwise") == {"fusion"} | cells
    assert _changed("xattn-pooled") == {"visual_tokens"} | cells
    pooled = model_config("small", seed_tables.ROWS["xattn-pooled"].overrides)
    assert pooled.visual_tokens is VisualTokens.pooled and pooled.fusion is Fusion.cross_attention


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "vit"])
def test_backbone_rows_keep_the_preset_fusion_and_no_convnet_field(name):
    assert all(k.startswith("vision.") for k in _changed(name))
    cfg = model_config("small", seed_tables.ROWS[name].overrides)
    assert cfg.vision.multiscale is False  # nothing of the convnet's settings carried over
    if name == "efficientnet_b0":
        assert cfg.vision.width is None  # EfficientNet refuses a width


def test_every_row_gets_the_same_budget(tmp_path):
    a = seed_tables.build_parser().parse_args(["--steps", "123", "--data", str(tmp_path)])
    cfgs = [seed_tables.train_config(n, 7, a, tmp_path / n) for n in seed_tables.ROWS]
    budget = {(c.max_steps, c.batch_size, c.lr, c.warmup_steps, c.seed, c.curriculum,
               c.curriculum_steps, c.freeze_binding) for c in cfgs}
    assert budget == {(123, 64, 1e-3, 300, 7, seed_tables.DEMO["curriculum"], 3000, True)}
    assert not any(c.resume for c in cfgs)  # no resume.pt there yet


def test_rows_seeds_and_rounds_are_checked():
    assert seed_tables.parse_rows("concat,vit") == ["concat", "vit"]
    with pytest.raises(SystemExit, match="unknown row.*nope.*choose from"):
        seed_tables.parse_rows("concat,nope")
    with pytest.raises(SystemExit, match="--seeds"):
        seed_tables.parse_seeds("0,x")
    with pytest.raises(SystemExit, match="--rounds \\(0\\) must be at least 1"):
        seed_tables.main(["--rounds", "0"])


def test_tables_split_rows_by_their_table():
    rows = [{"table": "fusion", "row": "concat"}, {"table": "backbones", "row": "vit"}]
    assert seed_tables.tables(rows) == {"fusion": [rows[0]], "backbones": [rows[1]]}


@pytest.mark.slow
def test_the_script_on_the_tiny_preset_writes_both_tables_and_resumes(tmp_path):
    from toolkit.data.synthetic import generate

    data = generate(tmp_path / "data", DataConfig(scenes=24, image_size=32, seed=0))
    out, work = tmp_path / "tables.json", tmp_path / "work"
    argv = ["--data", str(data), "--preset", "tiny", "--rows", "xattn-pooled,xattn-grid,vit",
            "--steps", "3", "--curriculum-steps", "1", "--warmup-steps", "1", "--batch-size", "8",
            "--iters", "3", "--warmup-iters", "1", "--rounds", "2", "--pointing", "6",
            "--work", str(work), "--out", str(out)]
    seed_tables.main(argv)
    report = json.loads(out.read_text())
    assert set(report) == {"fusion", "backbones", "machine", "command", "budget"}
    assert [r["row"] for r in report["fusion"]] == ["xattn-pooled", "xattn-grid"]
    assert [r["row"] for r in report["backbones"]] == ["vit"]
    assert report["command"].startswith("python bench/seed_tables.py --data")
    for r in report["fusion"] + report["backbones"]:
        assert r["steps"] == 3 and r["seed"] == 0
        assert set(r["groups"]) == {"non_relational", "relational"}
        assert len(r["per_type"]) == 6 and 0 <= r["accuracy"] <= 1
        assert r["latency_ms"]["p50"] > 0 and r["latency_ms"]["iters"] == 3
        assert len(r["latency_ms"]["p50_rounds"]) == 2  # timed side by side, after training
        assert r["onnx_check"]["passed"] and (work / f"{r['row']}-s0" / "model.onnx").is_file()
    pooled, grid = report["fusion"]
    assert pooled["visual_tokens"] == 1 and pooled["pointing"] is None  # one token: no cells
    assert grid["visual_tokens"] > 1 and "kept_share" in grid["pointing"]
    assert pooled["parameters"] != grid["parameters"]
    # the ViT row really is the reduced ViT: 8 px patches on 32 px images
    assert report["backbones"][0]["visual_tokens"] == 16

    # Run again: every row's result is kept, nothing is trained again.
    stamps = {p: p.stat().st_mtime_ns for p in work.glob("*/result.json")}
    weights = {p: p.stat().st_mtime_ns for p in work.glob("*/last.safetensors")}
    again = seed_tables.main(argv)
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/result.json")} == stamps
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/last.safetensors")} == weights
    # the same rows; only the timing, done again side by side, may differ
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows]
    assert untimed(again["fusion"]) == untimed(report["fusion"])
    assert all(len(r["latency_ms"]["p50_rounds"]) == 2 for r in again["fusion"])


def test_markdown_has_a_line_per_row_in_each_table():
    row = {"label": "concatenation", "seed": 0, "steps": 1500, "accuracy": 0.5,
           "groups": {"non_relational": 0.6, "relational": 0.4},
           "per_type": {t: 0.5 for t in seed_tables.TYPES}, "parameters": 1_234_567,
           "visual_tokens": 64, "latency_ms": {"p50": 1.234}}
    text = seed_tables.markdown({"fusion": [row], "backbones": []})
    assert "| concatenation | 0 | 1,500 | 50.0% | 60.0% | 40.0% | 50.0 |" in text
    assert "| 1.235M | 64 | 1.23 |" in text and "### backbones" in text
