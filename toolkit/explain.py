"""What the fusion looks at: its attention weights per question, drawn, and scored on a split.

`explain(predictor, images, texts)` runs a run directory's PyTorch model on the Predictor's feed
(toolkit.data.preprocess, the one preprocessing path) and returns, per question, every softmax the
fusion takes, as numpy arrays:

  block{i}.text_to_visual  (H, N)     the question query over the N cells, per head
  block{i}.visual_to_text  (H, N, K)  each cell over the K = 1 + L keys [question query, tokens]
  block{i}.text_to_visual.norm
                           (N,)       how much each cell sends into the query's read: the norm of
                                      its weighted, projected value summed over heads (below)
  relation.pick            (H, N)     RelationRead's choice of cells, per head
  kept_share               (N,)       each cell's share of the cell MLP's output, squared and
                                      normalized: where RelationRead takes the named object to be
                                      (a normalized weight, not a softmax)

The weights are captured by forward hooks, which return nothing, so the logits are the model's
own; nothing in the model or its ONNX export changes. `nn.MultiheadAttention` runs with
need_weights=False in the model (the fast path); the hook calls the module's `forward` again on
the same inputs with need_weights=True, average_attn_weights=False (PyTorch's own arithmetic:
https://pytorch.org/docs/stable/generated/torch.nn.MultiheadAttention.html). Calling `forward`,
not the module, does not fire the hook again.

A weight alone can point where nothing is read. A head with nothing to do for a question puts
its weight on cells the cell MLP has silenced, and what those cells send is near zero; averaged
with a head that is on the named object, that weight can outvote it. The `.norm` map is the
norm-based reading of attention (Kobayashi et al., 2020, "Attention is not only a weight",
https://arxiv.org/abs/2004.10102): cell n's share of ||sum_h a_hn W_O^h (W_V^h v_n + b_V^h)||,
the vector the cell adds to the module's output (the output bias, the same for every cell, left
out). The raw weights stay the document's map; both are scored.

`draw` (matplotlib: the `plot` extra) makes one picture per question; `pointing_game` scores the
maps on the embedded dataset's held-out split (Zhang et al., 2016, "Top-down neural attention by
excitation backprop": a hit when the most-weighted point lies on the object).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.artifacts import atomic_path
from toolkit.config import Device
from toolkit.data.manifest import read_records
from toolkit.data.preprocess import ImageInput
from toolkit.errors import ToolkitError

QUESTION_KEY = "[question]"  # key 0 of visual_to_text: the pooled question query


class ExplainError(ToolkitError):
    """The attention cannot be shown or scored as asked; the message names the fix."""


# ------------------------------------------------------------------ capture


class AttentionCapture:
    """Forward hooks on a DualModalNet that record each softmax of its fusion, batch-first.

    with AttentionCapture(model) as cap:
        logits = model(...)
    cap.weights  # {name: (B, ...) float32 numpy}
    """

    def __init__(self, model):
        from toolkit.config import Fusion
        from toolkit.model.fusion import CellReader

        fusion = model.fusion
        if fusion.kind is not Fusion.cross_attention:
            raise ExplainError(f"this model fuses by {fusion.kind.value}, which has no attention "
                               "to show; explain a cross_attention model")
        self.weights: dict[str, np.ndarray] = {}
        self._targets = []
        for i, block in enumerate(fusion.blocks):
            self._targets.append((block.text_to_visual.attn, self._mha(f"block{i}.text_to_visual",
                                                                       squeeze_query=True)))
            self._targets.append((block.visual_to_text.attn, self._mha(f"block{i}.visual_to_text",
                                                                       squeeze_query=False)))
        last = fusion.blocks[-1].visual_to_text
        if isinstance(last, CellReader):
            self._targets.append((last, self._kept))
        if fusion.relation is not None:
            self._targets.append((fusion.relation, self._pick))
        self._handles = []

    def __enter__(self) -> "AttentionCapture":
        self.weights.clear()
        self._handles = [m.register_forward_hook(h, with_kwargs=True) for m, h in self._targets]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _mha(self, name: str, squeeze_query: bool):
        def hook(module, args, kwargs, output):
            kw = {**kwargs, "need_weights": True, "average_attn_weights": False}
            _, w = module.forward(*args, **kw)  # (B, H, Lq, Lk)
            if squeeze_query:  # text_to_visual has one query
                w = w[:, :, 0]  # (B, H, N)
                value = args[2] if len(args) > 2 else kwargs["value"]
                sent = cell_contributions(module, value, w).norm(dim=-1)  # (B, N)
                self.weights[f"{name}.norm"] = _numpy(
                    sent / sent.sum(1, keepdim=True).clamp_min(1e-30))
            self.weights[name] = _numpy(w)

        return hook

    def _kept(self, module, args, kwargs, output):
        w = output.sum(-1).square()  # (B, N): RelationRead's weighting of the named object
        total = w.sum(1, keepdim=True)
        n = w.shape[1]
        # No cell kept at all (an untrained model): every cell an equal share.
        w = (w / total.clamp_min(1e-30)).where(total > 0, w.new_full(w.shape, 1.0 / n))
        self.weights["kept_share"] = _numpy(w)

    def _pick(self, module, args, kwargs, output):
        self.weights["relation.pick"] = _numpy(module.choose(*args, **kwargs).transpose(1, 2))


def cell_contributions(mha, value, weights):
    """(B, N, D): what each of the N keys adds to a one-query `nn.MultiheadAttention`'s output,
    sum_h a_hn W_O^h (W_V^h v_n + b_V^h). Summed over n, plus out_proj's bias, it is the output.
    value: (B, N, D) batch-first, as the module got it; weights: (B, H, N), per head."""
    import torch
    import torch.nn.functional as F

    d, h = mha.embed_dim, mha.num_heads
    w_v = mha.in_proj_weight[2 * d:] if mha.in_proj_weight is not None else mha.v_proj_weight
    b_v = mha.in_proj_bias[2 * d:] if mha.in_proj_bias is not None else None
    v = F.linear(value, w_v, b_v).view(*value.shape[:2], h, d // h)  # (B, N, H, D/H)
    w_o = mha.out_proj.weight.view(d, h, d // h)  # (D, H, D/H): head h's columns
    return torch.einsum("bhn,bnhe,dhe->bnd", weights, v, w_o)


def _numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# ------------------------------------------------------------------ explain


@dataclass
class Explanation:
    """One question's answer and weights. `pixels` is the image as the model saw it (S, S, 3)."""

    text: str
    tokens: list[str]  # the K keys of visual_to_text: QUESTION_KEY, then the word pieces
    answer: str
    probability: float
    probabilities: dict[str, float]
    grid: tuple[int, int] | None  # (rows, columns) of cells; None: one pooled visual token
    weights: dict[str, np.ndarray]
    pixels: np.ndarray = field(repr=False)
    truth: str | None = None

    def cell_maps(self) -> dict[str, np.ndarray]:
        """Every distribution over the cells, (N,) each: head means, then each head."""
        maps: dict[str, np.ndarray] = {}
        order = sorted(self.weights, key=lambda k: (k == "kept_share", k.startswith("relation"), k))
        for name in order:
            w = self.weights[name]
            if name.endswith(".text_to_visual") or name == "relation.pick":
                maps[name] = w.mean(0)
                if w.shape[0] > 1:
                    maps.update({f"{name}.head{h}": w[h] for h in range(w.shape[0])})
            elif name == "kept_share" or name.endswith(".norm"):
                maps[name] = w
        return maps

    def token_attention(self) -> tuple[np.ndarray, str]:
        """The last block's visual-to-text attention over the K keys, (K,), and what it is.

        Weighted by the kept share where the model has one: the cell MLP silences every cell but
        the named object's, so what those cells read is what decides; a plain mean over the cells
        is dominated by the empty background's. Without a cell MLP, the mean over the cells.
        """
        last = max(k for k in self.weights if k.endswith(".visual_to_text"))
        w = self.weights[last].mean(0)  # (N, K), mean over heads
        if "kept_share" in self.weights:
            return self.weights["kept_share"] @ w, "cells weighted by their kept share"
        return w.mean(0), "mean over the cells"

    def to_dict(self) -> dict:
        bars, how = self.token_attention()
        return {"text": self.text, "truth": self.truth, "answer": self.answer,
                "probability": self.probability, "probabilities": self.probabilities,
                "tokens": self.tokens, "grid": list(self.grid) if self.grid else None,
                "token_attention": {"weights": bars.tolist(), "over": how},
                "weights": {k: v.tolist() for k, v in self.weights.items()}}


