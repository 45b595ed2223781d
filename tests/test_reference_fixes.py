"""The reference backend's replacements for kernels onnx.reference (1.23) gets wrong or
lacks, at every op version from opset 7 (core/runtimes/onnxref/fixes.py lists them).

Each is checked against something it does not share code with: ONNX's recorded node-test
outputs, the oracle's vectorised numpy formulas, the spec's equations written out, an
adjoint identity, plain slicing, or the same computation at a version onnx.reference gets
right. Inputs are fresh random data; the seed is printed on failure (BACKPLANE_TEST_SEED
replays).
"""

from __future__ import annotations

import math
import os
import random
import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper

from backplane.conformance import compare, tolerance
from backplane.conformance.cases import onnx_node_cases
from backplane.conformance.oracle import evaluate, np_conv, np_layer_norm, np_pool
from backplane.runtimes.onnxref import fixes

SEED = int(os.environ.get("BACKPLANE_TEST_SEED") or random.SystemRandom().randrange(2 ** 31))
WHERE = f"(seed={SEED}; rerun with BACKPLANE_TEST_SEED={SEED})"
FIXED = ("MaxPool", "ConvTranspose", "Pad", "Flatten", "GlobalAveragePool", "MatMulInteger",
         "LayerNormalization", "Erf", "BatchNormalization", "Softmax", "LogSoftmax", "Hardmax",
         "Upsample", "Resize", "Scan", "Scatter", "RoiAlign", "GridSample", "OneHot", "RNN",
         "GRU", "LSTM")


@pytest.fixture
def rng(request) -> np.random.Generator:
    # (crc32, not hash(): str hashes change with each process, and the seed printed on a
    # failure must reproduce it)
    return np.random.default_rng([SEED, zlib.crc32(request.node.name.encode())])


def _run(op: str, inputs: dict[str, np.ndarray], outputs: int = 1, **attrs) -> list:
    """One node at opset 21 through the oracle's evaluator; inputs are graph inputs."""
    model, _ = _model(op, 21, inputs, outputs, **attrs)
    got = evaluate(model, inputs)
    return [got[f"y{i}"] for i in range(outputs)]


def _model(op: str, opset: int, inputs: dict, outputs: int = 1, consts: dict | None = None,
           domain: str = "", **attrs) -> tuple:
    """A one-node model at ``opset`` (``inputs`` fed, ``consts`` as initializers) and its
    feeds."""
    from onnx import numpy_helper

    from backplane.model.graph import DTYPE_CODES

    consts = consts or {}
    node = helper.make_node(op, [*inputs, *consts], [f"y{i}" for i in range(outputs)],
                            domain=domain, **attrs)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(n, DTYPE_CODES[str(v.dtype)], v.shape)
                     for n, v in inputs.items()],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.UNDEFINED, None)
         for i in range(outputs)],
        initializer=[numpy_helper.from_array(v, n) for n, v in consts.items()])
    opsets = [helper.make_opsetid(domain, opset)] + ([helper.make_opsetid("", 17)] if domain
                                                     else [])
    return helper.make_model(graph, ir_version=7, opset_imports=opsets), inputs


def _at(op: str, opset: int, inputs: dict, outputs: int = 1, consts: dict | None = None,
        **attrs) -> list:
    """One node at ``opset`` through the fixed evaluator (the model's own types)."""
    model, feeds = _model(op, opset, inputs, outputs, consts, **attrs)
    return fixes.evaluator_class()(model).run(None, feeds)


def _recorded(module: str, name: str):
    """ONNX's node test ``name`` (defined in ``onnx.backend.test.case.node.<module>``)."""
    import importlib
    import warnings

    from onnx.backend.test.case import node as node_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        importlib.import_module(f"{node_tests.__name__}.{module}")
    return next(t for t in node_tests._NodeTestCases if t.name == name)


@pytest.mark.parametrize("op", FIXED)
def test_fixed_kernels_reproduce_onnx_recorded_node_tests(op):
    cases = onnx_node_cases([op])
    assert cases, f"ONNX ships node tests for {op}"
    for case in cases:
        got = evaluate(case.model, case.inputs)
        for name, want in case.expected.items():
            # The dtype's tolerance, or ONNX's stated one for the recording where wider.
            rtol, atol = tolerance(str(want.dtype))
            c = compare(got[name], want, max(rtol, case.recorded_tolerance[0]),
                        max(atol, case.recorded_tolerance[1]))
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


