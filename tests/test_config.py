import pytest

from toolkit.config import (PRESETS, ConfigError, Fusion, ModelConfig, TrainConfig, VisualTokens,
                            from_dict, preset, to_dict)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*seed, small, tiny"):
        preset("huge")


@pytest.mark.parametrize("name", list(PRESETS))
def test_model_config_round_trips_through_json(name):
    # an enum away from its default, without the relation read that concat cannot have
    cfg = preset(name, fusion=Fusion.concat, fusion_relation=0, fusion_relation_tally=False)
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg


def test_train_config_round_trips_with_nested_model():
    cfg = TrainConfig(data="d", out="o", model=preset("tiny"), max_steps=5)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_unknown_field_is_an_error():
    d = to_dict(preset("tiny"))
    d["colour"] = 1
    with pytest.raises(ConfigError, match="colour"):
        from_dict(ModelConfig, d)


def test_invalid_values_are_refused():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(dim=100, heads=8)
    with pytest.raises(ConfigError, match="fusion_layers"):
        ModelConfig(fusion_layers=0)


def test_seed_preset_is_the_architecture_document():
    cfg = preset("seed")
    assert (cfg.vision.backbone, cfg.vision.stages, cfg.image_size) == ("resnet50", 4, 224)
    assert (cfg.text.hidden_size, cfg.text.num_layers, cfg.text.max_length) == (768, 12, 512)
    assert (cfg.dim, cfg.heads, cfg.dropout, cfg.head_hidden) == (512, 8, 0.1, 256)
    assert cfg.visual_tokens is VisualTokens.pooled and cfg.fusion is Fusion.cross_attention


def test_model_config_overrides_nested_fields_and_refuses_unknown_ones():
    from toolkit.config import model_config

    cfg = model_config("small", {"fusion": "concat", "fusion_relation": 0,
                                 "fusion_relation_tally": False,
                                 "vision": {"width": 32}})
    assert cfg.fusion is Fusion.concat and cfg.vision.width == 32
    assert cfg.vision.backbone == preset("small").vision.backbone  # the rest of vision kept
    assert model_config("small") == preset("small")
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        model_config("small", {"colour": 1})
    with pytest.raises(ConfigError, match="not a valid Fusion"):
        model_config("small", {"fusion": "nope"})
