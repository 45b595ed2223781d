"""opencl: a kernel backend running OpenCL C kernels through pyopencl, on any OpenCL 1.2+ device.

What it is (name, api_version, capabilities as data: the kernel table below), how it finds
devices (``probe``), how it compiles (the default node-by-node runner of ``KernelTable``,
with device arrays moved by ``upload``/``download`` hooks), and its kernels, registered
with their constraints. The kernel sources are ``kernels/opencl/*.cl``; the host side of
each kernel is in ``ops.py``, device state (context, buffer pool, program cache) in
``runtime.py``. Importing this module imports neither pyopencl nor numpy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from backplane import API_VERSION, AttributeRule, Backend, CompileOptions, Device, Executable
from backplane import KernelTable
from backplane import __version__ as _backplane_version
from backplane.errors import DeviceUnavailable

#: Element types the kernels compute on. float16 is left out: it would need cl_khr_fp16,
#: which PoCL's CPU device lacks, and capabilities are declared per backend, not per device.
F32 = ("float32",)
INTS = ("int8", "uint8", "int32", "int64")
NUMERIC = F32 + INTS
#: Pure data movement copies element bits, so it takes every type of one to eight bytes.
ANY = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool")
#: ONNX TensorProto codes the Cast kernel converts to: float, uint8, int8, int32, int64, bool.
CAST_TO = (1, 2, 3, 6, 7, 9)
MAX_RANK = 8
#: Bound on the child process that lists devices (importing pyopencl, loading ICDs).
PROBE_CHILD_TIMEOUT_S = 20

kernels = KernelTable(precisions=frozenset({"fp32"}), thread_safe=True)


class OpenCLBackend(Backend):
    """OpenCL C kernels on every OpenCL 1.2+ device (GPUs, CPUs through PoCL, accelerators)."""

    name = "opencl"
    api_version = API_VERSION
    version = _backplane_version
    priority = 100  # after openvino-cpu (300) and onnxruntime (200), before the reference
    kernels = kernels
    known_failures = str(Path(__file__).with_name("known_failures.toml"))

    def probe(self) -> list[Device]:
        """Every device of every OpenCL platform whose version is 1.2 or newer.

        pyopencl (and with it numpy) is imported in a short-lived child process unless this
        process already has it, so that listing devices keeps ``import backplane`` and
        discovery light; the child is bounded by a timeout and writes nothing.
        """
        if "pyopencl" in sys.modules:
            found = _list_devices()
        else:
            found = _list_devices_in_child()
        if isinstance(found, str):
            raise DeviceUnavailable(found)
        return [Device(**d) for d in found]

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """The default node-by-node runner, with values kept in device memory."""
        from .runtime import state_for

        state = state_for(device)
        with state.lock:
            state.use_cache_dir(options)
            inner = kernels.compile(graph, device, options, upload=state.upload,
                                    download=state.download)
        return OpenCLExecutable(inner, state)


class OpenCLExecutable(Executable):
    """A KernelExecutable whose runs hold the device's lock: kernel objects carry their
    arguments, so runs on one device are serialised (safe from any thread)."""

    thread_safe = True

    def __init__(self, inner: Executable, state: Any):
        self._inner = inner
        self._state = state

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        with self._state.lock:
            try:
                return self._inner.run(inputs)
            finally:
                self._state.trim()


def _list_devices() -> "list[dict[str, Any]] | str":
    """Device descriptions (``Device`` keyword arguments), or the reason there are none."""
    try:
        import pyopencl as cl
    except ImportError as exc:
        return (f"pyopencl is not installed ({exc}); pip install pyopencl, and "
                f"pocl-binary-distribution for a CPU device")
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:
        return (f"no OpenCL platform: {exc}; install an OpenCL driver (ICD) or "
                f"pocl-binary-distribution")
    found, skipped = [], []
    for pi, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for di, d in enumerate(devices):
            m = re.match(r"OpenCL (\d+)\.(\d+)", d.version or "")
            if not m or (int(m.group(1)), int(m.group(2))) < (1, 2):
                skipped.append(f"{d.name} ({d.version})")
                continue
            found.append(_describe(cl, platform, d, pi, di))
    if not found:
        why = f"; below OpenCL 1.2: {', '.join(skipped)}" if skipped else ""
        return f"no OpenCL 1.2+ device on {len(platforms)} platform(s){why}"
    return found


def _list_devices_in_child() -> "list[dict[str, Any]] | str":
    code = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
            "from backplane.plugins.opencl import _list_devices; "
            "print(json.dumps(_list_devices()))")
    try:
        out = subprocess.run([sys.executable, "-c", code, json.dumps(sys.path)],
                             capture_output=True, text=True, timeout=PROBE_CHILD_TIMEOUT_S,
                             cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"listing OpenCL devices failed: {type(exc).__name__}: {exc}"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no message"])[-1]
        return f"listing OpenCL devices failed (exit code {out.returncode}): {tail}"
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"listing OpenCL devices gave no answer: {out.stdout[-200:]!r}"


def _describe(cl: Any, platform: Any, d: Any, pi: int, di: int) -> dict[str, Any]:
    kind = ("gpu" if d.type & cl.device_type.GPU else
            "cpu" if d.type & cl.device_type.CPU else "accelerator")
    extensions = set(d.extensions.split())
    interesting = sorted(e for e in extensions if e in (
        "cl_khr_fp16", "cl_khr_fp64", "cl_khr_int64_base_atomics", "cl_khr_subgroups",
        "cl_intel_subgroups", "cl_khr_integer_dot_product", "cl_arm_integer_dot_product_int8"))
    return dict(
        name=d.name.strip(), kind=kind, vendor=d.vendor.strip(),
        memory_bytes=int(d.global_mem_size),
        properties={
            "platform": platform.name.strip(), "platform_version": platform.version.strip(),
            "platform_index": pi, "device_index": di, "vendor": d.vendor.strip(),
            "driver_version": d.driver_version.strip(), "opencl_version": d.version.strip(),
            "compute_units": int(d.max_compute_units),
            "max_work_group_size": int(d.max_work_group_size),
            "local_memory_bytes": int(d.local_mem_size),
            "global_memory_bytes": int(d.global_mem_size),
            "max_clock_mhz": int(d.max_clock_frequency),
            "extensions": interesting, "fp16": "cl_khr_fp16" in extensions,
            "fp64": "cl_khr_fp64" in extensions})


# --------------------------------------------------------------------------- kernels
# Each registration names the op, the element types of its first input, and what the
# kernel does not handle; the implementations are in ops.py, imported on first call.

class _Lazy:
    """A kernel whose implementation (ops.py: numpy, pyopencl) is imported on first call."""

    _lock = threading.Lock()

    def __init__(self, name: str, *bound: Any, **fixed: Any):
        self.name, self.bound, self.fixed, self.fn = name, bound, fixed, None

    def __call__(self, *args: Any, **attrs: Any) -> Any:
        fn = self.fn
        if fn is None:
            from . import ops

            fn = self.fn = getattr(ops, self.name)
        return fn(*self.bound, *args, **self.fixed, **attrs)


def _reg(op: str, impl: _Lazy, dtypes: Any = F32, domain: str = "", **limits: Any) -> None:
    limits.setdefault("max_rank", MAX_RANK)
    kernels.register(op, domain=domain, dtypes=dtypes, **limits)(impl)


_ONLY_0 = AttributeRule(allowed=(0,))

# Element-wise, generated per op and dtype (kernels/opencl/elementwise.cl).
for _op in ("Sqrt", "Exp", "Log", "Erf", "Sigmoid", "Tanh", "HardSwish"):
    _reg(_op, _Lazy("unary", _op))
_reg("Abs", _Lazy("unary", "Abs"), NUMERIC)
_reg("Neg", _Lazy("unary", "Neg"), ("float32", "int8", "int32", "int64"))
_reg("Relu", _Lazy("unary", "Relu"), ("float32", "int8", "int32", "int64"))
_reg("LeakyRelu", _Lazy("unary_params", "LeakyRelu", ("alpha",), (0.01,)))
_reg("HardSigmoid", _Lazy("unary_params", "HardSigmoid", ("alpha", "beta"), (0.2, 0.5)))
_reg("Gelu", _Lazy("gelu"), attributes={"approximate": AttributeRule(allowed=("none", "tanh"))})
_reg("Clip", _Lazy("clip"), NUMERIC)
for _op in ("Add", "Sub", "Mul", "Div"):
    _reg(_op, _Lazy("binary", _op), NUMERIC)
_reg("Pow", _Lazy("binary", "Pow"), ("float32", "int32", "int64"))
_reg("Where", _Lazy("where"), ("bool",))
_reg("Cast", _Lazy("cast"), NUMERIC + ("bool",), attributes={"to": AttributeRule(allowed=CAST_TO)})
_reg("QuantizeLinear", _Lazy("quantize_linear"), F32,
     attributes={"block_size": _ONLY_0, "output_dtype": AttributeRule(allowed=(0, 2, 3))})
_reg("DequantizeLinear", _Lazy("dequantize_linear"), ("int8", "uint8", "int32"),
     attributes={"block_size": _ONLY_0, "output_dtype": AttributeRule(allowed=(0, 1))})

# Linear algebra (kernels/opencl/matmul.cl, conv.cl).
_reg("MatMul", _Lazy("matmul"), min_rank=1)
_reg("Gemm", _Lazy("gemm"), max_rank=2)
_CONV_LIMITS = {"min_rank": 1, "max_rank": 5}  # (the bias is rank 1)
_reg("Conv", _Lazy("conv"), **_CONV_LIMITS)
_reg("FusedConvRelu", _Lazy("fused_conv_relu"), domain="backplane", **_CONV_LIMITS)
_reg("FusedMatMulBiasGelu", _Lazy("fused_matmul_bias_gelu"), domain="backplane", min_rank=1,
     attributes={"approximate": AttributeRule(allowed=("none", "tanh"))})
_reg("Attention", _Lazy("attention"), domain="backplane", min_rank=0)

# Pooling and normalisation (pool.cl, reduce.cl).
_POOL = {"min_rank": 3, "max_rank": 5}
_reg("MaxPool", _Lazy("max_pool"), ("float32", "int8", "uint8"), **_POOL)
_reg("AveragePool", _Lazy("average_pool"), **_POOL)
_reg("GlobalAveragePool", _Lazy("global_average_pool"), min_rank=3)
_reg("Softmax", _Lazy("softmax"), min_rank=1)
_reg("LayerNormalization", _Lazy("layer_norm"), min_rank=1,
     attributes={"stash_type": AttributeRule(allowed=(1,))})
_reg("BatchNormalization", _Lazy("batch_norm"), min_rank=1,
     attributes={"training_mode": _ONLY_0})
_reg("ReduceSum", _Lazy("reduce_op_sum"), NUMERIC)
_reg("ReduceMean", _Lazy("reduce_op_mean"), NUMERIC)
_reg("ReduceMax", _Lazy("reduce_op_max"), NUMERIC)

# Shapes and data movement (movement.cl; views need no kernel).
_reg("Reshape", _Lazy("reshape"), ANY)
_reg("Flatten", _Lazy("flatten"), ANY)
_reg("Squeeze", _Lazy("squeeze"), ANY)
_reg("Unsqueeze", _Lazy("unsqueeze"), ANY)
_reg("Identity", _Lazy("identity"), ANY)
_reg("Shape", _Lazy("shape_op"), ANY)
_reg("Transpose", _Lazy("transpose"), ANY)
_reg("Expand", _Lazy("expand"), ANY)
_reg("Slice", _Lazy("slice_op"), ANY)
_reg("Concat", _Lazy("concat"), ANY)
_reg("Gather", _Lazy("gather"), ANY)
_reg("Pad", _Lazy("pad"), ANY,
     attributes={"mode": AttributeRule(allowed=("constant", "reflect", "edge", "wrap"))})

__all__ = ["OpenCLBackend", "OpenCLExecutable", "kernels"]
