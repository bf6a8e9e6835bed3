"""The `runtime` dependency set is enough: a fresh virtual environment with only
`pip install '.[runtime]'` (dependencies resolved by pip, from the machine's normal pip
configuration) runs a prediction on the tiny ONNX export, and torch is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _index_reachable(python: Path) -> tuple[bool, str]:
    """Can pip reach any package source it is configured with (find-links dirs, index URLs)?"""
    out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True,
                         text=True).stdout
    sources = ["https://pypi.org/simple/"]
    for line in out.splitlines():
        if any(k in line for k in ("index-url", "find-links")):
            sources += line.split("=", 1)[1].strip().strip("'").split()
    for src in sources:
        if src.startswith("file://") or src.startswith("/"):
            if Path(src.removeprefix("file://")).exists():
                return True, src
            continue
        try:
            urllib.request.urlopen(src, timeout=10)
            return True, src
        except OSError:
            continue
    return False, f"none of {sources} answers"


def test_runtime_extra_alone_predicts(tmp_path, tiny_onnx, tiny_data):
    # Install from a copy: building in the repo would leave build/ and egg-info behind.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "toolkit", src / "toolkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{src}[runtime]"],
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        reachable, where = _index_reachable(python)
        if not reachable:
            pytest.skip(f"no package index reachable ({where}): pip said "
                        f"{install.stderr.strip()[-300:]}")
        pytest.fail(f"pip install '.[runtime]' failed although {where} is reachable:\n"
                    f"{install.stderr[-2000:]}")
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"onnxruntime", "numpy", "pillow", "tokenizers"} <= names
    assert not names & {"torch", "transformers", "torchvision"}, names

    rows = [json.loads(x) for x in (Path(tiny_data) / "train.jsonl").read_text().splitlines()[:3]]
    images = [str(Path(tiny_data) / r["image"]) for r in rows]
    texts = [r["text"] for r in rows]
    code = ("import json, sys, toolkit\n"
            "from toolkit.runtime import Predictor\n"
            f"r = Predictor.load({str(tiny_onnx.path)!r}).predict({images!r}, {texts!r})\n"
            "print(json.dumps({'labels': r.labels, 'file': toolkit.__file__}))\n")
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert str(env_dir) in got["file"]  # the installed package, not the checkout

    # Same labels as this (full) environment's Predictor.
    from toolkit.runtime import Predictor

    assert got["labels"] == Predictor.load(tiny_onnx.path).predict(images, texts).labels
