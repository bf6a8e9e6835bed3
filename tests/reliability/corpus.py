"""The bad-input corpus (issue 17): how a case is damaged and how its outcome is judged.

A case is "clean" when the library raises a ToolkitError subclass, or the CLI exits non-zero with
its one "error:" line (or typer's usage error for a malformed option) and no traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.errors import ToolkitError

RNG_BYTES = np.random.default_rng(17).integers(0, 256, 4096, dtype=np.uint8).tobytes()
# Four ways a file goes bad; each applied to each kind of artifact.
DAMAGE = ("missing", "empty", "truncated", "random")


def damage(path: Path, how: str) -> None:
    """Replace `path` by a missing, empty, half-length or random-byte version of itself."""
    if how == "missing":
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(b"\xff\xfe" + RNG_BYTES)  # 0xff never starts UTF-8: not text either
    else:
        raise ValueError(how)


def invoke(*args) -> "CliResult":
    result = CliRunner().invoke(app, [str(a) for a in args])
    return CliResult(result)


class CliResult:
    def __init__(self, result):
        self.result, self.code = result, result.exit_code
        self.output = result.output

    @property
    def traceback(self) -> bool:
        exc = self.result.exception
        return exc is not None and not isinstance(exc, SystemExit)

    def assert_clean_error(self, *needles: str) -> None:
        """Non-zero exit, no traceback, and the message: one `error:` line (ours) or typer's usage
        box (exit 2); each needle (case-insensitive) in the output."""
        assert not self.traceback, f"traceback: {self.result.exception!r}\n{self.output}"
        assert self.code != 0, self.output
        assert "Traceback" not in self.output, self.output
        if self.code == 2:  # click/typer usage error: "Invalid value for '--x'"
            assert "Usage" in self.output or "Invalid" in self.output, self.output
        else:
            lines = [ln for ln in self.output.splitlines() if ln.startswith("error:")]
            assert len(lines) == 1, self.output
        for n in needles:
            assert n.lower() in self.output.lower(), (n, self.output)

    def assert_ok(self) -> None:
        assert not self.traceback, f"traceback: {self.result.exception!r}\n{self.output}"
        assert self.code == 0, self.output


def raises_toolkit_error(fn, *args, match: str | None = None, **kwargs) -> ToolkitError:
    with pytest.raises(ToolkitError, match=match) as info:
        fn(*args, **kwargs)
    return info.value


def no_leftovers(folder: Path) -> list[str]:
    """Temporary siblings the atomic writers might leave (.NAME.tmp-PID)."""
    return sorted(p.name for p in folder.rglob(".*.tmp*")) if folder.exists() else []


def root_can_write(folder: Path) -> bool:
    """Whether a chmod 0555 folder still takes writes (root ignores the mode bits)."""
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True
