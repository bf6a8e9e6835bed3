"""A tritonserver on this machine, from the nvidia-pytriton wheel (for tests and measurements).

The wheel ships tritonserver 2.51, its libraries and Triton's Python backend (no onnxruntime or
tensorrt backend: those come with NVIDIA's container). PyTriton's own Python API is not used: on
Python 3.11 its proxy model failed here. The binary runs on a CPU-only machine given (a)
LD_LIBRARY_PATH with the wheel's nvidia_pytriton.libs, (b) a backend directory whose python/ holds
libtriton_python.so, triton_python_backend_utils.py and the stub built for this Python
(python_backend_stubs/3.X/triton_python_backend_stub; the stub's own RPATH points into the wheel,
so the libraries are named on LD_LIBRARY_PATH for it too), and (c) models that put the
virtual environment's site-packages on sys.path (toolkit triton --python-path). (d) The 2.51 stub's
tensors break under numpy 2 (a BYTES input arrived as 0xd4d4d4d4 garbage here; PyTriton pins
numpy<2 for this reason), so a numpy 1.x sits in the wheel's folder under stub-site-packages/, for
the Python models' sys.path ahead of the virtual environment (stub_python_path).
Server flags: `tritonserver --help` of that binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError

ENV_DIR = "TOOLKIT_PYTRITON_DIR"  # a folder holding pytriton/ and nvidia_pytriton.libs/
STUB_SITE = "stub-site-packages"
INSTALL_HINT = ("pip install --no-deps --target .venv/nvidia-pytriton nvidia-pytriton==0.7.0 && "
                "pip install --no-deps --target .venv/nvidia-pytriton/stub-site-packages "
                "numpy==1.26.4 (what `make test` does)")


class TritonServerUnavailable(ToolkitError):
    """No tritonserver binary (nvidia-pytriton) on this machine."""


class TritonServerError(ToolkitError):
    """The server did not start or answer; the message carries the end of its log."""


@dataclass(frozen=True)
class ServerFiles:
    root: Path  # the folder holding pytriton/ and nvidia_pytriton.libs/
    binary: Path
    libs: Path
    python_backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python
    stub_site: Path  # numpy 1.x for the stub's interpreter (see the module docstring, (d))

    def stub_python_path(self, *more: str | os.PathLike) -> list[str]:
        """sys.path entries for a Python model here: the stub's numpy 1.x first, then `more`
        (the toolkit's folder, the virtual environment's site-packages)."""
        return [str(self.stub_site), *map(str, more)]


def _candidates() -> list[Path]:
    out = []
    if os.environ.get(ENV_DIR):
        out.append(Path(os.environ[ENV_DIR]))
    out.append(Path(sys.prefix) / "nvidia-pytriton")  # `make test`'s --target folder
    with contextlib.suppress(Exception):  # a plain `pip install nvidia-pytriton`
        from importlib.metadata import distribution

        out.append(Path(distribution("nvidia-pytriton").locate_file("")))
    return out


def find_server(python: str | None = None) -> ServerFiles:
    """The wheel's files, or TritonServerUnavailable naming where it looked and what to install."""
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    tried = []
    for root in _candidates():
        tried.append(str(root))
        binary = root / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        if not binary.is_file():
            continue
        files = ServerFiles(root, binary, root / "nvidia_pytriton.libs",
                            root / "pytriton" / "tritonserver" / "backends" / "python",
                            root / "pytriton" / "tritonserver" / "python_backend_stubs" / python /
                            "triton_python_backend_stub", root / STUB_SITE)
        missing = [p for p in (files.libs, files.python_backend / "libtriton_python.so",
                               files.python_backend / "triton_python_backend_utils.py", files.stub,
                               files.stub_site / "numpy")
                   if not p.exists()]
        if missing:
            raise TritonServerUnavailable(
                f"{root} lacks {[str(p) for p in missing]} (no stub for Python {python}, or no "
                f"numpy 1.x for it?); reinstall it: {INSTALL_HINT}")
        return files
    raise TritonServerUnavailable(f"no tritonserver found (looked in {tried}); install it: "
                                  f"{INSTALL_HINT}")


def make_backend_dir(dest: str | os.PathLike, files: ServerFiles,
                     python_backends: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """`dest/python/` with the Python backend and this Python's stub; `python_backends` adds
    Python-based backends, name -> a model.py that becomes dest/<name>/model.py (Triton's
    Python-based backends: docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/
    backend/docs/python_based_backends.html)."""
    dest = Path(dest)
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copyfile(files.python_backend / name, python / name)
    shutil.copyfile(files.stub, python / "triton_python_backend_stub")
    (python / "triton_python_backend_stub").chmod(0o755)
    for name, model_py in (python_backends or {}).items():
        (dest / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_py, dest / name / "model.py")
    return dest


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound together, then released for the server)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalServer:
    """tritonserver on 127.0.0.1 with free HTTP, gRPC and metrics ports; a context manager that
    always stops it (SIGTERM to its process group, SIGKILL after `stop_timeout`)."""

    def __init__(self, repo: str | os.PathLike, backend_dir: str | os.PathLike,
                 files: ServerFiles, log_path: str | os.PathLike,
                 startup_timeout: float = 180.0, stop_timeout: float = 20.0,
                 extra_args: Sequence[str] = ()):
        self.repo, self.backend_dir = Path(repo), Path(backend_dir)
        self.files, self.log_path = files, Path(log_path)
        self.startup_timeout, self.stop_timeout = startup_timeout, stop_timeout
        self.extra_args = list(extra_args)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [str(self.files.binary), f"--model-repository={self.repo}",
                f"--backend-directory={self.backend_dir}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--exit-timeout-secs=5",
                "--strict-readiness=true", *self.extra_args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(self.files.libs)
        env["LD_LIBRARY_PATH"] = (libs + os.pathsep + env["LD_LIBRARY_PATH"]
                                  if env.get("LD_LIBRARY_PATH") else libs)
        return env

    def start(self) -> "LocalServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env(),
                                            start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self) -> None:
        """Until /v2/health/ready answers 200 (every model loaded, --strict-readiness), the
        process exits, or startup_timeout passes."""
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonServerError(f"tritonserver exited with {self.process.returncode} "
                                        f"while starting; its log ({self.log_path}) ends:\n"
                                        f"{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.25)
        raise TritonServerError(f"tritonserver was not ready after {self.startup_timeout:.0f} s; "
                                f"its log ({self.log_path}) ends:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """Stop the server and everything it started (the Python stubs); its exit code."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=self.stop_timeout)
        # Stubs left behind by a killed server would hold shared memory: end the group's rest.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        return p.returncode

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
