"""The reference backend's replacements for kernels onnx.reference (1.23) gets wrong.

Each is checked against something it does not share code with: ONNX's recorded node-test
outputs, the oracle's vectorised numpy formulas, an adjoint identity, or plain slicing.
Inputs are fresh random data; the seed is printed on failure (BACKPLANE_TEST_SEED replays).
"""

from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
from onnx import TensorProto, helper

from backplane.conformance import compare
from backplane.conformance.cases import onnx_node_cases
from backplane.conformance.oracle import evaluate, np_conv, np_layer_norm, np_pool
from backplane.plugins.reference import fixes

SEED = int(os.environ.get("BACKPLANE_TEST_SEED") or random.SystemRandom().randrange(2 ** 31))
WHERE = f"(seed={SEED}; rerun with BACKPLANE_TEST_SEED={SEED})"
FIXED = ("MaxPool", "ConvTranspose", "Pad", "Flatten", "GlobalAveragePool", "MatMulInteger",
         "LayerNormalization", "Erf")


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng([SEED, abs(hash(request.node.name)) % 2 ** 32])


def _run(op: str, inputs: dict[str, np.ndarray], outputs: int = 1, **attrs) -> list:
    """One node through the fixed evaluator; inputs are graph inputs, in order."""
    from backplane.graph import DTYPE_CODES

    names = list(inputs)
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, DTYPE_CODES[str(v.dtype)], v.shape)
         for n, v in inputs.items()],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.UNDEFINED, None)
         for i in range(outputs)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    got = evaluate(model, inputs)
    return [got[f"y{i}"] for i in range(outputs)]


#: ONNX node tests whose recorded outputs contradict the ONNX spec, which the reference
#: follows (docs/conformance.md, "The oracle").
SPEC_OVER_RECORDED = {
    # The spec's pads for output_shape with auto_pad NOTSET put the odd pixel of the total
    # padding at the start; the recorded output (and ONNX Runtime) put it at the end.
    "test_convtranspose_output_shape",
}


@pytest.mark.parametrize("op", FIXED)
def test_fixed_kernels_reproduce_onnx_recorded_node_tests(op):
    cases = onnx_node_cases([op])
    assert cases, f"ONNX ships node tests for {op}"
    for case in cases:
        if case.id.rsplit("/", 1)[1] in SPEC_OVER_RECORDED:
            continue
        got = evaluate(case.model, case.inputs)
        for name, want in case.expected.items():
            c = compare(got[name], want)
            assert c.ok, f"{case.id} output {name}: {c}"


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1]},
    {"kernel_shape": [2, 3], "strides": [2, 1], "auto_pad": "SAME_LOWER"},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "storage_order": 1},
    {"kernel_shape": [2, 2], "dilations": [2, 2], "ceil_mode": 1, "strides": [2, 2]},
    {"kernel_shape": [3], "pads": [1, 2]},
])
def test_max_pool_matches_the_vectorised_formula_with_indices(rng, attrs):
    nsp = len(attrs["kernel_shape"])
    x = rng.standard_normal((2, 3) + (7, 6)[:nsp]).astype(np.float32)
    y, indices = _run("MaxPool", {"x": x}, outputs=2, **attrs)
    want_y, want_i = np_pool("max", x, **attrs)
    assert y.dtype == np.float32 and indices.dtype == np.int64, WHERE
    np.testing.assert_array_equal(y, want_y.astype(np.float32), err_msg=WHERE)
    np.testing.assert_array_equal(indices, want_i, err_msg=WHERE)
    # Each index points at the value it claims, in the chosen storage order.
    order = "F" if attrs.get("storage_order") else "C"
    images = x.reshape(x.shape[0] * x.shape[1], -1) if order == "C" else np.stack(
        [img.ravel(order="F") for img in x.reshape((-1,) + x.shape[2:])])
    np.testing.assert_array_equal(images.ravel()[indices], y, err_msg=WHERE)


def test_max_pool_of_integers_with_pads_never_selects_padding(rng):
    x = rng.integers(-128, -100, (1, 2, 5, 5)).astype(np.int8)  # all below a zero pad
    [y] = _run("MaxPool", {"x": x}, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    want, _ = np_pool("max", x, [3, 3], pads=[1, 1, 1, 1])
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, want.astype(np.int8), err_msg=WHERE)


@pytest.mark.parametrize("spec", [
    dict(x=(2, 4, 5, 5), w=(4, 3, 3, 3), group=1),
    dict(x=(1, 6, 4, 5), w=(6, 2, 3, 2), group=3, strides=[2, 2], pads=[1, 0, 0, 1]),
    dict(x=(1, 4, 5), w=(4, 3, 3), group=2, strides=[3], dilations=[2], pads=[2, 1]),
    dict(x=(1, 2, 3, 3, 3), w=(2, 2, 2, 2, 2), group=1, strides=[2, 1, 2]),
])
def test_conv_transpose_is_the_adjoint_of_conv(rng, spec):
    """<ConvTranspose(x; w), y> == <x, Conv(y; w)> for every x and y: the definition."""
    x = rng.standard_normal(spec["x"])
    w = rng.standard_normal(spec["w"])
    attrs = {k: spec[k] for k in ("strides", "pads", "dilations") if k in spec}
    [t] = _run("ConvTranspose", {"x": x, "w": w}, group=spec["group"], **attrs)
    y = rng.standard_normal(t.shape)
    back = np_conv(y, w, group=spec["group"], **attrs)
    assert back.shape == x.shape, (back.shape, x.shape)
    assert math.isclose(float(np.sum(t * y)), float(np.sum(x * back)), rel_tol=1e-10), WHERE


