"""Triton Python-backend model written by `toolkit triton` (this file is <name>_text/1/model.py).

Inputs image_bytes (PNG/JPEG bytes) and question (UTF-8), BYTES (B, 1) each; outputs label (B, 1)
and probabilities (B, C) in labels.txt's order. The logic is toolkit.triton.text.TextModel, so the
Python that runs this file needs the toolkit (numpy, Pillow, tokenizers): installed there, or
listed in toolkit.json's "python_path" (`toolkit triton --python-path DIR`), whose folders go first
on sys.path as soon as Triton imports this file. That must happen here, at import: Triton's
Python backend stub runs its own interpreter, which does not see a virtual environment's
site-packages, and imports triton_python_backend_utils (which needs numpy) right after this file.
Model interface: initialize/execute/finalize of https://github.com/triton-inference-server/
python_backend (README, Usage).
"""

import json
import sys
from pathlib import Path

SPEC = Path(__file__).resolve().with_name("toolkit.json")

try:
    _extra = json.loads(SPEC.read_text(encoding="utf-8")).get("python_path", [])
except (OSError, ValueError):
    _extra = []  # TextSpec.read in initialize reports the missing or damaged file
for _entry in reversed(_extra):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        from toolkit.triton.text import TextModel, TextSpec, bls_call

        self.pb = pb_utils
        spec = TextSpec.read(SPEC)
        self.model = TextModel(spec, bls_call(pb_utils, spec.target_model))

    def execute(self, requests):
        return self.model.execute(requests, self.pb)

    def finalize(self):
        self.model.close()
