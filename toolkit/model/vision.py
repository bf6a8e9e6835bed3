"""Vision tower: a torchvision backbone without its classifier, returning visual tokens.

`pooled` gives one token (global average pool, the seed's design); `grid` keeps every cell of the
final feature map as a token, with its (x, y) centre so that position survives the flattening.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from toolkit.config import VisionConfig
from toolkit.errors import ToolkitError


class VisionError(ToolkitError):
    pass


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]  # Bottleneck blocks end in conv3/bn3, basic blocks in conv2/bn2
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


class ResNetStages(nn.Module):
    """The stem and the first `stages` residual stages; optionally every stage's output pooled
    to the last one's grid and stacked as channels."""

    def __init__(self, m: nn.Module, stages: int, multiscale: bool):
        super().__init__()
        self.stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
        self.stages = nn.ModuleList([m.layer1, m.layer2, m.layer3, m.layer4][:stages])
        self.multiscale = multiscale
        widths = [_stage_channels(s) for s in self.stages]
        self.out_channels = (m.conv1.out_channels + sum(widths)) if multiscale else widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]  # (B, 64, H/4, W/4)
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        last = feats[-1]  # (B, C, h, w)
        if not self.multiscale:
            return last
        h, w = last.shape[-2:]
        pooled = [nn.functional.adaptive_avg_pool2d(f, (h, w)) for f in feats[:-1]]
        return torch.cat(pooled + [last], dim=1)  # (B, 64 + sum(stage widths), h, w)


class VisionTower(nn.Module):
    """(B, 3, H, W) -> feature map (B, C, h, w); `out_channels` is C."""

    def __init__(self, cfg: VisionConfig, image_size: int):
        super().__init__()
        name = cfg.backbone
        if name == "convnet":
            if cfg.weights:
                raise VisionError("the convnet backbone has no torchvision weights to load; drop "
                                  "--vision-weights or choose a torchvision backbone")
            self.kind = "convnet"
            self.body = ConvStack(cfg.stages, cfg.width or 24, cfg.multiscale)
            self.out_channels = self.body.out_channels
            return
        vit_options = {"patch_size": cfg.patch_size, "layers": cfg.layers, "heads": cfg.heads}
        given = [k for k, v in vit_options.items() if v is not None]
        if given and not name.startswith("vit_"):
            raise VisionError(f"{', '.join(given)} apply to ViT backbones (vit_*) only, not "
                              f"{name!r}")
        if cfg.width is not None and not name.startswith(("resnet", "vit_")):
            raise VisionError(f"width={cfg.width} applies to ResNet and ViT backbones only, not "
                              f"{name!r}")
        if name.startswith("vit_") and (given or cfg.width is not None):
            m = reduced_vit(name, image_size, cfg)
        else:
            kwargs = {"image_size": image_size} if name.startswith("vit_") else {}
            try:
                m = torchvision.models.get_model(name, weights=None, **kwargs)
            except ValueError as e:
                raise VisionError(f"unknown vision backbone {name!r}; choose convnet or one of: "
                                  f"{', '.join(_known_backbones())}") from e
        if cfg.width is not None and name.startswith("resnet"):
            m = narrow_resnet(m, cfg.width)
        if cfg.weights:
            load_torchvision_weights(m, cfg.weights)
        self.kind = name.split("_")[0].rstrip("0123456789")  # resnet | efficientnet | vit
        if self.kind == "resnet":
            self.body = ResNetStages(m, cfg.stages, cfg.multiscale)
            self.out_channels = self.body.out_channels
        elif self.kind == "efficientnet":
            self.body = m.features
            self.out_channels = m.features[-1][0].out_channels
        elif self.kind == "vit":
            self.vit = m
            self.out_channels = m.hidden_dim
        else:
            raise VisionError(f"backbone {name!r} is not a ResNet, EfficientNet or ViT")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.kind != "vit":
            return self.body(image)  # (B, C, h, w)
        # ViT: patch tokens after the encoder, laid back out as a (B, C, h, w) map.
        x = self.vit._process_input(image)  # (B, N, C)
        cls = self.vit.class_token.expand(x.shape[0], -1, -1)
        x = self.vit.encoder(torch.cat([cls, x], dim=1))[:, 1:]  # (B, N, C)
        side = image.shape[-1] // self.vit.patch_size
        return x.transpose(1, 2).reshape(x.shape[0], -1, side, side)


