"""Nodes with subgraphs (If, Loop, Scan) are planned whole, where their bodies run."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper

import backplane as bp


@pytest.fixture
def seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**32)


def if_model():
    """out = Sigmoid(If(sum(x) > 0, Relu(x) * k, -x)); the branches read x and k from the
    enclosing graph."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"]),
                                helper.make_node("Mul", ["t", "k"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", T.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["y_else"])], "else", [],
                               [helper.make_tensor_value_info("y_else", T.FLOAT, [2, 3])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g,
                              name="branch"),
             helper.make_node("Sigmoid", ["y"], ["out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("out", T.FLOAT, [2, 3])],
                          initializer=[helper.make_tensor("zero", T.FLOAT, [], [0.0]),
                                       helper.make_tensor("k", T.FLOAT, [], [2.0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_if_node_carries_its_branches_nodes_typed():
    graph = bp.load_model(if_model())
    branch = next(n for n in graph.nodes if n.op_type == "If")
    assert sorted(n.op_type for n in branch.body) == ["Mul", "Neg", "Relu"]
    assert all(n.input_types[0].dtype == "float32" for n in branch.body)


def test_a_backend_that_lacks_a_branch_op_does_not_get_the_if():
    from backplane.sdk.contract import Capabilities, OpSupport

    graph = bp.load_model(if_model())
    branch = next(n for n in graph.nodes if n.op_type == "If")
    caps = Capabilities(ops={k: OpSupport() for k in ("If", "Relu", "Mul")})
    verdict = caps.check(branch)
    assert not verdict and "'Neg'" in verdict.detail and "whole" in verdict.detail


@pytest.mark.parametrize("devices", [["openvino-cpu"], ["onnxruntime"], "auto",
                                     ["opencl", "reference"]])
def test_an_if_runs_whole_on_a_backend_that_runs_its_branches(devices, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3)).astype(np.float32)
    want = bp.Session(if_model(), devices=["reference"]).run({"x": x})["out"]
    available = {d.backend for d in bp.registry().devices()}
    if devices != "auto" and not set(devices) <= available:
        pytest.skip(f"{devices} not all available here")
    s = bp.Session(if_model(), devices=devices)
    np.testing.assert_allclose(s.run({"x": x})["out"], want, rtol=1e-6, atol=1e-6,
                               err_msg=f"seed {seed}")
    where = s.plan.device_of("branch")
    if devices == ["opencl", "reference"]:
        assert where == "reference:0"  # opencl has no If: it runs whole on the reference
    assert not s.plan.uses_fallback or devices != "auto"


def test_the_plan_names_the_ops_no_fast_backend_runs():
    """An op only the reference runs: a string op, with ONNX Runtime (which holds strings)
    left out."""
    from onnx import TensorProto as TP

    nodes = [helper.make_node("StringNormalizer", ["s"], ["n"], case_change_action="UPPER"),
             helper.make_node("Relu", ["x"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("s", TP.STRING, [2]),
                                       helper.make_tensor_value_info("x", TP.FLOAT, [2])],
                          [helper.make_tensor_value_info("n", TP.STRING, [2]),
                           helper.make_tensor_value_info("y", TP.FLOAT, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    from backplane.engine.scheduler import Constraints

    plan = bp.plan_model(model, constraints=Constraints(exclude=frozenset({"onnxruntime"})))
    assert plan.uses_fallback
    assert "fallback: 1 node(s)" in plan.explain() and "StringNormalizer" in plan.explain()
