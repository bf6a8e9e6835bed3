"""Atomic writes, proven: a writer process is SIGKILLed in the middle of writing each kind of
artifact, and the previous artifact is still whole at the final path (or, on a first write,
nothing is there).

The kill is deterministic, not timed: in the child, the stdlib/library call that writes the bytes
of the temporary file is wrapped so that it writes the first half, tells the parent "mid-write" on
stdout, and blocks on stdin; the parent kills it then. What is patched is only the byte writer
underneath the toolkit's own helper (save_weights, graph.save, write_bytes, write_sidecar,
bench.write_json), so the temp-and-rename logic under test is the product's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Python (and torch) start per case

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent('''
    import pathlib, sys
    kind, path, model_src = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]

    def stall(tmp, data):
        """Write half of `data` to the temp file, say so, and wait to be killed."""
        data = bytes(data)
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            sys.stdout.write("mid-write %s\\n" % tmp)
            sys.stdout.flush()
            sys.stdin.read()  # blocks: the parent SIGKILLs us here
        raise SystemExit("not killed")

    def payload(version):
        return (b"v%d" % version) * 5000

    if kind == "checkpoint":
        import safetensors.torch as st, torch, toolkit.checkpoint as ck
        real = st.save_file
        def blocking(state, filename, metadata=None):
            real(state, filename, metadata=metadata)
            stall(filename, pathlib.Path(filename).read_bytes())
        ck.save_file = blocking
        ck.save_weights(torch.nn.Linear(64, 64), path)
    elif kind == "onnx":
        import onnx, toolkit.export.graph as g
        def blocking(model, f, **kw):
            stall(f, model.SerializeToString())
        onnx.save_model = blocking
        g.save(onnx.load(model_src), path)
    elif kind in ("plan", "sidecar", "bench-json"):
        orig_bytes, orig_text = pathlib.Path.write_bytes, pathlib.Path.write_text
        pathlib.Path.write_bytes = lambda self, data: stall(self, data)
        pathlib.Path.write_text = lambda self, data, **kw: stall(self, data.encode())
        if kind == "plan":
            from toolkit.artifacts import write_bytes
            write_bytes(path, payload(2))
        elif kind == "sidecar":
            from toolkit.artifacts import write_json
            write_json(path, {"format": "toolkit.tensorrt-plan", "plan_bytes": 2, "pad": "x" * 9999})
        else:
            from toolkit.bench import write_json
            write_json({"results": [1, 2, 3], "pad": "y" * 9999}, path)
    raise SystemExit("wrote without stalling")
''')


def previous_artifact(kind: str, path: Path, model_src: Path) -> bytes:
    """Write a complete first version with the same product helper, unpatched."""
    if kind == "checkpoint":
        import torch

        from toolkit.checkpoint import save_weights

        save_weights(torch.nn.Linear(8, 8), path)
    elif kind == "onnx":
        import onnx

        from toolkit.export import graph

        graph.save(onnx.load(str(model_src)), path)
    elif kind == "plan":
        from toolkit.artifacts import write_bytes

        write_bytes(path, b"v1" * 100)
    elif kind == "sidecar":
        from toolkit.artifacts import write_json

        write_json(path, {"format": "toolkit.tensorrt-plan", "plan_bytes": 1})
    else:
        from toolkit.bench import write_json

        write_json({"results": []}, path)
    return path.read_bytes()


NAMES = {"checkpoint": "best.safetensors", "onnx": "model.onnx", "plan": "model.plan",
         "sidecar": "model.plan.json", "bench-json": "bench.json"}


@pytest.mark.parametrize("first_write", (False, True), ids=("replacing", "first-write"))
@pytest.mark.parametrize("kind", sorted(NAMES))
def test_sigkill_mid_write_leaves_the_final_path_whole(kind, first_write, tmp_path, tiny_onnx):
    path = tmp_path / "out" / NAMES[kind]
    path.parent.mkdir()
    before = None if first_write else previous_artifact(kind, path, tiny_onnx.path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(path), str(tiny_onnx.path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = child.stdout.readline()  # returns once the child is inside the write
        assert line.startswith("mid-write "), (line, child.stderr.read() if child.poll() else "")
        tmp = Path(line.split(" ", 1)[1].strip())
        assert tmp.exists() and tmp.stat().st_size > 0  # the partial temp file is really there
        assert tmp != path and tmp.parent == path.parent
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if first_write:
        assert not path.exists(), "a partial artifact sits at the final path"
    else:
        assert path.read_bytes() == before, "the previous artifact was changed"
    # The dead writer's temporary sibling may remain (nothing ran its cleanup); it has another
    # name, so no reader takes it for the artifact.
    assert {p.name for p in path.parent.iterdir()} <= {path.name, tmp.name}
    _still_loads(kind, path)


def _still_loads(kind: str, path: Path) -> None:
    if not path.exists():
        return
    if kind == "checkpoint":
        from safetensors.torch import load_file

        assert set(load_file(str(path))) == {"weight", "bias"}
    elif kind == "onnx":
        from toolkit.artifacts import read_onnx_metadata

        assert read_onnx_metadata(path).labels
    elif kind in ("sidecar", "bench-json"):
        import json

        json.loads(path.read_text())
