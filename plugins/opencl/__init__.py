"""opencl: a kernel backend running OpenCL C kernels through pyopencl, on any OpenCL 1.2+ device.

What it is (name, api_version, capabilities as data: the kernel table below), how it finds
devices (``probe``), how it compiles (the default node-by-node runner of ``KernelTable``,
with device arrays moved by ``upload``/``download`` hooks), and its kernels, registered
with their constraints. The kernel sources are ``kernels/opencl/*.cl``; the host side of
each kernel is in ``ops.py``, device state (context, buffer pool, program cache) in
``runtime.py``. Importing this module imports neither pyopencl nor numpy; it writes the
list of the OpenCL drivers that pip installed into a private folder, which the ICD loader is
shown at the plugin's first OpenCL call only (``use_pip_installed_drivers``, ``start_loader``).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import tempfile
import warnings
from pathlib import Path
from typing import Any

from backplane import API_VERSION, AttributeRule, Backend, CompileOptions, Device, Executable
from backplane.kerneltable import KernelTable, LazyKernel
from backplane import __version__ as _backplane_version
from backplane.errors import DeviceUnavailable

log = logging.getLogger("backplane")

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
#: Bound on the child process that lists devices (importing pyopencl, loading ICDs, building
#: the probe kernel on each device).
PROBE_CHILD_TIMEOUT_S = 20
#: Every device builds and runs this, as the kernels are built, before it is listed: a
#: driver whose compiler cannot target the device (PoCL 3.0 on a CPU its LLVM does not
#: know) is reported with its own words instead of failing every compile later.
PROBE_KERNEL = ("__kernel void bp_probe(__global float *x) "
                "{ x[get_global_id(0)] = 2.0f * x[get_global_id(0)] + 1.0f; }")
#: When several drivers offer a device for the host CPU, one is listed: PoCL's when it
#: builds (the kernels' CPU launch sizes were measured on it), else the first that builds.
PREFERRED_CPU_PLATFORM = "Portable Computing Language"
#: OpenCL drivers that pip installs where no ICD loader looks, as (distribution, library).
#: intel-opencl-rt (Intel's CPU runtime, in the ``opencl`` extra on Linux x86-64) puts
#: ``lib/libintelocl.so`` in the environment and an ``.icd`` file naming a conda placeholder
#: path. pocl-binary-distribution needs nothing: it installs into pyopencl's own ``.libs``,
#: which pyopencl's loader reads.
PIP_DRIVERS = (("intel-opencl-rt", "libintelocl.so"),)
#: Where the ICD loader looks for drivers when ``OCL_ICD_VENDORS`` is not set.
SYSTEM_VENDORS = Path("/etc/OpenCL/vendors")
#: Intel's CPU runtime names its code-generation targets after Intel cores and need not know
#: another vendor's CPU (2024.2 on a Zen 5 EPYC: "Unknown host CPU", then wrong values from
#: Sigmoid and BatchNormalization kernels). On such CPUs the plugin names the instruction
#: set in ``CL_CONFIG_CPU_TARGET_ARCH`` instead: the first whose /proc/cpuinfo flags are all
#: present.
INTEL_CPU_TARGETS = (("skx", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq",
                                        "avx512vl"})),
                     ("core-avx2", frozenset({"avx2", "fma", "bmi2"})),
                     ("corei7-avx", frozenset({"avx"})),
                     ("corei7", frozenset({"sse4_2"})))

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
        """Every OpenCL 1.2+ device that builds and runs the probe kernel, one per host CPU.

        A device whose driver cannot build it is left out, and when none is left this raises
        ``DeviceUnavailable`` with each driver's own message. pyopencl (and with it numpy)
        is imported in a short-lived child process unless this process already has it, so
        that listing devices keeps ``import backplane`` and discovery light; the child is
        bounded by a timeout and writes nothing (drivers may cache the probe kernel).
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
        return (f"pyopencl is not installed ({exc}); pip install 'backplane-hal[opencl]' "
                f"(pyopencl and a CPU driver)")
    start_loader()
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:
        return (f"no OpenCL platform: {exc}; install an OpenCL driver (ICD) or "
                f"pip install 'backplane-hal[opencl]'")
    candidates, skipped = [], []
    for pi, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for di, d in enumerate(devices):
            m = re.match(r"OpenCL (\d+)\.(\d+)", d.version or "")
            if not m or (int(m.group(1)), int(m.group(2))) < (1, 2):
                skipped.append(f"{_label(platform, d)}: {d.version.strip()}, below OpenCL 1.2")
                continue
            candidates.append((pi, di, platform, d))

    def is_cpu(d: Any) -> bool:
        return bool(d.type & cl.device_type.CPU)

    def later(platform: Any, d: Any) -> bool:  # a CPU device of a driver not preferred
        return is_cpu(d) and platform.name.strip() != PREFERRED_CPU_PLATFORM

    # The preferred CPU driver is tried first; the other CPU devices are the same CPU.
    candidates.sort(key=lambda c: (later(c[2], c[3]), c[0], c[1]))
    usable, cpu_listed = [], False
    for pi, di, platform, d in candidates:
        if is_cpu(d) and cpu_listed:
            continue
        why = cannot_run(cl, d)
        if why:
            skipped.append(f"{_label(platform, d)}: {why}")
            continue
        usable.append((pi, di, platform, d))
        cpu_listed = cpu_listed or is_cpu(d)
    if not usable:
        why = f": {'; '.join(skipped)}" if skipped else ""
        return f"no usable OpenCL device on {len(platforms)} platform(s){why}"
    usable.sort(key=lambda c: c[:2])
    return [_describe(cl, platform, d, pi, di) for pi, di, platform, d in usable]


