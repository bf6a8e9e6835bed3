import dataclasses
import functools
import json
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from toolkit.checkpoint import CheckpointError, load_checkpoint
from toolkit.config import BatchBy, ConfigError, TrainConfig, preset
from toolkit.data.manifest import load_split, read_manifest, resolve_manifest
from toolkit.data.preprocess import Tokenizer, train_vocab
from toolkit.model import DualModalNet
from toolkit.train import (BatchPlan, Dist, EvalCadence, RunWriter, StageMonitor, build_optimizer,
                           lr_factor, train)


def test_run_directory_holds_everything(tiny_run):
    for name in ("config.json", "vocab.txt", "labels.json", "best.safetensors",
                 "last.safetensors", "resume.pt", "metrics.json"):
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    last = metrics["history"][-1]
    assert set(last["per_type"]) == {"shape", "horizontal", "vertical", "closest", "furthest",
                                     "count"}
    assert 0.0 <= last["accuracy"] <= 1.0
    assert not list(tiny_run.glob(".*tmp*"))  # no half-written files left behind


def test_checkpoint_reloads_to_the_same_outputs(tiny_run):
    ck = load_checkpoint(tiny_run, "last")
    state = load_file(str(tiny_run / "last.safetensors"))
    for k, v in ck.model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert ck.labels[:2] == ["square", "circle"] and ck.config.num_classes == 12
    assert ck.config.text.vocab_size == len(ck.tokenizer.vocab)


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    broken = tmp_path / "run"
    broken.mkdir()
    for name in ("config.json", "vocab.txt", "labels.json"):
        (broken / name).write_bytes((tiny_run / name).read_bytes())
    data = (tiny_run / "best.safetensors").read_bytes()
    (broken / "best.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["format_version"] = 99
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(broken)


def test_warmup_then_cosine():
    f = functools.partial(lr_factor, warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-9)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_rate_holds_through_the_curriculum_then_warms_up_again(tiny_split, tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, curriculum=(("horizontal", "vertical"),),
                              curriculum_steps=30, epochs=2)
    plan = BatchPlan(tiny_split, cfg, Dist())
    total = 30 + 2 * plan.steps_per_epoch
    assert plan.total_steps == total
    assert [plan.rate(s, 5) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(plan.rate(s, 5) == 1.0 for s in range(5, 30))  # no decay during the curriculum
    # from the step it ends: the warmup again, then the cosine over the epochs alone
    after = [plan.rate(s, 5) for s in range(30, total + 1)]
    assert after[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert after[5 + (total - 35) // 2] == pytest.approx(0.5, abs=0.05)
    assert all(a >= b for a, b in zip(after[4:], after[5:])) and after[-1] == pytest.approx(0)


@pytest.fixture(scope="module")
def tiny_split(tiny_data):
    path = resolve_manifest(tiny_data, "train")
    tok = Tokenizer(train_vocab((r.text for r in read_manifest(path)), 120), 16)
    from toolkit.data.synthetic import LABELS

    return load_split(path, list(LABELS), tok, 32)


def test_curriculum_draws_only_its_types_then_every_row(tiny_split, tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, curriculum=(("horizontal", "vertical"),),
                              curriculum_steps=4, epochs=2)
    plan = BatchPlan(tiny_split, cfg, Dist())
    types = np.array(tiny_split.question_types)
    for step in range(4):
        assert set(types[plan.rows(step)]) <= {"horizontal", "vertical"}
    # After the curriculum, one epoch covers every row at most once; the plan is a pure
    # function of the step (resume and DDP ranks rely on it).
    epoch = np.concatenate([plan.rows(4 + b) for b in range(plan.steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)
    assert set(types[epoch]) == set(types)
    np.testing.assert_array_equal(plan.rows(5), plan.rows(5))
    assert plan.total_steps == 4 + 2 * plan.steps_per_epoch
    # ended early, the epochs start at once and keep their length
    first_batch = plan.rows(4)
    plan.end_stage(2)
    np.testing.assert_array_equal(plan.rows(2), first_batch)
    assert plan.total_steps == 2 + 2 * plan.steps_per_epoch


def test_curriculum_stages_run_in_order_each_warming_up_again(tiny_split, tiny_train_config):
    stages = (("horizontal", "vertical"), ("horizontal", "vertical", "shape"))
    cfg = dataclasses.replace(tiny_train_config, curriculum=stages, curriculum_steps=10, epochs=1)
    plan = BatchPlan(tiny_split, cfg, Dist())
    types = np.array(tiny_split.question_types)
    assert plan.bounds() == [0, 10, 20] and plan.total_steps == 20 + plan.steps_per_epoch
    assert [plan.stage(s) for s in (0, 9, 10, 19, 20)] == [0, 0, 1, 1, None]
    assert set(types[np.concatenate([plan.rows(s) for s in range(10)])]) == set(stages[0])
    assert set(types[np.concatenate([plan.rows(s) for s in range(10, 20)])]) == set(stages[1])
    assert [plan.rate(s, 5) for s in (0, 4, 9, 10, 14, 19, 20)] == pytest.approx(
        [0.2, 1.0, 1.0, 0.2, 1.0, 1.0, 0.2])
    second = plan.rows(10)
    plan.end_stage(4)  # stage 1 learned early: stage 2 starts at step 4 with its own first batch
    assert plan.bounds() == [0, 4, 14] and plan.stage(4) == 1
    np.testing.assert_array_equal(plan.rows(4), second)
    plan.end_stage(7)
    assert plan.bounds() == [0, 4, 7] and plan.stage(7) is None
    # a stage that runs its full length keeps it when a later one ends early
    fresh = BatchPlan(tiny_split, cfg, Dist())
    fresh.end_stage(13)
    assert fresh.bounds() == [0, 10, 13]
    with pytest.raises(ValueError, match="not in the curriculum"):
        fresh.end_stage(14)


def test_curriculum_ends_once_its_loss_is_low_and_resume_keeps_that(
        tiny_train_config, tmp_path, monkeypatch):
    import toolkit.train as T

    monkeypatch.setattr(T, "CURRICULUM_WINDOW", 3)  # the name train.py reads
    logs = []
    # Any loss is below 1e9: the curriculum ends as soon as its window is full (step 3).
    cfg = dataclasses.replace(tiny_train_config, out=str(tmp_path / "r"), epochs=1,
                              curriculum=(("horizontal", "vertical"),), curriculum_steps=50,
                              curriculum_loss=1e9)
    result = train(cfg, log=logs.append)
    spe = BatchPlan(T.prepare_data(cfg)[3], cfg, Dist()).steps_per_epoch
    assert result["report"]["steps"] == 3 + spe
    assert any("stage 1 of 1 (horizontal, vertical) learned at step 3" in m for m in logs)
    history = json.loads((tmp_path / "r" / "metrics.json").read_text())["history"]
    assert history[0]["step"] == 3  # evaluated when the curriculum ended
    assert torch.load(tmp_path / "r" / "resume.pt", weights_only=True)["curriculum_ends"] == [3]
    resumed = train(dataclasses.replace(cfg, epochs=2, resume=True), log=lambda *_: None)
    assert resumed["report"]["steps"] == 3 + 2 * spe  # not 50 + 2 epochs: the end was kept
    # two stages: each ends once its own window is full (steps 3 and 6), and resume keeps both
    two = dataclasses.replace(cfg, out=str(tmp_path / "two"),
                              curriculum=(("horizontal", "vertical"), ("shape",)))
    logs.clear()
    assert train(two, log=logs.append)["report"]["steps"] == 6 + spe
    assert any("stage 2 of 2 (shape) learned at step 6" in m for m in logs)
    assert torch.load(tmp_path / "two" / "resume.pt", weights_only=True)["curriculum_ends"] == [3, 6]
    resumed = train(dataclasses.replace(two, epochs=2, resume=True), log=lambda *_: None)
    assert resumed["report"]["steps"] == 6 + 2 * spe
    # with --curriculum-loss 0 every curriculum step runs
    never = train(dataclasses.replace(cfg, out=str(tmp_path / "n"), curriculum_steps=5,
                                      curriculum_loss=0.0), log=lambda *_: None)
    assert never["report"]["steps"] == 5 + spe
    # the image summary stays at zero through the curriculum and trains after it
    summary = never["model"].fusion.summary.weight
    assert summary.abs().sum() > 0
    only = train(dataclasses.replace(cfg, out=str(tmp_path / "c"), curriculum_steps=5, epochs=0,
                                     curriculum_loss=0.0), log=lambda *_: None)
    assert only["report"]["steps"] == 5
    assert only["model"].fusion.summary.weight.abs().sum() == 0
    torch.manual_seed(cfg.seed)
    init = DualModalNet(only["config"])
    assert not torch.equal(only["model"].head[0].weight, init.head[0].weight)  # the rest trained


def test_freeze_binding_holds_what_the_first_stage_learned(tiny_train_config, tmp_path):
    cfg = dataclasses.replace(tiny_train_config, curriculum=(("horizontal", "vertical"),),
                              curriculum_steps=2, curriculum_loss=0.0, epochs=0,
                              warmup_steps=1)  # the same rate in every run, whatever its length
    first = train(dataclasses.replace(cfg, out=str(tmp_path / "a")), log=lambda *_: None)["model"]
    two = dataclasses.replace(cfg, curriculum=cfg.curriculum + (("shape",),), freeze_binding=True)

    def held_as_first_left_them(model) -> bool:
        ids = {id(p) for p in model.binding_parameters()}
        return all(torch.equal(p, q) for p, q in zip(model.parameters(), first.parameters())
                   if id(p) in ids)

    frozen = train(dataclasses.replace(two, out=str(tmp_path / "b")), log=lambda *_: None)
    assert frozen["report"]["steps"] == 4
    assert held_as_first_left_them(frozen["model"])
    assert {id(p) for p in frozen["model"].text.parameters()} <= {
        id(p) for p in frozen["model"].binding_parameters()}
    assert not torch.equal(frozen["model"].vision.body.stem[0].weight,
                           first.vision.body.stem[0].weight)  # the rest trained in stage 2
    free = train(dataclasses.replace(two, out=str(tmp_path / "c"), freeze_binding=False),
                 log=lambda *_: None)
    assert not held_as_first_left_them(free["model"])
    after = train(dataclasses.replace(two, out=str(tmp_path / "d"), epochs=1), log=lambda *_: None)
    assert not held_as_first_left_them(after["model"])  # the epochs train it again
    with pytest.raises(ConfigError, match="--freeze-binding holds what the first curriculum"):
        dataclasses.replace(tiny_train_config, freeze_binding=True)


def test_relation_read_waits_for_the_first_stage(tiny_train_config, tmp_path):
    model = dataclasses.replace(tiny_train_config.model, fusion_relation=16)
    cfg = dataclasses.replace(tiny_train_config, model=model, epochs=0, curriculum_steps=2,
                              curriculum=(("horizontal", "vertical"),), curriculum_loss=0.0)
    first = train(dataclasses.replace(cfg, out=str(tmp_path / "a")), log=lambda *_: None)
    torch.manual_seed(cfg.seed)
    init = DualModalNet(first["config"])
    assert all(torch.equal(p, q) for p, q in zip(first["model"].fusion.relation.parameters(),
                                                 init.fusion.relation.parameters()))
    assert not torch.equal(first["model"].head[0].weight, init.head[0].weight)  # the rest trained
    two = train(dataclasses.replace(cfg, out=str(tmp_path / "b"),
                                    curriculum=cfg.curriculum + (("shape",),)),
                log=lambda *_: None)["model"]
    assert two.fusion.relation.out.weight.abs().sum() > 0  # it trains from the second stage on


@pytest.mark.parametrize("by", list(BatchBy))
def test_batches_by_question_or_by_whole_image(tiny_split, tiny_train_config, by):
    plan = BatchPlan(tiny_split, dataclasses.replace(tiny_train_config, batch_by=by), Dist())
    epoch = [plan.rows(b) for b in range(plan.steps_per_epoch)]
    flat = np.concatenate(epoch)
    assert len(set(flat.tolist())) == len(flat)  # no row twice in an epoch
    images = [tiny_split.image_index[rows] for rows in epoch]
    if by is BatchBy.question:
        assert all(len(rows) == tiny_train_config.batch_size for rows in epoch)
        assert len(flat) > len(tiny_split) - tiny_train_config.batch_size
        # rows drawn one by one: a batch spans more images than whole-image batches would
        assert np.mean([len(set(i.tolist())) for i in images]) > tiny_train_config.batch_size / 3
    else:
        counts = np.bincount(tiny_split.image_index)
        for i in images:  # every image in a batch comes with all its questions
            assert all(np.sum(i == k) == counts[k] for k in set(i.tolist()))


def test_curriculum_of_an_absent_type_is_refused(tiny_split, tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, curriculum=(("colour",),), curriculum_steps=4)
    with pytest.raises(ConfigError, match="colour: no training row has that question type"):
        BatchPlan(tiny_split, cfg, Dist())
    with pytest.raises(ConfigError, match="needs both"):
        dataclasses.replace(tiny_train_config, curriculum_steps=4)
    with pytest.raises(ConfigError, match="--curriculum-loss must be >= 0"):
        dataclasses.replace(tiny_train_config, curriculum_loss=-1.0)


def test_training_learns_a_fixed_batch(tiny_data, tmp_path):
    """Loss on the training rows falls well below chance: the gradients reach every part."""
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), model=preset("tiny"),
                      epochs=60, batch_size=16, lr=3e-3, warmup_steps=5, vocab_size=120,
                      device="cpu", eval_every=10**6, max_steps=300)
    result = train(cfg, log=lambda *_: None)
    model, tok = result["model"].eval(), result["tokenizer"]
    split = load_split(resolve_manifest(tiny_data, "train"), result["labels"], tok,
                       model.cfg.image_size)
    idx = np.arange(min(len(split), 64))
    from toolkit.evaluate import to_torch

    with torch.no_grad():
        logits = model(**to_torch(split.batch(idx, tok, model.cfg.mean, model.cfg.std), "cpu"))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(split.labels[idx]))
    assert loss.item() < 0.5 * np.log(12), loss.item()


def test_resume_continues_from_the_saved_step(tiny_train_config, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    steps_before = torch.load(run / "resume.pt", weights_only=True)["step"]
    cfg = dataclasses.replace(tiny_train_config, out=str(run), epochs=2, resume=True)
    result = train(cfg, log=lambda *_: None)
    assert result["report"]["steps"] == 2 * steps_before
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [steps_before, 2 * steps_before]


def test_resume_without_a_checkpoint_is_refused(tiny_train_config, tmp_path):
    cfg = dataclasses.replace(tiny_train_config, out=str(tmp_path / "fresh"), resume=True)
    with pytest.raises(CheckpointError, match="resume.pt not found"):
        train(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = train(cfg, log=lambda *_: None)["model"]
    torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_hold_identical_weights(tiny_train_config, tmp_path):
    import torch.multiprocessing as mp

    cfg = dataclasses.replace(tiny_train_config, out=str(tmp_path / "ddp"), max_steps=3,
                              batch_size=4)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=lambda m: f"{k}: {m}")
    # the ranks did train: weights moved away from the (seeded) initialization
    saved = load_checkpoint(tmp_path / "ddp", "last")
    torch.manual_seed(cfg.seed)
    init = DualModalNet(saved.config).state_dict()
    assert sum(not torch.equal(a[k], init[k]) for k in init) > len(init) // 2
    # rank 0 saved what it held
    assert all(torch.equal(a[k], v) for k, v in saved.model.state_dict().items())


def test_optimizer_decays_matrices_only_with_the_fused_kernel(tiny_train_config):
    model = DualModalNet(tiny_train_config.model)
    opt = build_optimizer(model, tiny_train_config)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == tiny_train_config.weight_decay and no_decay["weight_decay"] == 0
    assert all(p.ndim >= 2 and "embeddings" not in names[id(p)] for p in decay["params"])
    assert any("embeddings" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    assert opt.defaults["fused"] is True


def test_stage_monitor_ends_a_stage_on_its_own_window(tiny_split, tiny_train_config, monkeypatch):
    import toolkit.train as T

    monkeypatch.setattr(T, "CURRICULUM_WINDOW", 3)
    cfg = dataclasses.replace(tiny_train_config, curriculum=(("horizontal",), ("vertical",)),
                              curriculum_steps=50, curriculum_loss=0.5)
    plan = BatchPlan(tiny_split, cfg, Dist())
    monitor = StageMonitor(plan, cfg, Dist())
    loss = torch.tensor(0.0)
    # stage 0: a window of 3 with mean under 0.5 ends it at the third low step, not before
    assert [monitor.observe(s, 0, loss, v) for s, v in zip((1, 2, 3), (0.9, 0.3, 0.3))] == [
        None, None, None]  # mean 0.5 is not under 0.5
    assert monitor.observe(4, 0, loss, 0.1) == pytest.approx(0.7 / 3)
    assert plan.bounds()[:2] == [0, 4]
    # stage 1 starts a fresh window: stage 0's low losses do not count
    assert monitor.observe(5, 1, loss, 0.1) is None and len(monitor.losses) == 1
    assert monitor.observe(9, None, loss, 0.0) is None  # the epochs: nothing to watch


def test_eval_cadence_runs_on_the_period_at_stage_ends_and_at_the_end(tiny_split,
                                                                       tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, curriculum=(("horizontal",),),
                              curriculum_steps=7, epochs=1)
    plan = BatchPlan(tiny_split, cfg, Dist())
    cadence = EvalCadence(5, plan)
    due = [s for s in range(1, plan.total_steps + 1) if cadence.due(s, out_of_time=False)]
    assert 5 in due and 7 in due and 10 in due and due[-1] == plan.total_steps
    assert 6 not in due and cadence.due(6, out_of_time=True)


def test_run_writer_saves_and_loads_the_whole_training_state(tiny_split, tiny_train_config,
                                                             tmp_path):
    model = DualModalNet(tiny_train_config.model)
    opt = build_optimizer(model, tiny_train_config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = dataclasses.replace(tiny_train_config, curriculum=(("horizontal",),),
                              curriculum_steps=7)
    plan = BatchPlan(tiny_split, cfg, Dist())
    plan.end_stage(3)
    monitor = StageMonitor(plan, cfg, Dist())
    monitor.losses.extend([0.5, 0.25])
    run = RunWriter(tmp_path, model, opt, sched, plan, main=True, monitor=monitor)
    run.step = 3
    report = {"accuracy": 0.4, "per_type": {}, "groups": {}}
    run.save(report)
    run.save(dict(report, accuracy=0.2))  # worse: best.safetensors keeps the first
    after_save = torch.rand(4)  # what dropout would draw next in the uninterrupted run
    assert run.best == 0.4 and len(run.history) == 2
    assert {p.name for p in tmp_path.iterdir()} == {"last.safetensors", "best.safetensors",
                                                    "metrics.json", "resume.pt"}
    other = DualModalNet(tiny_train_config.model)
    opt2 = build_optimizer(other, tiny_train_config)
    plan2 = BatchPlan(tiny_split, cfg, Dist())
    monitor2 = StageMonitor(plan2, cfg, Dist())
    back = RunWriter(tmp_path, other, opt2,
                     torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0), plan2, main=True,
                     monitor=monitor2)
    torch.manual_seed(123)  # a resumed process starts from another generator state
    back.load(torch.device("cpu"))
    assert (back.step, back.best, back.history, plan2.ends) == (3, 0.4, run.history, [3])
    assert list(monitor2.losses) == [0.5, 0.25]  # the curriculum window goes on, not anew
    assert torch.equal(torch.rand(4), after_save)  # and so do dropout's draws
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
    RunWriter(tmp_path / "none", model, opt, sched, plan, main=False).save(report)
    assert not (tmp_path / "none").exists()  # only rank 0 writes


def test_the_same_seed_trains_the_same_weights(tiny_train_config, tmp_path):
    runs = [train(dataclasses.replace(tiny_train_config, out=str(tmp_path / str(k)),
                                      max_steps=6), log=lambda *_: None)["model"]
            for k in range(2)]
    for (name, p), q in zip(runs[0].state_dict().items(), runs[1].state_dict().values()):
        assert torch.equal(p, q), name
