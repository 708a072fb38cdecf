# SPDX-License-Identifier: Apache-2.0
"""exporter: token-reduction Vision Transformers to verified ONNX / TensorRT deployment bundles."""

__version__ = "0.1.0"
