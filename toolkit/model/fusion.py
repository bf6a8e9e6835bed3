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

With plain ReLUs a colour whose units all started off, or were pushed off early, gets no gradient
again: on some seeds one colour's questions stayed unbound through the curriculum (the MLP's output
on them was about 0.1% of the other colours'). `fusion_cell_slope` makes the units leaky. Alone
it did not make the binding reliable across seeds; `small` sets it (0.1) together with the
multiscale convnet and the relation tally below, the combination that learned every question type
on the seeds of bench/training.md. That combination still needs `toolkit train`'s curriculum
stages and `--freeze-binding`: without either, seed 2 misses a floor there.

The cells are summed, not averaged: "how many objects share its shape" is a count.

The MLP also silences the cells a question does not name, so nothing but the named object would
reach the head; "how many objects share its shape" also needs the shapes of all the others. With
`fusion_cell_mlp` a linear read of the mean of the cells as they entered the fusion (`summary`) is
added to the output, so that statistics of the whole image keep a path. It starts at zero, and
training holds it there while a curriculum runs (`held_during_curriculum`): no statistic answers
the curriculum's questions, and a summary that has weights sends every cell the same gradient,
which stopped the binding in the runs of bench/training.md.

"What is the shape of the object closest to the red object?" needs one more step: compare every
other object's place with the red one's, and read the winner's shape. Summing the cells cannot pick
one object, and the cell MLP has already silenced all but the named one. With `fusion_relation` a
`RelationRead` scores every cell as it entered the fusion against the named object (its features,
and where it is relative to it), and a softmax over the cells reads the best-scoring ones.

