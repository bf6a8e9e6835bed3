"""Fusion of visual tokens (B, N, D) and text tokens (B, L, D) into one vector (B, D).

`cross_attention` (the seed's) stacks bidirectional blocks around one question query: the text
tokens are first pooled (masked mean) into a single query (B, 1, D). In each block the cells read
the question (visual -> text), then the query reads the cells (text -> visual).

Why the question must reach every cell before anything is pooled: an answer such as "the red
object is on the left" is a property of one object, and no statistic of the whole image gives it.
A cell has to be able to say "I am the colour the question names, and I am here". With
`fusion_cell_mlp` each cell passes [its features, what it read from the question] through a small
ReLU MLP, the way a relation network scores objects: a ReLU unit fires only when a colour feature
of the cell and the colour word of the question are both present, which a plain attention residual
cannot express. Measured on the embedded dataset (bench/training.md): with the residual and
LayerNorm of the seed's attention the question's object was found late or never; with the MLP's
output replacing the cell, and the curriculum of `toolkit train`, within 70-100k training questions.

The cells are summed, not averaged: "how many objects share its shape" is a count.

The MLP also silences the cells a question does not name, so nothing but the named object would
reach the head; "how many objects share its shape" also needs the shapes of all the others. With
`fusion_cell_mlp` a linear read of the mean of the cells as they entered the fusion (`summary`) is
added to the output, so that statistics of the whole image keep a path. It starts at zero, and
training holds it there while a curriculum runs (`held_during_curriculum`): no statistic answers
the curriculum's questions, and a summary that has weights sends every cell the same gradient,
which stopped the binding in the runs of bench/training.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from toolkit.config import Fusion, ModelConfig


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of (B, L, D) where mask (B, L) is 1; padding never contributes."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class CrossAttention(nn.Module):
    """Queries attend to a context; residual and LayerNorm (the seed's attention layer)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, ctx: torch.Tensor,
                ctx_pad: torch.Tensor | None = None) -> torch.Tensor:
        a, _ = self.attn(q, ctx, ctx, key_padding_mask=ctx_pad, need_weights=False)
        return self.norm(q + a)


class CellReader(nn.Module):
    """Cells attend to the question, then a ReLU MLP on [cell, what it read] replaces each cell."""

    def __init__(self, dim: int, heads: int, dropout: float, hidden: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, dim), nn.ReLU(),
        )

    def forward(self, v: torch.Tensor, ctx: torch.Tensor, ctx_pad: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(v, ctx, ctx, key_padding_mask=ctx_pad, need_weights=False)  # (B, N, D)
        return self.mlp(torch.cat([v, a], dim=-1))  # (B, N, D)


class BidirectionalBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.fusion_cell_mlp:
            self.visual_to_text = CellReader(cfg.dim, cfg.heads, cfg.dropout, cfg.fusion_cell_mlp)
        else:
            self.visual_to_text = CrossAttention(cfg.dim, cfg.heads, cfg.dropout)
        self.text_to_visual = CrossAttention(cfg.dim, cfg.heads, cfg.dropout)

    def forward(self, q: torch.Tensor, v: torch.Tensor, t: torch.Tensor, text_pad: torch.Tensor):
        # q: (B, 1, D) the question query; v: (B, N, D) cells; t: (B, L, D) words
        ctx = torch.cat([q, t], dim=1)  # (B, 1 + L, D)
        pad = torch.cat([torch.zeros_like(text_pad[:, :1]), text_pad], dim=1)  # (B, 1 + L)
        v = self.visual_to_text(v, ctx, pad)  # (B, N, D): each cell reads the question
        q = self.text_to_visual(q, v)  # (B, 1, D): the question reads the cells
        return q, v


class FusionModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.fusion
        d = cfg.dim
        self.summary: nn.Linear | None = None
        if self.kind is Fusion.cross_attention:
            self.blocks = nn.ModuleList(BidirectionalBlock(cfg) for _ in range(cfg.fusion_layers))
            self.out = nn.Linear(2 * d, d)
            if cfg.fusion_cell_mlp:
                # zeros, with no random draws: the rest of the model initialises as without it
                self.summary = skip_init(nn.Linear, d, d)
                nn.init.zeros_(self.summary.weight)
                nn.init.zeros_(self.summary.bias)
        elif self.kind is Fusion.concat:
            self.out = nn.Linear(2 * d, d)
        else:  # elementwise
            self.out = nn.Linear(d, d)

    def held_during_curriculum(self) -> list[nn.Parameter]:
        return [] if self.summary is None else list(self.summary.parameters())

    def forward(self, v: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # v: (B, N, D) visual tokens; t: (B, L, D) text tokens; mask: (B, L), 1 = real token
        q = masked_mean(t, mask).unsqueeze(1)  # (B, 1, D)
        summary = None
        if self.summary is not None:
            summary = self.summary(v.mean(1))  # (B, D), before the MLP silences any cell
        if self.kind is Fusion.cross_attention:
            text_pad = mask == 0  # (B, L) True where padding: masked out as keys
            for block in self.blocks:
                q, v = block(q, v, t, text_pad)
        pooled_t = q.squeeze(1)  # (B, D)
        pooled_v = v.sum(1)  # (B, D); one token (the seed's pooled image) is itself
        if self.kind is Fusion.elementwise:
            return self.out(pooled_v * pooled_t)  # (B, D)
        fused = self.out(torch.cat([pooled_v, pooled_t], dim=-1))  # (B, D)
        return fused if summary is None else fused + summary
