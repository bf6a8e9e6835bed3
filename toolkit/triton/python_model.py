"""Triton Python-backend model written by `toolkit triton` (this file is <name>_text/1/model.py).

Inputs image_bytes (PNG/JPEG bytes) and question (UTF-8), BYTES (B, 1) each; outputs label (B, 1)
and probabilities (B, C) in labels.txt's order. The logic is toolkit.triton.text.TextModel, so the
Python that runs this file needs the toolkit (numpy, Pillow, tokenizers): installed there, or
named by the `toolkit_python_path` parameter (`toolkit triton --python-path DIR`), whose folders
go first on sys.path: Triton's Python backend stub runs its own interpreter and does not see a
virtual environment's site-packages. Model interface: initialize/execute/finalize of
https://github.com/triton-inference-server/python_backend (README, Usage).
"""

import json
import os
import sys
from pathlib import Path

PYTHON_PATH_PARAM = "toolkit_python_path"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        extra = config.get("parameters", {}).get(PYTHON_PATH_PARAM, {}).get("string_value", "")
        for entry in reversed([p for p in extra.split(os.pathsep) if p]):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        import triton_python_backend_utils as pb_utils

        from toolkit.triton.text import TextModel, TextSpec, bls_call

        self.pb = pb_utils
        # args["model_repository"] is this model's folder, args["model_version"] its version.
        version = Path(args["model_repository"]) / str(args["model_version"])
        spec = TextSpec.read(version / "toolkit.json")
        self.model = TextModel(spec, bls_call(pb_utils, spec.target_model))

    def execute(self, requests):
        return self.model.execute(requests, self.pb)

    def finalize(self):
        self.model.close()
