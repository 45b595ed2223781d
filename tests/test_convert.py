"""Opset conversion only for the backend that needs it (backplane.engine.convert), checked on
sample inputs: a kernel backend runs a node at an older version of a changed signature
converted; a graph compiler gets the model as it is."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import backplane as bp
from backplane.engine import convert
from backplane.engine.registry import registry


def _opset11(dtype: int = TensorProto.FLOAT) -> object:
    """ReduceMean-11 (axes an attribute), Sub, Squeeze-11 (axes an attribute): two ops
    whose signature changed since (ReduceMean-18, Squeeze-13 take axes as an input)."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Squeeze", ["d"], ["y"], axes=[0])]
    graph = helper.make_graph(nodes, "opset11",
                              [helper.make_tensor_value_info("x", dtype, [1, "n", 5])],
                              [helper.make_tensor_value_info("y", dtype, ["n", 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return model


def _kernel_backend() -> str:
    devices = {d.backend for d in registry().devices()}
    for name in ("opencl", "arm-neon", "torch-cpu"):
        if name in devices:
            return name
    pytest.skip("no kernel backend with a device here (opencl needs PoCL or another ICD)")


@pytest.mark.parametrize("n", [4, 7])
def test_a_kernel_backend_runs_older_versions_converted_and_checked(n):
    backend = _kernel_backend()
    x = np.random.default_rng().standard_normal((1, n, 5)).astype(np.float32)
    session = bp.Session(_opset11(), devices=[backend])
    got = session.run({"x": x})["y"]
    np.testing.assert_allclose(got, (x - x.mean(axis=1, keepdims=True))[0],
                               rtol=1e-5, atol=1e-6)
    [part] = session.plan.partitions
    assert part.backend == backend and part.opset == 18  # ReduceMean's newer version
    reasons = {p.node: p.reason for p in session.plan.placements}
    assert "converted from opset 11 to 18" in reasons["ReduceMean_0"]
    assert "checked against the original on sample inputs" in reasons["ReduceMean_0"]
    assert "converted from opset 11 to 13" in reasons["Squeeze_2"]
    assert "converted" not in reasons["Sub_1"]
    assert f"converted to opset 18 for {backend}" in session.plan.explain()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino-cpu"])
def test_a_graph_compiler_gets_the_model_at_its_own_opset(backend):
    if backend not in {d.backend for d in registry().devices()}:
        pytest.skip(f"{backend} has no device here")
    session = bp.Session(_opset11(), devices=[backend])
    assert [p.opset for p in session.plan.partitions] == [0]
    assert not any("converted" in p.reason for p in session.plan.placements)


def test_the_automatic_plan_converts_nothing_a_fast_backend_runs_as_it_is():
    session = bp.Session(_opset11())
    fast = {p.backend for p in session.plan.partitions}
    if not fast & {"onnxruntime", "openvino-cpu"}:
        pytest.skip("no graph compiler here")
    assert all(p.opset == 0 for p in session.plan.partitions)


def test_a_node_the_backend_still_refuses_after_conversion_names_the_conversion():
    backend = _kernel_backend()
    caps = registry().backends[backend].capabilities
    if "float64" in (caps.ops["ReduceMean"].dtypes or ()):
        pytest.skip(f"{backend} runs ReduceMean in float64")
    graph = bp.load_model(_opset11(TensorProto.DOUBLE))
    target, verdict = convert.admit(graph.nodes[0], graph, caps, backend)
    assert target == 0 and not verdict
    assert verdict.detail.startswith("converted to opset 18: ")
    assert "float64" in verdict.detail


def test_a_conversion_that_cannot_be_checked_is_refused_with_the_reason():
    backend = _kernel_backend()
    caps = registry().backends[backend].capabilities
    # A Squeeze-11 of a value whose rank is unknown (a Reshape to a shape fed at run time):
    # no sample input can be drawn for it, so the conversion is not trusted.
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Squeeze", ["r"], ["y"], axes=[0])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                     helper.make_tensor_value_info("s", TensorProto.INT64, ["k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    loaded = bp.load_model(model)
    squeeze = loaded.nodes[1]
    assert convert.target_opset(squeeze, caps) == 13
    target, verdict = convert.admit(squeeze, loaded, caps, backend)
    assert target == 0 and not verdict and verdict.code == "capability:version"
    assert "converting it to opset 13 cannot be checked: an input's shape is unknown" \
        in verdict.detail
