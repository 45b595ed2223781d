"""Fuzzing (issue 18, point 11): mutated models and inputs through Session, auto against the
reference backend, each case in a supervised worker process (``backplane.conformance.fuzz``).

The campaign's seed is ``BACKPLANE_FUZZ_SEED`` (default: the fixed ``DEFAULT_SEED``, so CI
is reproducible) and its size ``BACKPLANE_FUZZ_CASES`` (default 340: 303 of them with a
model mutation, the others with an input mutation or none); a failure prints the seed and,
per failing case, the command that replays it in one process. The longer campaign is
``python -m backplane.conformance.fuzz --cases 20000`` (README, Longer runs). The tests
after it pin what the fuzzer found, each a small model.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp
from backplane.conformance import fuzz
from backplane.sdk.errors import InputError, ModelError

F = TensorProto.FLOAT

SEED = int(os.environ.get("BACKPLANE_FUZZ_SEED", fuzz.DEFAULT_SEED))
CASES = int(os.environ.get("BACKPLANE_FUZZ_CASES", 340))


def test_mutated_models_raise_only_backplane_errors_never_crash_and_match_the_reference():
    report = fuzz.run_campaign(SEED, CASES, jobs=2)
    print(report.summary())
    assert report.cases == CASES
    assert sum(report.outcomes.values()) == CASES
    # The mutations reach every stage: some models are refused at load, some inputs at
    # run time, and many models run on both sides and are compared.
    assert report.outcomes.get("both ran", 0) >= CASES // 4, report.summary()
    assert not report.findings, (f"BACKPLANE_FUZZ_SEED={SEED}: {len(report.findings)} "
                                 f"failing case(s)\n{report.summary()}")


def test_a_case_is_rebuilt_identically_from_its_seed_and_index():
    a, b = fuzz.make_case(SEED, 7), fuzz.make_case(SEED, 7)
    assert a.mutant.to_bytes() == b.mutant.to_bytes() and a.mutations == b.mutations
    assert len({fuzz.make_case(SEED, i).mutant.to_bytes() for i in range(20)}) >= 15


def _dies_hangs_or_passes(seed: int, index: int) -> dict:
    """A stand-in for run_case in the workers: case 2 kills its worker, case 4 hangs."""
    if index == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    if index == 4:
        time.sleep(600)
    return {"mutations": [f"stand-in {index}"], "outcome": "both ran", "findings": [],
            "seconds": 0.0}


def test_a_crash_or_a_hang_is_attributed_to_its_case_and_the_campaign_goes_on():
    report = fuzz.run_campaign(SEED, 7, jobs=2, timeout_s=2, execute=_dies_hangs_or_passes)
    assert [(f.index, f.kind) for f in report.findings] == [(2, "crash"), (4, "hang")]
    assert "SIGSEGV" in report.findings[0].detail
    assert report.findings[0].replay() == (f"python -m backplane.conformance.fuzz --seed {SEED} "
                                           "--case 2")
    assert report.outcomes == {"both ran": 5, "crash": 1, "hang": 1}


@pytest.mark.parametrize("got, want, problems", [
    ([1.0, np.nan, 3.0], [1.0, np.nan, 3.0], 0),   # NaN at the same place
    ([1.0, 7.0, 3.0], [1.0, np.inf, 3.0], 0),      # the reference is not finite: skipped
    ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], 1),      # NaN where the reference is finite
    ([1.0, 2.0, 3.00001], [1.0, 2.0, 3.0], 0),     # within float32's rtol
    ([1.0, 2.0, 3.1], [1.0, 2.0, 3.0], 1),
])
def test_outputs_compare_under_the_tolerances_skipping_non_finite_reference_elements(
        got, want, problems):
    found = fuzz.compare_value(np.array(got, np.float32), np.array(want, np.float32))
    assert len(found) == problems, found


def test_outputs_of_another_dtype_shape_or_structure_differ():
    x = np.zeros(3, np.float32)
    assert fuzz.compare_value(x.astype(np.float64), x)
    assert fuzz.compare_value(x[:2], x)
    assert fuzz.compare_value([x], x) and fuzz.compare_value([x], [x, x])
    assert not fuzz.compare_value([x, None], [x, None])


# ---- what the fuzzer found: models and inputs a backend computed garbage from, or that ----
# ---- stopped or broke backplane itself -----------------------------------------------------

def _model(nodes, inputs, outputs, inits=(), opsets=(("", 17),)):
    graph = helper.make_graph(nodes, "found", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _weight(name, shape):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape)
                                   .astype(np.float32), name)


def _short_raw_data():
    w = _weight("w", (3,))
    w.raw_data = w.raw_data[:-2]  # 10 bytes for float32[3]
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [3])],
                  [("y", F, [3])], [w])


def _default_domain_twice():
    return _model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [3])], [("y", F, [3])],
                  opsets=(("", 13), ("", 17)))


def _conv(weight_shape, **attrs):
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)],
                  [("x", F, [1, 2, 6, 6])], [("y", F, [1, 3, 4, 4])],
                  [_weight("w", weight_shape)])


def _pool_padded_as_wide_as_its_kernel():
    return _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1, 1],
                                     pads=[1, 1, 1, 1], name="pool")],
                  [("x", F, [1, 1, 2, 2])], [("y", F, [1, 1, 4, 4])])


def _if_on_two_elements():
    branch = [helper.make_graph([helper.make_node("Identity", ["x"], [out])], out, [],
                                [helper.make_tensor_value_info(out, F, [3])])
              for out in ("t", "e")]
    return _model([helper.make_node("If", ["c"], ["y"], then_branch=branch[0],
                                    else_branch=branch[1], name="if")],
                  [("x", F, [3]), ("c", TensorProto.BOOL, [2])], [("y", F, [3])])


def _transpose_of_another_rank():
    return _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1], name="t")],
                  [("x", F, ["n", 4, 6, 3])], [("y", F, ["n", 6, 4, 3])])


def _gemm_adding_what_does_not_broadcast():
    return _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")],
                  [("x", F, ["n", 4])], [("y", F, ["n", 10])],
                  [_weight("w", (4, 10)), _weight("c", (4,))])


#: Models no input can run, each a ModelError at load naming what is wrong.
MODEL_ERRORS = {
    "raw data of the wrong size": (_short_raw_data,
                                   r"'w' \(float\[3\]\) holds 10 bytes.*need 12"),
    "a domain imported twice": (_default_domain_twice,
                                r"imports the default domain twice \(opsets 13 and 17\)"),
    "a conv kernel_shape its weight lacks": (
        lambda: _conv((3, 2, 3, 3), kernel_shape=[2, 2]),
        r"'conv' \(Conv\) has kernel_shape \[2, 2\].*\[3, 3\]"),
    "a conv weight of another rank": (lambda: _conv((3,), kernel_shape=[3, 3]),
                                      r"'conv' \(Conv\) takes a weight of the input's rank 4"),
    "pool pads as wide as the kernel": (_pool_padded_as_wide_as_its_kernel,
                                        r"'pool' \(MaxPool\) has pads \[1, 1, 1, 1\], not all "
                                        r"smaller than its kernel \[1, 1\]"),
    "an If condition of two elements": (_if_on_two_elements,
                                        r"'if' \(If\) needs a condition of one element"),
    "a perm of another rank": (_transpose_of_another_rank,
                               r"'t' \(Transpose\) has perm \[0, 2, 1\], its input is "
                               r"\[\?, 4, 6, 3\]"),
    "a Gemm C that does not broadcast": (_gemm_adding_what_does_not_broadcast,
                                         r"'fc' \(Gemm\) adds C 'c' \[4\], which does not "
                                         r"broadcast to its result \[\?, 10\]"),
}


@pytest.mark.parametrize("case", sorted(MODEL_ERRORS))
def test_a_model_no_input_can_run_is_a_model_error_naming_why(case):
    build, said = MODEL_ERRORS[case]
    with pytest.raises(ModelError, match=said):
        bp.Session(build())


def _reshape_to_two_by_four():
    return _model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
                  [("x", F, ["n", 6])], [("y", F, ["n", 4])],
                  [numpy_helper.from_array(np.array([0, 4], np.int64), "shape")])


def _layer_norm_over_six():
    return _model([helper.make_node("LayerNormalization", ["x", "scale"], ["y"], name="norm")],
                  [("x", F, ["n", "k"])], [("y", F, ["n", "k"])], [_weight("scale", (6,))])


def _pad_by_minus_eleven():
    return _model([helper.make_node("Pad", ["x", "pads"], ["y"], name="pad")],
                  [("x", F, ["n", 6])], [("y", F, ["m", 8])],
                  [numpy_helper.from_array(np.array([-11, 1, 0, 1], np.int64), "pads")])


def _conv_three_by_three():
    """(ONNX's inference rounds the span of a 2-wide input, -1, to one output at stride 2.)"""
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], name="conv")],
                  [("x", F, [1, 1, "h", "w"])], [("y", F, [1, 1, "p", "q"])],
                  [_weight("w", (1, 1, 3, 3))])


