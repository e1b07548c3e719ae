"""Training, evaluation and ONNX export for stochastic attribute modelling face SR (PyTorch)."""

import os

# Export checks every graph in onnxruntime, whose wheels ship a telemetry uploader: keep it off
# (see service/__init__.py); a user's own value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
