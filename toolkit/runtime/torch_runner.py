"""The reference backend: the PyTorch model of a run directory (or a module), in eval mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.artifacts import INPUT_NAMES, OUTPUT_NAMES
from toolkit.runtime.base import Runner, TensorSpec


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, checkpoint: str | Path, which: str = "best", device: str = "cpu"):
        super().__init__()
        self.checkpoint, self.which, self.device = Path(checkpoint), which, device
        self.ck = None
        self._loaded = None  # a Checkpoint handed in by from_checkpoint: activate reuses it

    @classmethod
    def from_checkpoint(cls, ck, device: str = "cpu") -> "TorchRunner":
        """A runner on an already loaded Checkpoint (its model is not loaded a second time)."""
        runner = cls(ck.path, device=device)
        runner._loaded = ck
        return runner

    def _activate(self) -> None:
        from toolkit.checkpoint import load_checkpoint

        self.ck = self._loaded or load_checkpoint(self.checkpoint, self.which, device=self.device)

    def _deactivate(self) -> None:
        self.ck = None

    def input_specs(self) -> dict[str, TensorSpec]:
        s = self.ck.config.image_size
        i64 = np.dtype(np.int64)
        image, ids, mask = INPUT_NAMES  # also the model's forward arguments
        return {image: TensorSpec(image, np.dtype(np.float32), (None, 3, s, s)),
                ids: TensorSpec(ids, i64, (None, None)),
                mask: TensorSpec(mask, i64, (None, None))}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            args = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
            logits = self.ck.model(**args)
        return {OUTPUT_NAMES[0]: logits.float().cpu().numpy()}