def _gather_row_three():
    return _model([helper.make_node("Gather", ["x", "rows"], ["y"], name="gather")],
                  [("x", F, ["n", 4])], [("y", F, [1, 4])],
                  [numpy_helper.from_array(np.array([3], np.int64), "rows")])


def _reflect_by_one():
    return _model([helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect", name="pad")],
                  [("x", F, ["n", "k"])], [("y", F, ["n", "m"])],
                  [numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "pads")])


@pytest.mark.parametrize("build, shape, said", [
    (_reshape_to_two_by_four, (2, 6), r"'reshape' \(Reshape\) cannot reshape \[2, 6\] \(12 "
                                      r"elements\) to \[2, 4\] \(8 elements\)"),
    (_pad_by_minus_eleven, (4, 6), r"'pad' \(Pad\) gives 'y' a negative size: \[-7, 8\]"),
    (_layer_norm_over_six, (2, 3), r"'norm' \(LayerNormalization\) normalizes over \[3\].*"
                                   r"scale 'scale' is \[6\]"),
    (_conv_three_by_three, (1, 1, 2, 5), r"'conv' \(Conv\) has a window of 3 on axis 2 .*"
                                         r"does not fit once"),
    (_gather_row_three, (3, 4), r"'gather' \(Gather\) gathers index 3 from axis 0 of \[3, 4\]"),
    (_reflect_by_one, (3, 1), r"'pad' \(Pad\) reflects axis 1 of \[3, 1\]"),
])
@pytest.mark.parametrize("devices", ["auto", "openvino-cpu"])
def test_inputs_that_break_a_rule_onnx_inference_leaves_unchecked_are_an_input_error(
        build, shape, said, devices):
    if devices != "auto" and devices not in {d.backend for d in bp.registry().devices()}:
        pytest.skip(f"no {devices} device here")
    session = bp.Session(build(), devices=devices if devices == "auto" else [devices])
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    with pytest.raises(InputError, match=said):
        session.run({"x": x})


