"""cuda-tensorrt: what can be verified without an NVIDIA GPU.

The plugin loads here and reports no device with the reason; the driver query, device
description and path choice are checked on recorded or injected answers; the TensorRT
profile and cache-key logic is pure; and the kernel path, the plugin's own compile code
with its custom-kernel table, runs a model on torch's CPU device against the reference.
What needs the GPU (TensorRT engines, the ORT CUDA provider, the CUDA kernels' numerics)
is in tests/test_cuda_kernels.py and benchmarks/bench_gpu.py, skipped here with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from backplane import CompileOptions, Device
from backplane.sdk.errors import CompileError
from backplane.model.intake import load_model
from backplane.plugins import cuda_tensorrt as cuda
from backplane.plugins.cuda_tensorrt import driver
from backplane.plugins.cuda_tensorrt import tensorrt as trtpath
from tests.conftest import run_python

pytest.importorskip("torch")

NO_PATHS = {"tensorrt": "the tensorrt package is not installed",
            "onnxruntime": "onnxruntime-gpu is not installed",
            "kernels": "torch 2.13.0+cpu is a cpu build; install a CUDA build of torch"}
GPU = {"ordinal": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
       "multiprocessors": 132, "memory_bytes": 85520809984, "pci_bus_id": "0000:3b:00.0",
       "cuda_driver_version": "12.4"}


# -- without the hardware -----------------------------------------------------------------

def test_the_plugin_loads_here_and_says_why_it_has_no_device():
    code = ("import json, backplane as bp; r = {x.name: x for x in bp.plugin_records()}"
            "['cuda-tensorrt']; print(json.dumps([r.state, r.reason]))")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    state, reason = json.loads(done.stdout.strip().splitlines()[-1])
    assert state == "no-device"
    assert "NVIDIA" in reason and ("driver" in reason or "GPU" in reason), reason


def test_listing_plugins_imports_no_gpu_runtime():
    code = ("import sys, backplane as bp; bp.plugin_records(); "
            "print(sorted(m for m in ('torch', 'cupy', 'tensorrt', 'onnxruntime') "
            "if m in sys.modules))")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stdout and "cupy" not in done.stdout, done.stdout


def test_runtimes_name_what_is_missing_here():
    found = cuda.runtimes()
    assert "tensorrt" in found["tensorrt"]
    assert "onnxruntime-gpu" in found["onnxruntime"]
    assert "cpu build" in found["kernels"] and "CUDA build" in found["kernels"]


def test_a_torch_built_for_a_newer_cuda_major_than_the_driver_is_not_a_runtime():
    assert "update the NVIDIA driver" in cuda.driver_too_old("13.0", "12.4")
    assert cuda.driver_too_old("12.8", "12.4") is None  # minor version compatibility
    assert cuda.driver_too_old(None, "12.4") is None


# -- the driver query, on injected answers --------------------------------------------------

class FakeDriver:
    """libcuda's functions as ctypes calls them, answering for the GPUs given."""

    def __init__(self, gpus, init_rc=0):
        self.gpus, self.init_rc = gpus, init_rc

    def cuInit(self, flags):
        return self.init_rc

    def cuGetErrorName(self, rc, out):
        out._obj.value = {100: b"CUDA_ERROR_NO_DEVICE"}.get(rc, b"")
        return 0 if rc == 100 else 1

    def cuDriverGetVersion(self, out):
        out._obj.value = 12040
        return 0

    def cuDeviceGetCount(self, out):
        out._obj.value = len(self.gpus)
        return 0

    def cuDeviceGet(self, out, ordinal):
        out._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf, size, dev):
        buf.value = self.gpus[dev.value]["name"].encode()
        return 0

    def cuDeviceGetAttribute(self, out, code, dev):
        major, minor = self.gpus[dev.value]["cc"]
        out._obj.value = {16: self.gpus[dev.value]["sms"], 75: major, 76: minor}[code]
        return 0

    def cuDeviceTotalMem_v2(self, out, dev):
        out._obj.value = self.gpus[dev.value]["mem"]
        return 0

    def cuDeviceGetPCIBusId(self, buf, size, dev):
        buf.value = self.gpus[dev.value]["bus"].encode()
        return 0


def test_the_driver_query_reads_each_gpu():
    lib = FakeDriver([{"name": "NVIDIA H200", "cc": (9, 0), "sms": 132, "mem": 150 << 30,
                       "bus": "0000:3B:00.0"},
                      {"name": "NVIDIA L4", "cc": (8, 9), "sms": 58, "mem": 24 << 30,
                       "bus": "0000:5E:00.0"}])
    gpus, why = driver._query(lib)
    assert why is None
    assert [g["name"] for g in gpus] == ["NVIDIA H200", "NVIDIA L4"]
    assert gpus[1] == {"ordinal": 1, "name": "NVIDIA L4", "compute_capability": "8.9",
                       "multiprocessors": 58, "memory_bytes": 24 << 30,
                       "pci_bus_id": "0000:5e:00.0", "cuda_driver_version": "12.4"}


