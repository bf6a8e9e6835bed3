"""Serving on NVIDIA Triton Inference Server.

    from toolkit.triton import RepositoryConfig, write_repository
    write_repository(RepositoryConfig(model="export/model.onnx", repo="triton_repo"))

`repository` writes a Triton model repository from an artifact's own record (the model for Triton's
onnxruntime or tensorrt backend, and a Python-backend model that takes raw image bytes and question
strings); `text` is that Python model's logic (preprocessing and answers, no Triton imports);
`local` starts a tritonserver on this machine from the nvidia-pytriton wheel (tests, bench).
"""

from toolkit.triton.repository import (RepositoryConfig, RepositoryResult, TritonRepoError,
                                       write_repository)

__all__ = ["RepositoryConfig", "RepositoryResult", "TritonRepoError", "write_repository"]
