"""Is onnxruntime-gpu usable here? Versions, providers, and one small graph run on CUDA.

The graph mixes a cuDNN convolution with elementwise ops that run ONNX Runtime's own CUDA
kernels, so a build without kernels for this GPU fails here, not in the benchmarks.
Exit status 1 when the session does not run on CUDAExecutionProvider.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CUDA = "CUDAExecutionProvider"


def small_graph() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Tanh", ["r"], ["t"]),
             helper.make_node("ReduceMean", ["t"], ["y"], keepdims=1)]
    graph = helper.make_graph(
        nodes, "check", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def main() -> int:
    print(f"onnxruntime {ort.__version__} from {ort.__file__}")
    print(f"available providers: {ort.get_available_providers()}")
    sess = ort.InferenceSession(small_graph(), providers=[CUDA, "CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = sess.run(None, {"x": x})[0]
    want = ort.InferenceSession(small_graph(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    ok = sess.get_providers()[0] == CUDA and np.allclose(got, want, atol=1e-3)
    print(f"session providers: {sess.get_providers()}; CUDA vs CPU max diff "
          f"{float(np.abs(got - want).max()):.2e}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
