"""Fusion of visual tokens (B, N, D) and text tokens (B, L, D) into one vector (B, D).

`cross_attention` (the seed's) stacks bidirectional blocks around one question query: the text
tokens are first pooled (masked mean) into a single query (B, 1, D), which then reads the image
(text -> visual); the visual tokens read the text tokens and that query (visual -> text).

Why the pooled query and not the seed's "attend, then pool": every word attending on its own
and then being averaged buries the one word that matters (the colour) among a dozen others, and
the answer never learned which object was meant. One query per question turns finding the named
object into one learned match between the query and the cells. A second block lets the query,
now holding the object it found, pick out a second object by its relation to the first (closest,
furthest) or read how many cells share its shape.
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.config import Fusion, ModelConfig


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of (B, L, D) where mask (B, L) is 1; padding never contributes."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class CrossAttention(nn.Module):
    """Queries attend to a context; residual, LayerNorm, optional feed-forward.

    With `film`, what a query read scales and shifts it (x * (1 + gamma) + beta, as in FiLM)
    instead of being added to it. A cell can then test "am I the colour the question names" with
    one product, where an additive residual needs the feed-forward layer to learn that product.
    """

    def __init__(self, dim: int, heads: int, dropout: float, ffn: int, film: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.film = nn.Linear(dim, 2 * dim) if film else None
        self.norm = nn.LayerNorm(dim)
        self.ffn = None
        if ffn:
            self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim),
                                     nn.Dropout(dropout))
            self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, ctx: torch.Tensor,
                ctx_pad: torch.Tensor | None = None) -> torch.Tensor:
        a, _ = self.attn(q, ctx, ctx, key_padding_mask=ctx_pad, need_weights=False)
        if self.film is None:
            x = self.norm(q + a)
        else:
            gamma, beta = self.film(a).chunk(2, dim=-1)
            x = self.norm(q * (1 + gamma) + beta)
        if self.ffn is not None:
            x = self.ffn_norm(x + self.ffn(x))
        return x


class BidirectionalBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.text_to_visual = CrossAttention(cfg.dim, cfg.heads, cfg.dropout, cfg.fusion_ffn)
        self.visual_to_text = CrossAttention(cfg.dim, cfg.heads, cfg.dropout, cfg.fusion_ffn,
                                             film=cfg.fusion_film)

    def forward(self, q: torch.Tensor, v: torch.Tensor, t: torch.Tensor, text_pad: torch.Tensor):
        # q: (B, 1, D) the question query; v: (B, N, D) cells; t: (B, L, D) words
        q = self.text_to_visual(q, v)  # (B, 1, D): the question reads the image
        ctx = torch.cat([q, t], dim=1)  # (B, 1 + L, D)
        pad = torch.cat([torch.zeros_like(text_pad[:, :1]), text_pad], dim=1)  # (B, 1 + L)
        v = self.visual_to_text(v, ctx, pad)  # (B, N, D): cells read the question and its find
        return q, v


class FusionModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.fusion
        d = cfg.dim
        if self.kind is Fusion.cross_attention:
            self.blocks = nn.ModuleList(BidirectionalBlock(cfg) for _ in range(cfg.fusion_layers))
            self.out = nn.Linear(2 * d, d)
        elif self.kind is Fusion.concat:
            self.out = nn.Linear(2 * d, d)
        else:  # elementwise
            self.out = nn.Linear(d, d)

    def forward(self, v: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # v: (B, N, D) visual tokens; t: (B, L, D) text tokens; mask: (B, L), 1 = real token
        q = masked_mean(t, mask).unsqueeze(1)  # (B, 1, D)
        if self.kind is Fusion.cross_attention:
            text_pad = mask == 0  # (B, L) True where padding: masked out as keys
            for block in self.blocks:
                q, v = block(q, v, t, text_pad)
        pooled_t = q.squeeze(1)  # (B, D)
        pooled_v = v.mean(1)  # (B, D)
        if self.kind is Fusion.elementwise:
            return self.out(pooled_v * pooled_t)  # (B, D)
        return self.out(torch.cat([pooled_v, pooled_t], dim=-1))  # (B, D)