def load_predictor(checkpoint: str | Path, which: str = "best", device: Device | str = "auto"):
    """A torch Predictor on a run directory (only the PyTorch model has weights to show)."""
    from toolkit.runtime import Predictor
    from toolkit.runtime.devices import resolve_device
    from toolkit.artifacts import ArtifactMetadata
    from toolkit.runtime.predictor import Backend
    from toolkit.runtime.torch_runner import TorchRunner

    path = Path(checkpoint)
    if path.is_file():
        raise ExplainError(f"{path} is a file; attention is read from the PyTorch model: pass its "
                           "run directory (runs/NAME)")
    runner = TorchRunner(path, which=which, device=resolve_device(Device(device)).type)
    runner.activate()  # loads the checkpoint: a missing or damaged run is its clear error
    try:
        return Predictor(runner, ArtifactMetadata.for_checkpoint(runner.ck), Backend.torch, path)
    except BaseException:
        runner.deactivate()
        raise


def explain(predictor, images: Sequence[ImageInput], texts: Sequence[str],
            truths: Sequence[str | None] | None = None, batch_size: int = 32
            ) -> list[Explanation]:
    """Answer each (image, text) pair with the weights of every softmax the fusion takes."""
    from toolkit.runtime.predictor import Backend, _check_inputs, softmax

    if predictor.backend is not Backend.torch:
        raise ExplainError("attention is read from the PyTorch model: load the run directory "
                           "(runs/NAME), not an export")
    images, texts = _check_inputs(images, texts)
    truths = list(truths) if truths is not None else [None] * len(texts)
    model = predictor.runner.ck.model
    meta = predictor.metadata
    vocab = list(meta.vocab)
    out: list[Explanation] = []
    for start in range(0, len(texts), batch_size):
        chunk = slice(start, start + batch_size)
        feed = predictor.preprocess(images[chunk], texts[chunk])
        with AttentionCapture(model) as cap:
            logits = predictor.infer(feed)
        probs = softmax(logits)
        # The picture shows the tensor the model saw: the feed, normalization undone.
        x = feed["image"].astype(np.float32).transpose(0, 2, 3, 1)  # (B, S, S, 3)
        pixels = np.clip((x * np.asarray(meta.std) + np.asarray(meta.mean)) * 255 + 0.5, 0, 255)
        for b, text in enumerate(texts[chunk]):
            length = int(feed["attention_mask"][b].sum())
            ids = feed["input_ids"][b, :length]
            weights = {}
            for name, w in cap.weights.items():
                w = w[b]
                if name.endswith(".visual_to_text"):
                    w = w[..., : 1 + length]  # padding keys carry weight 0
                weights[name] = w
            n = weights["block0.text_to_visual"].shape[-1]
            k = int(probs[b].argmax())
            out.append(Explanation(
                text=text, tokens=[QUESTION_KEY] + [vocab[i] for i in ids],
                answer=meta.labels[k], probability=float(probs[b, k]),
                probabilities=dict(zip(meta.labels, map(float, probs[b]))),
                grid=_grid(n), weights=weights, pixels=pixels[b].astype(np.uint8),
                truth=truths[start + b]))
    return out


