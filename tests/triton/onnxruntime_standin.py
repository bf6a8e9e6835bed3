"""A stand-in for Triton's onnxruntime backend, as a Python-based backend, for the real-server test.

The nvidia-pytriton wheel ships tritonserver with the Python backend only (the onnxruntime backend
comes with NVIDIA's container), so tests/triton/test_triton_server.py installs this file as
backends/onnxruntime/model.py (Triton's Python-based backends: docs.nvidia.com/deeplearning/
triton-inference-server/user-guide/docs/backend/docs/python_based_backends.html). It is as strict
as the real backend about the config: the model fails to load unless config.pbtxt's inputs and
outputs (names, data types, dims with -1 where the graph is dynamic) and max_batch_size match the
ONNX file; each request then runs the file with ONNX Runtime. The test prepends SYS_PATH.
"""

import json
import sys
from pathlib import Path

for _entry in reversed(SYS_PATH):  # noqa: F821 (prepended by the test)
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16",
          "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32"}


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        batch = int(config.get("max_batch_size", 0))
        for kind, declared, actual in (("input", config["input"], self.session.get_inputs()),
                                       ("output", config["output"], self.session.get_outputs())):
            by_name = {t["name"]: t for t in declared}
            if set(by_name) != {t.name for t in actual}:
                raise ValueError(f"config {kind}s {sorted(by_name)} are not the model's "
                                 f"{sorted(t.name for t in actual)}")
            for t in actual:
                want = by_name[t.name]
                if want["data_type"] != _TYPES.get(t.type):
                    raise ValueError(f"{t.name}: config {want['data_type']}, model {t.type}")
                shape = [d if isinstance(d, int) else -1 for d in t.shape]
                if batch > 0:
                    if shape[0] != -1:
                        raise ValueError(f"{t.name}: max_batch_size > 0 but the model's batch "
                                         f"axis is fixed ({shape})")
                    shape = shape[1:]
                dims = [int(d) for d in want["dims"]]
                if len(dims) != len(shape) or any(s not in (-1, d) for d, s in zip(dims, shape)):
                    raise ValueError(f"{t.name}: config dims {dims}, model {shape}")
        self.inputs = [t.name for t in self.session.get_inputs()]
        self.outputs = [t.name for t in self.session.get_outputs()]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy()
                    for n in self.inputs}
            outs = self.session.run(self.outputs, feed)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, o) for n, o in zip(self.outputs, outs)]))
        return responses
