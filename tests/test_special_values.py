"""Special values: the mandatory tier's NaN, infinity and signed-zero cases, the
``special-values`` verdict, and what planning learns from it.

Inputs are fresh for each run: the suite seed is drawn at random unless BACKPLANE_TEST_SEED
is set, and every assertion message names it.
"""

from __future__ import annotations

import os
import secrets
from types import SimpleNamespace

import numpy as np
import pytest

from backplane.conformance import specials, store
from backplane.conformance.cases import MANDATORY_OPS, SPECIAL_VALUE_OPS, all_cases, generate
from backplane.conformance.report import Report
from backplane.conformance.runner import PASSING, CaseResult, _judge
from backplane.engine.plan import Partition, Placement, Plan

SEED = int(os.environ.get("BACKPLANE_TEST_SEED") or secrets.randbelow(2 ** 31))
WHERE = f"(seed={SEED}; rerun with BACKPLANE_TEST_SEED={SEED})"

#: Core ops without a special-values case, and why.
NOT_FLOAT = {"Shape": "reads the shape only", "DequantizeLinear": "integer input",
             "MatMulInteger": "integer inputs"}
#: Ops whose special-values cases leave NaN out, and why.
NO_NAN = {"QuantizeLinear": "ONNX leaves NaN's quantization undefined"}
#: Ops whose special-values cases leave the infinities out, and why.
NO_INF = {op: "x * f(x) with f(-inf) = 0: inf * 0 in the formula, where the limit is 0"
          for op in ("HardSwish", "Gelu")}


def _special_cases(op: str) -> list:
    return [c for c in generate(op, SEED) if "special-values" in c.tags]


def _values(case) -> np.ndarray:
    """Every float input element of a case, as float64."""
    floats = [np.asarray(a) for a, _ in specials.node_inputs(case) if a is not None]
    return np.concatenate([a.astype(np.float64).ravel() for a in floats
                           if a.dtype.kind == "f" or a.dtype.name == "bfloat16"])


# --------------------------------------------------------------------------- the cases

@pytest.mark.parametrize("op", [op for op in MANDATORY_OPS if op not in NOT_FLOAT]
                         + list(SPECIAL_VALUE_OPS))
def test_every_float_op_has_special_value_cases_with_nan_infinities_and_zeros(op):
    cases = _special_cases(op)
    assert cases, f"{op} has no special-values case {WHERE}"
    assert all(c.tier == "mandatory" for c in cases)
    values = np.concatenate([_values(c) for c in cases])
    if op not in NO_INF:
        assert np.isposinf(values).any() and np.isneginf(values).any(), f"{op} {WHERE}"
    if op not in NO_NAN:
        assert np.isnan(values).any(), f"{op}: no NaN in its special-values cases {WHERE}"


def test_the_cases_once_left_without_nan_now_have_it():
    for op in ("Relu", "Clip", "HardSigmoid", "HardSwish", "ReduceMax"):
        assert any(np.isnan(_values(c)).any() for c in _special_cases(op)), f"{op} {WHERE}"


def test_binary_ops_meet_every_pair_of_special_values():
    for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater"):
        [pairs] = [c for c in _special_cases(op) if c.id.endswith("special-values-pairs")]
        x, y = (np.asarray(a, np.float64).ravel() for a, _ in specials.node_inputs(pairs))
        met = {(str(a), str(b)) for a, b in zip(x, y)}
        assert ("nan", "nan") in met and ("inf", "-inf") in met and ("0.0", "-0.0") in met, op


def test_abs_neg_and_data_movement_check_the_sign_of_zero_and_relu_does_not():
    for op in ("Abs", "Neg", "Transpose", "Where", "Cast"):
        cases = _special_cases(op)
        assert cases and all(c.signed_zero for c in cases), op
        assert any(np.signbit(_values(c)[_values(c) == 0]).any() for c in cases), op
    assert not any(c.signed_zero for c in _special_cases("Relu"))


def test_the_special_value_ops_outside_the_core_set_are_in_the_mandatory_tier():
    ids = {c.id for c in all_cases(SEED) if c.op in SPECIAL_VALUE_OPS}
    assert {"Max/float32/special-values-pairs", "Equal/float32/special-values-pairs",
            "ReduceMin/float32/special-values"} <= ids
    assert not any(c.op in SPECIAL_VALUE_OPS for c in all_cases(SEED, ops=["Relu"]))


