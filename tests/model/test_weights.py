"""Local pretrained weights: saved, reloaded, and refused with a clear error when wrong."""

import dataclasses

import pytest
import torch
import torchvision

from toolkit.config import VisionConfig, preset
from toolkit.model import DualModalNet
from toolkit.model.text import TextModelError, TextTower
from toolkit.model.vision import VisionError, VisionTower


def test_vision_weights_round_trip(tmp_path):
    torch.manual_seed(3)
    src = torchvision.models.resnet18(num_classes=7)  # another head size: it is dropped
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    tower = VisionTower(VisionConfig(backbone="resnet18", stages=4, weights=str(path)), 64)
    torch.testing.assert_close(tower.body.stem[0].weight, src.conv1.weight)
    torch.testing.assert_close(tower.body.stages[3][1].conv2.weight, src.layer4[1].conv2.weight)


def test_vision_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(VisionError, match="does not match backbone"):
        VisionTower(VisionConfig(backbone="resnet18", weights=str(path)), 64)


def test_missing_or_corrupt_vision_weights(tmp_path):
    with pytest.raises(VisionError, match="not found"):
        VisionTower(VisionConfig(backbone="resnet18", weights=str(tmp_path / "nope.pth")), 64)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(VisionError, match="not a readable"):
        VisionTower(VisionConfig(backbone="resnet18", weights=str(bad)), 64)


def test_unknown_backbone():
    with pytest.raises(VisionError, match="unknown vision backbone 'resnet9000'"):
        VisionTower(VisionConfig(backbone="resnet9000"), 64)


@pytest.fixture()
def text_dir(tmp_path):
    """A local Hugging Face BERT directory (config, safetensors weights, vocab.txt)."""
    torch.manual_seed(1)
    cfg = preset("tiny")
    tower = TextTower(cfg.text)
    d = tmp_path / "bert"
    tower.encoder.save_pretrained(d)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in
                                                                range(cfg.text.vocab_size - 5)]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return d, tower


def test_text_model_directory_round_trip(text_dir):
    d, tower = text_dir
    cfg = preset("tiny")
    loaded = TextTower(dataclasses.replace(cfg.text, model_dir=str(d))).eval()
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    torch.testing.assert_close(loaded(ids, mask), tower.eval()(ids, mask))
    # and the whole model takes it as its text tower
    m = DualModalNet(dataclasses.replace(cfg, text=dataclasses.replace(cfg.text,
                                                                       model_dir=str(d))))
    assert m.text.hidden_size == cfg.text.hidden_size


def test_text_model_directory_problems(text_dir, tmp_path):
    d, _ = text_dir
    cfg = preset("tiny").text
    with pytest.raises(TextModelError, match="not found"):
        TextTower(dataclasses.replace(cfg, model_dir=str(tmp_path / "missing")))
    (d / "vocab.txt").unlink()
    with pytest.raises(TextModelError, match="no vocab.txt"):
        TextTower(dataclasses.replace(cfg, model_dir=str(d)))
