"""ONNX's backend test suite as a peer test (conformance/onnx_suite.py, docs/onnx-suite.md).

A fixed sample of the suite's cases runs through backplane's automatic plan and through
ONNX Runtime and OpenVINO called directly, each (case, column) in a worker process. The
automatic plan must never give a wrong answer, and must pass every sample case that a
runtime passes directly, except the known gaps listed in conformance/onnx_suite_gaps.txt;
a listed gap that now passes must leave the list, so the list only shrinks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from backplane.conformance import onnx_suite as suite
from backplane.conformance import onnx_suite_report as report

pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("openvino")),
    reason="the suite compares backplane with ONNX Runtime and OpenVINO called directly")

GAPS = Path(suite.__file__).with_name("onnx_suite_gaps.txt")
#: Seconds one column may take on one case here: generous, for a busy 2-core CI machine.
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cases() -> list[suite.SuiteCase]:
    return suite.load_cases()


@pytest.fixture(scope="module")
def ci_sample(cases) -> list[suite.SuiteCase]:
    return suite.sample(cases, suite.SAMPLE_SIZE)


@pytest.fixture(scope="module")
def sample_run(ci_sample) -> list[report.CaseResult]:
    return suite.run(ci_sample, suite.columns_for(pinned=False), jobs=2, timeout_s=TIMEOUT_S)


def _model(op: str = "Relu", opset: int = 13, domain: str = "") -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain
                                                 else [])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=domain)], "g", [x], [y])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def _forever() -> bytes:
    """A Loop of 2**62 iterations: ONNX Runtime runs it until it is killed."""
    scalar = lambda name, t: helper.make_tensor_value_info(name, t, [])  # noqa: E731
    vec = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])  # noqa: E731
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]),
                              helper.make_node("Neg", ["v"], ["v_out"])], "body",
                             [scalar("i", TensorProto.INT64), scalar("c", TensorProto.BOOL),
                              vec("v")], [scalar("c_out", TensorProto.BOOL), vec("v_out")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "x"], ["y"], body=body)], "forever",
        [vec("x")], [vec("y")],
        initializer=[numpy_helper.from_array(np.array(2 ** 62, np.int64), "M"),
                     numpy_helper.from_array(np.array(True), "cond")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                             ir_version=8).SerializeToString()


# ----------------------------------------------------------------------------- the cases

def test_the_cases_are_every_set_the_onnx_wheel_ships_with_unique_ids(cases):
    assert {c.set for c in cases} == set(suite.SETS)
    assert len(cases) > 2000
    assert len({c.id for c in cases}) == len(cases)
    assert all(c.id.startswith(f"{c.set}/test_") for c in cases)


def test_light_models_get_onnx_runners_arange_inputs_and_shipped_outputs(cases):
    light = [c for c in cases if c.set == "light"]
    assert light, "onnx ships the light CNNs of data/real in data/light"
    for c in light:
        (name, x), = c.inputs
        n = x.size
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x.ravel(), (np.arange(n) / n).astype(np.float32))
        assert len(c.outputs) == len(c.output_names) == 1


def test_the_sample_is_fixed_and_covers_every_set_and_every_op_of_the_node_tests(
        cases, ci_sample):
    assert len(ci_sample) >= 300
    assert [c.id for c in suite.sample(cases, suite.SAMPLE_SIZE)] == [c.id for c in ci_sample]
    assert {c.set for c in ci_sample} == set(suite.SETS)
    assert {c.op for c in ci_sample if c.set == "node"} == {c.op for c in cases
                                                            if c.set == "node"}


# ----------------------------------------------------------------------------- the sample

def test_auto_gives_no_wrong_answer_on_the_sample(sample_run):
    wrong = report.targets(sample_run)["auto_wrong"]
    assert not wrong, "backplane's automatic plan is wrong on:\n" + "\n".join(
        f"  {w['id']} (on {', '.join(w['backends'])}): {w['detail'][:200]}" for w in wrong)


@pytest.mark.parametrize("backends, direct, counted_as", [
    (["openvino-cpu"], "wrong", "ill_conditioned"),
    (["onnxruntime"], "wrong", "auto_wrong"),  # not the backend the record explains
    (["openvino-cpu"], "pass", "auto_wrong")],  # OpenVINO called directly now agrees
    ids=["explained", "other-backend", "direct-passes"])
def test_only_the_recorded_ill_conditioned_answer_is_not_counted_wrong(backends, direct,
                                                                       counted_as):
    outcomes = {report.AUTO: report.Outcome("wrong", detail="differs", backends=backends),
                report.OV_DIRECT: report.Outcome(direct),
                report.ORT_DIRECT: report.Outcome("pass")}
    t = report.targets([report.CaseResult("light/test_squeezenet", "light", "squeezenet",
                                          outcomes)])
    assert [w["id"] for w in t[counted_as]] == ["light/test_squeezenet"]
    other = {"ill_conditioned", "auto_wrong"} - {counted_as}
    assert not t[other.pop()]


def test_auto_passes_what_a_runtime_passes_directly_except_the_listed_gaps(sample_run):
    listed = report.read_gaps(GAPS)
    new = [m for m in report.targets(sample_run)["missed"] if m["id"] not in listed]
    assert not new, ("a runtime called directly passes these, backplane's automatic plan "
                     "does not; fix them (or, for a known gap, list it with its cause: "
                     f"{report.GAPS_COMMAND}):\n" + "\n".join(
                         f"  {m['id']}: {m['auto']}: {m['detail'][:200]}" for m in new))


def test_a_listed_gap_that_auto_now_passes_leaves_the_list(sample_run):
    missed = {m["id"] for m in report.targets(sample_run)["missed"]}
    sampled = {r.id for r in sample_run}
    closed = [case for case in report.read_gaps(GAPS) if case in sampled and case not in missed]
    assert not closed, (f"no longer gaps: delete their lines from {GAPS.name}: "
                        + ", ".join(closed))


def test_the_gaps_file_lists_only_cases_of_the_sample(ci_sample):
    sampled = {c.id for c in ci_sample}
    stray = [case for case in report.read_gaps(GAPS) if case not in sampled]
    assert not stray, (f"{GAPS.name} lists cases outside the CI sample (regenerate it with "
                       f"{report.GAPS_COMMAND}): {', '.join(stray)}")


def test_every_outcome_is_pass_wrong_or_an_error_with_a_known_cause(sample_run):
    for r in sample_run:
        assert set(r.outcomes) == {suite.AUTO, *suite.DIRECT}
        for o in r.outcomes.values():
            assert o.status in ("pass", "wrong", "error"), r.id
            assert (o.cause in suite.CAUSES) == (o.status == "error"), (r.id, o)


def test_a_case_that_hangs_a_runtime_is_a_timeout_and_the_run_goes_on():
    x = np.array([-1.0, 2.0], np.float32)
    hang = suite.SuiteCase("node/test_forever", "node", "Loop", _forever(),
                           [("x", x[:1])], [x[:1]], ["y"])
    relu = suite.SuiteCase("node/test_relu", "node", "Relu", _model(), [("x", x)],
                           [np.maximum(x, 0)], ["y"])
    first, second = suite.run([hang, relu], [suite.ORT_DIRECT], jobs=1, timeout_s=3)
    assert first.outcomes[suite.ORT_DIRECT].cause == "timeout"
    assert second.outcomes[suite.ORT_DIRECT].status == "pass"


# ----------------------------------------------------------------------------- comparing

def test_outputs_compare_as_onnxs_runner_with_nan_equal_to_nan():
    want = [np.array([1.0, np.nan, 1000.0], np.float32)]
    assert suite.compare([np.array([1.0, np.nan, 1000.9], np.float32)], want)[0]
    ok, err, detail = suite.compare([np.array([1.0, np.nan, 1001.5], np.float32)], want)
    assert not ok and err == pytest.approx(1.5, rel=1e-3) and "1 of 3" in detail
    assert not suite.compare([np.array([1.0, 0.0, 1000.0], np.float32)], want)[0]


def test_a_case_may_state_its_own_tolerance():
    got, want = [np.array([1.002], np.float32)], [np.array([1.0], np.float32)]
    assert not suite.compare(got, want)[0]
    assert suite.compare(got, want, rtol=3e-3)[0]


def test_shape_dtype_and_output_count_must_match():
    want = [np.zeros((2, 3), np.float32)]
    assert not suite.compare([np.zeros((3, 2), np.float32)], want)[0]
    assert not suite.compare([np.zeros((2, 3), np.float64)], want)[0]
    assert not suite.compare([], want)[0]
    assert not suite.compare([report.MISSING], want)[0]


def test_sequences_compare_element_by_element_and_in_length():
    a, b = np.ones(2, np.float32), np.zeros(3, np.int64)
    assert suite.compare([[a, b]], [[a.copy(), b.copy()]])[0]
    assert not suite.compare([[a]], [[a, b]])[0]
    assert not suite.compare([a], [[a]])[0]


def test_an_absent_optional_matches_only_an_absent_one():
    assert suite.compare([None], [None])[0]
    assert not suite.compare([np.ones(1, np.float32)], [None])[0]
    assert not suite.compare([None], [np.ones(1, np.float32)])[0]


def test_strings_compare_exactly():
    want = [np.array(["a", "b"], dtype=object)]
    assert suite.compare([np.array(["a", "b"], dtype=object)], want)[0]
    assert not suite.compare([np.array(["a", "c"], dtype=object)], want)[0]


def test_random_draws_are_compared_by_shape_and_dtype_only(cases):
    bernoulli = next(c for c in cases if c.id == "node/test_bernoulli_seed")
    assert not bernoulli.values
    other = [np.ones_like(v) for v in bernoulli.outputs]
    assert suite.compare(other, bernoulli.outputs, values=bernoulli.values)[0]
    assert not suite.compare([v[:1] for v in other], bernoulli.outputs, values=False)[0]


# ----------------------------------------------------------------------------- causes

def test_a_newer_opset_is_refused_by_backplane_as_opset_refused():
    res = suite.run_column(suite.AUTO, _model(opset=99), [("x", np.ones(2, np.float32))],
                           ["y"])
    assert res["error_type"] == "ModelError"
    assert suite.cause_of(suite.AUTO, res["stage"], res["error_type"], res["error"]) \
        == "opset refused"


def test_an_unknown_op_is_op_not_supported_in_backplane_and_in_onnx_runtime():
    model = _model(op="NoSuchOp", domain="com.example")
    for column in (suite.AUTO, suite.ORT_DIRECT):
        res = suite.run_column(column, model, [("x", np.ones(2, np.float32))], ["y"])
        assert suite.cause_of(column, res["stage"], res["error_type"], res["error"]) \
            == "op not supported", res


def test_inputs_of_the_wrong_dtype_are_input_validation_in_backplane_and_onnx_runtime():
    for column in (suite.AUTO, suite.ORT_DIRECT):
        res = suite.run_column(column, _model(), [("x", np.ones(2, np.int64))], ["y"])
        assert res["stage"] == "run"
        assert suite.cause_of(column, res["stage"], res["error_type"], res["error"]) \
            == "input validation", res


def test_a_python_error_escaping_backplane_is_an_internal_error():
    assert suite.cause_of(suite.AUTO, "run", "KeyError", "'values'") == "internal error"
    assert suite.cause_of(suite.ORT_DIRECT, "run", "RuntimeError",
                          "Numpy_type 256 can't be converted to MLDataType.") == "value type"


# ----------------------------------------------------------------------------- the gaps file

def test_the_gaps_file_holds_one_case_id_a_line_with_its_cause(tmp_path):
    listed = report.read_gaps(GAPS)
    assert all(comment for comment in listed.values()), "each gap says its cause"
    bad = tmp_path / "gaps.txt"
    bad.write_text("node/test_abs  # x\nnode/test_abs  # y\n")
    with pytest.raises(ValueError, match="listed twice"):
        report.read_gaps(bad)
    bad.write_text("test abs\n")
    with pytest.raises(ValueError, match="expected a case id"):
        report.read_gaps(bad)
