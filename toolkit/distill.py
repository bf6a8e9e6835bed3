"""Knowledge distillation: train a small student on a trained teacher's softened answers.

The loss (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
https://arxiv.org/abs/1503.02531) is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
    [+ feature_weight * MSE(proj(student fused), teacher fused)]

T^2 keeps the soft term's gradients at the scale of the hard one's as T changes (the paper,
section 2). The optional third term matches the fusion outputs through a learned linear projection
(FitNets' hint loss, https://arxiv.org/abs/1412.6550), since the student's fusion is narrower.

The student trains through train.py's loop (progress, held-out evaluation, best/last checkpoints,
--resume, DDP) with `Distillation` as its objective, and is an ordinary run directory. It reads the
teacher's inputs: image size, normalization, sequence length and vocabulary come from the teacher,
so one batch feeds both.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from toolkit.artifacts import sha256
from toolkit.checkpoint import CheckpointError, load_checkpoint
from toolkit.config import ConfigError, TrainConfig
from toolkit.data.manifest import dataset_labels, read_manifest, resolve_manifest
from toolkit.errors import ToolkitError
from toolkit.train import Objective, train

# A teacher whose vocabulary turns more than this share of the training tokens into [UNK] was
# trained on other text: its answers to this data's questions mean little.
MAX_UNKNOWN_SHARE = 0.01


class DistillError(ToolkitError):
    """The teacher does not fit the data or the student; the message names the fix."""


@dataclass(frozen=True)
class DistillConfig:
    teacher: str  # runs/<name> of the trained teacher
    train: TrainConfig  # data, out, the student's ModelConfig and every training option
    alpha: float = 0.9  # weight of the soft (teacher) term; 1 - alpha goes to the labels
    temperature: float = 4.0
    feature_weight: float = 0.0  # 0: no feature matching (and no projection)
    teacher_which: str = "best"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha {self.alpha} is outside [0, 1]: it weighs the teacher's "
                              "term against the labels' (e.g. --alpha 0.9)")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature {self.temperature} must be > 0 (e.g. "
                              "--temperature 4; 1 is the plain softmax)")
        if self.feature_weight < 0:
            raise ConfigError(f"--feature-weight {self.feature_weight} must be >= 0 (0: no "
                              "feature matching)")
        if self.train.model.text.model_dir:
            raise ConfigError("a student with a text model directory has its own vocabulary; "
                              "the student reads the teacher's tokens: drop its model_dir")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                 alpha: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha * T^2 * KL(p_teacher || p_student) at temperature T + (1 - alpha) * CE, the CE);
    logits (B, C), the KL averaged over the batch."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                  reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student, target)
    return alpha * t * t * kl + (1 - alpha) * ce, ce


class Distillation(Objective):
    """The distillation loss for train.py's loop. The teacher runs in eval mode without gradients,
    once per training row: its logits and fused features are cached by row index (its eval-mode
    outputs for a row never change), so later epochs cost the student's steps only."""

    def __init__(self, teacher, cfg: DistillConfig, student_dim: int):
        super().__init__()
        # Kept out of the module tree (object.__setattr__): the teacher's weights are not the
        # student's, get no optimizer state, and are not saved with the run.
        object.__setattr__(self, "teacher", teacher.model.eval().requires_grad_(False))
        self.tokenizer = teacher.tokenizer
        self.alpha, self.temperature, self.feature_weight = (
            cfg.alpha, cfg.temperature, cfg.feature_weight)
        self.proj = (nn.Linear(student_dim, teacher.config.dim) if cfg.feature_weight > 0
                     else None)
        self._record = {"distill": {
            "teacher": str(cfg.teacher), "teacher_which": cfg.teacher_which,
            "teacher_weights_sha256": sha256(teacher.weights), "alpha": cfg.alpha,
            "temperature": cfg.temperature, "feature_weight": cfg.feature_weight}}
        self._logits: torch.Tensor | None = None  # (rows, C) cached teacher outputs
        self._fused: torch.Tensor | None = None  # (rows, D_teacher)
        self._known: torch.Tensor | None = None  # (rows,) bool

    def setup(self, model, labels, device, resumed):
        self.teacher.to(device)

    def record(self) -> dict:
        return self._record

    @torch.no_grad()
    def teacher_outputs(self, inputs: dict, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits (B, C) and fused features (B, D) for batch rows `rows`, run only
        on the rows not seen before."""
        device = inputs["input_ids"].device
        need = int(rows.max()) + 1
        if self._known is None or len(self._known) < need:
            grow = max(need, 2 * (0 if self._known is None else len(self._known)))
            c, d = self.teacher.cfg.num_classes, self.teacher.cfg.dim
            old = 0 if self._known is None else len(self._known)
            logits = torch.zeros(grow, c, device=device)
            fused = torch.zeros(grow, d, device=device)
            known = torch.zeros(grow, dtype=torch.bool, device=device)
            if old:
                logits[:old], fused[:old], known[:old] = self._logits, self._fused, self._known
            self._logits, self._fused, self._known = logits, fused, known
        at = torch.from_numpy(rows).to(device)
        new = ~self._known[at]
        if bool(new.any()):
            m = new
            fused = self.teacher.fused(inputs["image"], inputs["input_ids"][m],
                                       inputs["attention_mask"][m], inputs["image_index"][m])
            self._fused[at[m]] = fused.float()
            self._logits[at[m]] = self.teacher.head(fused).float()
            self._known[at[m]] = True
        return self._logits[at], self._fused[at]

    def forward(self, model, inputs, rows, target):
        fused = model.fused(**inputs)  # (B, D_student)
        logits = model.head(fused).float()  # (B, C)
        t_logits, t_fused = self.teacher_outputs(inputs, rows)
        loss, ce = distill_loss(logits, t_logits, target, self.alpha, self.temperature)
        if self.proj is not None:
            loss = loss + self.feature_weight * F.mse_loss(self.proj(fused.float()), t_fused)
        return loss, ce


def load_teacher(cfg: DistillConfig):
    """The teacher checkpoint, checked against the data: its labels must be the data's, and its
    vocabulary must cover the data's text."""
    try:
        teacher = load_checkpoint(cfg.teacher, cfg.teacher_which)
    except CheckpointError as e:
        raise DistillError(f"--teacher {cfg.teacher} is not a usable run ({e}); pass a run "
                           "directory written by `toolkit train`") from e
    rows = read_manifest(resolve_manifest(cfg.train.data, "train"))
    labels = dataset_labels(cfg.train.data, rows)
    if list(teacher.labels) != list(labels):
        raise DistillError(
            f"the teacher {cfg.teacher} answers with labels {teacher.labels[:6]}... "
            f"({len(teacher.labels)}) but {cfg.train.data} has {labels[:6]}... ({len(labels)}): "
            "distil on the data the teacher was trained on, or train a teacher on this data")
    unk = teacher.tokenizer.vocab.index("[UNK]")
    ids = [i for row in teacher.tokenizer.encode_ids(list({r.text for r in rows})) for i in row]
    share = sum(i == unk for i in ids) / max(1, len(ids))
    if share > MAX_UNKNOWN_SHARE:
        raise DistillError(
            f"the teacher's vocabulary ({cfg.teacher}/vocab.txt) does not fit {cfg.train.data}: "
            f"{share:.0%} of its training tokens are [UNK] (at most {MAX_UNKNOWN_SHARE:.0%} "
            "allowed); distil on the text the teacher was trained on")
    return teacher


def student_config(cfg: DistillConfig, teacher) -> TrainConfig:
    """The training config with the student's inputs set to the teacher's."""
    t, s = teacher.config, cfg.train.model
    model = dataclasses.replace(
        s, image_size=t.image_size, mean=t.mean, std=t.std,
        text=dataclasses.replace(s.text, max_length=t.text.max_length))
    return dataclasses.replace(cfg.train, model=model)


def _check_resumed_teacher(cfg: DistillConfig, teacher) -> None:
    """On --resume the teacher must be the one the run started with."""
    meta = json.loads((Path(cfg.train.out) / "config.json").read_text())
    recorded = meta.get("train", {}).get("distill", {}).get("teacher_weights_sha256")
    if recorded is None:
        raise DistillError(f"--resume: {cfg.train.out} was not written by `toolkit distill`; "
                           "resume it with `toolkit train --resume`")
    if recorded != sha256(teacher.weights):
        raise DistillError(f"--resume: the teacher's weights ({teacher.weights}) are not the ones "
                           f"{cfg.train.out} was distilled from (sha256 {recorded[:12]}); pass "
                           "that teacher, or start a new run without --resume")


def distill(cfg: DistillConfig, log=print) -> dict:
    """Distil the teacher into the student; returns train()'s result (the student's report)."""
    teacher = load_teacher(cfg)
    if cfg.train.resume and (Path(cfg.train.out) / "config.json").is_file():
        _check_resumed_teacher(cfg, teacher)
    tcfg = student_config(cfg, teacher)
    objective = Distillation(teacher, cfg, tcfg.model.dim)
    log(f"teacher {cfg.teacher} ({cfg.teacher_which}, sha256 "
        f"{objective.record()['distill']['teacher_weights_sha256'][:12]}): alpha {cfg.alpha}, "
        f"temperature {cfg.temperature}, feature weight {cfg.feature_weight}")
    return train(tcfg, log=log, objective=objective)