def cannot_run(cl: Any, d: Any) -> str | None:
    """Why device ``d`` cannot build and run ``PROBE_KERNEL`` (the driver's message), or None.

    The build goes through ``cl.Program(...).build()`` as the kernels' do (runtime.py), past
    pyopencl's binary cache, so that it is the driver's compiler that is checked."""
    import numpy as np

    x = np.arange(4, dtype=np.float32)
    out = np.empty_like(x)
    try:
        ctx = cl.Context([d])
        queue = cl.CommandQueue(ctx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cl.CompilerWarning)
            program = cl.Program(ctx, PROBE_KERNEL).build(cache_dir=False)
        buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=x)
        cl.Kernel(program, "bp_probe")(queue, x.shape, None, buf)
        cl.enqueue_copy(queue, out, buf, is_blocking=True)
    except Exception as exc:  # cl.Error, or whatever else a broken driver makes pyopencl raise
        return _vendor_message(cl, exc)
    if not np.array_equal(out, 2 * x + 1):
        return f"the probe kernel computed {out.tolist()} instead of {(2 * x + 1).tolist()}"
    return None


def _vendor_message(cl: Any, exc: Exception) -> str:
    """A pyopencl error in one line: the failed call and the driver's build log, without
    pyopencl's repetitions, device repr, options and saved-source notes."""
    lines = [line.strip() for line in str(exc).splitlines()]
    if not isinstance(exc, cl.Error) or not lines or not lines[0]:
        return f"{type(exc).__name__}: {exc}"[:400]
    head = lines[0].split(" - ")[0]
    logged = [line for line in lines[1:] if line and not line.startswith(
        ("Build on <", "(options:", "(source saved"))]
    text = head + (": " + "; ".join(logged) if logged else "")
    return text if len(text) <= 400 else text[:397] + "..."


def _label(platform: Any, d: Any) -> str:
    return f"{d.name.strip()} ({platform.name.strip()})"


def _list_devices_in_child() -> "list[dict[str, Any]] | str":
    code = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
            "import backplane.plugins.opencl as p; p._IN_LISTING_CHILD = True; "
            "print(json.dumps(p._list_devices()), flush=True); "
            # PoCL may abort at exit after a failed build (see runtime.gemm_width); the
            # answer is out by then, and the child has nothing else to tear down.
            "import os; os._exit(0)")
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


#: Set in the child process that lists devices (:func:`_list_devices_in_child`).
_IN_LISTING_CHILD = False


def _describe(cl: Any, platform: Any, d: Any, pi: int, di: int) -> dict[str, Any]:
    kind = ("gpu" if d.type & cl.device_type.GPU else
            "cpu" if d.type & cl.device_type.CPU else "accelerator")
    extensions = set(d.extensions.split())
    interesting = sorted(e for e in extensions if e in (
        "cl_khr_fp16", "cl_khr_fp64", "cl_khr_int64_base_atomics", "cl_khr_subgroups",
        "cl_intel_subgroups", "cl_khr_integer_dot_product", "cl_arm_integer_dot_product_int8"))
    extra = {}
    if kind == "cpu":
        from .runtime import gemm_width_of  # pyopencl is imported here already

        extra["gemm_vector_width"] = gemm_width_of(pi, di, in_child=_IN_LISTING_CHILD)
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
            "fp64": "cl_khr_fp64" in extensions, **extra})


# --------------------------------------------------------------------------- drivers

_vendors_folder: str | None = None
_driver_env: dict[str, str] = {}
_loader_lock = threading.Lock()
_loader_started = False


