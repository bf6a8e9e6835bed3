"""The ONNX Runtime backend: CPU by default; CUDA and TensorRT execution providers on request."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.artifacts import INPUT_NAMES
from toolkit.runtime.base import Runner, RunnerError, TensorSpec

# ONNX tensor type strings as ONNX Runtime reports them -> numpy dtypes.
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
           "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(double)": np.float64}


class Provider(str, enum.Enum):
    cpu = "CPUExecutionProvider"
    cuda = "CUDAExecutionProvider"
    tensorrt = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class TensorrtEPOptions:
    """Options of ONNX Runtime's TensorRT execution provider worth setting on every run: building
    an engine takes minutes, so cache it (and the tactic timing cache) between sessions.
    Option names: onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html."""

    engine_cache_path: str | None = None
    timing_cache_path: str | None = None
    fp16: bool = False  # only for FP32 graphs; an FP16/QDQ graph carries its own precision

    def as_provider_options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.engine_cache_path:
            opts |= {"trt_engine_cache_enable": "True",
                     "trt_engine_cache_path": self.engine_cache_path}
        if self.timing_cache_path:
            opts |= {"trt_timing_cache_enable": "True",
                     "trt_timing_cache_path": self.timing_cache_path}
        if self.fp16:
            opts["trt_fp16_enable"] = "True"
        return opts


EXPECTED_INPUTS = INPUT_NAMES


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: tuple[Provider, ...] = (Provider.cpu,),
                 threads: int | None = None, tensorrt: TensorrtEPOptions | None = None,
                 expected_inputs: tuple[str, ...] | None = EXPECTED_INPUTS):
        super().__init__()
        self.path = Path(path)
        self.providers = tuple(Provider(p) for p in providers)
        self.threads, self.tensorrt = threads, tensorrt or TensorrtEPOptions()
        self.expected_inputs = expected_inputs
        self.session = None

    def _provider_list(self) -> list:
        out = []
        for p in self.providers:
            if p is Provider.tensorrt:
                out.append((p.value, self.tensorrt.as_provider_options()))
            else:
                out.append(p.value)
        return out

    def _activate(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise RunnerError(f"ONNX model not found: {self.path}; export one with "
                              "`toolkit export --checkpoint runs/NAME`")
        available = set(ort.get_available_providers())
        missing = [p.value for p in self.providers if p.value not in available]
        if missing:
            raise RunnerError(f"{self.path}: execution provider(s) {missing} are not in this "
                              f"onnxruntime build (it has {sorted(available)}); install "
                              "onnxruntime-gpu for CUDA/TensorRT or use the CPU provider")
        from toolkit.onnx_file import UnsafeOnnxError, check_external_data

        try:  # before ONNX Runtime opens anything the file points to
            check_external_data(self.path)
        except UnsafeOnnxError as e:  # every activation failure is a RunnerError
            raise RunnerError(str(e)) from e
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(self.path), so, providers=self._provider_list())
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise RunnerError(f"{self.path} is not a loadable ONNX model ({first}); the file is "
                              "damaged, truncated or not ONNX: export it again with "
                              "`toolkit export`") from e
        names = tuple(i.name for i in session.get_inputs())
        if self.expected_inputs is not None and set(names) != set(self.expected_inputs):
            raise RunnerError(f"{self.path} takes inputs {list(names)}, not "
                              f"{list(self.expected_inputs)}; it was not exported from a toolkit "
                              "checkpoint: export it with `toolkit export`")
        self.session = session

    def _deactivate(self) -> None:
        self.session = None

    def input_specs(self) -> dict[str, TensorSpec]:
        specs = {}
        for i in self.session.get_inputs():
            if i.type not in _DTYPES:
                raise RunnerError(f"{self.path}: input {i.name!r} has unsupported type {i.type}")
            shape = tuple(d if isinstance(d, int) else None for d in i.shape)
            specs[i.name] = TensorSpec(i.name, np.dtype(_DTYPES[i.type]), shape)
        return specs

    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def metadata(self) -> dict[str, str]:
        """The model's metadata_props (the toolkit's record is under artifacts.METADATA_KEY)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def artifact_metadata(self):
        """The toolkit's ArtifactMetadata record, read through the session (no onnx package
        needed); an ArtifactError if the model carries none."""
        from toolkit.artifacts import ArtifactMetadata

        return ArtifactMetadata.from_props(self.metadata(), str(self.path))

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, feed)
        return dict(zip(self.output_names(), outs))
