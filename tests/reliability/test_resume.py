"""Crash-safe training: `toolkit train` is SIGKILLed mid-epoch after a checkpoint, `--resume`
finishes the run, and its weights equal those of an uninterrupted run of the same length and seed.

All three runs are CLI subprocesses with the same environment (one intra-op thread), so the
only difference between them is the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # three Python (and torch) starts and about 60 training steps

ROOT = Path(__file__).resolve().parents[2]
# The tiny data has 144 training rows, 18 steps an epoch at batch 8: checkpoints at steps 5, 10
# and 15 fall mid-epoch, and the resumed run crosses into the second epoch's permutation.
STEPS, EVERY = 24, 5
CLI = "from toolkit.cli import main; main()"


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CLI, "train", "--data", str(data), "--out", str(out),
            "--preset", "tiny", "--epochs", "5", "--max-steps", str(STEPS), "--eval-every",
            str(EVERY), "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2",
            "--device", "cpu", "--seed", "0", *extra]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(child: subprocess.Popen) -> None:
    try:  # 1800 s: a bound on a hang on a busy CPU, not a timing
        _, err = child.communicate(timeout=1800)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-2000:]


def _kill_after_first_checkpoint(args: list[str], run: Path) -> None:
    child = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 1800
        # resume.pt appears by a rename (artifacts.atomic_path): once it exists it is whole
        while not (run / "resume.pt").exists():
            assert child.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 1800 s"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_after_sigkill_ends_with_the_uninterrupted_weights(tiny_data, tmp_path):
    import torch

    from toolkit.checkpoint import load_checkpoint

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _start(_train_args(tiny_data, whole))  # alongside: the runs are independent
    try:
        _kill_after_first_checkpoint(_train_args(tiny_data, killed), killed)
    finally:
        _finish(uninterrupted)

    # The run directory after the kill: every file at a final path is whole and loads.
    state = torch.load(killed / "resume.pt", weights_only=True)
    assert EVERY <= state["step"] < STEPS and state["step"] % EVERY == 0
    for which in ("last", "best"):
        load_checkpoint(killed, which)
    assert json.loads((killed / "metrics.json").read_text())["history"][-1]["step"] <= STEPS
    final = {"config.json", "vocab.txt", "labels.json", *("last.safetensors", "best.safetensors",
                                                          "metrics.json", "resume.pt")}
    left = {p.name for p in killed.iterdir()} - final
    assert all(n.startswith(".") and ".tmp-" in n for n in left), left  # only temporaries
    # a kill during a write leaves a temporary beside the whole file; resume clears it
    (killed / ".resume.pt.tmp-999999").write_bytes(b"half a checkpoint")

    _finish(_start(_train_args(tiny_data, killed, "--resume")))

    assert {p.name for p in killed.iterdir()} == final
    a, b = _weights(whole / "last.safetensors"), _weights(killed / "last.safetensors")
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if a[k].is_floating_point() and a[k].numel())
    # bitwise: batches are a function of the step, and resume.pt carries the dropout generator
    assert diff == 0.0 and all(torch.equal(a[k], b[k]) for k in a), f"max abs diff {diff:g}"
    assert (json.loads((killed / "metrics.json").read_text())
            == json.loads((whole / "metrics.json").read_text()))
