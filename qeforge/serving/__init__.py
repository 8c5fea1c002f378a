"""Serving: the OpenAI-compatible shim, routing, ONNX Runtime path."""
