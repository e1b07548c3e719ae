"""The FaceSR inference service: FastAPI over ONNX Runtime, numpy and Pillow only (no torch)."""

__version__ = "0.1.0"
