"""Engine builders: TensorRT plans from exported ONNX models (toolkit/engines/tensorrt.py)."""