"How many objects share the red object's shape?" is a count, and a softmax cannot count: its
weights sum to one, so two matching cells and five read the same mean. With `fusion_relation_tally`
the same scores also pass through a sigmoid each, unnormalised, and the sum of the cells they
weight is added (through a zero-initialised layer, as the softmax read is).
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

    def __init__(self, dim: int, heads: int, dropout: float, hidden: int, slope: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

        def act() -> nn.Module:
            return nn.LeakyReLU(slope) if slope else nn.ReLU()

        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, hidden), act(),
            nn.Linear(hidden, hidden), act(),
            nn.Linear(hidden, dim), act(),
        )

    def forward(self, v: torch.Tensor, ctx: torch.Tensor, ctx_pad: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(v, ctx, ctx, key_padding_mask=ctx_pad, need_weights=False)  # (B, N, D)
        return self.mlp(torch.cat([v, a], dim=-1))  # (B, N, D)


class RelationRead(nn.Module):
    """Score each cell against the object the cell MLP kept; read the cells by a softmax over them.

    The named object is where the cell MLP's (non-negative) output is: its share of the output,
    squared so that the object's strongest cells dominate, weights the cells' features and centres.
    Each cell's geometry is its offset from the named object, the squared distance and the cell's
    own share. "Closest" and "furthest" are an argmin and an argmax of that distance over the cells
    that hold another object, so the score has a term bilinear in the question and the geometry
    (the question sets the sign and weight of the distance), plus a ReLU MLP on [cell, named
    object, question, geometry] for the rest (is there an object here, is it the named one). One
    softmax per head picks cells; their projected features are read, and a zero-initialised layer
    adds the read to the fusion's output, so that the model starts as without it.
    """

    GEOMETRY = 4  # offset x, offset y, squared distance, share of the kept output

    def __init__(self, dim: int, heads: int, hidden: int, tally: bool = False):
        super().__init__()
        self.heads = heads
        self.score = nn.Sequential(
            nn.Linear(3 * dim + self.GEOMETRY, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, heads),
        )
        self.gate = nn.Linear(dim, heads * self.GEOMETRY)
        self.value = nn.Linear(dim, dim)
        self.out = skip_init(nn.Linear, dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # Zeros and no random draws, like `out`: with or without the tally the model starts alike.
        self.tally: nn.Linear | None = None
        self.tally_bias: nn.Parameter | None = None
        if tally:
            self.tally = skip_init(nn.Linear, dim, dim)
            nn.init.zeros_(self.tally.weight)
            nn.init.zeros_(self.tally.bias)
            # Scores start near 0, where a sigmoid is 0.5 on all 64 cells; from -4 a cell that
            # is not picked adds about 0.02.
            self.tally_bias = nn.Parameter(torch.full((heads,), -4.0))

    def forward(self, cells: torch.Tensor, kept: torch.Tensor, question: torch.Tensor,
                xy: torch.Tensor) -> torch.Tensor:
        b, n, d = cells.shape
        scores = self.scores(cells, kept, question, xy)  # (B, N, H)
        values = self.value(cells).view(b, n, self.heads, d // self.heads)  # (B, N, H, D/H)
        read = torch.einsum("bnh,bnhe->bhe", scores.softmax(dim=1), values).reshape(b, d)
        out = self.out(read)  # (B, D)
        if self.tally is not None:
            counted = torch.sigmoid(scores + self.tally_bias)  # (B, N, H), not normalised
            out = out + self.tally(torch.einsum("bnh,bnhe->bhe", counted, values).reshape(b, d))
        return out

    def choose(self, cells: torch.Tensor, kept: torch.Tensor, question: torch.Tensor,
               xy: torch.Tensor) -> torch.Tensor:
        """Each head's softmax over the cells (B, N, H), for toolkit.explain."""
        return self.scores(cells, kept, question, xy).softmax(dim=1)

    def scores(self, cells: torch.Tensor, kept: torch.Tensor, question: torch.Tensor,
               xy: torch.Tensor) -> torch.Tensor:
        """Each head's score of each cell (B, N, H)."""
        # cells: (B, N, D) as they entered the fusion; kept: (B, N, D) the cell MLP's output;
        # question: (B, D); xy: (N, 2) cell centres in [-1, 1]
        b, n, d = cells.shape
        # Each cell's share of the kept output, squared and normalised. Scaled by the largest
        # cell first (the same weights): a trained cell's square passes FP16's 65,504.
        s = kept.sum(-1)  # (B, N)
        w = (s / s.abs().amax(1, keepdim=True).clamp_min(1e-6)).square()
        w = w / w.sum(1, keepdim=True).clamp_min(1e-6)
        named = torch.einsum("bn,bnd->bd", w, cells)  # (B, D)
        offset = xy.unsqueeze(0) - (w @ xy).unsqueeze(1)  # (B, N, 2)
        geometry = torch.cat([offset, offset.square().sum(-1, keepdim=True), w.unsqueeze(-1)],
                             dim=-1)  # (B, N, 4)
        scores = self.score(torch.cat([cells, named.unsqueeze(1).expand(b, n, d),
                                       question.unsqueeze(1).expand(b, n, d), geometry],
                                      dim=-1))  # (B, N, H)
        gate = self.gate(question).view(b, self.heads, self.GEOMETRY)  # (B, H, 4)
        return scores + torch.einsum("bng,bhg->bnh", geometry, gate)  # (B, N, H)


class BidirectionalBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.fusion_cell_mlp:
            self.visual_to_text = CellReader(cfg.dim, cfg.heads, cfg.dropout, cfg.fusion_cell_mlp,
                                            cfg.fusion_cell_slope)
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
        self.relation: RelationRead | None = None
        if self.kind is Fusion.cross_attention:
            self.blocks = nn.ModuleList(BidirectionalBlock(cfg) for _ in range(cfg.fusion_layers))
            self.out = nn.Linear(2 * d, d)
            if cfg.fusion_cell_mlp:
                # zeros, with no random draws: the rest of the model initialises as without it
                self.summary = skip_init(nn.Linear, d, d)
                nn.init.zeros_(self.summary.weight)
                nn.init.zeros_(self.summary.bias)
            if cfg.fusion_relation:
                # Drawn from a stream of its own: every other weight starts as without it, so a
                # recipe's seed keeps the start it was measured from.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(2**62, ())))
                    self.relation = RelationRead(d, cfg.heads, cfg.fusion_relation,
                                                 cfg.fusion_relation_tally)
        elif self.kind is Fusion.concat:
            self.out = nn.Linear(2 * d, d)
        else:  # elementwise
            self.out = nn.Linear(d, d)

    def held_during_curriculum(self) -> list[nn.Parameter]:
        return [] if self.summary is None else list(self.summary.parameters())

    def held_in_first_stage(self) -> list[nn.Parameter]:
        """The relation read: until the first curriculum stage has bound the question's object to
        its cells, its softmax finds the object itself, a shortcut that stopped the binding
        (bench/training.md)."""
        return [] if self.relation is None else list(self.relation.parameters())

    def forward(self, v: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                xy: torch.Tensor | None = None) -> torch.Tensor:
        # v: (B, N, D) visual tokens; t: (B, L, D) text tokens; mask: (B, L), 1 = real token;
        # xy: (N, 2) the cells' centres when v is a grid (RelationRead needs them)
        q = masked_mean(t, mask).unsqueeze(1)  # (B, 1, D)
        cells, question = v, q.squeeze(1)
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
        if summary is not None:
            fused = fused + summary
        if self.relation is not None:
            if xy is None:
                raise ValueError("fusion_relation needs the cells' centres (xy)")
            fused = fused + self.relation(cells, v, question, xy)
        return fused
