"""Derived op tables checked against ONNX's node tests: wrong answers and crashes take an
op version out, a failing variant limits its attribute, and the rest is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from backplane.ops.verify import _judged, narrowed


def outcome(op: str, ok: bool, name: str = "t", **attrs) -> dict:
    return {"test": [op, 14, "float32", name], "ok": ok, "why": "" if ok else "wrong",
            "attrs": attrs}


def test_a_failure_explained_by_a_mode_attribute_limits_that_attribute():
    failed, rules = _judged([outcome("GRU", True, layout=0), outcome("GRU", True),
                             outcome("GRU", False, "test_gru_batchwise", layout=1)])
    assert not failed and rules == {"GRU": {"layout": [0]}}


def test_a_failing_variant_fails_its_node_in_the_capability_check():
    from backplane.sdk.contract import Capabilities
    from backplane.model.graph import Node, ValueInfo
    from backplane.ops.registrations import op_supports
    from backplane.ops.verify import attribute_rules

    caps = Capabilities(ops=op_supports({"GRU": {"14": ["float32"]}},
                                        attribute_rules({"GRU": {"layout": [0]}})))
    x = ValueInfo("x", "float32", (2, 3, 4))
    node = lambda **a: Node("g", "GRU", "", ("x",), ("y",), a, (x,), (x,), 17, 14)  # noqa: E731
    assert caps.check(node()) and caps.check(node(layout=0)) and not caps.check(node(layout=1))


def test_a_failure_no_mode_explains_takes_the_op_version_and_dtype_out():
    failed, rules = _judged([outcome("Resize", True, mode="linear"),
                             outcome("Resize", False, "test_resize_x", mode="linear")])
    assert failed == {"Resize": {"14/float32": "test_resize_x: wrong"}} and not rules
    table = {"Resize": {"13": ["float32"], "14": ["float32", "float16"]}}
    assert narrowed(table, failed) == {"Resize": {"13": ["float32"], "14": ["float16"]}}


def test_a_mode_left_at_its_default_counts_as_that_value():
    """torch writes exclude_outside=0 explicitly; ONNX's tests leave it unset."""
    failed, rules = _judged([outcome("Resize", True), outcome("Resize", True, mode="linear"),
                             outcome("Resize", False, "t", exclude_outside=1)])
    assert not failed and rules == {"Resize": {"exclude_outside": [0]}}


def test_an_optional_output_asked_for_only_by_failures_must_stay_absent():
    from backplane.ops.verify import attribute_rules

    failed, rules = _judged([outcome("Attention", True),
                             outcome("Attention", False, "t", **{"#output3": 1})])
    assert not failed and rules == {"Attention": {"#output3": [0]}}
    assert attribute_rules(rules)["Attention"]["absent_outputs"] == {3}


def test_an_operand_dtype_only_failures_have_limits_that_input():
    from backplane.ops.verify import attribute_rules

    failed, rules = _judged([outcome("Pow", True, **{"#dtype1": "float32"}),
                             outcome("Pow", True, **{"#dtype1": "int64"}),
                             outcome("Pow", False, "t", **{"#dtype1": "uint64"})])
    assert not failed and rules == {"Pow": {"#dtype1": ["float32", "int64"]}}
    assert attribute_rules(rules)["Pow"]["input_dtypes"] == {1: {"float32", "int64"}}


def test_a_failure_the_limits_found_elsewhere_refuse_keeps_its_version():
    """OpenVINO's Attention-23 float32 fails only a causal test; is_causal is limited to 0
    by a failure at version 24, so the planner never gives it that node."""
    def at(version, ok, name, **attrs):
        row = outcome("Attention", ok, name, **attrs)
        row["test"][1] = version
        return row

    failed, rules = _judged([at(24, True, "a"), at(24, False, "b", is_causal=1),
                             at(23, True, "c"), at(23, True, "d", is_causal=1),
                             at(23, False, "e", is_causal=1), at(23, False, "f")])
    assert rules == {"Attention": {"is_causal": [0]}}
    # e (is_causal passes in d: no limit at 23) is refused by the limit from 24; f is not,
    # and takes 23 out alone
    assert failed == {"Attention": {"23/float32": "f: wrong"}}
    failed, _ = _judged([at(24, True, "a"), at(24, False, "b", is_causal=1),
                         at(23, True, "c"), at(23, False, "e", is_causal=1)])
    assert not failed


def test_a_variant_another_version_passes_takes_the_failing_version_out():
    """Limits hold per op, not per version: is_causal=1 fails at 24 and passes at 23, so
    the limit admits it, and 24 (where it is wrong) must go out instead."""
    def at(version, ok, name, **attrs):
        row = outcome("Attention", ok, name, **attrs)
        row["test"][1] = version
        return row

    failed, rules = _judged([at(24, True, "a"), at(24, False, "b", is_causal=1),
                             at(23, True, "c", is_causal=1), at(23, False, "d", is_causal=0,
                                                               softcap=1)])
    assert rules == {"Attention": {"is_causal": [0, 1]}}
    assert failed["Attention"]["24/float32"] == "b: wrong"


