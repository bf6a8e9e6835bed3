import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.artifacts import sha256
from toolkit.checkpoint import load_checkpoint
from toolkit.config import ConfigError, preset
from toolkit.distill import DistillConfig, DistillError, Distillation, distill, distill_loss
from toolkit.train import Trainee


@pytest.fixture(scope="module")
def kd_config(tiny_train_config, tiny_run, tmp_path_factory):
    """A tiny student distilled from the tiny run, a few steps."""
    student = dataclasses.replace(preset("tiny"), dim=16, fusion_cell_mlp=16, fusion_relation=16,
                                  head_hidden=16)
    train = dataclasses.replace(tiny_train_config, model=student, max_steps=4,
                                out=str(tmp_path_factory.mktemp("kd") / "student"))
    return DistillConfig(teacher=str(tiny_run), train=train, alpha=0.7, temperature=2.0,
                         feature_weight=0.5)


@pytest.fixture(scope="module")
def kd_run(kd_config):
    result = distill(kd_config, log=lambda *_: None)
    return kd_config, result


def test_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    y = torch.tensor([0, 2])
    alpha, temp = 0.25, 2.0

    def softmax(v):
        e = [math.exp(x / temp) for x in v]
        return [x / sum(e) for x in e]

    kl = 0.0
    for sr, tr in zip(s.tolist(), t.tolist()):
        p, q = softmax(tr), softmax(sr)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    kl /= 2
    ce = 0.0
    for sr, label in zip(s.tolist(), y.tolist()):
        ce -= sr[label] - math.log(sum(math.exp(x) for x in sr))
    ce /= 2
    loss, got_ce = distill_loss(s, t, y, alpha, temp)
    assert got_ce.item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(alpha * temp ** 2 * kl + (1 - alpha) * ce, rel=1e-6)
    # the student equal to the teacher: only the label term is left
    same, _ = distill_loss(t, t, y, alpha, temp)
    assert same.item() == pytest.approx((1 - alpha) * distill_loss(t, t, y, 0.0, temp)[1].item())


def test_teacher_gets_no_gradient_and_feature_term_trains_the_projection(kd_config, tiny_run):
    from toolkit.data.manifest import load_split, resolve_manifest
    from toolkit.distill import student_config
    from toolkit.evaluate import to_torch
    from toolkit.model import DualModalNet

    teacher = load_checkpoint(tiny_run)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    tcfg = student_config(kd_config, teacher)
    student = DualModalNet(dataclasses.replace(tcfg.model, num_classes=len(teacher.labels),
                                               text=dataclasses.replace(
                                                   tcfg.model.text,
                                                   vocab_size=len(teacher.tokenizer.vocab))))
    objective = Distillation(teacher, kd_config, student.cfg.dim)
    trainee = Trainee(student, objective)
    assert not any(n.startswith("objective.teacher") for n, _ in trainee.named_parameters())
    split = load_split(resolve_manifest(kd_config.train.data, "train"), teacher.labels,
                       teacher.tokenizer, 32)
    rows = np.arange(8)
    inputs = to_torch(split.batch(rows, teacher.tokenizer, teacher.config.mean,
                                  teacher.config.std, share_images=True), "cpu")
    loss, ce = trainee(inputs, rows, torch.from_numpy(split.labels[rows]))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    assert objective.proj.weight.grad is not None and objective.proj.weight.grad.abs().sum() > 0
    assert loss.item() != pytest.approx(ce.item())
    # cached: the same rows again run no teacher pass and give the same targets
    cached = objective._logits[:8].clone()
    objective.teacher.fused = lambda *a, **k: pytest.fail("the teacher ran again")
    objective.teacher_outputs(inputs, rows)
    assert torch.equal(objective._logits[:8], cached)
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_student_is_an_ordinary_run_that_records_its_teacher(kd_run, tiny_run):
    cfg, result = kd_run
    meta = json.loads((Path(cfg.train.out) / "config.json").read_text())
    rec = meta["train"]["distill"]
    assert rec["teacher_weights_sha256"] == sha256(tiny_run / "best.safetensors")
    assert (rec["alpha"], rec["temperature"], rec["feature_weight"]) == (0.7, 2.0, 0.5)
    assert rec["teacher"] == str(tiny_run)
    student = load_checkpoint(cfg.train.out)  # what export, parity and bench read
    assert student.config.dim == 16 and student.config.image_size == 32
    assert student.tokenizer.vocab == load_checkpoint(tiny_run).tokenizer.vocab
    assert result["report"]["steps"] == 4


def test_resume_continues_the_distillation(kd_run, tmp_path):
    cfg, _ = kd_run
    run = tmp_path / "student"
    shutil.copytree(cfg.train.out, run)
    resumed = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, out=str(run), max_steps=7, resume=True))
    result = distill(resumed, log=lambda *_: None)
    assert result["report"]["steps"] == 7
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [4, 7]
    ck = torch.load(run / "resume.pt", weights_only=True)
    assert "proj.weight" in ck["objective"]  # the projection resumes too


