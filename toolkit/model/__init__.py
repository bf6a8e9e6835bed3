"""The reference model: `DualModalNet(ModelConfig)`."""

from toolkit.model.net import INPUT_NAMES, OUTPUT_NAMES, DualModalNet, count_parameters

__all__ = ["DualModalNet", "INPUT_NAMES", "OUTPUT_NAMES", "count_parameters"]