def _grid(n: int) -> tuple[int, int] | None:
    if n == 1:
        return None
    side = math.isqrt(n)
    if side * side != n:
        raise ExplainError(f"{n} visual tokens are not a square grid; explain needs a square "
                           "image's feature map")
    return side, side


# ------------------------------------------------------------------ draw


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ExplainError("drawing attention maps needs matplotlib: pip install "
                           "'dualmodal-toolkit[plot]' (the plot extra), or pass only --json"
                           ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_draw_available() -> None:
    """Before any work: fail at once where matplotlib is missing."""
    _pyplot()


def draw(expl: Explanation, path: str | Path) -> Path:
    """Write `figure(expl)` to `path` (PNG, or the format its suffix names)."""
    plt = _pyplot()
    fig = figure(expl)
    path = Path(path)
    with atomic_path(path) as tmp:  # the format from the name, not the temporary's suffix
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return path


def figure(expl: Explanation):
    """One picture: the image under each cell map, the token bars, the answer in the title."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    maps = expl.cell_maps() if expl.grid else {}
    panels = max(1, len(maps))
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig = plt.figure(figsize=(3.2 * max(cols, 3), 3.3 * rows + 2.8))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.3] * rows + [2.4])
    s = expl.pixels.shape[0]
    if not maps:
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(expl.pixels)
        ax.set_axis_off()
        ax.set_title("a single (pooled) visual token:\ntext-to-visual attention has one key,\n"
                     "its weight is always 1", fontsize=8)
    for i, (name, m) in enumerate(maps.items()):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        h, w = expl.grid
        ax.imshow(expl.pixels)
        im = ax.imshow(m.reshape(h, w), extent=(0, s, s, 0), alpha=0.55, cmap="magma",
                       interpolation="nearest", vmin=0)
        top = int(m.argmax())
        cell = s / w
        ax.add_patch(Rectangle(((top % w) * cell, (top // w) * cell), cell, cell, fill=False,
                               edgecolor="cyan", linewidth=1.5))
        how = " (weight x what the cell sends)" if name.endswith(".norm") else ""
        ax.set_title(f"{name}{how}\nmax {m.max():.2f}", fontsize=8)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bars, how = expl.token_attention()
    ax = fig.add_subplot(grid[rows, :])
    ax.bar(range(len(bars)), bars, color="tab:blue")
    ax.set_xticks(range(len(bars)), expl.tokens, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("weight")
    ax.set_title(f"visual-to-text attention over the question ({how}, mean of heads)",
                 fontsize=9)
    truth = f", truth {expl.truth}" if expl.truth else ""
    fig.suptitle(f"\u201c{expl.text}\u201d\nanswer: {expl.answer} (p = {expl.probability:.3f})"
                 f"{truth}", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ the command's work


@dataclass(frozen=True)
class ExplainConfig:
    """Questions either given (images[i] with texts[i]) or the first `limit` rows of a manifest.
    One question: `out` is the PNG; several: a folder of NNN-TYPE.png."""

    checkpoint: str
    out: str | None
    images: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    manifest: str | None = None
    split: str = "val"
    limit: int | None = None
    json: str | None = None
    which: str = "best"
    device: Device = Device.auto


def explain_to_files(cfg: ExplainConfig, log=print) -> list[Path]:
    """Draw every question to PNG (and the raw weights to JSON); returns the files written."""
    from toolkit.artifacts import write_json

    if cfg.out is None and cfg.json is None:
        raise ExplainError("nothing to write: pass --out (the picture) and/or --json (the "
                           "weights)")
    if cfg.out is not None:
        check_draw_available()
    images, texts, truths, types = _questions(cfg)
    predictor = load_predictor(cfg.checkpoint, cfg.which, cfg.device)
    try:
        results = explain(predictor, images, texts, truths)
    finally:
        predictor.close()
    written: list[Path] = []
    if cfg.out is not None:
        out = Path(cfg.out)
        single = len(results) == 1 and out.suffix.lower() == ".png"
        if not single and out.suffix:
            raise ExplainError(f"{len(results)} questions draw {len(results)} pictures: pass a "
                               f"folder as --out, not {out}")
        for i, (r, qtype) in enumerate(zip(results, types)):
            name = f"{i:03d}-{qtype}.png" if qtype else f"{i:03d}.png"
            written.append(draw(r, out if single else out / name))
            log(f"{written[-1]}: {r.answer} ({r.probability:.3f}) for \u201c{r.text}\u201d")
    if cfg.json is not None:
        write_json(cfg.json, {"checkpoint": cfg.checkpoint,
                              "questions": [r.to_dict() for r in results]})
        written.append(Path(cfg.json))
    return written


def _questions(cfg: ExplainConfig):
    if cfg.manifest is None:
        if not cfg.images or len(cfg.images) != len(cfg.texts):
            raise ExplainError(f"got {len(cfg.images)} --image and {len(cfg.texts)} --text: "
                               "pass one --text per --image, or --manifest")
        return list(cfg.images), list(cfg.texts), [None] * len(cfg.texts), [""] * len(cfg.texts)
    if cfg.images or cfg.texts:
        raise ExplainError("pass either --image/--text or --manifest, not both")
    from toolkit.data.manifest import read_manifest, resolve_manifest

    rows = read_manifest(resolve_manifest(cfg.manifest, cfg.split))[: cfg.limit]
    return ([str(r.image) for r in rows], [r.text for r in rows], [r.label for r in rows],
            [r.question_type for r in rows])


# ------------------------------------------------------------------ the pointing game


def cells_on(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(rows*cols,) bool, row by row as the tokens are: the cells whose pixel box holds any pixel
    of `mask` (S, S). Cell (r, c) is the box the grid position encoding assumes:
    rows [r*S/rows, (r+1)*S/rows), columns likewise."""
    s_y, s_x = mask.shape
    rows, cols = grid
    ys = np.round(np.arange(rows + 1) * s_y / rows).astype(int)
    xs = np.round(np.arange(cols + 1) * s_x / cols).astype(int)
    return np.array([mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].any()
                     for r in range(rows) for c in range(cols)])


