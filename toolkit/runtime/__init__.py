"""The embeddable runtime: runners (one interface per backend) and the Predictor.

`from toolkit.runtime import Predictor` loads the predictor module on first use (PEP 562), so
importing this package stays light; neither path imports torch.
"""

from toolkit.runtime.base import Runner, RunnerError, TensorSpec, check_feed

__all__ = ["Runner", "RunnerError", "TensorSpec", "check_feed", "Predictor", "Prediction",
           "PredictorError"]


def __getattr__(name: str):
    if name in ("Predictor", "Prediction", "PredictorError"):
        from toolkit.runtime import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'toolkit.runtime' has no attribute {name!r}")