def test_a_driver_that_does_not_initialise_is_named_with_its_error():
    gpus, why = driver._query(FakeDriver([], init_rc=100))
    assert gpus == [] and "CUDA_ERROR_NO_DEVICE (100)" in why


def test_bus_ids_of_nvml_and_the_driver_api_compare_equal():
    assert driver.normal_bus_id("00000000:3B:00.0") == driver.normal_bus_id("0000:3b:00.0")
    assert driver.cuda_version_text(12040) == "12.4" and driver.cuda_version_text(13000) == "13.0"


# -- which devices are listed, and why not ---------------------------------------------------

def test_a_gpu_without_any_runtime_package_is_not_listed_and_the_reason_says_what_to_install():
    why = cuda.describe([GPU], None, NO_PATHS)
    assert isinstance(why, str)
    assert "1 NVIDIA GPU(s) (NVIDIA H100 80GB HBM3)" in why
    assert "cpu build" in why and "backplane-hal[cuda]" in why


def test_no_driver_is_reported_as_such():
    why = cuda.describe([], "no NVIDIA driver: libcuda.so.1 cannot be loaded (x)", NO_PATHS)
    assert "libcuda" in why


def test_a_listed_gpu_carries_its_facts_paths_and_hwdb_entry():
    paths = {**NO_PATHS, "kernels": ""}
    [d] = cuda.describe([GPU], None, paths)
    props = d["properties"]
    assert d["name"] == GPU["name"] and d["kind"] == "gpu" and d["vendor"] == "NVIDIA"
    assert props["torch_device"] == "cuda:0" and props["compute_capability"] == "9.0"
    assert props["paths"] == paths and props["cuda_driver_version"] == "12.4"
    assert props["hwdb_entry"] and props["hwdb_entry"].startswith("nvidia/h100"), props


# -- the path choice -------------------------------------------------------------------------

def test_paths_are_tried_tensorrt_then_onnxruntime_then_kernels():
    order, passed = cuda.choose_paths(dict.fromkeys(cuda.PATHS, ""), "fp32")
    assert order == ["tensorrt", "onnxruntime", "kernels"] and passed == []


def test_a_path_that_cannot_compute_at_the_precision_is_passed_over_with_the_reason():
    order, passed = cuda.choose_paths(dict.fromkeys(cuda.PATHS, ""), "fp16")
    assert order == ["tensorrt", "kernels"]
    assert passed == ["ONNX Runtime CUDA provider: computes at fp32, not fp16"]


def test_int8_without_tensorrt_is_refused_with_every_reason():
    with pytest.raises(CompileError, match="no cuda-tensorrt path can compile at int8.*"
                                           "tensorrt package is not installed"):
        cuda.choose_paths({**NO_PATHS, "kernels": ""}, "int8", device="cuda-tensorrt:0")


def test_a_requested_path_is_the_only_one_tried_and_fails_loudly():
    assert cuda.choose_paths(dict.fromkeys(cuda.PATHS, ""), "fp32", "kernels") == (["kernels"], [])
    with pytest.raises(CompileError, match="'onnxruntime' was asked for.*not installed"):
        cuda.choose_paths(NO_PATHS, "fp32", "onnxruntime")
    with pytest.raises(CompileError, match="Did you mean 'tensorrt'"):
        cuda.choose_paths(NO_PATHS, "fp32", "tensorrtt")


# -- TensorRT: profiles and the engine cache key ----------------------------------------------

def test_a_dynamic_dimension_gets_a_profile_from_one_to_a_multiple_of_its_first_size():
    profile = trtpath.profile_for({"x": (-1, 3, 224, 224), "w": (3, 3)}, {"x": (8, 3, 224, 224)})
    assert profile == {"x": ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))}
    assert trtpath.fits(profile, {"x": (64, 3, 224, 224)})
    assert not trtpath.fits(profile, {"x": (65, 3, 224, 224)})
    wider = trtpath.profile_for({"x": (-1, 3, 224, 224)}, {"x": (65, 3, 224, 224)},
                                {"x": (65, 3, 224, 224)})
    assert wider["x"][2] == (260, 3, 224, 224) and trtpath.fits(wider, {"x": (65, 3, 224, 224)})


