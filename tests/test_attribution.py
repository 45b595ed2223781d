"""Whose fault a failure is: the request's, the device's, or a backend's wrong values.

Real failures come from the ``injected-faults`` test backend (tests/plugins/faulty), which
computes through the reference backend on a pretend accelerator that automatic plans
choose first; ``BP_INJECT`` makes it fail. Each scenario runs in a child process with the
plugin installed and every other backend but the reference disabled, so the plan the
session falls back to is the reference backend's.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_python

SCRIPT = """
import json, logging, sys, time
import numpy as np, backplane as bp
from onnx import TensorProto, helper, numpy_helper
warnings = []
class Catch(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING and 'backend plugin' not in record.getMessage():
            warnings.append(record.getMessage())  # (the broken test plugins' own aside)
logging.getLogger('backplane').addHandler(Catch())
table = np.arange(15, dtype=np.float32).reshape(5, 3)
g = helper.make_graph(
    [helper.make_node('Gather', ['table', 'idx'], ['rows'], name='gather'),
     helper.make_node('Neg', ['rows'], ['y'], name='neg')], 'lookup',
    [helper.make_tensor_value_info('idx', TensorProto.INT64, [2])],
    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2, 3])],
    initializer=[numpy_helper.from_array(table, 'table')])
model = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])
kwargs = json.loads(KWARGS)
out = {'runs': [], 'devices': []}
try:
    s = bp.Session(model, **kwargs)
    out['first'] = [p.device for p in s.plan.partitions]
    for idx in STEPS:
        if idx == 'sleep':
            time.sleep(SLEEP)
            continue
        try:
            y = s.run({'idx': np.array(idx, dtype=np.int64)})['y']
            out['runs'].append('ok' if np.array_equal(y, -table[idx]) else 'WRONG')
        except bp.BackplaneError as e:
            out['runs'].append(type(e).__name__ + ': ' + str(e))
            out['isinstance'] = [isinstance(e, c) for c in (bp.InputError, bp.ExecutionError)]
        out['devices'].append([p.device for p in s.plan.partitions])
    out['events'] = s.plan.events
    out['notes'] = s.plan.notes
except bp.BackplaneError as e:
    out['error'] = type(e).__name__ + ': ' + str(e)
