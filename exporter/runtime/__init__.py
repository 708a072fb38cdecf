"""Runners: PyTorch, onnxruntime, and (lazily imported) TensorRT, behind one call shape."""