def test_conv_transpose_bias_per_group_and_empty_batch(rng):
    x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    w = rng.standard_normal((4, 2, 2, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    [with_bias] = _run("ConvTranspose", {"x": x, "w": w, "b": b}, group=2)
    [without] = _run("ConvTranspose", {"x": x, "w": w}, group=2)
    np.testing.assert_allclose(with_bias - without, np.broadcast_to(
        b.reshape(1, 4, 1, 1), without.shape), rtol=1e-5, atol=1e-5, err_msg=WHERE)
    [empty] = _run("ConvTranspose", {"x": np.zeros((0, 4, 3, 3), np.float32), "w": w},
                   group=2, strides=[2, 2])
    assert empty.shape == (0, 4, 6, 6) and empty.dtype == np.float32


def test_negative_pads_crop_and_positive_pads_still_pad(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    [y] = _run("Pad", {"x": x, "pads": np.array([-1, 2, 1, -2], np.int64)}, mode="edge")
    want = np.pad(x[1:, :3], [(0, 1), (2, 0)], mode="edge")
    np.testing.assert_array_equal(y, want, err_msg=WHERE)


def test_matmul_integer_per_row_and_per_column_zero_points(rng):
    a = rng.integers(-128, 128, (3, 4)).astype(np.int8)
    b = rng.integers(0, 256, (4, 5)).astype(np.uint8)
    za = rng.integers(-5, 5, 3).astype(np.int8)
    zb = rng.integers(0, 9, 5).astype(np.uint8)
    [y] = _run("MatMulInteger", {"a": a, "b": b, "za": za, "zb": zb})
    want = [[sum((int(a[i, k]) - int(za[i])) * (int(b[k, j]) - int(zb[j])) for k in range(4))
             for j in range(5)] for i in range(3)]
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, np.array(want, np.int32), err_msg=WHERE)


def test_empty_global_average_pool_and_flatten():
    [g] = _run("GlobalAveragePool", {"x": np.zeros((0, 3, 4, 4), np.float32)})
    assert g.shape == (0, 3, 1, 1) and g.dtype == np.float32
    [f] = _run("Flatten", {"x": np.zeros((0, 3, 4), np.float32)}, axis=2)
    assert f.shape == (0, 4)
    [f0] = _run("Flatten", {"x": np.zeros((2, 0, 4), np.float32)}, axis=0)
    assert f0.shape == (1, 0)


def test_layer_norm_of_bfloat16_computes_stage_one_in_float32(rng):
    import ml_dtypes

    bf16 = ml_dtypes.bfloat16
    x = (rng.standard_normal((2, 1025)) * 4 + 100).astype(bf16)
    scale = rng.standard_normal(1025).astype(bf16)
    [y] = _run("LayerNormalization", {"x": x, "scale": scale})
    want = np_layer_norm(x.astype(np.float64), scale.astype(np.float64))
    c = compare(y, want.astype(bf16))
    assert y.dtype == bf16 and c.ok, f"{c} {WHERE}"


def test_erf_keeps_float64_precision(rng):
    x = rng.standard_normal(64)
    [y] = _run("Erf", {"x": x})
    assert y.dtype == np.float64
    assert np.array_equal(y, np.array([math.erf(v) for v in x])), WHERE


def test_reference_backend_uses_the_fixed_kernels():
    from backplane.plugins.reference import ReferenceExecutable

    node = helper.make_node("Pad", ["x", "pads"], ["y"])
    graph = helper.make_graph(
        [node], "crop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5]),
                         helper.make_tensor_value_info("pads", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    out = ReferenceExecutable(model).run({"x": x, "pads": np.array([0, -1, -1, 0], np.int64)})
    np.testing.assert_array_equal(out["y"], x[:3, 1:])
    assert fixes.evaluator_class().__name__ == "FixedReferenceEvaluator"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_softmax_and_sum_accumulate_in_float32(rng, dtype):
    import ml_dtypes

    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float16)
    x = (rng.standard_normal((2, 1025)) * 3).astype(dt)
    [soft] = _run("Softmax", {"x": x})
    [total] = _run("ReduceSum", {"x": x, "axes": np.array([1], np.int64)}, keepdims=0)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    for got, want in ((soft, e / e.sum(axis=1, keepdims=True)), (total, x64.sum(axis=1))):
        assert got.dtype == dt
        c = compare(got, want.astype(dt))
        assert c.ok, f"{c} {WHERE}"


@pytest.mark.parametrize("opset", [13, 17, 19, 21])
def test_dequantize_linear_runs_at_every_accepted_opset(rng, opset):
    from onnx import numpy_helper

    from backplane.plugins.reference import ReferenceExecutable

    x = rng.integers(-128, 128, (3, 4)).astype(np.int8)
    scale = rng.uniform(0.01, 2.0, 4).astype(np.float32)
    zero = rng.integers(-5, 5, 4).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1)], "dq",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        initializer=[numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    out = ReferenceExecutable(model).run({"x": x})
    want = (x.astype(np.float32) - zero.astype(np.float32)) * scale  # the ONNX formula
    np.testing.assert_array_equal(out["y"], want)