def test_integer_outputs_may_be_a_stated_number_of_steps_off_and_floats_keep_theirs():
    import numpy as np

    from backplane.ops.verify import _mismatch

    want = {"y": np.array([25, 7], np.uint8), "s": np.array(0.5, np.float32)}
    near = {"y": np.array([26, 7], np.uint8), "s": np.array(0.5, np.float32)}
    assert _mismatch(near, want, 1e-3, 1e-7) and not _mismatch(near, want, 1e-3, 1e-7, steps=1)
    far = {"y": np.array([27, 7], np.uint8), "s": np.array(0.5, np.float32)}
    assert _mismatch(far, want, 1e-3, 1e-7, steps=1)
    scale_off = {"y": want["y"], "s": np.array(0.6, np.float32)}
    assert _mismatch(scale_off, want, 1e-3, 1e-7, steps=1)


def test_sizes_never_become_rules():
    """hidden_size has no default: a size, not a variant."""
    failed, rules = _judged([outcome("LSTM", True, hidden_size=3),
                             outcome("LSTM", False, "t2", hidden_size=7)])
    assert "LSTM" in failed and not rules


def test_verify_survives_a_backend_that_crashes_and_refuses_what_it_gets_wrong(broken_site):
    code = ("import json; from backplane.ops.verify import verify; "
            "table = {op: {'14': ['float32']} for op in ('Relu',)}; "
            "table.update({op: {'13': ['float32']} for op in ('Neg', 'Abs')}); "
            "print(json.dumps(verify('injected-faults', table)))")
    env = {**os.environ, "PYTHONPATH": str(broken_site),
           "BP_INJECT": "crash:Neg,wrong-values:Abs", "BP_INJECT_OPS": "Relu,Neg,Abs",
           "BACKPLANE_PLUGINS": "injected-faults,reference"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    failed, rules = json.loads(out.stdout.strip().splitlines()[-1])
    assert "crashed" in failed["Neg"]["13/float32"]
    assert "differs from the recorded one" in failed["Abs"]["13/float32"]
    assert "Relu" not in failed and not rules


def test_an_optional_input_only_failures_have_explains_nothing():
    """LSTM's peephole test feeds inputs 4 to 7; the passing tests feed none of them: the
    failure says nothing about initial states, so no rule refuses them."""
    failed, rules = _judged([outcome("LSTM", True),
                             outcome("LSTM", False, "t", **{"#dtype7": "float32"})])
    assert "LSTM" in failed and not rules


def test_a_failure_in_an_optional_output_only_keeps_the_op_without_that_output():
    """ORT's Attention-23 returns a wrong qk_matmul_output (output 3) with a causal mask,
    while its Y is right: the op stays, without output 3."""
    row = outcome("Attention", False, "test_attention_qk_causal", is_causal=1)
    row.update(wrong=[3], compared=[0, 3])
    failed, rules = _judged([outcome("Attention", True, is_causal=1), row])
    assert not failed and rules == {"Attention": {"#output3": [0]}}


def test_a_wrong_optional_output_with_the_first_not_compared_explains_nothing():
    """LSTM's peephole test asks for Y_h only: whether Y is right is not known."""
    row = outcome("LSTM", False, "test_lstm_with_peepholes")
    row.update(wrong=[1], compared=[1])
    failed, rules = _judged([outcome("LSTM", True), row])
    assert "LSTM" in failed and not rules


def test_a_one_element_input_is_checked_by_its_known_shape():
    from backplane.sdk.contract import Capabilities, LazyOps, OpSupport
    from backplane.model.graph import Node, ValueInfo

    caps = Capabilities(ops=LazyOps(lambda: {"ConvInteger": OpSupport(
        scalar_inputs=frozenset({3}))}, lambda: {"ConvInteger": {"10/int8": "test_x: wrong"}}))
    x = ValueInfo("x", "uint8", (1, 1, 3, 3))

    def node(shape, given=True):
        zp = ValueInfo("wz", "uint8", shape) if given else None
        return Node("c", "ConvInteger", "", ("x", "w", "xz", "wz" if given else ""), ("y",),
                    {}, (x, x, None, zp), (), 13, 10)

    assert caps.check(node(())) and caps.check(node((1,))) and caps.check(node(None, False))
    for shape in ((2,), None, ("n",)):
        verdict = caps.check(node(shape))
        assert not verdict and verdict.code == "capability:shape", shape
    # an op the derivation left out names its failed test
    other = Node("c", "ConvInteger", "", ("x",), ("y",), {}, (x,), (), 13, 10)
    assert caps.ops.refusal("ConvInteger", 10, "int8") == "test_x: wrong"
    assert caps.ops.refusal("Relu") is None and caps.check(other)
