"""Strict versus fallback, with real failures injected by a test plugin.

The ``injected-faults`` backend (tests/plugins/faulty) computes correctly through the
reference backend on a pretend accelerator that declares itself the cheapest device, so
automatic plans choose it first; ``BP_INJECT`` makes its compiles or runs fail for real
(an exception raised inside the plugin), and ``BP_INJECT_OPS`` limits what it admits. Each
scenario runs in a child process with the plugin installed.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_python

SCRIPT = """
import json, logging, sys
import numpy as np, backplane as bp
sys.path.insert(0, 'tests')
from models import relu_conv_relu, relu_conv_relu_numpy
warnings = []
class Catch(logging.Handler):
    def emit(self, record):
        if 're-planning' in record.getMessage():
            warnings.append(record.getMessage())
logging.getLogger('backplane').addHandler(Catch())
kwargs = json.loads(KWARGS)
out = {}
try:
    s = bp.Session(relu_conv_relu(), devices=['injected-faults', 'reference'] if
                   kwargs.pop('explicit', False) else 'auto', **kwargs)
    out['first'] = [p.device for p in s.plan.placements]
    for i in range(6):
        x = np.random.default_rng(i).standard_normal((1, 2, 6, 6)).astype(np.float32)
        np.testing.assert_allclose(s.run({'x': x})['y'], relu_conv_relu_numpy(x),
                                   rtol=1e-5, atol=1e-5)
    out['final'] = [p.device for p in s.plan.placements]
    out['events'] = s.plan.events
except bp.BackplaneError as e:
    out['error'] = type(e).__name__ + ': ' + str(e)
out['warnings'] = warnings
print(json.dumps(out))
"""


def scenario(site, inject: str = "", ops: str = "", **kwargs) -> dict:
    code = SCRIPT.replace("KWARGS", repr(json.dumps(kwargs)))
    result = run_python(code, site=site, BP_INJECT=inject, BP_INJECT_OPS=ops,
                        BACKPLANE_DISABLE_PLUGINS="openvino-cpu,onnxruntime,opencl,"
                                                  "failing-compile,failing-run,example-numpy")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def site(broken_site):
    return broken_site


def test_without_faults_the_injected_accelerator_is_chosen(site):
    out = scenario(site)
    assert out["first"] == ["injected-faults:0"] * 3 == out["final"]
    assert out["warnings"] == [] and out["events"] == []


@pytest.mark.parametrize("inject, cause", [
    ("compile:Conv", "vendor compiler crashed on Conv"),
    ("run:Conv", "device out of memory running Conv"),
    ("run-after:3", "device lost after 3 runs"),
    ("wrong-shape:Conv", "returned output"),
])
def test_a_failure_replans_logs_one_warning_and_every_request_is_answered(site, inject, cause):
    out = scenario(site, inject)
    assert "error" not in out, out.get("error")
    assert "injected-faults:0" not in out["final"]
    assert len(out["warnings"]) == 1 and cause in out["warnings"][0]
    assert any("re-planned without injected-faults:0" in e and cause in e
               for e in out["events"])


def test_strict_turns_the_same_failures_into_errors_naming_the_device(site):
    out = scenario(site, "run:Conv", strict=True)
    assert out["error"].startswith("ExecutionError") and "injected-faults" in out["error"]
    assert "device out of memory running Conv" in out["error"]
    out = scenario(site, "compile:Conv", strict=True)
    assert out["error"].startswith("CompileError") and "vendor compiler crashed" in out["error"]


def test_ops_the_injected_device_lacks_become_extra_partitions(site):
    out = scenario(site, ops="Conv")
    assert out["first"] == ["reference:0", "injected-faults:0", "reference:0"] == out["final"]


def test_strict_device_class_names_the_nodes_that_would_leave_it(site):
    out = scenario(site, ops="Conv", device_class="accelerator", strict=True)
    assert out["error"].startswith("UnsupportedError")
    assert "'relu1'" in out["error"] or "(Relu)" in out["error"]
    assert "would leave the required device class 'accelerator'" in out["error"]
    out = scenario(site, ops="Conv", device_class="accelerator")
    assert out["first"][1] == "injected-faults:0"


def test_a_compile_that_refuses_one_node_moves_that_node_only():
    """ONNX Runtime declares Where (its capability reads the boolean condition) but has no
    kernel for boolean X and Y: its compile names the node, and the session plans that
    node elsewhere while the rest stays on ONNX Runtime."""
    import numpy as np
    from onnx import TensorProto, helper

    import backplane as bp

    if not [d for d in bp.registry().devices() if d.backend == "onnxruntime"]:
        pytest.skip("onnxruntime has no device here")
    b = TensorProto.BOOL
    nodes = [helper.make_node("Not", ["c"], ["nc"], name="not"),
             helper.make_node("Where", ["nc", "x", "y"], ["w"], name="where"),
             helper.make_node("Xor", ["w", "x"], ["out"], name="xor")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, b, [4])
                                           for n in ("c", "x", "y")],
                              [helper.make_tensor_value_info("out", b, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    s = bp.Session(model, devices=["onnxruntime", "reference"])
    c, x, y = (np.array(v, bool) for v in ([1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]))
    out = s.run({"c": c, "x": x, "y": y})["out"]
    np.testing.assert_array_equal(out, np.where(~c, x, y) ^ x)
    assert s.plan.device_of("where") == "reference:0"
    assert s.plan.device_of("not") == s.plan.device_of("xor") == "onnxruntime:0"
    assert any("'where' off onnxruntime:0" in e for e in s.plan.events), s.plan.events
