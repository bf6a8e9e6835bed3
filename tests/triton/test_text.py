"""The Python-backend model's logic without a server: its answers are the Predictor's, a bad
request fails alone, and its inputs and record are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.triton import RepositoryConfig, write_repository
from toolkit.triton.text import TextModel, TextModelError, TextSpec, decode_inputs


@pytest.fixture(scope="module")
def setup(tiny_onnx, tiny_data, tmp_path_factory):
    from toolkit.runtime import Predictor
    from toolkit.runtime.ort_runner import OnnxRuntimeRunner

    repo = tmp_path_factory.mktemp("repo")
    write_repository(RepositoryConfig(model=str(tiny_onnx.path), repo=str(repo), max_batch=4,
                                      validate=False), log=lambda *_: None)
    runner = OnnxRuntimeRunner(tiny_onnx.path).activate()
    calls = []

    def call(feed):  # what the BLS request does in Triton: the model on a prepared feed
        calls.append(len(feed["image"]))
        return runner.infer(feed)

    model = TextModel(TextSpec.read(repo / "model_text/1/toolkit.json"), call)
    items = [json.loads(line) for line in
             (Path(tiny_data) / "val.jsonl").read_text().splitlines()[:6]]
    images = [(Path(tiny_data) / it["image"]).read_bytes() for it in items]
    questions = [it["text"] for it in items]
    with Predictor.load(tiny_onnx.path, device="cpu") as predictor:
        yield model, predictor, images, questions, calls
    runner.deactivate()


def test_answers_are_the_predictors(setup):
    model, predictor, images, questions, calls = setup
    calls.clear()
    labels, probs = model.answer(images, questions)
    want = predictor.predict(images, questions)
    assert labels.shape == (6, 1) and labels.dtype == object
    assert [x.decode() for x in labels[:, 0]] == want.labels
    np.testing.assert_allclose(probs, want.probabilities, atol=1e-6)
    assert calls == [4, 2]  # split to the repository's max_batch_size


def test_batched_requests_and_a_bad_one(setup):
    model, predictor, images, questions, calls = setup
    rows = [(images[:2], questions[:2]), TextModelError("undecodable"),
            ([b"not an image"], questions[:1]), (images[2:5], questions[2:5])]
    out = model.answer_all(rows)
    assert isinstance(out[1], TextModelError)
    assert "not a readable image" in str(out[2])
    want = predictor.predict(images[:5], questions[:5])
    got = [x.decode() for x in np.concatenate([out[0][0], out[3][0]])[:, 0]]
    assert got == want.labels
    np.testing.assert_allclose(np.concatenate([out[0][1], out[3][1]]), want.probabilities,
                               atol=1e-6)
    calls.clear()
    good = model.answer_all([(images[:1], questions[:1]), (images[1:3], questions[1:3])])
    assert calls == [3] and [len(g[0]) for g in good] == [1, 2]  # one call for both


def test_an_empty_question_is_the_predictors_error(setup):
    model, _, images, _, _ = setup
    (out,) = model.answer_all([(images[:1], ["   "])])
    assert "empty" in str(out)


def test_decode_inputs():
    images, texts = decode_inputs(np.array([[b"png"], [b"jpg"]], dtype=object),
                                  np.array([["é?".encode()], [b"q"]], dtype=object))
    assert images == [b"png", b"jpg"] and texts == ["é?", "q"]
    with pytest.raises(TextModelError, match="not UTF-8"):
        decode_inputs(np.array([[b"png"]], dtype=object), np.array([[b"\xff\xfe"]], dtype=object))
    with pytest.raises(TextModelError, match=r"\(B, 1\) each"):
        decode_inputs(np.array([b"png"], dtype=object), np.array([[b"q"]], dtype=object))
    with pytest.raises(TextModelError, match=r"\(B, 1\) each"):
        decode_inputs(np.array([[b"a"], [b"b"]], dtype=object), np.array([[b"q"]], dtype=object))


def test_spec_missing_or_damaged(tmp_path):
    with pytest.raises(TextModelError, match="write the repository again"):
        TextSpec.read(tmp_path / "toolkit.json")
    (tmp_path / "toolkit.json").write_text('{"format": "other"}')
    with pytest.raises(TextModelError, match="not a toolkit.triton-text record"):
        TextSpec.read(tmp_path / "toolkit.json")
