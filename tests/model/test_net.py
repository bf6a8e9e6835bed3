import dataclasses

import pytest
import torch

from toolkit.config import ConfigError, Fusion, VisionConfig, VisualTokens, preset
from toolkit.model import DualModalNet, count_parameters


def _inputs(cfg, batch=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    return image, ids, torch.ones(batch, length, dtype=torch.long)


@pytest.fixture(scope="module")
def seed_model():
    torch.manual_seed(0)
    return DualModalNet(preset("seed")).eval()


def test_seed_parameter_count(seed_model):
    # The architecture document: about 136.6 M parameters with 10 classes.
    assert count_parameters(seed_model) == pytest.approx(136.6e6, rel=0.001)


@torch.no_grad()
def test_seed_intermediate_shapes(seed_model):
    image, ids, mask = _inputs(seed_model.cfg, batch=2, length=16)
    fmap = seed_model.vision(image)
    assert fmap.shape == (2, 2048, 7, 7)
    assert seed_model.vision(image).mean((2, 3)).shape == (2, 2048)
    v = seed_model.visual_tokens(image)
    assert v.shape == (2, 1, 512)  # pooled: one visual token
    t = seed_model.text(ids, mask)
    assert t.shape == (2, 16, 768)
    fused = seed_model.fusion(v, seed_model.text_proj(t), mask)
    assert fused.shape == (2, 512)
    assert seed_model(image, ids, mask).shape == (2, 10)


@torch.no_grad()
def test_seed_grid_tokens_keep_the_7x7_map():
    cfg = preset("seed", visual_tokens=VisualTokens.grid)
    m = DualModalNet(cfg).eval()
    image, _, _ = _inputs(cfg, batch=1)
    assert m.visual_tokens(image).shape == (1, 49, 512)


@pytest.mark.parametrize("name", ["tiny", "small", "seed"])
@torch.no_grad()
def test_padding_tokens_do_not_change_the_output(name):
    torch.manual_seed(0)
    cfg = preset(name)
    m = DualModalNet(cfg).eval()
    image, ids, mask = _inputs(cfg, batch=2, length=7)
    ref = m(image, ids, mask)
    padded_ids = torch.cat([ids, torch.randint(5, 100, (2, 9))], dim=1)  # junk in the padding
    padded_mask = torch.cat([mask, torch.zeros(2, 9, dtype=torch.long)], dim=1)
    out = m(image, padded_ids, padded_mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", list(Fusion))
@pytest.mark.parametrize("tokens", list(VisualTokens))
@torch.no_grad()
def test_every_fusion_and_token_mode_runs(fusion, tokens):
    # the relation read needs a grid and the cross-attention's cell MLP (its own test below)
    relation = preset("tiny").fusion_relation if (
        fusion is Fusion.cross_attention and tokens is VisualTokens.grid) else 0
    cfg = preset("tiny", fusion=fusion, visual_tokens=tokens, num_classes=5,
                 fusion_relation=relation)
    m = DualModalNet(cfg).eval()
    out = m(*_inputs(cfg, batch=3))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("backbone,size", [("resnet34", 64), ("efficientnet_b0", 64),
                                           ("vit_b_16", 32)])
@torch.no_grad()
def test_other_torchvision_backbones(backbone, size):
    cfg = preset("tiny", image_size=size, vision=VisionConfig(backbone=backbone))
    m = DualModalNet(cfg).eval()
    out = m(*_inputs(cfg, batch=1))
    assert out.shape == (1, cfg.num_classes)


def test_narrow_resnet_keeps_torchvision_layout_at_another_width():
    from toolkit.model.vision import VisionError, VisionTower

    tower = VisionTower(VisionConfig(backbone="resnet18", stages=4, width=16), 64)
    widths = [stage[-1].bn2.num_features for stage in tower.body.stages]
    assert widths == [16, 32, 64, 128] and tower.out_channels == 128
    assert [len(stage) for stage in tower.body.stages] == [2, 2, 2, 2]  # resnet18's depths
    assert tower(torch.zeros(2, 3, 64, 64)).shape == (2, 128, 2, 2)  # stride 32, as torchvision
    deep = VisionTower(VisionConfig(backbone="resnet50", stages=1, width=8), 64)
    assert deep.out_channels == 32  # Bottleneck expansion 4 kept
    with pytest.raises(VisionError, match="ResNet and ViT backbones only"):
        VisionTower(VisionConfig(backbone="efficientnet_b0", width=16), 64)


@torch.no_grad()
def test_reduced_vit_takes_patch_size_layers_heads_and_width():
    from toolkit.model.vision import VisionTower

    cfg = VisionConfig(backbone="vit_b_16", patch_size=8, layers=2, heads=4, width=64)
    tower = VisionTower(cfg, 64)
    vit = tower.vit
    assert (vit.patch_size, len(vit.encoder.layers), vit.hidden_dim, vit.mlp_dim) == (8, 2, 64, 256)
    assert vit.encoder.layers[0].self_attention.num_heads == 4
    assert tower.out_channels == 64
    assert tower(torch.zeros(2, 3, 64, 64)).shape == (2, 64, 8, 8)  # 64 px / 8 px patches
    # unset options keep vit_b_16's own: 16 px patches, 12 heads of the 768 width
    wide = VisionTower(VisionConfig(backbone="vit_b_16", layers=1), 64).vit
    assert (wide.patch_size, wide.hidden_dim, wide.encoder.layers[0].self_attention.num_heads) \
        == (16, 768, 12)


def test_reduced_vit_refuses_what_torchvision_cannot_build():
    from toolkit.model.vision import VisionError, VisionTower

    with pytest.raises(VisionError, match="not a multiple of the ViT patch size 12"):
        VisionTower(VisionConfig(backbone="vit_b_16", patch_size=12), 64)
    with pytest.raises(VisionError, match="not divisible by its 5 heads"):
        VisionTower(VisionConfig(backbone="vit_b_16", width=64, heads=5), 64)
    with pytest.raises(VisionError, match="ViT backbones .vit_.. only"):
        VisionTower(VisionConfig(backbone="resnet18", patch_size=8), 64)
    with pytest.raises(VisionError, match="unknown ViT 'vit_x'"):
        VisionTower(VisionConfig(backbone="vit_x", layers=2), 64)


def test_vit_options_round_trip_through_model_config_overrides():
    from toolkit.config import from_dict, model_config, to_dict

    cfg = model_config("small", {"vision": {"backbone": "vit_b_16", "patch_size": 8,
                                            "layers": 2, "heads": 4, "width": 64}})
    assert (cfg.vision.patch_size, cfg.vision.layers, cfg.vision.heads) == (8, 2, 4)
    assert from_dict(type(cfg), to_dict(cfg)) == cfg
    m = DualModalNet(cfg).eval()
    with torch.no_grad():
        assert m.visual_tokens(torch.zeros(1, 3, 64, 64)).shape == (1, 64, cfg.dim)


def test_grid_positions_distinguish_cells():
    # Two images whose feature maps are equal everywhere must still give per-cell tokens that
    # differ, or left/right could not be answered.
    cfg = preset("tiny")
    m = DualModalNet(cfg).eval()
    with torch.no_grad():
        v = m.visual_tokens(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    assert torch.unique(v[0], dim=0).shape[0] == v.shape[1]


@pytest.mark.parametrize("backbone,coarse_cells", [("resnet18", 4), ("convnet", 16)])
def test_grid_with_fewer_stages_is_finer(backbone, coarse_cells):
    cfg = preset("small", vision=VisionConfig(backbone=backbone, stages=2, width=16))
    m = DualModalNet(cfg)
    assert m.visual_tokens(torch.zeros(1, 3, 64, 64)).shape[1] == (64 if backbone == "resnet18"
                                                                   else 256)
    coarse = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, stages=4))
    assert DualModalNet(coarse).visual_tokens(torch.zeros(1, 3, 64, 64)).shape[1] == coarse_cells


def test_small_preset_is_the_measured_recipe():
    # 64 px -> three stride-2 convolutions, each pooled to the last one's 8x8 grid of 64 cells; one
    # fusion block with the leaky per-cell MLP, and a relation read that also tallies; padding
    # stays inert with the N(0, 1) embeddings.
    m = DualModalNet(preset("small"))
    assert m.vision.out_channels == 3 * 24
    assert m.visual_tokens(torch.zeros(1, 3, 64, 64)).shape == (1, 64, 128)
    mlp = m.fusion.blocks[0].visual_to_text.mlp
    assert mlp[0].in_features == 256
    assert any(isinstance(x, torch.nn.LeakyReLU) and x.negative_slope == 0.1 for x in mlp)
    assert m.fusion.relation is not None and m.fusion.relation.tally is not None
    words = m.text.encoder.embeddings.word_embeddings
    assert words.weight[0].abs().sum() == 0 and words.weight[1:].std() > 0.5


def test_convnet_refuses_torchvision_weights(tmp_path):
    from toolkit.model.vision import VisionError, VisionTower

    with pytest.raises(VisionError, match="no torchvision weights"):
        VisionTower(VisionConfig(backbone="convnet", stages=3, weights=str(tmp_path / "w.pth")), 64)


@torch.no_grad()
def test_multiscale_convnet_stacks_every_layer_pooled_to_the_last_grid():
    from toolkit.model.vision import VisionTower

    torch.manual_seed(0)
    plain = VisionTower(VisionConfig(backbone="convnet", stages=3, width=8), 64)
    torch.manual_seed(0)
    multi = VisionTower(VisionConfig(backbone="convnet", stages=3, width=8, multiscale=True), 64)
    x = torch.randn(2, 3, 64, 64)
    out = multi(x)
    assert multi.out_channels == 24 and out.shape == (2, 24, 8, 8)
    torch.testing.assert_close(out[:, 16:], plain(x))  # the last layer's own map, then...
    first = multi.body[0](x)  # (2, 8, 32, 32): ...the first layer's, averaged over each cell
    torch.testing.assert_close(out[:, :8], first.reshape(2, 8, 8, 4, 8, 4).mean((3, 5)))


@torch.no_grad()
def test_shared_images_equal_repeated_images():
    """Training runs the vision tower once per image; the logits must equal the plain call."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    m = DualModalNet(cfg).eval()
    image, ids, mask = _inputs(cfg, batch=5)
    uniq = image[:2]
    index = torch.tensor([0, 1, 1, 0, 1])
    torch.testing.assert_close(m(uniq, ids, mask, image_index=index), m(uniq[index], ids, mask))


@torch.no_grad()
def test_image_summary_reaches_the_head_when_the_cell_mlp_silences_every_cell():
    # With the per-cell MLP the cells a question does not name are silenced; the summary of the
    # cells as they entered the fusion keeps image statistics ("how many squares") in reach.
    torch.manual_seed(0)
    cfg = preset("tiny")
    m = DualModalNet(cfg).eval()
    summary = m.fusion.summary
    assert summary.weight.abs().sum() == 0 and summary.bias.abs().sum() == 0  # starts silent
    m.fusion.blocks[0].visual_to_text.mlp[-2].bias.fill_(-1e4)  # every cell's output: ReLU -> 0
    image, ids, mask = _inputs(cfg, batch=2)
    image[1] = torch.rand_like(image[1])  # a different picture, the same question
    ids[1], mask[1] = ids[0], mask[0]
    out = m(image, ids, mask)
    torch.testing.assert_close(out[0], out[1])  # nothing of the image gets through
    torch.nn.init.normal_(summary.weight, std=0.1)
    out = m(image, ids, mask)
    assert (out[0] - out[1]).abs().max() > 1e-3  # the summary carries it
    assert DualModalNet(preset("tiny", fusion_cell_mlp=0, fusion_relation=0)).fusion.summary is None


@torch.no_grad()
def test_relation_read_starts_silent_then_reads_the_cells():
    torch.manual_seed(0)
    without = DualModalNet(preset("tiny", fusion_relation=0)).eval()
    torch.manual_seed(0)
    cfg = preset("tiny", fusion_relation=16)
    m = DualModalNet(cfg).eval()
    relation = m.fusion.relation
    image, ids, mask = _inputs(cfg, batch=2)
    ref = m(image, ids, mask)
    # the same start as without it: the other weights are drawn as before, and `out` is zero
    torch.testing.assert_close(ref, without(image, ids, mask))
    torch.nn.init.normal_(relation.score[0].weight, std=1.0)
    torch.testing.assert_close(m(image, ids, mask), ref)
    torch.nn.init.normal_(relation.out.weight, std=0.5)
    assert (m(image, ids, mask) - ref).abs().max() > 1e-3
    assert DualModalNet(preset("tiny", fusion_relation=0)).fusion.relation is None


@torch.no_grad()
def test_relation_geometry_is_measured_from_the_kept_object():
    # One kept cell: the named object is that cell, its offset is zero, and every other cell's
    # squared distance is measured from its centre.
    torch.manual_seed(0)
    relation = DualModalNet(preset("tiny", fusion_relation=16)).fusion.relation
    seen = {}
    relation.score.register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", inp[0]))
    n, d = 9, 32
    xy = torch.tensor([[x, y] for y in (-2 / 3, 0, 2 / 3) for x in (-2 / 3, 0, 2 / 3)])  # 3x3
    cells = torch.randn(1, n, d)
    kept = torch.zeros(1, n, d)
    kept[0, 5] = 0.3  # the cell right of the centre
    relation(cells, kept, torch.randn(1, d), xy)
    x = seen["x"][0]  # (N, 3D + 4): cell, named, question, offset, distance^2, share
    torch.testing.assert_close(x[:, d:2 * d], cells[0, 5].expand(n, d))
    torch.testing.assert_close(x[:, 3 * d:3 * d + 2], xy - xy[5])
    torch.testing.assert_close(x[:, 3 * d + 2], ((xy - xy[5]) ** 2).sum(-1))
    torch.testing.assert_close(x[:, -1], torch.eye(n)[5])  # all of the kept output is on cell 5


@torch.no_grad()
def test_relation_geometry_stays_finite_in_fp16_for_a_large_kept_cell():
    # A trained model's kept cell sums to a few hundred; its square overflows FP16 (65,504), and
    # an FP16 export of the square-then-normalise form lost the named object (w = x / inf = 0).
    torch.manual_seed(0)
    relation = DualModalNet(preset("tiny", fusion_relation=16)).fusion.relation
    n, d = 9, 32
    cells, question, xy = torch.randn(1, n, d), torch.randn(1, d), torch.rand(n, 2) * 2 - 1
    kept = torch.zeros(1, n, d)
    kept[0, 5], kept[0, 2] = 9.0, 1.0  # sums 288 and 32: 288^2 = 82,944
    ref = relation.scores(cells, kept, question, xy)
    half = relation.half().scores(cells.half(), kept.half(), question.half(), xy.half())
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), ref, atol=0.05, rtol=0.02)


@torch.no_grad()
@pytest.mark.parametrize("tally", [False, True])
def test_only_the_tally_tells_how_many_cells_the_read_picks(tally):
    # k identical cells, every weight random: a softmax reads their mean, the same for any k;
    # the tally sums them, so its read grows with k.
    torch.manual_seed(0)
    relation = DualModalNet(preset("tiny", fusion_relation=16,
                                   fusion_relation_tally=tally)).fusion.relation
    for p in relation.parameters():
        torch.nn.init.normal_(p, std=0.5)
    d = 32
    obj, question = torch.randn(d), torch.randn(1, d)

    def read(k: int) -> torch.Tensor:
        cells = obj.expand(1, k, d)
        return relation(cells, cells, question, torch.zeros(k, 2))

    same = torch.allclose(read(2), read(5), atol=1e-5)
    assert same is not tally


def test_relation_tally_needs_the_relation_read():
    with pytest.raises(ConfigError, match="fusion_relation_tally"):
        preset("tiny", fusion_relation=0, fusion_relation_tally=True)


def test_relation_read_needs_the_cell_mlp_and_a_grid():
    with pytest.raises(ConfigError, match="fusion_relation"):
        preset("tiny", fusion_relation=16, fusion_cell_mlp=0)
    with pytest.raises(ConfigError, match="fusion_relation"):
        preset("tiny", fusion_relation=16, visual_tokens=VisualTokens.pooled)


def test_cell_mlp_slope_keeps_a_gradient_where_relu_has_none():
    from toolkit.model.fusion import CellReader

    torch.manual_seed(0)
    relu, leaky = CellReader(8, 2, 0.0, 16), CellReader(8, 2, 0.0, 16, slope=0.1)
    leaky.load_state_dict(relu.state_dict())  # the same weights: only the activation differs
    assert isinstance(leaky.mlp[1], torch.nn.LeakyReLU) and leaky.mlp[1].negative_slope == 0.1
    v, ctx = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    pad = torch.zeros(2, 3, dtype=torch.bool)
    for m in (relu, leaky):
        with torch.no_grad():  # every first-layer unit off: a dead ReLU layer
            m.mlp[0].bias.fill_(-1e3)
        m(v, ctx, pad).sum().backward()
    assert relu.mlp[0].weight.grad.abs().sum() == 0
    assert leaky.mlp[0].weight.grad.abs().sum() > 0
