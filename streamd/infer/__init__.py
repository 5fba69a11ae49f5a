"""Inference back-ends, each L in, ab out: ONNX Runtime (with the model file's metadata), PyTorch, a Triton
server."""