# --------------------------------------------------------------------------- old op versions


def _bn(x, scale, b, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            * scale.reshape(shape) + b.reshape(shape))


def _bn_params(rng, c: int, dtype=np.float64) -> dict:
    return {"s": rng.uniform(0.5, 2, c).astype(dtype), "b": rng.standard_normal(c).astype(dtype),
            "m": rng.standard_normal(c).astype(dtype), "v": rng.uniform(0.5, 2, c).astype(dtype)}


@pytest.mark.parametrize("opset", [7, 9, 14])
def test_batch_norm_with_momentum_and_one_output_normalizes_with_the_given_statistics(
        rng, opset):
    x = rng.standard_normal((2, 3, 4, 5))
    p = _bn_params(rng, 3)
    [y] = _at("BatchNormalization", opset, {"x": x}, consts=p, momentum=0.9, epsilon=1e-3)
    eps = float(np.float32(1e-3))  # float attributes are float32
    np.testing.assert_allclose(y, _bn(x, *p.values(), eps=eps), rtol=1e-12, err_msg=WHERE)


@pytest.mark.parametrize("opset", [7, 9])
def test_batch_norm_with_five_outputs_trains_on_the_batch(rng, opset):
    x = rng.standard_normal((2, 3, 4, 5))
    p = _bn_params(rng, 3)
    y, run_mean, run_var, mean, var = _at("BatchNormalization", opset, {"x": x}, outputs=5,
                                          consts=p, momentum=0.8)
    batch_mean = x.transpose(1, 0, 2, 3).reshape(3, -1).mean(axis=1)
    batch_var = ((x.transpose(1, 0, 2, 3).reshape(3, -1) - batch_mean[:, None]) ** 2).mean(1)
    np.testing.assert_allclose(y, _bn(x, p["s"], p["b"], batch_mean, batch_var), rtol=1e-10,
                               err_msg=WHERE)
    mom = float(np.float32(0.8))  # float attributes are float32
    np.testing.assert_allclose(run_mean, p["m"] * mom + batch_mean * (1 - mom), rtol=1e-12)
    np.testing.assert_allclose(run_var, p["v"] * mom + batch_var * (1 - mom), rtol=1e-12)
    np.testing.assert_allclose(mean, batch_mean, rtol=1e-12)
    np.testing.assert_allclose(var, batch_var, rtol=1e-12)


def test_batch_norm_7_without_spatial_normalizes_each_activation(rng):
    x = rng.standard_normal((2, 3, 4))
    p = {k: v.reshape(3, 1).repeat(4, axis=1) + rng.uniform(0, 0.1, (3, 4))
         for k, v in _bn_params(rng, 3).items()}
    [y] = _at("BatchNormalization", 7, {"x": x}, consts=p, spatial=0)
    want = (x - p["m"]) / np.sqrt(p["v"] + 1e-5) * p["s"] + p["b"]
    np.testing.assert_allclose(y, want, rtol=1e-12, err_msg=WHERE)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset,axis", [(7, None), (11, 2), (11, -3), (13, 2)])
def test_softmax_family_coerces_to_2d_before_opset_13_and_not_after(rng, op, opset, axis):
    x = rng.standard_normal((2, 3, 4, 5))
    attrs = {} if axis is None else {"axis": axis}
    [y] = _at(op, opset, {"x": x}, **attrs)
    axis = (1 if opset < 13 else -1) if axis is None else axis % 4
    if opset < 13:  # rows of prod(shape[:axis]), the op over each whole row
        rows, over = x.reshape(int(np.prod(x.shape[:axis])), -1), 1
    else:
        rows, over = x, axis
    e = np.exp(rows - rows.max(axis=over, keepdims=True))
    soft = e / e.sum(axis=over, keepdims=True)
    want = {"Softmax": soft, "LogSoftmax": np.log(soft),
            "Hardmax": (rows == rows.max(axis=over, keepdims=True)).astype(float)}[op]
    np.testing.assert_allclose(y, want.reshape(x.shape), rtol=1e-12, atol=1e-15, err_msg=WHERE)


