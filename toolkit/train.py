"""Training: AdamW, linear warmup then cosine decay, gradient clipping, AMP on CUDA, DDP.

One process per GPU under torchrun (or two CPU processes with gloo). Rank 0 evaluates, prints
and writes checkpoints; every rank sees a disjoint shard of each epoch's permutation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from toolkit.artifacts import atomic_path, write_json
from toolkit.checkpoint import CheckpointError, read_config, save_weights, write_run_files
from toolkit.config import CURRICULUM_WINDOW, BatchBy, ConfigError, TrainConfig, to_dict
from toolkit.data.manifest import dataset_labels, load_split, read_manifest, resolve_manifest
from toolkit.data.preprocess import Tokenizer, train_vocab
from toolkit.evaluate import evaluate, to_torch
from toolkit.metrics import majority_baseline
from toolkit.model import DualModalNet
from toolkit.runtime.devices import resolve_device


def lr_factor(step: int, warmup: int, total: int, start: int = 0, decay: bool = True) -> float:
    """The rate at `step` as a fraction of the peak: linear warmup over `warmup` steps from
    `start`, then (with `decay`) cosine decay to zero at `total`.

    With a curriculum the rate warms up at the start of each stage and stays at its peak while
    the stage runs (its length is known only when it ends), then warms up again from the step the
    last stage ended (`start`) and decays over the epochs. Adam's moment estimates describe the
    ending stage's small gradients; the new question types' large ones, divided by them, would
    take steps big enough to undo what the stage learned (measured: bench/training.md).
    """
    s = step - start
    if s < warmup:
        return (s + 1) / warmup
    if not decay:
        return 1.0
    progress = min(1.0, (s - warmup) / max(1, total - start - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def prepare_data(cfg: TrainConfig, run: Path | None = None, tokenizer: Tokenizer | None = None):
    """Labels, tokenizer, model config and both splits. A new run trains its vocabulary on the
    training text (or takes the text model's, or `tokenizer`: a teacher's); a `run` (resumed, or
    the parent a pruned run starts from) keeps its own config and vocab."""
    train_path = resolve_manifest(cfg.data, "train")
    rows = read_manifest(train_path)
    labels = dataset_labels(cfg.data, rows)
    if run is not None:
        mcfg = read_config(run)
        tokenizer = Tokenizer.from_file(run / "vocab.txt", mcfg.text.max_length)
    else:
        mcfg = cfg.model
        if tokenizer is None and mcfg.text.model_dir:
            tokenizer = Tokenizer.from_file(Path(mcfg.text.model_dir) / "vocab.txt",
                                            mcfg.text.max_length)
        elif tokenizer is None:
            tokenizer = Tokenizer(train_vocab((r.text for r in rows), cfg.vocab_size),
                                  mcfg.text.max_length)
        mcfg = dataclasses.replace(
            mcfg, num_classes=len(labels),
            text=dataclasses.replace(mcfg.text, vocab_size=len(tokenizer.vocab)))
    train = load_split(train_path, labels, tokenizer, mcfg.image_size, cfg.skip_bad_rows, rows)
    val = load_split(resolve_manifest(cfg.data, "val"), labels, tokenizer, mcfg.image_size,
                     cfg.skip_bad_rows)
    return mcfg, labels, tokenizer, train, val


class BatchPlan:
    """Which training rows make up step `n`: a pure function of the step and of the steps at which
    curriculum stages ended, so `--resume` and DDP ranks agree without any other state.

    With `BatchBy.question` each row is drawn on its own; with `BatchBy.image` a batch is whole
    images with all their questions, so the vision tower runs once per image. Each curriculum
    stage draws only questions of its types, for `curriculum_steps` at most (`end_stage` ends it
    earlier); the epochs follow on all rows.
    """

    def __init__(self, split, cfg: TrainConfig, ddp: Dist):
        self.seed, self.ddp, self.max_steps = cfg.seed, ddp, cfg.max_steps
        groups = split.image_groups()
        if cfg.batch_by is BatchBy.question:  # every row its own group
            groups = [row[None] for g in groups for row in g]
        self.full = _Pool(groups, len(split), cfg.batch_size, ddp.world)
        self.stage_steps = cfg.curriculum_steps  # TrainConfig: 0 exactly when no stages
        self.ends: list[int] = []  # the step each stage ended, for the stages that have ended
        present = set(split.question_types)
        missing = sorted({t for stage in cfg.curriculum for t in stage} - present)
        if missing:
            raise ConfigError(
                f"--curriculum-types {', '.join(missing)}: no training row has that question "
                f"type (the manifest has: {', '.join(sorted(present)) or 'none'})")
        self.stages = []
        for stage in cfg.curriculum:
            keep = np.array([t in stage for t in split.question_types])
            kept = [g[keep[g]] for g in groups]
            self.stages.append(_Pool([g for g in kept if len(g)], int(keep.sum()),
                                     cfg.batch_size, ddp.world))
        self.steps_per_epoch = self.full.steps_per_epoch
        self.epochs = cfg.epochs

    def bounds(self) -> list[int]:
        """The first step of each stage, then of the epochs: a stage not yet ended is taken to
        run its full `curriculum_steps`."""
        out = [0]
        for k in range(len(self.stages)):
            out.append(self.ends[k] if k < len(self.ends) else out[-1] + self.stage_steps)
        return out

    def stage(self, step: int) -> int | None:
        """The curriculum stage that trains `step`, or None once the epochs run."""
        bounds = self.bounds()
        return next((k for k in range(len(self.stages)) if step < bounds[k + 1]), None)

    @property
    def curriculum_end(self) -> int:
        """The first step on all rows (0 without a curriculum)."""
        return self.bounds()[-1]

    def end_stage(self, step: int) -> None:
        """The stage of step `step - 1` is learned: the next stage (or the epochs) starts at
        `step`. Stages before it that ran their full length keep that length."""
        k = self.stage(step - 1)
        if k is None:
            raise ValueError(f"step {step - 1} is not in the curriculum")
        self.ends = self.bounds()[1:k + 1] + [step]

    @property
    def total_steps(self) -> int:
        total = self.curriculum_end + self.steps_per_epoch * self.epochs
        return total if self.max_steps is None else min(total, self.max_steps)

    def rate(self, step: int, warmup: int) -> float:
        """The learning-rate factor of `step` (lr_factor)."""
        k = self.stage(step)
        if k is not None:
            return lr_factor(step, warmup, self.total_steps, start=self.bounds()[k], decay=False)
        return lr_factor(step, warmup, self.total_steps, start=self.curriculum_end)

    def rows(self, step: int) -> np.ndarray:
        k = self.stage(step)
        if k is not None:
            # stage 0 keeps the seed offset of the single-stage curriculum it generalises
            return self.stages[k].rows(step - self.bounds()[k], self.seed + 1_000_003 * (k + 1),
                                       self.ddp.rank)
        return self.full.rows(step - self.curriculum_end, self.seed, self.ddp.rank)


class _Pool:
    """Groups of rows (an image's questions, or single rows) drawn in a fresh permutation each
    epoch; about `batch_size` rows a step."""

    def __init__(self, groups: list[np.ndarray], n_rows: int, batch_size: int, world: int):
        self.groups, self.world = groups, world
        self.groups_per_batch = max(1, round(batch_size * len(groups) / n_rows))
        self.steps_per_epoch = max(1, len(groups) // world // self.groups_per_batch)

    def rows(self, step: int, seed: int, rank: int) -> np.ndarray:
        epoch, b = divmod(step, self.steps_per_epoch)
        shard = np.random.default_rng(seed + epoch).permutation(len(self.groups))[rank::self.world]
        chosen = shard[b * self.groups_per_batch:(b + 1) * self.groups_per_batch]
        return np.concatenate([self.groups[i] for i in chosen])


class Objective(nn.Module):
    """What the shared training loop minimises, and its hooks; `toolkit train` uses CrossEntropy,
    `toolkit distill` and `toolkit prune` their own (distill.py, prune.py). Parameters of an
    objective (a feature projection) train with the model and are kept in resume.pt, not in the
    run's weights; so are its buffers (pruning masks)."""

    # A run whose config and vocabulary a fresh start keeps (a pruned run's parent), else None.
    source_run: Path | None = None
    # The vocabulary of a fresh start (a teacher's), else trained on the data.
    tokenizer: Tokenizer | None = None

    def setup(self, model: DualModalNet, labels: list[str], device: torch.device,
              resumed: bool) -> None:
        """Called once the model is built and (on resume) loaded, before the first step."""

    def forward(self, model: DualModalNet, inputs: dict, rows: np.ndarray,
                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to minimise, the label cross-entropy): a curriculum stage ends on the
        second, so that it means the same whatever else the loss holds."""
        raise NotImplementedError

    def after_step(self, model: DualModalNet) -> None:
        """Called after each optimizer step (pruning re-applies its masks here)."""

    def record(self) -> dict:
        """Settings written into the run's config.json next to the training config."""
        return {}


class CrossEntropy(Objective):
    """Cross-entropy on the labels: `toolkit train`."""

    def forward(self, model, inputs, rows, target):
        loss = nn.functional.cross_entropy(model(**inputs).float(), target)
        return loss, loss


class Trainee(nn.Module):
    """The model and its objective as one module, so that DDP all-reduces the gradients of both
    (an objective's projection trains too) and one call runs the forward pass DDP hooks into."""

    def __init__(self, model: DualModalNet, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, inputs: dict, rows: np.ndarray, target: torch.Tensor):
        return self.objective(self.model, inputs, rows, target)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, norms or embeddings). The fused
    kernel does the whole update in one pass; on the CPU it cost 2.6x less than foreach
    (bench/training.md)."""
    def decays(name: str, p: nn.Parameter) -> bool:
        return p.ndim >= 2 and "embeddings" not in name

    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [{"params": [p for n, p in named if decays(n, p)], "weight_decay": cfg.weight_decay},
         {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}],
        lr=cfg.lr, fused=True)


def held_parameters(model: DualModalNet, stage: int | None,
                    freeze_binding: bool) -> list[nn.Parameter]:
    """What gets no gradient at a step of `stage`: the fusion's summary through every curriculum
    stage, its relation read through the first (fusion.py says why), and with `freeze_binding`
    what finds the named object through the stages after the first. With no gradient AdamW leaves
    them, and their decay, alone."""
    if stage is None:
        return []
    if stage == 0:
        return model.fusion.held_during_curriculum() + model.fusion.held_in_first_stage()
    binding = model.binding_parameters() if freeze_binding else []
    return model.fusion.held_during_curriculum() + binding


class StageMonitor:
    """Ends a curriculum stage once the mean training loss of its last CURRICULUM_WINDOW steps is
    under `curriculum_loss` (a mean over DDP ranks, so that every rank ends it together)."""

    def __init__(self, plan: BatchPlan, cfg: TrainConfig, ddp: Dist):
        self.plan, self.threshold, self.ddp = plan, cfg.curriculum_loss, ddp
        self.losses: deque[float] = deque(maxlen=CURRICULUM_WINDOW)  # of the stage now training

    def observe(self, step: int, stage: int | None, loss: torch.Tensor,
                value: float) -> float | None:
        """`step` has just been trained with `loss` (`value` on this rank); returns the window's
        mean loss when that ended the stage, else None."""
        if stage is None or not self.threshold:
            return None
        if step - 1 == self.plan.bounds()[stage]:  # a new stage: a new window
            self.losses.clear()
        self.losses.append(value if self.ddp.world == 1
                           else _mean_over_ranks(loss.detach(), self.ddp))
        mean = sum(self.losses) / CURRICULUM_WINDOW
        if len(self.losses) == CURRICULUM_WINDOW and mean < self.threshold:
            self.plan.end_stage(step)
            return mean
        return None


@dataclass
class EvalCadence:
    """When the held-out evaluation (and a checkpoint) runs: every `every` steps, at each stage's
    end, at the last step and when the clock runs out."""

    every: int
    plan: BatchPlan

    def due(self, step: int, out_of_time: bool) -> bool:
        return (step % self.every == 0 or step in self.plan.bounds()[1:]
                or step >= self.plan.total_steps or out_of_time)


class RunWriter:
    """The run directory's training state: last/best weights, metrics.json and resume.pt, each
    written whole under a temporary name (rank 0 only).

    resume.pt holds everything the next step depends on, so that a run killed after a checkpoint
    and resumed ends with the weights of an uninterrupted run (tests/reliability/test_resume.py):
    the batches are a function of the step (BatchPlan), dropout draws from torch's generator,
    whose state is saved too, and so are the objective's own parameters and buffers. Under DDP
    every rank resumes from rank 0's generator state."""

    RESUME = "resume.pt"
    FILES = ("last.safetensors", "best.safetensors", "metrics.json", RESUME)

    def __init__(self, out: Path, model: nn.Module, opt, sched, plan: BatchPlan, main: bool,
                 monitor: StageMonitor | None = None, objective: nn.Module | None = None):
        self.out, self.model, self.opt, self.sched, self.plan, self.main = (
            out, model, opt, sched, plan, main)
        self.monitor = monitor
        self.objective = objective  # its parameters and buffers go to resume.pt only
        self.step, self.best, self.history = 0, -1.0, []

    @property
    def resume_file(self) -> Path:
        return self.out / self.RESUME

    def load(self, device: torch.device) -> None:
        ck = torch.load(self.resume_file, map_location=device, weights_only=True)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step, self.best, self.history = ck["step"], ck["best"], ck["history"]
        if self.objective is not None and ck.get("objective"):
            self.objective.load_state_dict(ck["objective"])
        ended = ck.get("curriculum_ended")  # written before curriculum stages: one stage
        self.plan.ends = list(ck.get("curriculum_ends", [] if ended is None else [ended]))
        if self.monitor is not None:
            self.monitor.losses.extend(ck.get("curriculum_window", []))
        rng = ck.get("rng")  # absent in a resume.pt written before it was saved
        if rng is not None:
            torch.set_rng_state(rng["cpu"].cpu())  # map_location may have moved it off the host
            if device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
        if self.main:
            self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """A writer killed mid-write leaves its temporary sibling (artifacts.atomic_path names it
        .NAME.tmp-PID); the final file is the previous whole one, so the leftover is only litter."""
        for name in self.FILES:
            for tmp in self.out.glob(f".{name}.tmp-*"):
                tmp.unlink(missing_ok=True)

    def save(self, report: dict | None) -> None:
        if not self.main:
            return
        save_weights(self.model, self.out / "last.safetensors")
        if report is not None:
            self.history.append({"step": self.step, **{k: report[k] for k in
                                                       ("accuracy", "per_type", "groups")}})
            if report["accuracy"] > self.best:
                self.best = report["accuracy"]
                save_weights(self.model, self.out / "best.safetensors")
            write_json(self.out / "metrics.json", {"best_accuracy": self.best,
                                                   "history": self.history})
        rng = {"cpu": torch.get_rng_state(), "cuda": None}
        device = next(self.model.parameters()).device
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        window = list(self.monitor.losses) if self.monitor is not None else []
        with atomic_path(self.resume_file) as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                        "scheduler": self.sched.state_dict(), "curriculum_ends": self.plan.ends,
                        "curriculum_window": window, "rng": rng,
                        "step": self.step, "best": self.best, "history": self.history,
                        "objective": ({} if self.objective is None
                                      else self.objective.state_dict())}, tmp)