def test_resume_with_another_teacher_is_refused(kd_run, tmp_path):
    cfg, _ = kd_run
    teacher = tmp_path / "teacher"
    shutil.copytree(cfg.teacher, teacher)
    torch.manual_seed(5)
    from toolkit.checkpoint import save_weights

    model = load_checkpoint(teacher).model
    with torch.no_grad():
        model.head[0].weight.add_(1.0)
    save_weights(model, teacher / "best.safetensors")
    run = tmp_path / "student"
    shutil.copytree(cfg.train.out, run)
    bad = dataclasses.replace(cfg, teacher=str(teacher), train=dataclasses.replace(
        cfg.train, out=str(run), max_steps=6, resume=True))
    with pytest.raises(DistillError, match="not the ones .* was distilled from"):
        distill(bad, log=lambda *_: None)


@pytest.mark.parametrize("field,value,match", [
    ("alpha", 1.5, "outside \\[0, 1\\]"), ("alpha", -0.1, "outside \\[0, 1\\]"),
    ("temperature", 0.0, "must be > 0"), ("temperature", -1.0, "must be > 0"),
    ("feature_weight", -1.0, "must be >= 0")])
def test_bad_settings_are_refused(kd_config, field, value, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(kd_config, **{field: value})


def test_a_teacher_that_is_not_a_run_is_refused(kd_config, tmp_path):
    out = tmp_path / "out"
    cfg = dataclasses.replace(kd_config, teacher=str(tmp_path),
                              train=dataclasses.replace(kd_config.train, out=str(out)))
    with pytest.raises(DistillError, match="is not a usable run .* not a toolkit run directory"):
        distill(cfg, log=lambda *_: None)
    assert not out.exists()


def test_a_teacher_of_other_labels_or_vocabulary_is_refused(kd_config, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(kd_config.teacher, teacher)
    out = tmp_path / "out"
    cfg = dataclasses.replace(kd_config, teacher=str(teacher),
                              train=dataclasses.replace(kd_config.train, out=str(out)))
    labels = json.loads((teacher / "labels.json").read_text())
    (teacher / "labels.json").write_text(json.dumps(labels[::-1]))
    with pytest.raises(DistillError, match="answers with labels .* distil on the data"):
        distill(cfg, log=lambda *_: None)
    (teacher / "labels.json").write_text(json.dumps(labels))
    # The teacher's own vocabulary (a vocab.txt cut short is refused before this, as a run whose
    # files disagree) against questions in words it never saw.
    data = tmp_path / "data"
    shutil.copytree(kd_config.train.data, data)
    manifest = data / "train.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    manifest.write_text("".join(json.dumps({**r, "text": f"xq{i} zv{i} wk{i}?"}) + "\n"
                                for i, r in enumerate(rows)))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data=str(data)))
    with pytest.raises(DistillError, match="does not fit .* are \\[UNK\\]"):
        distill(cfg, log=lambda *_: None)
    assert not out.exists()


# ------------------------------------------------------------------ CLI


def _cli(*args):
    from typer.testing import CliRunner

    from toolkit.cli import app

    return CliRunner().invoke(app, ["distill", *map(str, args)])


def test_cli_distills_a_student(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "s"
    r = _cli("--teacher", tiny_run, "--data", tiny_data, "--out", out, "--student-preset", "tiny",
             "--alpha", "0.5", "--temperature", "3", "--max-steps", "2", "--batch-size", "8",
             "--warmup-steps", "1", "--seed", "0", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"best checkpoint: {out / 'best.safetensors'}" in r.output
    rec = json.loads((out / "config.json").read_text())["train"]
    assert rec["distill"]["alpha"] == 0.5 and rec["distill"]["temperature"] == 3.0
    assert rec["max_steps"] == 2 and rec["batch_size"] == 8  # the shared training options


@pytest.mark.parametrize("args,match", [
    (["--temperature", "0"], "--temperature 0.0 must be > 0"),
    (["--alpha", "1.2"], "--alpha 1.2 is outside [0, 1]"),
    (["--feature-weight", "-1"], "--feature-weight -1.0 must be >= 0"),
])
def test_cli_bad_settings_are_one_line(tiny_run, tiny_data, tmp_path, args, match):
    out = tmp_path / "s"
    r = _cli("--teacher", tiny_run, "--data", tiny_data, "--out", out, *args)
    assert r.exit_code == 1 and r.output.startswith("error: ") and match in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_unknown_preset_and_non_run_teacher(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "s"
    r = _cli("--teacher", tiny_run, "--data", tiny_data, "--out", out, "--student-preset", "huge")
    assert r.exit_code == 2 and "huge" in r.output and "micro" in r.output  # the choices
    r = _cli("--teacher", tmp_path, "--data", tiny_data, "--out", out)
    assert r.exit_code == 1 and "is not a usable run" in r.output
    assert not out.exists()


def _ddp_worker(rank, world, port, cfg, out_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = distill(cfg, log=lambda *_: None)["model"]
    torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_distil_identical_students(kd_config, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = dataclasses.replace(kd_config, train=dataclasses.replace(
        kd_config.train, out=str(tmp_path / "ddp"), max_steps=3, batch_size=4))
    mp.spawn(_ddp_worker, args=(2, port, cfg, str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=lambda m: f"{k}: {m}")
    saved = load_checkpoint(tmp_path / "ddp", "last")
    assert all(torch.equal(a[k], v) for k, v in saved.model.state_dict().items())
