"""The torch op table (``backplane.plugins.torch_ops``) and the torch-cpu backend that verifies it.

The GPU plugins (cuda-tensorrt, rocm) run this table on their devices; here it runs on
torch's CPU device: the conformance mandatory tier as a hardware team would run it, the
probe that lists that device only on request, reduced-precision sessions against the
reference, and torch tensors in and out of a compiled executable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.util import find_spec

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from backplane import CompileOptions, Device
from backplane.conformance.cases import MANDATORY_OPS
from backplane.sdk.errors import CompileError, DeviceUnavailable
from backplane.model.intake import load_model
from conftest import ROOT, run_python

needs_torch = pytest.mark.skipif(find_spec("torch") is None, reason="torch is not installed")
SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
#: Core ops torch-cpu must declare and pass (all of them today), so that a lost kernel
#: fails here instead of passing quietly as "unsupported".
CORE_OPS_DECLARED = 49
#: A reduced-precision session's largest error, as a fraction of the largest reference
#: output. fp16 keeps 11 significant bits (2^-11 = 4.9e-4 per rounding), bf16 8 (3.9e-3);
#: a few layers accumulate about ten roundings. Measured worst over 30 seeds, on the two
#: models below: fp16 1.4e-3, bf16 1.2e-2.
REDUCED_TOLERANCE = {"fp16": 5e-3, "bf16": 4e-2}
ENABLED = {"BACKPLANE_TORCH_CPU": "1"}


def _record(code: str = "", **env: str) -> dict:
    """torch-cpu's plugin record, and whether torch was imported, from a child process."""
    done = run_python(
        "import json, sys, backplane as bp\n" + code +
        "r = next(r for r in bp.plugin_records() if r.name == 'torch-cpu')\n"
        "print(json.dumps({'state': r.state, 'reason': r.reason, 'devices': r.devices,"
        " 'torch_imported': 'torch' in sys.modules}))", **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _one_node(op: str, inputs: dict, outputs: dict, inits: list | None = None, **attrs):
    graph = helper.make_graph(
        [helper.make_node(op, list(inputs) + [i.name for i in inits or []], list(outputs),
                          **attrs)], f"test-{op}",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        initializer=inits or [])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                        ir_version=10))


DEVICE = Device(name="torch CPU", kind="cpu", backend="torch-cpu", index=0)


# ---------------------------------------------------------------------- discovery

def test_importing_the_plugin_imports_neither_torch_nor_numpy():
    done = run_python("import sys, backplane.plugins.torch_ops as t; len(t.kernels); "
                      "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_without_the_variable_there_is_no_device_and_the_reason_says_how_to_enable_it():
    record = _record()
    assert record["state"] == "no-device" and record["devices"] == []
    assert "BACKPLANE_TORCH_CPU=1" in record["reason"]
    assert "openvino-cpu or onnxruntime" in record["reason"]
    assert not record["torch_imported"]


@needs_torch
def test_with_the_variable_torchs_cpu_device_is_listed_without_importing_torch():
    record = _record(**ENABLED)
    assert record["state"] == "ready", record["reason"]
    assert record["devices"] == ["torch-cpu:0"]
    assert not record["torch_imported"]


def test_without_torch_the_probe_says_how_to_install_it(monkeypatch):
    from backplane.plugins import torch_ops

    monkeypatch.setenv("BACKPLANE_TORCH_CPU", "1")
    monkeypatch.setattr(torch_ops, "torch_build", lambda: {"installed": False})
    with pytest.raises(DeviceUnavailable, match=r"torch is not installed; pip install "
                                                r"torch==2\.13\.0"):
        torch_ops.TorchCPUBackend().probe()


@needs_torch
def test_torch_build_is_read_from_package_metadata():
    import torch

    from backplane.plugins.torch_ops import torch_build

    build = torch_build()
    assert build["installed"] and build["version"] == torch.__version__
    expected = "rocm" if torch.version.hip else "cuda" if torch.version.cuda else "cpu"
    assert build["build"] == expected


@pytest.mark.parametrize("version, build, accelerator", [
    ("2.13.0+cpu", "cpu", None), ("2.4.1+cu124", "cuda", "12.4"), ("2.1.0+cu118", "cuda", "11.8"),
    ("2.5.0+rocm6.2", "rocm", "6.2"), ("2.3.0", "unknown", None)])
def test_torch_build_names_the_build_from_the_version_label(version, build, accelerator):
    from backplane.plugins.torch_ops import torch_build

    found = torch_build(version)
    assert (found["build"], found["accelerator_version"]) == (build, accelerator)


# ---------------------------------------------------------------------- the executable

@needs_torch
def test_a_torch_tensor_input_is_accepted_and_the_outputs_are_torch_tensors():
    import torch

    from backplane.plugins.torch_ops import compile_on

    b = np.random.default_rng(SEED).standard_normal((4, 5)).astype(np.float32)
    graph = _one_node("Gemm", {"a": (TensorProto.FLOAT, [3, 4])},
                      {"y": (TensorProto.FLOAT, [3, 5])}, [numpy_helper.from_array(b, "b")])
    exe = compile_on(graph, DEVICE, CompileOptions(), "cpu", path="test path")
    assert exe.dlpack and exe.thread_safe and exe.path == "test path"
    a = torch.from_numpy(np.random.default_rng(SEED + 1).standard_normal((3, 4)).astype(np.float32))
    out = exe.run({"a": a})["y"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), a.numpy() @ b, rtol=1e-5, atol=1e-5,
                               err_msg=f"seed {SEED}")
    host = exe.run({"a": a.numpy()})["y"]  # host arrays are accepted too
    np.testing.assert_array_equal(np.asarray(host), out.numpy())


