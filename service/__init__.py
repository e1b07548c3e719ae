"""The FaceSR inference service: FastAPI over ONNX Runtime, numpy and Pillow only (no torch)."""

import os

# The onnxruntime wheels ship a telemetry uploader (seen with strace: DNS lookups for a Microsoft
# endpoint). It must be off before onnxruntime is first imported; a user's own value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
