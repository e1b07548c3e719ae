"""Training, evaluation and ONNX export for stochastic attribute modelling face SR (PyTorch)."""
