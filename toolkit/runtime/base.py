"""The one runner interface every backend implements: dict of named numpy arrays in, dict out.

A `Runner` owns its lifecycle (`activate` loads the model or engine, `deactivate` frees it; both
through `with runner:`) and checks every feed against the backend's input specs before calling
the backend, so that a wrong name, dtype or rank is a clear error on every backend alike. A backend
fills in `_activate`, `_deactivate`, `input_specs` and `_infer`, in its own module, importing its
heavy library (torch, onnxruntime, tensorrt) only there.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from toolkit.errors import ToolkitError


class RunnerError(ToolkitError):
    pass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints for fixed axes, None (or a symbolic name) for dynamic ones


def check_feed(feed: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]) -> None:
    """Names, then dtypes, then ranks and fixed dimensions; the first mismatch is the error."""
    missing = [n for n in specs if n not in feed]
    extra = [n for n in feed if n not in specs]
    if missing or extra:
        raise RunnerError(f"inputs do not match the model: missing {missing}, unexpected {extra}; "
                          f"the model takes {list(specs)}")
    for name, spec in specs.items():
        x = feed[name]
        if not isinstance(x, np.ndarray):
            raise RunnerError(f"input {name!r} is a {type(x).__name__}; pass a numpy array")
        if x.dtype != spec.dtype:
            raise RunnerError(f"input {name!r} has dtype {x.dtype}, the model takes {spec.dtype}; "
                              f"convert it with .astype(np.{spec.dtype})")
        if x.ndim != len(spec.shape):
            raise RunnerError(f"input {name!r} has shape {x.shape}, the model takes rank "
                              f"{len(spec.shape)} {tuple(spec.shape)}")
        for axis, (got, want) in enumerate(zip(x.shape, spec.shape)):
            if isinstance(want, int) and want >= 0 and got != want:
                raise RunnerError(f"input {name!r} has shape {x.shape}; axis {axis} must be {want}")


class Runner(abc.ABC):
    """Base class: lifecycle and input checks. Subclasses implement the underscored methods."""

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RunnerError(f"{self.name} is not active; use `with runner:` or runner.activate()")
        check_feed(feed, self.input_specs())
        return self._infer(dict(feed))

    @abc.abstractmethod
    def input_specs(self) -> dict[str, TensorSpec]:
        """Input names -> specs, in the model's order. Valid once active."""

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:
        pass
