"""Export of static sub-networks to ONNX and TensorRT, with accuracy checks and serving bundles."""