@needs_torch
def test_bfloat16_outputs_come_back_as_host_arrays():
    import ml_dtypes

    from backplane.plugins.torch_ops import compile_on

    graph = _one_node("Cast", {"x": (TensorProto.FLOAT, [5])},
                      {"y": (TensorProto.BFLOAT16, [5])}, to=TensorProto.BFLOAT16)
    x = np.random.default_rng(SEED).standard_normal(5).astype(np.float32)
    y = compile_on(graph, DEVICE, CompileOptions(), "cpu").run({"x": x})["y"]
    assert isinstance(y, np.ndarray) and y.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(y, x.astype(ml_dtypes.bfloat16), err_msg=f"seed {SEED}")


@needs_torch
def test_an_output_that_views_a_constant_is_a_copy_the_caller_may_write():
    from backplane.plugins.torch_ops import compile_on

    c = np.arange(6, dtype=np.float32)
    graph = _one_node("Reshape", {}, {"y": (TensorProto.FLOAT, [2, 3])},
                      [numpy_helper.from_array(c, "c"),
                       numpy_helper.from_array(np.array([2, 3], np.int64), "s")])
    exe = compile_on(graph, DEVICE, CompileOptions(), "cpu")
    np.from_dlpack(exe.run({})["y"])[...] = -1  # as the executor hands it to a caller
    np.testing.assert_array_equal(exe.run({})["y"].numpy(), c.reshape(2, 3))


@needs_torch
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_reduced_precision_run_keeps_constant_resize_scales_exact(precision):
    from backplane.plugins.torch_ops import compile_on

    # 1/3 in fp16 is 0.33325: 3 x 0.33325 would floor to an output of size 0, not 1.
    scales = np.array([1, 1, 1 / 3, 1 / 3], np.float32)
    graph = _one_node("Resize", {"x": (TensorProto.FLOAT, [1, 1, 3, 6])},
                      {"y": (TensorProto.FLOAT, [1, 1, 1, 2])},
                      [numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
                       numpy_helper.from_array(scales, "scales")], mode="nearest")
    x = np.random.default_rng(SEED).standard_normal((1, 1, 3, 6)).astype(np.float32)
    y = compile_on(graph, DEVICE, CompileOptions(precision=precision), "cpu").run({"x": x})["y"]
    assert tuple(y.shape) == (1, 1, 1, 2) and str(y.dtype) == "torch.float32"
    # half_pixel: rows (0 + 0.5) * 3 - 0.5 = 1, columns 1 and 4; values rounded once.
    np.testing.assert_allclose(y.numpy(), x[:, :, 1:2, [1, 4]], rtol=1e-2,
                               err_msg=f"seed {SEED}")


@needs_torch
def test_a_precision_the_table_does_not_compute_at_is_a_compile_error():
    from backplane.plugins.torch_ops import compile_on

    graph = _one_node("Relu", {"x": (TensorProto.FLOAT, [2])}, {"y": (TensorProto.FLOAT, [2])})
    with pytest.raises(CompileError, match="computes at bf16, fp16, fp32, not fp8"):
        compile_on(graph, DEVICE, CompileOptions(precision="fp8"), "cpu")


# ---------------------------------------------------------------------- sessions

