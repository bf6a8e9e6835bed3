"""bench/ort_profile.py: the profile covers every kernel of every call, its shares add up, and the
op types are those of the graph ONNX Runtime runs (integer kernels for an INT8 graph)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import ort_profile  # noqa: E402  (bench/ is not a package)


@pytest.fixture(scope="module")
def profiles(tiny_onnx, tiny_int8, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    results = ort_profile.main(["--reps", "3", "--warmup", "1", "--seq", "8", "--json",
                                str(out), str(tiny_onnx.path), str(tiny_int8.path)])
    return results, json.loads(out.read_text(encoding="utf-8"))


def test_shares_add_up_and_the_json_is_what_was_printed(profiles):
    results, written = profiles
    assert written["profiles"] == json.loads(json.dumps(results))
    for p in results:
        assert p["kernel_ms"] > 0 and p["wall_ms"] > 0
        assert sum(k["share"] for k in p["kinds"].values()) == pytest.approx(1.0)
        assert sum(o["ms"] for o in p["ops"]) == pytest.approx(p["kernel_ms"])
        assert all(o["kind"] == ort_profile.kind(o["op"]) for o in p["ops"])


def test_float_and_integer_graphs_run_their_own_kernels(profiles):
    fp32, int8 = profiles[0]
    assert "float product" in fp32["kinds"] and "integer product" not in fp32["kinds"]
    # ONNX Runtime fuses the QDQ pairs around products into integer kernels on the CPU
    assert "integer product" in int8["kinds"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="is not a file"):
        ort_profile.main([str(tmp_path / "absent.onnx")])


def test_a_question_past_the_graphs_max_length_is_refused(tiny_onnx):
    with pytest.raises(SystemExit, match="--seq 999 is above the max_length"):
        ort_profile.main(["--seq", "999", str(tiny_onnx.path)])