out['warnings'] = warnings
print(json.dumps(out))
"""

GOOD, BAD = [1, 4], [7, 0]
ONLY = "openvino-cpu,onnxruntime,opencl,failing-compile,failing-run,example-numpy"


def scenario(site, steps: list, inject: str = "", sleep: float = 0.0, **kwargs) -> dict:
    code = (SCRIPT.replace("KWARGS", repr(json.dumps(kwargs))).replace("STEPS", repr(steps))
            .replace("SLEEP", repr(sleep)))
    result = run_python(code, site=site, BP_INJECT=inject, BACKPLANE_DISABLE_PLUGINS=ONLY)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert "error" not in out, out["error"]
    return out


@pytest.fixture(scope="module")
def site(broken_site):
    return broken_site


def test_a_bad_request_fails_alone_and_excludes_no_device(site):
    out = scenario(site, [GOOD, BAD, GOOD, BAD, GOOD])
    assert out["first"] == ["injected-faults:0"]
    assert out["runs"][0::2] == ["ok"] * 3
    assert out["runs"][1].startswith("RequestError: the request failed on injected-faults:0 "
                                     "and again on reference:0")
    assert "no device was excluded" in out["runs"][1] and "out of bounds" in out["runs"][1]
    assert out["isinstance"] == [True, True]  # an InputError and an ExecutionError
    assert out["devices"] == [["injected-faults:0"]] * 5  # the session never moved
    failures = [e for e in out["events"] if e.startswith("request failure, no device excluded")]
    assert len(failures) == 2 and out["warnings"] == []


def test_a_device_failure_moves_the_session_for_a_cool_down_then_the_device_returns(site):
    out = scenario(site, [GOOD, GOOD, "sleep", GOOD, GOOD], inject="flaky:2", sleep=0.6,
                   cooldown_s=0.4)
    assert out["runs"] == ["ok"] * 4  # the failed request was answered by the fallback
    assert out["devices"] == [["injected-faults:0"], ["reference:0"],
                              ["injected-faults:0"], ["injected-faults:0"]]
    moved = [e for e in out["events"] if e.startswith("re-planned without injected-faults:0")]
    assert len(moved) == 1 and "for 0.4 s (device failure" in moved[0]
    assert "transient device fault on run 2" in moved[0]
    assert any(e.startswith("retried injected-faults:0 after its 0.4 s cool-down")
               for e in out["events"])
    assert len(out["warnings"]) == 1 and "re-planning without it for 0.4 s" in out["warnings"][0]


def test_a_device_that_fails_again_after_its_cool_down_waits_twice_as_long(site):
    out = scenario(site, [GOOD, GOOD, "sleep", GOOD], inject="run-after:1", sleep=0.5,
                   cooldown_s=0.3)
    assert out["runs"] == ["ok"] * 3
    assert out["devices"][-1] == ["reference:0"]
    cool = [e.split(" (device failure")[0] for e in out["events"] if e.startswith("re-planned")]
    assert cool == ["re-planned without injected-faults:0 for 0.3 s",
                    "re-planned without injected-faults:0 for 0.6 s"]


def test_wrong_values_from_an_unqualified_backend_are_caught_on_its_first_run(site):
    out = scenario(site, [GOOD, GOOD], inject="wrong-values:Neg")
    assert out["runs"] == ["ok", "ok"]  # the first request, too, is answered right
    assert out["devices"] == [["reference:0"]] * 2
    [event] = [e for e in out["events"] if e.startswith("re-planned without injected-faults:0")]
    assert "disagreed with the reference backend on output 'y'" in event
    assert len(out["warnings"]) == 1 and "not qualified on this device" in out["warnings"][0]


def test_without_the_run_time_check_the_same_wrong_values_come_back(site):
    out = scenario(site, [GOOD], inject="wrong-values:Neg", verify="off")
    assert out["runs"] == ["WRONG"] and out["devices"] == [["injected-faults:0"]]


def test_a_verified_partition_says_so_in_the_plan_and_is_not_checked_again(site):
    out = scenario(site, [GOOD, GOOD], verify="always")
    assert out["runs"] == ["ok", "ok"]
    agreed = [n for n in out["notes"] if "agreed with the reference backend" in n]
    assert agreed == ["partition 0 on injected-faults:0 agreed with the reference backend on "
                      "its first run (run-time verification)"]


def test_a_compile_past_its_timeout_passes_the_device_over(site):
    out = scenario(site, [GOOD], inject="slow-compile:5", compile_timeout_s=0.5)
    assert out["first"] == ["reference:0"] and out["runs"] == ["ok"]
    [event] = [e for e in out["events"] if e.startswith("re-planned without injected-faults")]
    assert "did not finish within 0.5 s" in event


def test_an_unknown_verify_mode_is_refused_with_the_choices():
    import backplane as bp
    from models import single

    with pytest.raises(bp.UnsupportedError, match="unqualified, always, off"):
        bp.Session(single("Relu"), devices=["reference"], verify="sometimes")


def test_a_stored_conformance_run_qualifies_its_ops_and_keeps_failed_ones_off(tmp_path,
                                                                              monkeypatch):
    """The store key a conformance run is saved under is the one planning reads: a passed
    op x dtype is not checked at run time, a failed one is planned elsewhere."""
    import numpy as np

    import backplane as bp
    from backplane.conformance import store
    from models import single

    if not [d for d in bp.registry().devices() if d.backend == "onnxruntime"]:
        pytest.skip("onnxruntime has no device here")
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path / "data"))
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)

    def session(devices=("onnxruntime",)):
        s = bp.Session(single("Relu"), devices=list(devices))
        s.run({"x": x})
        return s

    agreed = "agreed with the reference backend on its first run"
    first = session()
    assert any(agreed in n for n in first.plan.notes)  # no stored run: checked
    key = store.store_key("onnxruntime:0", first.plan.fingerprints["onnxruntime:0"])
    path = store._path("onnxruntime", key)
    path.parent.mkdir(parents=True, mode=0o700)
    (tmp_path / "data").chmod(0o700)
    record = {"backend": "onnxruntime", "version": first.plan.versions["onnxruntime"]}
    path.write_text(json.dumps({**record, "variants": {"Relu|float32": "passed"}}))
    assert not any(agreed in n for n in session().plan.notes)  # qualified: not checked
    path.write_text(json.dumps({**record, "variants": {"Relu|float32": "failed"}}))
    moved = session(("onnxruntime", "reference"))
    assert moved.plan.device_of(moved.graph.nodes[0].name) == "reference:0"
    codes = {r.code for p in moved.plan.placements for r in p.rejected}
    assert "conformance:failed" in codes


def test_a_fallback_that_changes_special_values_says_so_in_its_event(site):
    """The reference backend gives a finite AveragePool where a window holds NaN (recorded
    by its conformance run); the injected accelerator, as far as anyone recorded, does not:
    moving AveragePool there is announced."""
    code = """
import json, numpy as np, backplane as bp
from onnx import TensorProto, helper
g = helper.make_graph([helper.make_node('AveragePool', ['x'], ['y'], kernel_shape=[2, 2])], 'pool',
    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 1, 4, 4])],
    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 1, 3, 3])])
s = bp.Session(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]))
s.run({'x': np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)})
print(json.dumps(s.plan.events))
"""
    result = run_python(code, site=site, BP_INJECT="run:AveragePool",
                        BACKPLANE_DISABLE_PLUGINS=ONLY)
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout.splitlines()[-1])
    assert any(e.startswith("re-planned without injected-faults:0") for e in events), events
    [change] = [e for e in events if "special values" in e]
    assert "AveragePool" in change and "reference:0" in change
