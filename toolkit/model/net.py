"""The dual-modal classifier: vision tower + text tower -> projections -> fusion -> MLP head."""

from __future__ import annotations

import math

import torch
from torch import nn

from toolkit.config import ModelConfig, VisualTokens
from toolkit.model.fusion import FusionModule
from toolkit.model.text import TextTower
from toolkit.model.vision import VisionTower

INPUT_NAMES = ("image", "input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)


class GridPosition(nn.Module):
    """Fourier features of each cell's (x, y) centre in [-1, 1], projected to the fusion width.

    Flattening the map into tokens loses where each cell was; left/right, top/bottom and "closest"
    all need it back. Fixed frequencies plus one linear layer work at any grid size.
    """

    def __init__(self, dim: int, freqs: int = 4):
        super().__init__()
        self.freqs = freqs
        self.proj = nn.Linear(2 + 4 * freqs, dim)

    @staticmethod
    def centres(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """(h*w, 2): each cell's (x, y) centre in [-1, 1], row by row as tokens are flattened."""
        ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w * 2 - 1
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.flatten(), yy.flatten()], dim=-1)  # (h*w, 2)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        scales = (2.0 ** torch.arange(self.freqs, device=xy.device, dtype=xy.dtype)) * math.pi
        ang = (xy.unsqueeze(-1) * scales).flatten(1)  # (h*w, 2F)
        feats = torch.cat([xy, ang.sin(), ang.cos()], dim=-1)  # (h*w, 2 + 4F)
        return self.proj(feats)  # (h*w, D)


class DualModalNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTower(cfg.vision, cfg.image_size)
        self.text = TextTower(cfg.text)
        self.visual_proj = nn.Linear(self.vision.out_channels, cfg.dim)
        self.text_proj = nn.Linear(self.text.hidden_size, cfg.dim)
        self.position = GridPosition(cfg.dim) if cfg.visual_tokens is VisualTokens.grid else None
        self.fusion = FusionModule(cfg)
        self.head = nn.Sequential(
            nn.Linear(cfg.dim, cfg.head_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden, cfg.num_classes),
        )

    def binding_parameters(self) -> list[nn.Parameter]:
        """What finds the object a question names: the text tower and each cell's reading of the
        question (TrainConfig.freeze_binding)."""
        readers = [block.visual_to_text for block in getattr(self.fusion, "blocks", [])]
        return [p for m in (self.text, self.text_proj, *readers) for p in m.parameters()]

    def visual_tokens(self, image: torch.Tensor) -> torch.Tensor:
        return self._tokens(image)[0]

    def _tokens(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The visual tokens (B, N, D), and each cell's centre (N, 2) when they are a grid."""
        fmap = self.vision(image)  # (B, C, h, w), e.g. (B, 2048, 7, 7) for ResNet-50 at 224 px
        if self.position is None:
            return self.visual_proj(fmap.mean(dim=(2, 3))).unsqueeze(1), None  # (B, 1, D)
        h, w = fmap.shape[-2:]
        tokens = self.visual_proj(fmap.flatten(2).transpose(1, 2))  # (B, h*w, D)
        xy = GridPosition.centres(h, w, tokens)  # (h*w, 2)
        return tokens + self.position(xy), xy  # (B, h*w, D)

    def fused(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              image_index: torch.Tensor | None = None) -> torch.Tensor:
        """The fusion's output (B, D), which the head classifies (distillation matches it)."""
        v, xy = self._tokens(image)  # (B, N, D), (N, 2) or None
        if image_index is not None:
            # Training shares one image among its questions: (K, N, D) -> (B, N, D).
            v = v[image_index]
        t = self.text_proj(self.text(input_ids, attention_mask))  # (B, L, D)
        return self.fusion(v, t, attention_mask, xy)  # (B, D)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.fused(image, input_ids, attention_mask, image_index))  # (B, classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