def point(weights: np.ndarray, on: np.ndarray) -> tuple[bool, float]:
    """(hit, mass): does the most-weighted cell lie on the object, and its cells' total weight."""
    return bool(on[int(np.argmax(weights))]), float(weights[on].sum())


def score_row(maps: dict[str, np.ndarray], record: dict, qtype: str, colour: str,
              image_size: int, grid: tuple[int, int]) -> dict[str, dict[str, dict]]:
    """{map: {"named"|"answer": {"hit", "mass", "chance"}}} for one question about a scene record
    (the embedded dataset's `scene`: objects with colour, x, y in pixels, shape)."""
    from toolkit.data.synthetic import answer_object, object_mask, scene_from_record

    scene = scene_from_record(record, image_size)
    targets = {"named": scene.colours.index(colour)}
    if qtype in ("closest", "furthest"):
        targets["answer"] = answer_object(scene, qtype, colour)
    on = {t: cells_on(object_mask(scene, i), grid) for t, i in targets.items()}
    out = {}
    for name, m in maps.items():
        out[name] = {}
        for t, cells in on.items():
            hit, mass = point(m, cells)
            # chance: the hit rate of a cell drawn uniformly at random
            out[name][t] = {"hit": hit, "mass": mass, "chance": float(cells.mean())}
    return out