@pytest.mark.parametrize("form", ["Upsample-7", "Upsample-9", "Resize-10"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_old_resampling_reads_input_position_index_over_scale(rng, form, mode):
    op, opset = form.split("-")
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    scales = np.array([1, 1, 1.5, 2.5] if op == "Upsample" else [1, 1, 0.6, 1.75], np.float32)
    if opset == "7":
        [y] = _at(op, 7, {"x": x}, scales=[float(s) for s in scales], mode=mode)
    else:
        [y] = _at(op, int(opset), {"x": x}, consts={"scales": scales}, mode=mode)
    want = x.astype(np.float64)
    for axis, (n, s) in enumerate(zip(x.shape, scales)):
        pos = np.arange(int(np.floor(n * s))) / s
        if mode == "nearest":  # down when growing, up when shrinking
            want = np.take(want, np.minimum(np.floor(pos) if s >= 1 else np.ceil(pos), n - 1)
                           .astype(int), axis)
        else:
            lo = np.floor(np.minimum(pos, n - 1)).astype(int)
            w = (np.minimum(pos, n - 1) - lo).reshape((-1,) + (1,) * (3 - axis))
            want = (np.take(want, lo, axis) * (1 - w)
                    + np.take(want, np.minimum(lo + 1, n - 1), axis) * w)
    np.testing.assert_allclose(y, want.astype(np.float32), rtol=1e-6, atol=1e-6, err_msg=WHERE)


def test_resize_11_tf_half_pixel_for_nn_reads_position_index_plus_half_over_scale(rng):
    x = rng.standard_normal((1, 1, 4, 6)).astype(np.float32)
    [y] = _at("Resize", 11, {"x": x}, consts={"roi": np.zeros(0, np.float32),
                                             "scales": np.zeros(0, np.float32),
                                             "sizes": np.array([1, 1, 3, 9], np.int64)},
              coordinate_transformation_mode="tf_half_pixel_for_nn", mode="nearest")
    rows = np.ceil((np.arange(3) + 0.5) / (3 / 4) - 0.5).astype(int)  # round_prefer_floor
    cols = np.ceil((np.arange(9) + 0.5) / (9 / 6) - 0.5).astype(int)
    np.testing.assert_array_equal(y, x[:, :, rows][:, :, :, np.minimum(cols, 5)])


def test_roi_align_10_maps_pixels_as_version_16_output_half_pixel(rng):
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    consts = {"rois": np.array([[0.5, 1.0, 6.2, 5.7]], np.float32),
              "batch": np.array([0], np.int64)}
    attrs = {"output_height": 3, "output_width": 2, "sampling_ratio": 2}
    [old] = _at("RoiAlign", 10, {"x": x}, consts=consts, **attrs)
    [new] = _at("RoiAlign", 16, {"x": x}, consts=consts, **attrs,
                coordinate_transformation_mode="output_half_pixel")
    [half] = _at("RoiAlign", 16, {"x": x}, consts=consts, **attrs)
    np.testing.assert_array_equal(old, new)
    assert not np.allclose(old, half)


def test_grid_sample_16_bilinear_and_bicubic_are_version_20_linear_and_cubic(rng):
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    grid = {"g": rng.uniform(-1.1, 1.1, (1, 3, 3, 2)).astype(np.float32)}
    for old, new in (("bilinear", "linear"), ("bicubic", "cubic")):
        [a] = _at("GridSample", 16, {"x": x}, consts=grid, mode=old)
        [b] = _at("GridSample", 20, {"x": x}, consts=grid, mode=new)
        np.testing.assert_array_equal(a, b)


def test_one_hot_takes_a_rank_1_depth_and_float_indices():
    [y] = _at("OneHot", 11, {"i": np.array([0.7, 2.0, -1.0, 5.0], np.float32)},
              consts={"depth": np.array([4.0], np.float32),
                      "values": np.array([-1, 3], np.int64)})
    want = np.full((4, 4), -1)
    want[[0, 1, 2], [0, 2, 3]] = 3  # 0.7 -> 0, -1 -> 3, 5 is out of range
    np.testing.assert_array_equal(y, want)


def test_scatter_9_writes_updates_along_the_axis(rng):
    data = rng.standard_normal((3, 5)).astype(np.float32)
    idx = np.array([[4, 0], [-1, 2]], np.int64)
    upd = rng.standard_normal((2, 2)).astype(np.float32)
    [y] = _at("Scatter", 9, {"d": data}, consts={"i": idx, "u": upd}, axis=1)
    want = data.copy()
    for i in range(2):
        for j in range(2):
            want[i, idx[i, j] % 5] = upd[i, j]
    np.testing.assert_array_equal(y, want, err_msg=WHERE)


def test_global_lp_pool_is_the_p_norm_over_space(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    [y] = _at("GlobalLpPool", 7, {"x": x}, p=3)
    want = (np.abs(x) ** 3).sum(axis=(2, 3), keepdims=True) ** (1 / 3)
    np.testing.assert_allclose(y, want, rtol=1e-12, err_msg=WHERE)


def test_max_roi_pool_takes_the_maximum_of_each_bin(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    # RoI of batch 1 over rows 1..4 and columns 0..3 (scaled by 0.5), 2 x 2 bins of 2 x 2.
    rois = np.array([[1, 0, 2, 6, 8]], np.float32)
    [y] = _at("MaxRoiPool", 7, {"x": x}, consts={"r": rois}, pooled_shape=[2, 2],
              spatial_scale=0.5)
    want = x[1, :, 1:5, 0:4].reshape(3, 2, 2, 2, 2).max(axis=(2, 4))
    np.testing.assert_array_equal(y[0], want)


def test_category_mapper_maps_strings_to_ints_and_back():
    model, _ = _model("CategoryMapper", 1, {"x": np.array([5, 7], np.int64)},
                      domain="ai.onnx.ml", cats_strings=["a", "b"], cats_int64s=[5, 6])
    [strings] = fixes.evaluator_class()(model).run(None, {"x": np.array([5, 7], np.int64)})
    assert list(strings) == ["a", "_Unused"]
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    [ints] = fixes.evaluator_class()(model).run(None, {"x": np.array(["b", "z", "a"], object)})
    np.testing.assert_array_equal(ints, [6, -1, 5])


def test_pad_2_pads_with_its_value_attribute(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    [y] = _at("Pad", 7, {"x": x}, pads=[1, 0, 0, 2], value=1.5)
    np.testing.assert_array_equal(y, np.pad(x, [(1, 0), (0, 2)], constant_values=1.5))


@pytest.mark.parametrize("out", [6, 8])
def test_conv_transpose_output_shape_puts_the_larger_half_of_the_padding_first(rng, out):
    x = rng.standard_normal((1, 1, 3, 3))
    w = rng.standard_normal((1, 1, 3, 3))
    [full] = _at("ConvTranspose", 11, {"x": x}, consts={"w": w}, strides=[2, 2])  # 7 x 7
    [y] = _at("ConvTranspose", 11, {"x": x}, consts={"w": w}, strides=[2, 2],
              output_shape=[out, out])
    total = 7 - out  # 1: crop one at the start; -1: one zero row and column at the end
    begin = total - total // 2
    want = np.zeros((1, 1, out, out))
    src = full[..., max(begin, 0):begin + out, max(begin, 0):begin + out]
    want[..., :src.shape[2], :src.shape[3]] = src
    np.testing.assert_allclose(y, want, rtol=1e-12, err_msg=WHERE)


# --------------------------------------------------------------------------- control flow


def _loop(scan_shape: tuple, trip: int, cond: bool | None, body_cond: bool = True):
    """Loop carrying ``acc += i`` and scanning ``acc`` broadcast to ``scan_shape``."""
    from onnx import parser

    dims = ", ".join(map(str, scan_shape))
    model = parser.parse_model(f"""<ir_version: 7, opset_import: ["" : 13]>
    loop (float a0) => (float acc, float scans) {{
        M = Constant <value = int64 {{{trip}}}> ()
        cond = Constant <value = bool {{{int(bool(cond))}}}> ()
        acc, scans = Loop (M, {'cond' if cond is not None else '""'}, a0) <body = body (
                int64 i, bool c, float acc_in) => (bool keep, float acc_out, float[{dims}] scan) {{
            keep = Constant <value = bool {{{int(body_cond)}}}> ()
            fi = Cast <to = 1> (i)
            acc_out = Add (acc_in, fi)
            shape = Constant <value = int64[{len(scan_shape)}] {{{dims}}}> ()
            scan = Expand (acc_out, shape)
        }}>
    }}""")
    return fixes.evaluator_class()(model).run(None, {"a0": np.array(0.5, np.float32)})


@pytest.mark.parametrize("scan_shape", [(), (2, 3)])
def test_loop_stacks_each_iterations_scan_output_on_a_new_first_axis(scan_shape):
    acc, scans = _loop(scan_shape, trip=4, cond=True)
    steps = 0.5 + np.cumsum(np.arange(4, dtype=np.float32))
    assert acc == steps[-1]
    np.testing.assert_array_equal(scans, np.broadcast_to(
        steps.reshape((4,) + (1,) * len(scan_shape)), (4, *scan_shape)))


def test_loop_without_cond_runs_its_trip_count_and_zero_trips_scan_nothing():
    acc, scans = _loop((), trip=3, cond=None, body_cond=False)  # the body's cond is ignored
    np.testing.assert_array_equal(scans, [0.5, 1.5, 3.5])
    acc, scans = _loop((2,), trip=0, cond=True)
    assert acc == 0.5 and scans.shape == (0, 2) and scans.dtype == np.float32


def test_loop_of_onnx_recorded_range_expansion():
    case = _recorded("rangeop", "test_range_float_type_positive_delta_expanded")
    [got] = fixes.evaluator_class()(case.model).run(None, dict(zip(
        [i.name for i in case.model.graph.input], case.data_sets[0][0])))
    np.testing.assert_array_equal(got, case.data_sets[0][1][0])


def _scan_sum(opset: int, x: np.ndarray, lens: np.ndarray | None = None, **attrs) -> list:
    """Scan whose body adds each slice to a state and emits the running sum."""
    from onnx import parser

    inputs = (["lens" if lens is not None else '""'] if opset == 8 else []) + ["s0", "x"]
    s0 = np.zeros((x.shape[0], 2) if opset == 8 else 2, np.float32)
    model = parser.parse_model(f"""<ir_version: 7, opset_import: ["" : {opset}]>
    scan (float[{",".join(map(str, s0.shape))}] s0, float[{",".join(map(str, x.shape))}] x,
          int64[{0 if lens is None else len(lens)}] lens) => (float s, float y) {{
        s, y = Scan ({", ".join(inputs)}) <num_scan_inputs = 1, body = body (
                float[2] s_in, float[2] x_t) => (float[2] s_out, float[2] y_t) {{
            s_out = Add (s_in, x_t)
            y_t = Identity (s_out)
        }}>
    }}""")
    for name, value in attrs.items():
        model.graph.node[0].attribute.append(helper.make_attribute(name, value))
    feeds = {"s0": s0, "x": x, "lens": np.zeros(0, np.int64) if lens is None else lens}
    return fixes.evaluator_class()(model).run(None, feeds)


def test_scan_8_runs_each_batch_entry_over_its_own_length_and_direction(rng):
    x = rng.standard_normal((2, 4, 2)).astype(np.float32)
    s, y = _scan_sum(8, x, lens=np.array([4, 2], np.int64), directions=[1])
    for b, n in enumerate((4, 2)):
        sums = np.cumsum(x[b, :n][::-1], axis=0)  # reversed: last valid step first
        np.testing.assert_allclose(s[b], sums[-1], rtol=1e-6, err_msg=WHERE)
        np.testing.assert_allclose(y[b, :n], sums, rtol=1e-6, err_msg=WHERE)
        assert not y[b, n:].any()  # zero past the sequence's length


@pytest.mark.parametrize("attrs", [
    {"scan_input_directions": [1]}, {"scan_input_axes": [1]}, {"scan_output_directions": [1]},
    {"scan_output_axes": [-1]}])
def test_scan_9_reads_and_writes_in_any_direction_and_axis(rng, attrs):
    x = rng.standard_normal((4, 2)).astype(np.float32)
    fed = x.T.copy() if "scan_input_axes" in attrs else x
    s, y = _scan_sum(11, fed, **attrs)
    sums = np.cumsum(x[::-1] if "scan_input_directions" in attrs else x, axis=0)
    np.testing.assert_allclose(s, sums[-1], rtol=1e-6, err_msg=WHERE)
    want = sums[::-1] if "scan_output_directions" in attrs else sums
    np.testing.assert_allclose(y, want.T if "scan_output_axes" in attrs else want, rtol=1e-6,
                               err_msg=WHERE)


def test_optional_holds_its_value_and_an_empty_one_has_none(rng):
    from onnx import parser

    model = parser.parse_model("""<ir_version: 8, opset_import: ["" : 18]>
    g (float[3] x) => (bool has_full, bool has_empty, float[3] y) {
        full = Optional (x)
        empty = Optional <type = float[3]> ()
        has_full = OptionalHasElement (full)
        has_empty = OptionalHasElement (empty)
        y = OptionalGetElement (full)
    }""")
    x = rng.standard_normal(3).astype(np.float32)
    has_full, has_empty, y = fixes.evaluator_class()(model).run(None, {"x": x})
    assert has_full and not has_empty
    np.testing.assert_array_equal(y, x)


def test_if_passes_on_an_optional_full_or_empty():
    from onnx import parser

    model = parser.parse_model("""<ir_version: 8, opset_import: ["" : 18]>
    g (bool c) => (bool has) {
        o = If (c) <then_branch = t () => (optional(float[3]) none) {
            none = Optional <type = float[3]> ()
        }, else_branch = e () => (optional(float[3]) none2) {
            none2 = Optional <type = float[3]> ()
        }>
        has = OptionalHasElement (o)
    }""")
    [has] = fixes.evaluator_class()(model).run(None, {"c": np.array(True)})
    assert not has
    case = _recorded("if_", "test_if_opt")  # a branch returning Optional(sequence)
    [got] = fixes.evaluator_class()(case.model).run(None, {"cond": case.data_sets[0][0][0]})
    assert isinstance(got, list) and len(got) == 1
    np.testing.assert_array_equal(got[0], case.data_sets[0][1][0][0])


# --------------------------------------------------------------------------- recurrent ops


def _recurrent(op: str, rng, hidden: int = 3, dirs: int = 1) -> dict:
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    return {"W": rng.standard_normal((dirs, gates * hidden, 2)) * 0.5,
            "R": rng.standard_normal((dirs, gates * hidden, hidden)) * 0.5,
            "B": rng.standard_normal((dirs, 2 * gates * hidden)) * 0.5}


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_sequence_lens_equal_runs_of_each_entry_alone(rng, op, direction):
    """Each batch entry equals a run on its valid steps alone (onnx.reference's own kernel,
    no sequence_lens), zero-padded; its last state is that run's."""
    dirs = 2 if direction == "bidirectional" else 1
    w = _recurrent(op, rng, dirs=dirs)
    x = rng.standard_normal((5, 3, 2))
    lens = np.array([5, 2, 4], np.int32)
    outs = 3 if op == "LSTM" else 2
    y, y_h, *_ = _at(op, 14, {"x": x}, outs, consts={**w, "lens": lens}, hidden_size=3,
                     direction=direction)
    for b, n in enumerate(lens):
        alone_y, alone_h, *_ = _at(op, 14, {"x": x[:n, b:b + 1]}, outs, consts=w,
                                   hidden_size=3, direction=direction)
        np.testing.assert_allclose(y[:n, :, b:b + 1], alone_y, rtol=1e-10, err_msg=WHERE)
        assert not y[n:, :, b].any()
        np.testing.assert_allclose(y_h[:, b:b + 1], alone_h, rtol=1e-10, err_msg=WHERE)


def test_rnn_clip_and_activations_follow_the_formula(rng):
    w = _recurrent("RNN", rng)
    x = rng.standard_normal((4, 2, 2)) * 3
    y, y_h = _at("RNN", 7, {"x": x}, 2, consts=w, hidden_size=3, clip=0.7,
                 activations=["LeakyRelu"], activation_alpha=[0.25])
    h = np.zeros((2, 3))
    for t in range(4):
        clip = float(np.float32(0.7))  # the attribute is a float32
        a = np.clip(x[t] @ w["W"][0].T + h @ w["R"][0].T + w["B"][0, :3] + w["B"][0, 3:],
                    -clip, clip)
        h = np.where(a >= 0, a, 0.25 * a)
        np.testing.assert_allclose(y[t, 0], h, rtol=1e-6, err_msg=WHERE)
    np.testing.assert_allclose(y_h[0], h, rtol=1e-6, err_msg=WHERE)