def train(cfg: TrainConfig, log=print, objective: Objective | None = None) -> dict:
    """Train, evaluating on the held-out split; returns the final metrics. See TrainConfig.

    The one training loop: `objective` (CrossEntropy by default) supplies the loss and its hooks,
    so distillation and masked fine-tuning get the same progress bar, evaluation, checkpoints,
    --resume and DDP as `toolkit train`."""
    objective = CrossEntropy() if objective is None else objective
    device = resolve_device(cfg.device)
    ddp = init_distributed(device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if cfg.resume and not (out / RunWriter.RESUME).is_file():
        raise CheckpointError(f"--resume: {out / RunWriter.RESUME} not found; start without "
                              "--resume")
    mcfg, labels, tokenizer, train_split, val_split = prepare_data(
        cfg, run=out if cfg.resume else objective.source_run, tokenizer=objective.tokenizer)
    if ddp.main:
        priors = majority_baseline(val_split.labels, val_split.question_types, len(labels))
        log("answer priors (majority class per question type, held-out): "
            + ", ".join(f"{k} {v:.1%}" for k, v in priors.items()))

    model = DualModalNet(mcfg).to(device)
    trainee = Trainee(model, objective.to(device))
    opt = build_optimizer(trainee, cfg)
    plan = BatchPlan(train_split, cfg, ddp)
    warmup = min(cfg.warmup_steps, plan.total_steps // 4 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: plan.rate(step, warmup))
    monitor = StageMonitor(plan, cfg, ddp)
    run = RunWriter(out, model, opt, sched, plan, ddp.main, monitor, objective=objective)
    if cfg.resume:
        run.load(device)
        if ddp.main:
            log(f"resumed {out} at step {run.step}")
    objective.setup(model, labels, device, resumed=cfg.resume)
    if not cfg.resume and ddp.main:
        write_run_files(out, mcfg, {**to_dict(dataclasses.replace(cfg, model=mcfg)),
                                    **objective.record()}, tokenizer, labels)

    net = nn.parallel.DistributedDataParallel(trainee) if ddp.world > 1 else trainee
    cadence = EvalCadence(cfg.eval_every or plan.steps_per_epoch, plan)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else nullcontext())

    progress = _progress(plan.total_steps, disable=not ddp.main)
    started = time.perf_counter()
    seen, window_start, window_loss, window_steps = 0, time.perf_counter(), 0.0, 0
    report = None
    with progress:
        task = progress.add_task("train", total=plan.total_steps, completed=run.step,
                                 loss=float("nan"), rate=0.0)
        while run.step < plan.total_steps:
            net.train()
            stage = plan.stage(run.step)
            idx = plan.rows(run.step)
            inputs = to_torch(train_split.batch(idx, tokenizer, mcfg.mean, mcfg.std,
                                                share_images=True), device)
            target = torch.from_numpy(train_split.labels[idx]).to(device)
            with amp:
                loss, label_loss = net(inputs, idx, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p in held_parameters(model, stage, cfg.freeze_binding):
                p.grad = None
            nn.utils.clip_grad_norm_(trainee.parameters(), cfg.grad_clip)
            opt.step()
            objective.after_step(model)
            run.step += 1
            value, label_value = (torch.stack([loss.detach(), label_loss.detach()]).tolist()
                                  if label_loss is not loss else [loss.item()] * 2)  # one sync
            ended = monitor.observe(run.step, stage, label_loss, label_value)
            if ended is not None:
                progress.update(task, total=plan.total_steps)
                if ddp.main:
                    log(f"curriculum stage {stage + 1} of {len(plan.stages)} "
                        f"({', '.join(cfg.curriculum[stage])}) learned at step {run.step}: mean "
                        f"training loss {ended:.3f} over its last {CURRICULUM_WINDOW} steps < "
                        f"--curriculum-loss {cfg.curriculum_loss}")
            sched.step()  # the rate of the next step, which may be the first on all rows
            seen += len(idx) * ddp.world
            now = time.perf_counter()
            window_loss += value
            window_steps += 1
            progress.update(task, advance=1, loss=value,
                            rate=seen / max(now - window_start, 1e-9))
            out_of_time = (cfg.max_train_seconds is not None
                           and now - started > cfg.max_train_seconds)
            if cadence.due(run.step, out_of_time):
                report = None
                if ddp.main:
                    report = evaluate(model, val_split, tokenizer, mcfg, labels, device)
                    log(_eval_line(run.step, window_loss / max(1, window_steps), report))
                run.save(report)
                seen, window_start, window_loss, window_steps = 0, time.perf_counter(), 0.0, 0
            if out_of_time:
                if ddp.main:
                    log(f"stopped at step {run.step}/{plan.total_steps}: "
                        "--max-train-seconds reached")
                break
    if ddp.world > 1:
        # BatchNorm running statistics are updated locally by each rank's last forward pass; make
        # every rank end with rank 0's (the ones it saved), as DDP does before each forward.
        for buf in model.buffers():
            dist.broadcast(buf, 0)
    if ddp.main and report is not None:
        report["train_seconds"] = time.perf_counter() - started
        report["steps"] = run.step
    return {"report": report, "model": model, "labels": labels, "config": mcfg,
            "tokenizer": tokenizer}


def _eval_line(step: int, train_loss: float, report: dict) -> str:
    groups = " ".join(f"{k} {v:.1%}" for k, v in report["groups"].items())
    return (f"step {step}: train loss {train_loss:.3f}, held-out accuracy "
            f"{report['accuracy']:.1%} {groups} | "
            + " ".join(f"{k} {v:.0%}" for k, v in report["per_type"].items()))


def _mean_over_ranks(x: torch.Tensor, ddp: Dist) -> float:
    """The mean of a scalar over DDP ranks, so that every rank ends the curriculum together."""
    x = x.clone()
    dist.all_reduce(x)
    return x.item() / ddp.world


def _progress(total: int, disable: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"),
                    TextColumn("{task.fields[rate]:.0f} samples/s"), TimeElapsedColumn(),
                    disable=disable)