def test_a_model_declaring_a_huge_vector_loads_in_milliseconds():
    """ONNX's data propagation walks every element of a 1-D value: it never finished on a
    declared int64[2**62] input; it is off for such a model."""
    model = _model([helper.make_node("Add", ["ids", "one"], ["y"])],
                   [("ids", TensorProto.INT64, [2**62])], [("y", TensorProto.INT64, [2**62])],
                   [numpy_helper.from_array(np.array([1], np.int64), "one")])
    started = time.perf_counter()
    graph = bp.load_model(model)
    assert time.perf_counter() - started < 5
    assert graph.outputs[0].shape == (2**62,)


@pytest.mark.parametrize("devices", ["auto", "reference"])
def test_an_output_that_is_an_initializer_comes_back(devices):
    """A graph output no node computes, a constant, was a KeyError from every run."""
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", F, [3])],
                   [("y", F, [3]), ("w", F, [3])], [_weight("w", (3,))])
    x = np.random.default_rng(4).standard_normal(3).astype(np.float32)
    out = bp.Session(model, devices=devices if devices == "auto" else [devices]).run({"x": x})
    want = numpy_helper.to_array(_weight("w", (3,)))
    np.testing.assert_array_equal(out["w"], want)
    np.testing.assert_allclose(out["y"], x + want, rtol=1e-6)


@pytest.mark.parametrize("devices", ["auto", "reference", "onnxruntime", "openvino-cpu",
                                     "opencl"])
def test_a_keepdims_other_than_one_drops_the_reduced_axis_everywhere(devices):
    """ONNX keeps the axes only for keepdims 1; OpenVINO and opencl kept them for 2 (and
    onnx.reference raised on 2**31)."""
    if devices != "auto" and devices not in {d.backend for d in bp.registry().devices()}:
        pytest.skip(f"no {devices} device here")
    model = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=2**31)],
                   [("x", F, [3, 4])], [("y", F, [3])],
                   [numpy_helper.from_array(np.array([1], np.int64), "axes")],
                   opsets=(("", 18),))
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    y = bp.Session(model, devices=devices if devices == "auto" else [devices]).run({"x": x})["y"]
    np.testing.assert_allclose(y, x.sum(axis=1), rtol=1e-5)


def test_the_reference_max_pool_propagates_nan_even_from_a_window_of_nan_only():
    """onnx.reference's MaxPool skipped NaN, and raised on a window holding only NaN."""
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                     strides=[2, 2])],
                   [("x", F, [1, 1, 4, 4])], [("y", F, [1, 1, 2, 2])])
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, :2, :2] = np.nan  # a window of NaN only
    x[0, 0, 0, 3] = np.nan    # a window with one NaN
    y = bp.Session(model, devices=["reference"]).run({"x": x})["y"].ravel()
    assert np.isnan(y[:2]).all() and y[2:].tolist() == [13, 15]