class ConvStack(nn.Sequential):
    """`layers` 3x3 convolutions of stride 2, each with BatchNorm and ReLU (torchvision's
    Conv2dNormActivation): the plain CNN of the Sort-of-CLEVR paper. Every cell of its map is a
    shallow function of a small patch. With `multiscale`, each earlier layer's map, average-pooled
    to the last one's grid, is stacked as extra channels: the first layer is almost a per-pixel
    function of colour, so the cells offer colour features that later layers have mixed with shape."""

    def __init__(self, layers: int, width: int, multiscale: bool = False):
        from torchvision.ops import Conv2dNormActivation

        chans = [3] + [width] * layers
        super().__init__(*(Conv2dNormActivation(a, b, kernel_size=3, stride=2)
                           for a, b in zip(chans, chans[1:])))
        self.multiscale = multiscale
        self.out_channels = width * (layers if multiscale else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for layer in self:
            x = layer(x)
            feats.append(x)
        if not self.multiscale:
            return x  # (B, W, H/2^k, W/2^k)
        h, w = x.shape[-2:]
        return torch.cat([nn.functional.adaptive_avg_pool2d(f, (h, w)) for f in feats], dim=1)


def _known_backbones() -> list[str]:
    return [n for n in torchvision.models.list_models(torchvision.models)
            if n.startswith(("resnet", "efficientnet", "vit_"))]


# torchvision's ViT builders: (patch size, layers, heads, hidden width, MLP width), as set by
# vit_b_16 ... vit_h_14 (https://pytorch.org/vision/stable/models/vision_transformer.html).
VIT_SIZES = {
    "vit_b_16": (16, 12, 12, 768, 3072),
    "vit_b_32": (32, 12, 12, 768, 3072),
    "vit_l_16": (16, 24, 16, 1024, 4096),
    "vit_l_32": (32, 24, 16, 1024, 4096),
    "vit_h_14": (14, 32, 16, 1280, 5120),
}


def reduced_vit(name: str, image_size: int, cfg: VisionConfig) -> nn.Module:
    """torchvision's VisionTransformer of model `name` with the patch size, layers, heads and
    width that `cfg` sets (the rest its own; the MLP stays 4x the width, as in every vit_*).
    torchvision's vit_* builders fix these, so the class is built directly."""
    if name not in VIT_SIZES:
        raise VisionError(f"unknown ViT {name!r} for patch_size/layers/heads/width; choose one "
                          f"of: {', '.join(VIT_SIZES)}")
    patch, layers, heads, hidden, mlp = VIT_SIZES[name]
    patch = cfg.patch_size or patch
    layers = cfg.layers or layers
    heads = cfg.heads or heads
    if cfg.width is not None:
        hidden, mlp = cfg.width, 4 * cfg.width
    if image_size % patch:
        raise VisionError(f"image_size {image_size} is not a multiple of the ViT patch size "
                          f"{patch}; choose a patch size that divides it (e.g. 8 for 64 px)")
    if hidden % heads:
        raise VisionError(f"ViT width {hidden} is not divisible by its {heads} heads; choose a "
                          "width that is a multiple of the heads")
    return torchvision.models.VisionTransformer(image_size=image_size, patch_size=patch,
                                                num_layers=layers, num_heads=heads,
                                                hidden_dim=hidden, mlp_dim=mlp)


def narrow_resnet(m: nn.Module, width: int) -> nn.Module:
    """torchvision ResNet `m` rebuilt at base width `width` instead of 64, with the same blocks,
    depths and strides, initialised as torchvision initialises its ResNets."""
    from torchvision.models.resnet import conv1x1

    block = type(m.layer1[0])
    out = nn.Module()
    out.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    out.bn1 = nn.BatchNorm2d(width)
    out.relu = nn.ReLU(inplace=True)
    out.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = width
    for i, (name, stride) in enumerate(zip(("layer1", "layer2", "layer3", "layer4"), (1, 2, 2, 2))):
        planes = width * 2**i
        wide = planes * block.expansion
        down = None
        if stride != 1 or inplanes != wide:
            down = nn.Sequential(conv1x1(inplanes, wide, stride), nn.BatchNorm2d(wide))
        blocks = [block(inplanes, planes, stride, down)]
        blocks += [block(wide, planes) for _ in range(len(getattr(m, name)) - 1)]
        setattr(out, name, nn.Sequential(*blocks))
        inplanes = wide
    for mod in out.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return out


def load_torchvision_weights(model: nn.Module, path: str) -> None:
    """Load a local torchvision state dict; the classifier head may be absent or of another size."""
    p = Path(path)
    if not p.is_file():
        raise VisionError(f"vision weights not found: {p}; pass a torchvision state dict (.pth)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt pickle/zip
        raise VisionError(f"{p} is not a readable torch state dict ({e})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    head = {k for k in (*own, *state) if k.startswith(("fc.", "classifier.", "heads."))}
    state = {k: v for k, v in state.items() if k not in head}
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise VisionError(f"{p} does not match backbone {type(model).__name__} ({detail}); "
                          "pass the state dict of the same torchvision architecture")
    model.load_state_dict(state, strict=False)