def summarize(scores: Sequence[tuple[str, dict]]) -> dict:
    """Mean hit rate, mass and chance per map and target: overall, per group and per type.
    `scores`: (question_type, score_row(...)) per question."""
    from toolkit.data.synthetic import NON_RELATIONAL, RELATIONAL

    def group_of(t: str) -> str:
        return "non-relational" if t in NON_RELATIONAL else \
            "relational" if t in RELATIONAL else "other"

    acc: dict = {}
    for qtype, row in scores:
        for name, targets in row.items():
            for target, s in targets.items():
                for key in ("overall", group_of(qtype), qtype):
                    acc.setdefault(name, {}).setdefault(target, {}).setdefault(key, []).append(s)
    # overall, the groups, then the types in the dataset's order
    order = ["overall", "non-relational", "relational", "other", *NON_RELATIONAL, *RELATIONAL]

    def rank(key: str) -> int:
        return order.index(key) if key in order else len(order)

    return {name: {target: {key: {"n": len(v), "hit_rate": float(np.mean([s["hit"] for s in v])),
                                  "mass": float(np.mean([s["mass"] for s in v])),
                                  "chance": float(np.mean([s["chance"] for s in v]))}
                            for key, v in sorted(by_key.items(), key=lambda kv: rank(kv[0]))}
                   for target, by_key in targets.items()}
            for name, targets in acc.items()}