def use_pip_installed_drivers() -> dict[str, str]:
    """The environment this process's ICD loader must see to load the OpenCL drivers that
    pip installed: ``OCL_ICD_VENDORS`` (and ``CL_CONFIG_CPU_TARGET_ARCH`` for Intel's
    runtime on another vendor's CPU), or nothing when there is nothing to add.

    pyopencl's loader (ocl-icd) reads the drivers named in ``OCL_ICD_VENDORS`` (else in
    /etc/OpenCL/vendors) and in pyopencl's own ``.libs`` once, at the process's first
    OpenCL call. The folder holds a copy of every system ``.icd`` file (which the variable
    would otherwise hide) and one per driver of ``PIP_DRIVERS`` that is installed, naming
    its library by absolute path, in a private folder this process writes
    (:func:`_write_vendors`; nothing is read back from the cache). The environment is set
    only around that first call (:func:`start_loader`): the application and its child
    processes never see it. A user's own ``OCL_ICD_VENDORS`` is left alone: it decides
    which drivers load.
    """
    global _vendors_folder
    if _vendors_folder is not None or os.environ.get("OCL_ICD_VENDORS"):
        return dict(_driver_env)
    icds = {f"{dist}.icd": f"{library}\n" for dist, library in _pip_driver_libraries()}
    if not icds:
        return None
    if SYSTEM_VENDORS.is_dir():
        for f in sorted(SYSTEM_VENDORS.glob("*.icd")):
            try:
                icds.setdefault(f.name, f.read_text())
            except OSError:
                continue
    folder = _write_vendors(icds)
    _vendors_folder = str(folder)
    _driver_env["OCL_ICD_VENDORS"] = _vendors_folder
    target = _intel_cpu_target() if "intel-opencl-rt.icd" in icds else None
    if target and not os.environ.get("CL_CONFIG_CPU_TARGET_ARCH"):
        _driver_env["CL_CONFIG_CPU_TARGET_ARCH"] = target
    return dict(_driver_env)


def start_loader() -> None:
    """Make this process's first OpenCL call (which loads the drivers) with the
    environment of :func:`use_pip_installed_drivers` set, then put the environment back as
    it was. Called before the plugin's first OpenCL call; once per process."""
    global _loader_started
    with _loader_lock:
        if _loader_started:
            return
        _loader_started = True
        import pyopencl as cl

        saved = {k: os.environ.get(k) for k in _driver_env}
        os.environ.update(_driver_env)
        try:
            cl.get_platforms()
        except cl.Error:
            pass  # no platform: the caller's own call says so
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _pip_driver_libraries() -> list[tuple[str, str]]:
    """(distribution, absolute library path) of each installed driver of ``PIP_DRIVERS``."""
    from importlib import metadata

    found = []
    for dist, name in PIP_DRIVERS:
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == name:
                path = Path(f.locate()).resolve()
                if path.is_file():
                    found.append((dist, str(path)))
                break
    return found


def _intel_cpu_target(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The ``INTEL_CPU_TARGETS`` name for this CPU when it is not an Intel one, else None."""
    vendor, flags = None, set()
    try:
        with cpuinfo.open() as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        return None
    if vendor in (None, "GenuineIntel"):
        return None
    return next((name for name, needed in INTEL_CPU_TARGETS if needed <= flags), None)


def _write_vendors(icds: dict[str, str]) -> Path:
    """A folder holding exactly ``icds`` (file name -> contents), written now by this
    process into a private temporary folder (0700, removed at exit). Never one found on
    disk: the ICD loader loads every library an ``.icd`` file there names, so a file
    planted in a shared folder would run its code in every backplane process."""
    folder = Path(tempfile.mkdtemp(prefix="backplane-opencl-icd-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name, text in icds.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return folder


try:
    use_pip_installed_drivers()
except Exception as exc:  # a driver the loader will not see must not stop the import
    log.warning("backplane: opencl: pip-installed OpenCL drivers stay unregistered: %s: %s",
                type(exc).__name__, exc)
    log.debug("backplane: opencl: driver registration traceback", exc_info=True)


# --------------------------------------------------------------------------- kernels
# Each registration names the op, the element types of its first input, and what the
# kernel does not handle; the implementations are in ops.py, imported on first call.

#: A kernel whose implementation (ops.py: numpy, pyopencl) is imported on first call.
_Lazy = functools.partial(LazyKernel, f"{__name__}.ops")


def _reg(op: str, impl: LazyKernel, dtypes: Any = F32, domain: str = "", **limits: Any) -> None:
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
