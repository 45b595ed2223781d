"""Constant folding and type completion on intake: what computes nothing is gone before
planning, and what ONNX shape inference leaves untyped gets its type from the registry."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp

F, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.fixture
def seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**32)


def exporter_style_model(batch: int | str = 2) -> object:
    """What the TorchScript exporter writes for ``x.view(x.shape[0], -1) @ w``: Constant
    nodes, and Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", I64, [], [0])),
        helper.make_node("Constant", [], ["minus1"], value=helper.make_tensor("m", I64, [1], [-1])),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(
            np.linspace(-1, 1, 12 * 4, dtype=np.float32).reshape(12, 4), "w")),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "exported", [helper.make_tensor_value_info("x", F, [batch, 3, 4])],
        [helper.make_tensor_value_info("y", F, [batch, 4])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_constant_nodes_and_static_shape_arithmetic_are_folded_before_planning():
    graph = bp.load_model(exporter_style_model())
    assert [n.op_type for n in graph.nodes] == ["Reshape", "MatMul"]
    assert any("folded" in note for note in graph.notes)
    assert "w" in graph.initializers and "target" in graph.initializers


def test_with_a_dynamic_batch_only_the_constants_are_folded():
    graph = bp.load_model(exporter_style_model(batch="n"))
    ops = [n.op_type for n in graph.nodes]
    assert "Constant" not in ops and "Shape" in ops and ops[-1] == "MatMul"


@pytest.mark.parametrize("batch", [2, "n"])
def test_a_folded_model_computes_what_the_model_as_written_computes(batch, seed):
    from onnx.reference import ReferenceEvaluator

    model = exporter_style_model(batch)
    x = np.random.default_rng(seed).standard_normal((2, 3, 4)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = bp.Session(model, devices=["reference"]).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"seed {seed}")


def test_every_backend_of_the_cpu_runs_the_exported_model_pinned(seed):
    """The op that kept real models off ONNX Runtime and OpenVINO: Constant."""
    model = exporter_style_model("n")
    x = np.random.default_rng(seed).standard_normal((3, 3, 4)).astype(np.float32)
    want = bp.Session(model, devices=["reference"]).run({"x": x})["y"]
    for backend in ("onnxruntime", "openvino-cpu"):
        if not [d for d in bp.registry().devices() if d.backend == backend]:
            continue
        s = bp.Session(model, devices=[backend])
        np.testing.assert_allclose(s.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{backend}, seed {seed}")


def test_quantization_patterns_are_not_folded():
    w = numpy_helper.from_array(np.arange(-4, 4, dtype=np.int8).reshape(2, 4), "w")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", F, [1, 2])],
                              [helper.make_tensor_value_info("y", F, [1, 4])],
                              initializer=[w, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op_type for n in bp.load_model(model).nodes] == ["DequantizeLinear", "MatMul"]


def test_a_graph_output_computed_from_constants_stays_a_node():
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", F, [2], [1, 2])),
             helper.make_node("Add", ["c", "c"], ["y"]), helper.make_node("Relu", ["x"], ["r"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2]),
                               helper.make_tensor_value_info("r", F, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = bp.Session(model, devices=["reference"]).run({"x": np.ones(2, np.float32)})
    np.testing.assert_array_equal(out["y"], [2.0, 4.0])