# --------------------------------------------------------------------------- the verdict

def _relu_case(x: np.ndarray) -> SimpleNamespace:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    return SimpleNamespace(id="Relu/float32/special-values", op="Relu", dtype="float32",
                           tags=("special-values",), model=helper.make_model(graph),
                           inputs={"x": x}, expected=None, tolerance_key="Relu",
                           signed_zero=False)


def _judged(case, actual: np.ndarray, declared: bool = True) -> tuple[str, dict]:
    from backplane.conformance import compare, tolerance_with_reason

    want = np.maximum(case.inputs["x"].astype(np.float64), 0).astype(np.float32)
    res = {"seconds": 0.0, "error_type": None, "declared": declared,
           "outputs": {"y": actual}, "expected": {"y": want}}
    return _judge(case, res, compare, tolerance_with_reason, None)


def test_a_backend_right_on_ordinary_values_and_not_on_nan_gets_the_special_values_verdict():
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    got = np.where(np.isnan(x), 0, np.maximum(x, 0)).astype(np.float32)  # NaN dropped
    status, kw = _judged(_relu_case(x), got)
    assert status == "special-values" and status in PASSING, WHERE
    assert kw["deviations"] == ["Relu(NaN) = 0, expected NaN"], WHERE
    assert _judged(_relu_case(x), got, declared=False)[0] == "unsupported"


def test_a_backend_wrong_on_ordinary_values_fails_even_in_a_special_values_case():
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    x[0, 0] = np.nan
    got = np.where(np.isnan(x), 0, np.maximum(x, 0) + 1e-2).astype(np.float32)
    status, kw = _judged(_relu_case(x), got)
    assert status == "fail" and "max abs error" in kw["error"], WHERE


def test_the_special_values_verdict_names_each_difference_in_words():
    nan, inf = np.nan, np.inf
    x = np.array([nan, inf, -inf, -0.0, 1.5], np.float32)
    e = np.array([nan, inf, -inf, 0.0, 1.5], np.float32)
    a = np.array([0.0, 3.4028235e38, -3.4028235e38, -0.0, 1.5], np.float32)
    ordinary, words = specials.judge("Clip", [(x, False)], a, e, 1e-4, 1e-5, signed_zero=True)
    assert ordinary.ok
    assert set(words) == {"Clip(NaN) = 0, expected NaN", "Clip(inf) = 3.403e+38, expected inf",
                          "Clip(-inf) = -3.403e+38, expected -inf", "Clip(-0) = -0, expected 0"}
    # The sign of zero counts only where the case says so.
    assert specials.judge("Relu", [(x[3:], False)], a[3:], e[3:], 1e-4, 1e-5)[1] == []
    # A comparison is named by both operands; a window op by what it gave and where.
    _, words = specials.judge("Greater", [(np.float32([nan]), False), (np.float32([1.5]), True)],
                              np.array([True]), np.array([False]), 0, 0)
    assert words == ["Greater(NaN, 1.5) = true, expected false"]
    _, words = specials.judge("MaxPool", [(np.float32([[[[nan, 2.0]]]]), False)],
                              np.float32([[[[2.0]]]]), np.float32([[[[nan]]]]), 1e-4, 1e-5)
    assert words == ["MaxPool: finite values (e.g. 2) where the oracle has NaN (1 of 1 outputs)"]


def _backend_or_skip(name: str):
    import backplane as bp

    record = next((r for r in bp.plugin_records() if r.name == name), None)
    if record is None or record.state != "ready":
        pytest.skip(f"{name}: {record.reason if record else 'not installed'}")
    return bp.registry().backend(name), bp.registry().resolve(name)[0]


