"""The onnxruntime backend: devices and readiness, derived capabilities, policies, the
executable (dtypes, empty and rank-0 tensors, threads, errors), and the model zoo end to end
through a Session against the oracle.

Skipped, with the reason, where onnxruntime is not importable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

import backplane as bp  # noqa: E402
from backplane import CompileOptions, Device  # noqa: E402
from backplane.sdk.errors import CompileError, ExecutionError  # noqa: E402
from backplane.model.intake import load_model  # noqa: E402
from backplane.plugins import ort as ortb  # noqa: E402
from backplane.runtimes import onnxruntime as ort_rt  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
CPU = "CPUExecutionProvider"


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


def backend() -> ortb.ORTBackend:
    return bp.registry().backend("onnxruntime")


def cpu_device() -> Device:
    [device] = bp.registry().resolve("onnxruntime:0")
    return device


def one_node(op: str, ins: dict[str, tuple[int, list]], outs: dict[str, tuple[int, list]],
             **attrs):
    """A one-node opset-21 model; ins/outs map names to (element type, shape)."""
    graph = helper.make_graph(
        [helper.make_node(op, list(ins), list(outs), **attrs)], f"test-{op}",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in ins.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outs.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def compile_(model, policy: str = "latency", device: Device | None = None):
    return backend().compile(load_model(model), device or cpu_device(),
                             CompileOptions(policy=policy))


# ---------------------------------------------------------------------- devices, readiness

def test_device_0_is_the_cpu_execution_provider():
    device = cpu_device()
    assert device.kind == "cpu"
    assert device.properties["provider"] == CPU
    assert device.properties["onnxruntime"] == ort.__version__
    assert "AzureExecutionProvider" not in device.properties["not_ready"]  # not a device


def test_the_cpu_provider_passes_its_readiness_check():
    assert ort_rt.provider_readiness(CPU) == (True, "")


def test_a_provider_this_build_lacks_is_not_ready_with_the_reason():
    absent = next(p for p in ort.get_all_providers()
                  if p not in ort.get_available_providers())
    ready, reason = ort_rt.provider_readiness(absent)
    assert not ready
    assert f"{absent} is not in this onnxruntime build" in reason


def test_a_built_in_provider_that_takes_no_node_is_not_ready():
    # The Azure provider is in this build but runs no Add itself; with CPU fallback off,
    # ORT refuses the session instead of running it on the CPU.
    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no AzureExecutionProvider")
    ready, reason = ort_rt.provider_readiness("AzureExecutionProvider")
    assert not ready
    assert "fallback to CPU EP has been explicitly disabled" in reason


def test_a_readiness_check_that_hangs_is_not_ready_in_bounded_time(monkeypatch):
    monkeypatch.setattr(ort_rt, "_check_provider", lambda p: time.sleep(5) or (True, ""))
    name = f"SlowTestExecutionProvider{SEED}"
    try:
        t0 = time.perf_counter()
        ready, reason = ort_rt.provider_readiness(name, timeout_s=0.2)
        assert time.perf_counter() - t0 < 1.0
        assert not ready and "did not finish within 0.2 s" in reason
    finally:
        ort_rt._readiness.pop(name, None)


def test_probe_writes_no_file_and_changes_no_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    first, second = ortb.ORTBackend().probe(), ortb.ORTBackend().probe()
    assert list(tmp_path.iterdir()) == []
    assert dict(os.environ) == env
    assert [d.name for d in first] == [d.name for d in second]


def test_a_provider_that_does_not_take_its_nodes_is_a_compile_error_not_a_cpu_run():
    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no AzureExecutionProvider")
    azure = Device("ONNX Runtime AzureExecutionProvider", kind="accelerator",
                   properties={"provider": "AzureExecutionProvider"},
                   backend="onnxruntime", index=7)
    model = one_node("Relu", {"x": (TensorProto.FLOAT, [2, 3])},
                     {"y": (TensorProto.FLOAT, [2, 3])})
    with pytest.raises(CompileError) as info:
        compile_(model, device=azure)
    err = info.value
    assert (err.backend, err.device) == ("onnxruntime", "onnxruntime:7")
    assert "AzureExecutionProvider" in str(err)
    assert "fallback to CPU EP has been explicitly disabled" in err.vendor_message


# ---------------------------------------------------------------------- capabilities

def test_capabilities_declare_every_core_op_and_fp32():
    from backplane.ops import MANDATORY

    caps = backend().capabilities
    assert set(MANDATORY) <= set(caps.ops)
    assert caps.precisions == frozenset({"fp32"})
    assert "bfloat16" in caps.ops["Cast"].dtypes
    assert "bfloat16" not in caps.ops["Add"].dtypes  # ORT's CPU Add has no bf16 kernel
    assert caps.ops["Where"].dtypes == frozenset({"bool"})  # the condition is the primary
    json.dumps(caps.to_dict())


def test_capabilities_follow_ort_s_kernel_registrations_per_version_and_type():
    from onnxruntime.capi import _pybind_state

    caps = backend().capabilities
    add = caps.ops["Add"]
    assert "int8" in add.versions[14] and "int8" not in add.versions[7]  # int8 from Add-14
    kernels = {(k.op_name, k.domain) for k in _pybind_state.get_all_opkernel_def()
               if k.provider == "CPUExecutionProvider"}
    assert ("LSTM", "") in kernels and "LSTM" in caps.ops
    assert {7, 14, 22} <= set(caps.ops["LSTM"].versions)
    assert "ai.onnx.ml::TreeEnsembleClassifier" in caps.ops
    for op in ("Attention", "SkipLayerNormalization", "QLinearConv", "MatMulNBits"):
        assert f"com.microsoft::{op}" in caps.ops, op
    assert "Constant" in caps.ops  # no kernel: ORT makes it an initializer


def test_an_op_version_without_a_kernel_is_refused_naming_the_versions():
    from backplane.model.graph import Node, ValueInfo

    x = ValueInfo("x", "float32", (2,))
    old = Node("n", "Upsample", "", ("x", "s"), ("y",), {}, (x, None), (x,), opset=9, version=9)
    verdict = backend().capabilities.check(old)
    assert verdict.ok == ("Upsample" in backend().capabilities.ops
                          and 9 in backend().capabilities.ops["Upsample"].versions)
    node = Node("n", "Squeeze", "", ("x",), ("y",), {}, (x,), (x,), opset=11, version=11)
    assert backend().capabilities.check(node)


def test_the_shipped_table_is_read_without_deriving(monkeypatch):
    from backplane.sdk.cache import cache_key

    shipped = json.loads(ortb.SHIPPED.read_text())
    if shipped.pop("key") != cache_key(*ortb.derivation_key()):
        pytest.skip("the shipped table is for another ONNX Runtime")
    monkeypatch.setattr(ortb, "_derive_now", lambda: pytest.fail("derived again"))
    assert ortb.derive()["ops"] == shipped["ops"]


def test_listing_plugins_imports_neither_onnxruntime_nor_numpy():
    code = ("import sys; from backplane.engine.registry import registry; r = registry(); "
            "caps = r.backends['onnxruntime'].capabilities; "
            "print('onnxruntime' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


# ---------------------------------------------------------------------- policies

@pytest.mark.parametrize("policy, threads, thread_safe", [
    ("latency", 0, False),  # 0: ORT's default, a pinned thread per physical core
    ("throughput", 1, True),
    ("efficiency", max(1, ort_rt.physical_cores() // 2), False)])
def test_the_policy_sets_threads_and_concurrency(policy, threads, thread_safe):
    so = ort_rt.session_options(ort, policy, CPU, {})
    assert so.intra_op_num_threads == threads
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    model = one_node("Relu", {"x": (TensorProto.FLOAT, [2])}, {"y": (TensorProto.FLOAT, [2])})
    assert compile_(model, policy).thread_safe is thread_safe


def test_concurrent_runs_agree_with_single_threaded_ones():
    from backplane.conformance.zoo import mlp

    session = bp.Session(mlp().model, devices=["onnxruntime"], policy="throughput")
    xs = [rng(k).standard_normal((8, 64)).astype(np.float32) for k in range(6)]
    want = [session.run({"x": x})["y"] for x in xs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(20):
            if not np.array_equal(session.run({"x": xs[k]})["y"], want[k]):
                errors.append(f"thread {k} differs (seed {SEED})")
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


# ---------------------------------------------------------------------- the executable

def test_outputs_keep_the_dtypes_the_graph_declares():
    import ml_dtypes

    F, H, B16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
    graph = helper.make_graph([
        helper.make_node("Cast", ["x"], ["i8"], to=TensorProto.INT8),
        helper.make_node("Cast", ["x"], ["f16"], to=H),
        helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BOOL),
        helper.make_node("Cast", ["x"], ["bf"], to=B16),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Transpose", ["bf_in"], ["bf_t"]),
    ], "dtypes", [helper.make_tensor_value_info("x", F, [2, 3]),
                  helper.make_tensor_value_info("bf_in", B16, [2, 3])],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in (
            ("i8", TensorProto.INT8, [2, 3]), ("f16", H, [2, 3]), ("b", TensorProto.BOOL, [2, 3]),
            ("bf", B16, [2, 3]), ("shape", TensorProto.INT64, [2]), ("bf_t", B16, [3, 2]))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    x = (rng().standard_normal((2, 3)) * 3).astype(np.float32)
    bf = rng(1).standard_normal((2, 3)).astype(ml_dtypes.bfloat16)
    out = compile_(model).run({"x": x, "bf_in": bf})
    assert {k: str(v.dtype) for k, v in out.items()} == {
        "i8": "int8", "f16": "float16", "b": "bool", "bf": "bfloat16", "shape": "int64",
        "bf_t": "bfloat16"}
    np.testing.assert_array_equal(out["bf"], x.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(out["bf_t"], bf.T)
    np.testing.assert_array_equal(out["shape"], [2, 3])


@pytest.mark.parametrize("shape", [(), (0, 3), (2, 0, 4)])
def test_rank_0_and_empty_tensors_run(shape):
    model = one_node("Add", {"a": (TensorProto.FLOAT, list(shape)),
                             "b": (TensorProto.FLOAT, list(shape))},
                     {"y": (TensorProto.FLOAT, list(shape))})
    a = rng().standard_normal(shape).astype(np.float32)
    b = rng(1).standard_normal(shape).astype(np.float32)
    y = compile_(model).run({"a": a, "b": b})["y"]
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, a + b)


def test_read_only_and_strided_inputs_are_accepted():
    model = one_node("Relu", {"x": (TensorProto.FLOAT, [3, 2])}, {"y": (TensorProto.FLOAT, [3, 2])})
    x = rng().standard_normal((2, 3)).astype(np.float32).T
    x.flags.writeable = False
    np.testing.assert_array_equal(compile_(model).run({"x": x})["y"], np.maximum(x, 0))


def test_a_run_error_is_an_execution_error_with_backend_device_op_and_ort_message():
    model = one_node("Gather", {"data": (TensorProto.FLOAT, [4, 3]),
                                "idx": (TensorProto.INT64, [2])},
                     {"y": (TensorProto.FLOAT, [2, 3])})
    exe = compile_(model)
    with pytest.raises(ExecutionError) as info:
        exe.run({"data": np.ones((4, 3), np.float32), "idx": np.array([0, 99], np.int64)})
    err = info.value
    assert (err.backend, err.device, err.op) == ("onnxruntime", "onnxruntime:0", "Gather")
    assert "out of data bounds, idx=99" in err.vendor_message


def test_a_wrong_input_dtype_is_an_execution_error_not_a_crash():
    model = one_node("Relu", {"x": (TensorProto.FLOAT, [2])}, {"y": (TensorProto.FLOAT, [2])})
    with pytest.raises(ExecutionError) as info:
        compile_(model).run({"x": np.ones(2, np.int64)})
    assert "INVALID_ARGUMENT" in info.value.vendor_message


def test_an_op_without_a_kernel_is_a_compile_error_naming_the_op():
    model = one_node("Add", {"a": (TensorProto.BFLOAT16, [2]), "b": (TensorProto.BFLOAT16, [2])},
                     {"y": (TensorProto.BFLOAT16, [2])})
    with pytest.raises(CompileError) as info:
        compile_(model)
    assert info.value.op == "Add"
    assert "NOT_IMPLEMENTED" in info.value.vendor_message


def test_a_session_refuses_a_precision_the_backend_does_not_declare():
    model = one_node("Relu", {"x": (TensorProto.FLOAT, [2])}, {"y": (TensorProto.FLOAT, [2])})
    with pytest.raises(bp.UnsupportedError):
        bp.Session(model, devices=["onnxruntime"], precision="fp16", strict=True)


# ---------------------------------------------------------------------- the model zoo

def _zoo():
    from backplane.conformance.zoo import models, resnet

    found = [(z.name, z.model, shapes) for z in models() for shapes in z.input_shapes]
    wide = resnet(width=32, size=64)  # a second, larger size of the CNN
    found += [("resnet-32x64", wide.model, shapes) for shapes in wide.input_shapes]
    return found


@pytest.mark.parametrize("name, model, shapes", _zoo(),
                         ids=[f"{n}-{'x'.join(map(str, list(s.values())[0]))}"
                              for n, _, s in _zoo()])
def test_every_zoo_model_matches_the_oracle_through_a_session(name, model, shapes):
    from backplane.conformance import compare, tolerance
    from backplane.conformance.oracle import expected

    session = bp.Session(model, devices=["onnxruntime"], strict=True)
    assert {p.device for p in session.plan.partitions} == {"onnxruntime:0"}
    inputs = {k: rng(hash(name) % 1000).standard_normal(s).astype(np.float32)
              for k, s in shapes.items()}
    got = session.run(inputs)
    want = expected(model, inputs)
    op = f"model:{name.split('-32x64')[0]}"
    for out, ref in want.items():
        rtol, atol = tolerance(str(ref.dtype), op, "onnxruntime")
        result = compare(got[out], ref, rtol, atol)
        assert result.ok, f"{name} {out}: {result.detail}, max abs {result.max_abs_error:.3g} " \
                          f"(seed {SEED}; rerun with BACKPLANE_TEST_SEED={SEED})"


def test_a_gpu_provider_that_a_gpu_backend_runs_is_listed_there_not_here(monkeypatch):
    """One GPU is one device: CUDA is cuda-tensorrt's (ORT is one of its paths) unless that
    backend is disabled. The probe's answer is injected: this machine has no GPU provider."""
    answer = ("1.0", [ortb.CPU, "CUDAExecutionProvider"],
              {ortb.CPU: (True, ""), "CUDAExecutionProvider": (True, "")})
    monkeypatch.setattr(ort_rt, "_probed", answer)
    monkeypatch.delenv("BACKPLANE_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("BACKPLANE_PLUGINS", raising=False)
    [cpu] = ortb.ORTBackend().probe()
    assert "run by the 'cuda-tensorrt' backend" in cpu.properties["not_ready"]["CUDAExecutionProvider"]
    monkeypatch.setenv("BACKPLANE_DISABLE_PLUGINS", "cuda-tensorrt")
    devices = ortb.ORTBackend().probe()
    assert [d.properties["provider"] for d in devices] == [ortb.CPU, "CUDAExecutionProvider"]


def test_the_shipped_table_is_a_fresh_derivation_where_the_versions_match():
    """The table the plugin ships (`backplane conformance ops --write-capabilities`) is
    what a derivation here gives, and is read instead of deriving again."""
    from backplane.sdk.cache import cache_key

    shipped = json.loads(ortb.SHIPPED.read_text())
    if shipped.pop("key") != cache_key(*ortb.derivation_key()):
        pytest.skip("the shipped table is for another ONNX Runtime (see "
                    "docs/backends/onnxruntime.md)")
    fresh = ortb.derive(use_cache=False)
    assert {k: fresh[k] for k in ("ops", "rules", "refused")} == \
        {k: shipped[k] for k in ("ops", "rules", "refused")}


def _conv_integer(w_zero_points: int) -> object:
    """A padded uint8 ConvInteger with a scalar x zero point and ``w_zero_points`` weight
    zero points (1: per tensor, as quantizers write; 4: per output channel)."""
    from onnx import numpy_helper

    r = rng(7)
    w = numpy_helper.from_array(r.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8), "w")
    wz = numpy_helper.from_array(
        r.integers(0, 256, (w_zero_points,) if w_zero_points > 1 else (), dtype=np.uint8), "wz")
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "convinteger",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 6, 6]),
         helper.make_tensor_value_info("xz", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4, 6, 6])], [w, wz])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_conv_integer_with_per_tensor_zero_points_runs_here_and_matches_the_oracle():
    """ORT's ConvInteger refuses per-channel zero points at run time, so the table declares
    it for one-element zero points only (ONNX's padded test has per-channel ones)."""
    from backplane.conformance.oracle import expected

    r = rng(8)
    feeds = {"x": r.integers(0, 256, (1, 3, 6, 6), dtype=np.uint8),
             "xz": np.array(r.integers(0, 256), dtype=np.uint8)}
    session = bp.Session(_conv_integer(1), devices=["onnxruntime"], strict=True)
    assert {p.device for p in session.plan.partitions} == {"onnxruntime:0"}
    got = session.run(feeds)["y"]
    want = expected(_conv_integer(1), feeds)["y"]
    assert got.dtype == np.int32 and np.array_equal(got, want)


def test_conv_integer_with_per_channel_zero_points_is_refused_before_it_runs():
    with pytest.raises(bp.UnsupportedError, match="takes one element at input 3"):
        bp.Session(_conv_integer(4), devices=["onnxruntime"], strict=True)