def test_engines_are_keyed_by_gpu_tensorrt_version_model_precision_and_profile():
    gpu = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    p = {"x": ((1, 4), (8, 4), (64, 4))}
    base = trtpath.engine_key(gpu, "10.3.0", b"model", "fp16", p)
    assert base == trtpath.engine_key(dict(gpu), "10.3.0", b"model", "fp16", dict(p))
    others = [trtpath.engine_key({**gpu, "compute_capability": "8.0"}, "10.3.0", b"model",
                                 "fp16", p),
              trtpath.engine_key(gpu, "10.4.0", b"model", "fp16", p),
              trtpath.engine_key(gpu, "10.3.0", b"model2", "fp16", p),
              trtpath.engine_key(gpu, "10.3.0", b"model", "fp32", p),
              trtpath.engine_key(gpu, "10.3.0", b"model", "fp16", {"x": ((1, 4), (8, 4), (65, 4))})]
    assert len({base, *others}) == 6


def test_the_profile_optimum_is_the_size_the_session_was_planned_for():
    model, _, _ = _mlp(6)
    assert cuda._static_shapes(load_model(model), {"batch": 32}) == {"x": (32, 16)}
    assert cuda._static_shapes(load_model(model), {}) == {}


def test_fp32_engines_turn_tf32_off():
    assert trtpath.flags_for("fp32") == ([], ["TF32"])
    assert trtpath.flags_for("int8") == (["INT8", "FP16"], [])


# -- the kernel path, run on torch's CPU device ------------------------------------------------

def _mlp(seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Softmax", ["a"], ["y"], axis=-1)], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in
         (("w", w), ("b", b))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    return model, w, b


def _cpu_device(**paths):
    return Device(name="torch CPU standing in for a GPU", kind="gpu", backend="cuda-tensorrt",
                  index=0, properties={"torch_device": "cpu", "ordinal": 0,
                                       "paths": {**NO_PATHS, "kernels": "", **paths}})


@pytest.mark.parametrize("seed", [1, 2])
def test_the_kernel_path_runs_a_model_through_the_plugins_own_compile(seed):
    model, w, b = _mlp(seed)
    backend = cuda.CudaTensorRTBackend()
    exe = backend.compile(load_model(model), _cpu_device(), CompileOptions())
    x = np.random.default_rng(seed + 100).standard_normal((5, 16)).astype(np.float32)
    got = np.asarray(exe.run({"x": x})["y"])
    a = x.astype(np.float64) @ w + b
    want = np.exp(a - a.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"seed {seed}")
    assert exe.path.startswith("kernel path: the torch") and "on cpu" in exe.path
    assert "passed over: TensorRT: the tensorrt package is not installed" in exe.path
    assert "ONNX Runtime CUDA provider: onnxruntime-gpu is not installed" in exe.path


def test_a_graph_path_that_fails_to_compile_falls_through_to_the_kernel_path_saying_why():
    model, _, _ = _mlp(3)
    backend = cuda.CudaTensorRTBackend()
    # TensorRT "installed" per the device, but the module is absent: its compile fails.
    exe = backend.compile(load_model(model), _cpu_device(tensorrt=""), CompileOptions())
    assert exe.path.startswith("kernel path")
    assert "TensorRT failed: compile failed in backend 'cuda-tensorrt'" in exe.path
    assert "tensorrt" in exe.path.split("TensorRT failed:")[1]


def test_a_forced_path_that_fails_raises_instead_of_falling_through():
    model, _, _ = _mlp(4)
    options = CompileOptions(extra={"cuda-tensorrt": {"path": "tensorrt"}})
    with pytest.raises(CompileError, match="tensorrt"):
        cuda.CudaTensorRTBackend().compile(load_model(model), _cpu_device(tensorrt=""), options)


def test_the_kernel_table_says_which_custom_kernels_it_uses_or_why_none():
    table, note = cuda.kernel_table(cuda.DEFAULT_CUSTOM)
    assert "custom CUDA kernels" in note
    assert len(table) == len(cuda.torch_kernels)
    _, none = cuda.kernel_table(())
    assert none == "no custom CUDA kernels (none asked for)"
    with pytest.raises(CompileError, match="without a custom CUDA kernel"):
        cuda.kernel_table(("NoSuchOp",))


def test_fp16_on_the_kernel_path_stays_within_fp16_tolerance_of_the_reference():
    model, w, b = _mlp(5)
    exe = cuda.CudaTensorRTBackend().compile(load_model(model), _cpu_device(),
                                             CompileOptions(precision="fp16"))
    x = np.random.default_rng(105).standard_normal((3, 16)).astype(np.float32)
    got = np.asarray(exe.run({"x": x})["y"])
    assert got.dtype == np.float32
    a = x.astype(np.float64) @ w + b
    want = np.exp(a - a.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-3)
