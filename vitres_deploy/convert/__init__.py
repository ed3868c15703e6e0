"""Model conversion, the lowest layer that knows ONNX: PyTorch modules to ONNX files, fp32 ONNX to fp16 ONNX.

Used by ``runtime`` (fp16 models for engines), ``latency`` (blocks timed as ONNX) and ``export`` (whole
sub-networks), so that what is timed is exactly what is shipped.
"""