@pytest.mark.slow
def test_openvino_relu_of_nan_is_reported_as_it_is_on_this_cpu(tmp_path, monkeypatch):
    """OpenVINO's CPU Relu gives 0 for NaN on the machines measured (docs/backends/
    openvino-cpu.md); whatever it gives here, the verdict must say exactly that."""
    from backplane.sdk.contract import CompileOptions
    from backplane.conformance.runner import run_cases
    from backplane.model.intake import load_model

    backend, device = _backend_or_skip("openvino-cpu")
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path))
    [case] = [c for c in generate("Relu", SEED) if c.id == "Relu/float32/special-values"]
    exe = backend.compile(load_model(case.model.SerializeToString()), device, CompileOptions())
    x = next(iter(case.inputs.values()))
    direct = np.asarray(next(iter(exe.run({k: v.copy() for k, v in case.inputs.items()})
                                  .values())))[np.isnan(x)]
    [result] = run_cases([case], "openvino-cpu", device.id)
    if np.isnan(direct).all():
        assert result.status == "pass", (result, WHERE)
    else:
        assert result.status == "special-values", (result, WHERE)
        assert f"Relu(NaN) = {specials.label(direct[0])}, expected NaN" in result.deviations


# --------------------------------------------------------------------------- reports

def _report(cases: list, backend: str = "demo-backend") -> Report:
    return Report({"name": backend, "version": "1.0"},
                  {"id": "demo:0", "name": "Demo CPU", "kind": "cpu", "hwdb": None,
                   "fingerprint": "demo:0-fp1"}, {}, {"hostname": "h", "platform": "linux"},
                  7, "mandatory", None, "2026-12-06T00:00:00+00:00", 1.0, cases)


def _case(id_: str, op: str, status: str, deviations=None) -> CaseResult:
    return CaseResult(id_, op, "float32", "mandatory", ["special-values"], status,
                      deviations=deviations)


RELU = "Relu(NaN) = 0, expected NaN"


def test_a_report_with_deviations_still_qualifies_and_lists_them_everywhere(tmp_path):
    from backplane.conformance.opsdoc import SPECIAL, _cell, results_of
    from backplane.conformance.report import junit, matrix, render_html

    r = _report([_case("Relu/float32/special-values", "Relu", "special-values", [RELU]),
                 _case("Relu/float32/rank-2", "Relu", "pass")])
    assert r.mandatory_passed and r.coverage()["passed"] == ["Relu"]
    data = r.to_dict()
    assert data["special_values"] == {"Relu": [RELU]}
    assert RELU in render_html(r) and 'id="special-values"' in render_html(r)
    xml = junit(r)
    assert 'failures="0"' in xml and RELU in xml
    assert matrix([r])["rows"][0]["cells"] == {next(iter(matrix([r])["columns"])):
                                               "special-values"}
    kept = results_of(data)
    assert kept["special_values"] == {"Relu": [RELU]} and kept["kind"] == "cpu"
    assert _cell(None, True, "", (6, 13, 14), kept["ops"]["Relu"]).endswith(f"✓2 {SPECIAL}1")


def test_stored_results_add_up_the_differences_runs_of_one_version_met():
    from backplane.conformance.opsdoc import merge_reports

    drop = "MaxPool: finite values where the oracle has NaN"
    first = _report([_case("Relu/float32/special-values", "Relu", "special-values", [RELU])])
    second = _report([_case("MaxPool/float32/special-values", "MaxPool", "special-values",
                            [drop])])
    merged = merge_reports({}, [first.to_dict(), second.to_dict()])["demo-backend"]
    assert merged["special_values"] == {"MaxPool": [drop], "Relu": [RELU]}
    assert merged["ops"] == {"MaxPool": {"special-values": 1}}  # the later run's counts
    upgraded = second.to_dict() | {"versions": {"demo": "2"}}
    merged = merge_reports({}, [first.to_dict(), upgraded])["demo-backend"]
    assert merged["special_values"] == {"MaxPool": [drop]}


def test_the_shipped_record_is_what_the_stored_results_give():
    from backplane.conformance import tomllib
    from backplane.conformance.opsdoc import load_results
    from conftest import ROOT

    results = load_results(ROOT / "docs" / "data" / "conformance-results.json")
    parsed = tomllib.loads((ROOT / "conformance" / specials.SHIPPED).read_text("utf-8"))
    assert {b: e["ops"] for b, e in parsed["backend"].items()} == {
        b: r["special_values"] for b, r in results.items() if "special_values" in r}, \
        "conformance/special_values.toml is stale: backplane conformance ops --report ..."
    assert specials.shipped() == parsed["backend"]


# --------------------------------------------------------------------------- planning