_SESSIONS = """
import json, sys
import numpy as np
import backplane as bp
sys.path.insert(0, {tests!r})
from models import relu_conv_relu
from backplane.conformance.zoo import transformer_encoder

seed, precision = {seed}, {precision!r}
rng = np.random.default_rng(seed)
found = {{}}
for name, model, shape in (("relu-conv-relu", relu_conv_relu(seed), (1, 2, 6, 6)),
                           ("transformer-encoder", transformer_encoder(seed).model, (2, 16, 32))):
    x = rng.standard_normal(shape).astype(np.float32)
    want = bp.Session(model, devices=["reference"]).run({{"x": x}})
    low = bp.Session(model, devices=["torch-cpu"], precision=precision)
    got = low.run({{"x": x}})
    full = bp.Session(model, devices=["torch-cpu"]).run({{"x": x}})
    for k in want:
        found[f"{{name}}:{{k}}"] = {{
            "dtype": str(got[k].dtype),
            "error": float(np.abs(got[k].astype(np.float64) - want[k]).max()),
            "scale": float(np.abs(want[k]).max()),
            "differs_from_fp32": bool((got[k] != full[k]).any()),
            "precisions": sorted({{p.precision for p in low.plan.partitions}}),
            "backends": sorted({{p.backend for p in low.plan.partitions}})}}
print(json.dumps(found))
"""


@needs_torch
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_reduced_precision_session_matches_the_reference_with_float32_outputs(precision):
    done = run_python(_SESSIONS.format(tests=str(ROOT / "tests"), seed=SEED,
                                       precision=precision), timeout=300, **ENABLED)
    assert done.returncode == 0, f"seed {SEED}: {done.stderr[-3000:]}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        assert r["dtype"] == "float32", (name, r)
        assert r["backends"] == ["torch-cpu"] and r["precisions"] == [precision], (name, r)
        assert r["differs_from_fp32"], f"{name} at {precision} equals fp32: it was not lowered"
        assert r["error"] <= REDUCED_TOLERANCE[precision] * r["scale"], \
            f"seed {SEED}: {name} at {precision}: max error {r['error']:.3g} with outputs " \
            f"up to {r['scale']:.3g}"


_MIXED = """
import json
import numpy as np
from onnx import TensorProto, helper
import backplane as bp

nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
         helper.make_node("Sin", ["a"], ["b"], name="sin"),
         helper.make_node("Add", ["a", "b"], ["y"], name="add")]
graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", 1, [3, 4])],
                          [helper.make_tensor_value_info("y", 1, [3, 4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
x = np.random.default_rng({seed}).standard_normal((3, 4)).astype(np.float32)
s = bp.Session(model, devices=["torch-cpu", "reference"])
y = s.run({{"x": x}})["y"]
a = np.maximum(x, 0)
print(json.dumps({{"backends": [p.backend for p in s.plan.partitions],
                  "type": type(y).__name__, "error": float(np.abs(y - (a + np.sin(a))).max())}}))
"""


@needs_torch
def test_a_plan_through_another_backend_and_back_hands_torch_tensors_over():
    done = run_python(_MIXED.format(seed=SEED), **ENABLED)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backends"] == ["torch-cpu", "reference", "torch-cpu"]
    assert result["type"] == "ndarray"
    assert result["error"] <= 1e-6, f"seed {SEED}: {result}"


# ---------------------------------------------------------------------- conformance

@needs_torch
@pytest.mark.slow
def test_the_mandatory_tier_passes_on_torchs_cpu_device(tmp_path):
    rep = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "backplane", "conformance", "run", "--backend", "torch-cpu",
         "--tier", "mandatory", "-j", "2", "--report", str(rep)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, **ENABLED, "BACKPLANE_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((rep / "report.json").read_text())
    coverage = report["coverage"]
    assert coverage["declared"] == coverage["passed"]
    assert len(coverage["passed"]) >= CORE_OPS_DECLARED, coverage
    assert set(coverage["passed"]) <= set(MANDATORY_OPS)
    statuses = {c["status"] for c in report["cases"]}
    assert statuses <= {"pass", "unsupported", "undeclared-pass", "skipped",
                        "special-values"}, statuses  # deviations on NaN/inf are listed
    fused: dict[str, set[str]] = {}
    for c in report["cases"]:
        if c["op"] in ("FusedConvRelu", "FusedMatMulBiasGelu", "Attention"):
            fused.setdefault(c["op"], set()).add(c["status"])
    assert fused == {op: {"pass"} for op in ("FusedConvRelu", "FusedMatMulBiasGelu",
                                             "Attention")}
