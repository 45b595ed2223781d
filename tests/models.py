"""Small ONNX models built in code for the tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path) -> str:
    """Write a model and return its path as a string."""
    onnx.save_model(model, str(path))
    return str(path)


def relu_conv_relu(seed: int = 0) -> onnx.ModelProto:
    """x[1,2,6,6] -> Relu -> Conv(3 filters, 3x3, pad 1) -> Relu -> y[1,3,6,6].

    The example plugin has no Conv: a plan puts Conv on another backend.
    """
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu_in"),
             helper.make_node("Conv", ["a", "w"], ["b"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["b"], ["y"], name="relu_out")]
    graph = helper.make_graph(
        nodes, "relu-conv-relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def relu_conv_relu_numpy(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """What relu_conv_relu computes, in float64 numpy."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32).astype(np.float64)
    a = np.pad(np.maximum(x.astype(np.float64), 0), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((1, 3, 6, 6))
    for i in range(6):
        for j in range(6):
            out[0, :, i, j] = np.tensordot(w, a[0, :, i:i + 3, j:j + 3], axes=3)
    return np.maximum(out, 0)


def single(op: str, dtype: int = TensorProto.FLOAT, shape=("batch", 4), **attrs) -> onnx.ModelProto:
    """One unary op: x -> OP -> y, with a symbolic batch dimension."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name=op.lower(), **attrs)], op.lower(),
        [helper.make_tensor_value_info("x", dtype, list(shape))],
        [helper.make_tensor_value_info("y", dtype, list(shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm(trans_a: int, seed: int = 0) -> onnx.ModelProto:
    """a -> Gemm(a, w, c, transA) -> y. The example plugin refuses transA=1."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w")
    c = numpy_helper.from_array(rng.standard_normal((5,)).astype(np.float32), "c")
    a_shape = [4, 3] if trans_a else [3, 4]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w", "c"], ["y"], transA=trans_a, name="gemm")], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])], initializer=[w, c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def batched_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[batch,16] -> MatMul(16x8, standard normal from ``seed``) -> Relu -> y[batch,8]:
    a model the batcher, the server and Ray batch."""
    w = np.random.default_rng(seed).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
