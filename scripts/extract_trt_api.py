#!/usr/bin/env python3
"""Extract the public Python API of a TensorRT bindings wheel into a sorted name list.

    python scripts/extract_trt_api.py tensorrt_cu12_bindings-10.3.0-*.whl tests/engines/trt_api_10.3.txt
    python scripts/extract_trt_api.py tensorrt_cu13_bindings-11.4.0.106-*.whl tests/engines/trt_api_11.4.txt

Get the wheels with `pip download --no-deps tensorrt-cu12-bindings==10.3.0` (and
`tensorrt-cu13-bindings==11.4.0.106`): about 1 MB each, unlike the multi-GB `-libs` wheels.

How: a bindings wheel holds `tensorrt_bindings/tensorrt.so`, a pybind11 module linked against
libnvinfer / libnvonnxparser / libnvinfer_plugin. Those libraries are not installable here, but the
module needs only a handful of their C entry points (`createInferBuilder_INTERNAL`, ...; every
TensorRT class is a C++ interface of virtual methods defined in headers). Registering the Python
classes, methods, properties and enum members calls none of them. So we build stub libraries that
export those symbols (each returns 0; none is ever called), import the real module against them in
a subprocess, and walk it: that yields exactly the names `dir()` shows at run time, class by class,
including what the package's `__init__.py` adds in Python (`nptype`, `Logger.WARNING`, ...).
A plain `strings` scan is not enough: the linker merges string tails, so a short name such as
`DeviceType.DLA` is not stored as a string of its own, and docstrings mention removed names.

Needs: gcc, readelf and nm (binutils), and this Python matching the wheel's CPython tag.
Output: one name a line, `Name`, `Class.member` or `Class.Nested.member`, sorted, after `#` header
lines naming the wheel and the version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODULE_DIR = "tensorrt_bindings"

# Runs in the child process (LD_LIBRARY_PATH must be set before the process starts).
_WALK = r"""
import inspect, json, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt

names = set()

def public(n):
    return not n.startswith("__") and n != "_pybind11_conduit_v1_"

def walk(obj, prefix, depth):
    for n in dir(obj):
        if not public(n):
            continue
        try:
            v = getattr(obj, n)
        except Exception:
            continue
        names.add(prefix + n)
        # Classes nest (ILogger.Severity.WARNING); enum members are instances, not classes.
        if inspect.isclass(v) and depth < 2:
            walk(v, prefix + n + ".", depth + 1)

for n in dir(trt):
    if not public(n) and n != "__version__":
        continue
    v = getattr(trt, n)
    if inspect.ismodule(v) and n != "plugin":
        continue  # ctypes, os, sys, warnings imported by __init__.py
    names.add(n)
    if inspect.isclass(v):
        walk(v, n + ".", 1)
print(json.dumps({"version": trt.__version__, "names": sorted(names)}))
"""


def nvidia_symbols(so: Path) -> list[str]:
    """Undefined, unversioned, non-Python symbols: the TensorRT libraries' C entry points."""
    out = subprocess.run(["nm", "-D", "--undefined-only", str(so)], check=True,
                         capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue  # weak symbols, or versioned ones from glibc / libstdc++ / libgcc
        if re.match(r"_?Py", parts[1]):
            continue  # the Python C API, provided by the interpreter
        syms.append(parts[1])
    return sorted(syms)


def nvidia_libraries(so: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(so)], check=True, capture_output=True,
                         text=True).stdout
    return [lib for lib in re.findall(r"Shared library: \[([^\]]+)\]", out)
            if lib.startswith("libnv")]


def extract(wheel: Path) -> tuple[str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp / "site")
        so = tmp / "site" / MODULE_DIR / "tensorrt.so"
        if not so.exists():
            sys.exit(f"{wheel}: no {MODULE_DIR}/tensorrt.so inside; is this a bindings wheel?")
        symbols = nvidia_symbols(so)
        stub_c = tmp / "stub.c"
        stub_c.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
        libdir = tmp / "stubs"
        libdir.mkdir()
        for lib in nvidia_libraries(so):
            subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(libdir / lib), str(stub_c)],
                           check=True)
        env = dict(os.environ, LD_LIBRARY_PATH=str(libdir))
        proc = subprocess.run([sys.executable, "-c", _WALK, str(tmp / "site")], env=env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            sys.exit(f"importing {wheel.name} against stub libraries failed "
                     f"(does this Python match the wheel's tag?):\n{proc.stderr[-3000:]}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        return data["version"], data["names"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path, help="a tensorrt-cu1x-bindings wheel")
    ap.add_argument("out", type=Path, help="the name list to write, e.g. tests/engines/trt_api_10.3.txt")
    args = ap.parse_args()
    version, names = extract(args.wheel)
    header = (f"# TensorRT Python API names of {args.wheel.name}\n"
              f"# version: {version}\n"
              f"# written by scripts/extract_trt_api.py; one name a line, sorted\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "".join(n + "\n" for n in names), encoding="utf-8")
    print(f"{args.out}: {len(names)} names of TensorRT {version}")


if __name__ == "__main__":
    main()
