"""The embeddable runtime: runners (one interface per backend) and, later, the Predictor."""

from toolkit.runtime.base import Runner, RunnerError, TensorSpec, check_feed

__all__ = ["Runner", "RunnerError", "TensorSpec", "check_feed"]