@dataclass(frozen=True)
class PointingConfig:
    checkpoint: str
    data: str
    split: str = "val"
    limit: int | None = None
    which: str = "best"
    device: Device = Device.auto
    batch_size: int = 64


def pointing_game(cfg: PointingConfig, log=print) -> dict:
    """The pointing game on a split of the embedded dataset, with the model's accuracy on it."""
    from PIL import Image

    from toolkit.data.manifest import resolve_manifest

    manifest = resolve_manifest(cfg.data, cfg.split)
    rows = _scene_rows(manifest)[: cfg.limit]
    predictor = load_predictor(cfg.checkpoint, cfg.which, cfg.device)
    sizes: dict[Path, int] = {}
    scores, correct = [], []
    try:
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows[start:start + cfg.batch_size]
            results = explain(predictor, [r["path"] for r in batch], [r["text"] for r in batch],
                              batch_size=cfg.batch_size)
            for r, e in zip(batch, results):
                if e.grid is None:
                    raise ExplainError("this model pools the image into one visual token: there "
                                       "is no cell to point at; score a grid-token model")
                if r["path"] not in sizes:
                    with Image.open(r["path"]) as im:  # the scene's own pixels (x, y are in them)
                        sizes[r["path"]] = im.size[0]
                scores.append((r["question_type"],
                               score_row(e.cell_maps(), r["scene"], r["question_type"],
                                         r["colour"], sizes[r["path"]], e.grid)))
                correct.append((r["question_type"], e.answer == r["label"]))
            log(f"{min(start + cfg.batch_size, len(rows))}/{len(rows)} questions")
    finally:
        predictor.close()
    per_type: dict[str, list[bool]] = {}
    for t, ok in correct:
        per_type.setdefault(t, []).append(ok)
    return {"checkpoint": cfg.checkpoint, "data": str(manifest), "rows": len(rows),
            "grid": list(results[-1].grid) if rows else None,
            "accuracy": {"overall": float(np.mean([ok for _, ok in correct])),
                         "per_type": {t: float(np.mean(v)) for t, v in per_type.items()}},
            "pointing": summarize(scores)}


def _scene_rows(manifest: Path) -> list[dict]:
    if manifest.suffix.lower() != ".jsonl":
        raise ExplainError(f"{manifest}: the pointing game reads the embedded dataset's JSONL "
                           "rows (with colour and scene); generate one with `toolkit data "
                           "generate`")
    rows = []
    for i, rec in read_records(manifest):
        missing = [k for k in ("question_type", "colour", "scene") if k not in rec]
        if missing or "objects" not in rec.get("scene", {}):
            raise ExplainError(f"{manifest}:{i}: the pointing game needs the embedded dataset's "
                               f"rows, with colour and scene.objects (missing "
                               f"{missing or ['scene.objects']}); generate them with "
                               "`toolkit data generate`")
        rec["path"] = manifest.parent / rec["image"]
        rows.append(rec)
    return rows


def format_pointing(report: dict) -> str:
    """The head-mean maps and the kept share, per target and question type."""
    lines = [f"pointing game on {report['rows']} questions ({report['data']}), "
             f"{report['grid'][0]}x{report['grid'][1]} cells; accuracy "
             f"{report['accuracy']['overall']:.2%}",
             f"{'map':<26}{'target':<8}{'questions':<16}{'hit':>8}{'mass':>8}{'chance':>8}"]
    for name, targets in report["pointing"].items():
        if ".head" in name:
            continue  # per head: in the JSON
        for target, by_key in targets.items():
            for key, s in by_key.items():
                lines.append(f"{name:<26}{target:<8}{key:<16}{s['hit_rate']:>8.1%}"
                             f"{s['mass']:>8.3f}{s['chance']:>8.3f}")
    return "\n".join(lines)
