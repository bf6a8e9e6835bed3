"""Export: PyTorch -> ONNX FP32 once, then ONNX-to-ONNX transforms to FP16 and INT8 (QDQ).

`export(ExportConfig)` in toolkit.export.pipeline is the entry point; onnx.py, fp16.py and int8.py
each hold one step.
"""