@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A full run of demo-backend stored on device demo:0 (hardware fingerprint fp1)."""
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path))
    store.save(_report([_case("Relu/float32/special-values", "Relu", "special-values", [RELU]),
                        _case("Conv/float32/special-values", "Conv", "pass")]))
    return tmp_path


def test_the_store_says_which_ops_deviate_on_a_device(stored):
    for device in ("demo:0-fp1", "fp1"):  # the store key, or the fingerprint the plan has
        assert store.special_value_deviations("demo-backend", device, ["Conv", "Relu"]) == \
            {"Relu": [RELU]}
    assert store.special_value_deviations("demo-backend", "fp1", ["Conv"]) == {}
    assert store.special_value_deviations("no-such-backend", "fp1", ["Relu"]) == {}


def test_stored_runs_of_one_version_add_up_and_a_new_version_starts_afresh(stored):
    drop = "MaxPool: finite values where the oracle has NaN"
    store.save(_report([_case("MaxPool/float32/special-values", "MaxPool", "special-values",
                              [drop])]))
    assert store.special_value_deviations("demo-backend", "fp1", ["Relu", "MaxPool"]) == \
        {"Relu": [RELU], "MaxPool": [drop]}
    newer = _report([_case("MaxPool/float32/special-values", "MaxPool", "pass")])
    newer.versions = {"demo-runtime": "2"}
    store.save(newer)
    assert store.special_value_deviations("demo-backend", "fp1", ["Relu", "MaxPool"]) == {}


def test_the_store_answers_from_the_shipped_record_without_a_run_here(stored, monkeypatch):
    record = {"demo-backend": {"kind": "cpu", "device": "Demo CPU", "versions": "demo 1",
                               "ops": {"Softmax": ["Softmax: 0 where the oracle has NaN"]}}}
    monkeypatch.setattr(specials, "shipped", lambda: record)
    assert store.special_value_deviations("demo-backend", "cpu", ["Softmax"]) == \
        {"Softmax": ["Softmax: 0 where the oracle has NaN"]}
    assert store.special_value_deviations("demo-backend", "gpu", ["Softmax"]) == {}
    assert store.special_value_deviations("demo-backend", "other-fp", ["Softmax"]) != {}
    # A run on the device itself wins over the record.
    assert store.special_value_deviations("demo-backend", "fp1", ["Softmax"]) == {}


def test_the_store_never_raises_on_a_broken_file(stored):
    for path in (stored / "conformance" / "demo-backend").glob("*.json"):
        path.write_text("{not json")
    assert store.special_value_deviations("demo-backend", "fp1", ["Relu"]) == {}
    assert store.special_value_note(object()) == []


def _plan(backend: str, device: str, fingerprint: str = "fp1") -> Plan:
    placements = [Placement("relu_1", "Relu", device, backend, "cost"),
                  Placement("conv_1", "Conv", device, backend, "cost")]
    part = Partition(0, device, backend, ["relu_1", "conv_1"], [0, 1], ["x"], ["y"])
    return Plan("m", "latency", "fp32", False, [device], placements, [part],
                fingerprints={device: fingerprint})


def test_a_plan_note_says_which_backend_in_use_deviates_and_how(stored):
    [note] = store.special_value_note(_plan("demo-backend", "demo:0"))
    assert note.startswith("demo-backend deviates on special values for Relu on demo:0: ")
    assert RELU in note and "measured on this device" in note
    assert store.special_value_note(_plan("reference", "reference:0", "fpx")) == []


def test_a_fallback_that_changes_special_values_says_so(stored):
    before, after = _plan("demo-backend", "demo:0"), _plan("reference", "reference:0", "fpx")
    [event] = store.special_value_change(before, after)
    assert event == (f"moving Relu from demo:0 to reference:0 changes special values: before, "
                     f"{RELU}; after, as the oracle")
    assert store.special_value_change(before, before) == []


def test_planning_stays_cheap(stored):
    import time

    plan = _plan("demo-backend", "demo:0")
    store.special_value_note(plan)
    t0 = time.perf_counter()
    for _ in range(200):
        store.special_value_note(plan)
    each = (time.perf_counter() - t0) / 200
    assert each < 2e-3, f"{each * 1e3:.2f} ms per plan"
