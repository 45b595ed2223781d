"""arm-neon: a kernel backend running C kernels written with NEON intrinsics on ARM CPUs.

What it is (name, api_version, capabilities as data: the kernel table below), how it finds
devices (``probe``), how it compiles, and its kernels, registered with their constraints.

- Kernels: ``kernels/neon/*.c`` (``bp_neon.h`` holds their one C signature and shared vector
  math). Variants by CPU feature: ``x.fp16.c`` (asimdhp), ``x.dotprod.c`` (asimddp),
  ``x.i8mm.c`` (i8mm); each kernel runs as the best variant the CPU allows
  (``features.py``). The host side of each kernel is in ``ops.py``.
- On an AArch64 host the kernels are built once into a shared library with the system C
  compiler and called through ctypes; on any other host, with ``BACKPLANE_NEON_EMULATION``
  set, the same sources are cross-compiled (gcc-aarch64-linux-gnu) into a harness run under
  ``qemu-aarch64`` (``build.py``, ``runtime.py``), so the real NEON code is what the
  conformance suite checks.
- On an AArch64 host a session may ask for a graph path instead of the kernels:
  ``options={"arm-neon": {"path": "openvino" | "onnxruntime"}}`` hands the partition to that
  backend's compile (OpenVINO's ARM CPU plugin, ONNX Runtime's CPU provider).

Importing this module imports neither numpy nor a compiler; probing runs no build.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from backplane import (API_VERSION, AttributeRule, Backend, CompileOptions, Device, Executable,
                       KernelTable, __version__ as _backplane_version)
from backplane.sdk.contract import op_key
from backplane.sdk.errors import BackplaneError, CompileError, DeviceUnavailable
from backplane.sdk.hostfacts import parse_cpuinfo

from . import features
import backplane

NAME = "arm-neon"
#: ``1`` (or ``max``): emulate qemu's ``max`` CPU (every feature); or a qemu CPU model
#: (``cortex-a57`` has no fp16 or dot product, ``cortex-a76`` and ``neoverse-n1`` have both).
EMULATION_ENV = "BACKPLANE_NEON_EMULATION"
#: Element types the float kernels compute on (f16 in f32, rounded once).
F = ("float32", "float16")
#: The element-wise kernels also take bfloat16 (computed in f32).
FB = F + ("bfloat16",)
#: Data movement copies element bits, so it takes every type.
ANY = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool")
#: ONNX TensorProto codes Cast converts to: float, uint8, int8, int32, int64, bool, float16,
#: bfloat16.
CAST_TO = (1, 2, 3, 6, 7, 9, 10, 16)
MAX_RANK = 8
GRAPH_PATHS = {"openvino": "openvino-cpu", "onnxruntime": "onnxruntime"}

kernels = KernelTable(precisions=frozenset({"fp32"}), thread_safe=True)


class ArmNeonBackend(Backend):
    """NEON kernels on the AArch64 CPU of this host, or under qemu-aarch64 when asked."""

    name = NAME
    api_version = API_VERSION
    version = _backplane_version
    kernels = kernels
    known_failures = str(Path(__file__).with_name("known_failures.toml"))
    cost_hints = {"launch_us": 20.0, "node_us": 5.0, "compute_efficiency": 0.4,
                  "memory_efficiency": 0.5}

    def __init__(self) -> None:
        # Natively a CPU backend ranked after openvino-cpu (300), before onnxruntime (200);
        # an emulated device exists for verification and ranks just above the reference.
        self.priority = 250 if features.is_arm_host() else 10

    def probe(self) -> list[Device]:
        """This host's AArch64 CPU, or the emulated one ``BACKPLANE_NEON_EMULATION`` names.

        Cheap: no kernel is built (that happens at the first compile). The emulated
        device's features are those qemu documents for the model; the running harness
        reports the real ones, which decide the variants.
        """
        if features.is_arm_host():
            return [_native_device()]
        mode = os.environ.get(EMULATION_ENV, "").strip()
        if mode in ("", "0"):
            raise DeviceUnavailable(
                f"not an ARM CPU ({platform.machine()}); set {EMULATION_ENV}=1 to run the "
                f"NEON kernels under qemu-aarch64 (needs gcc-aarch64-linux-gnu and qemu-user)")
        return [_emulated_device(mode)]

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """The NEON kernels node by node, or (on an AArch64 host, when the session asks) a
        graph path; the executable's ``path`` says which ran and why."""
        # on use only: discovery loads this module, and must stay light
        from .runtime import runtime_for

        wanted = (options.extra.get(NAME) or {}).get("path", "kernels")
        if wanted not in ("kernels", *GRAPH_PATHS):
            raise CompileError(f"options['{NAME}']['path'] is {wanted!r}; choose kernels, "
                               f"{', '.join(GRAPH_PATHS)}", backend=NAME, device=device.id)
        native = device.properties.get("runtime") == "native"
        passed = ""
        if wanted != "kernels":
            if not native:
                passed = (f"; the {wanted} path was asked for but runs only on an AArch64 "
                          f"host (here {wanted} would run {platform.machine()} code, not ARM "
                          f"code)")
            else:
                exe, passed = _graph_path(wanted, graph, options)
                if exe is not None:
                    return exe
        target = device.properties.get("compiler") if native else device.properties["qemu_cpu"]
        try:
            rt = runtime_for("native" if native else "emulated", target, options)
        except BackplaneError as exc:
            raise CompileError(str(exc), backend=NAME, device=device.id) from exc
        inner = table_for(rt).compile(graph, device, options)
        used = sorted({_lazy_kernel(k) for k in _kernels_of(graph)} - {None})
        variants = ", ".join(f"{k} {rt.variants.get(k, '?')}" for k in used) or "none"
        where = "in this process (ctypes)" if native else \
            f"under qemu-aarch64 -cpu {target} (user-mode emulation)"
        return NeonExecutable(inner, f"NEON kernels {where}; variants: {variants}{passed}")

    def runtime_versions(self) -> dict[str, str]:
        """The compilers (and qemu) the kernels are built and run with, for reports."""
        out = {}
        if features.is_arm_host():
            cc = _host_cc()
            if cc:
                out["cc"] = _version(cc)
        else:
            for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64"):
                if shutil.which(tool):
                    out[tool] = _version(tool)
        return out


class NeonExecutable(Executable):
    """A compiled partition and the path that compiled it (thread-safe as the inner one)."""

    def __init__(self, inner: Executable, path: str):
        self._inner = inner
        self.path = path
        self.thread_safe = bool(getattr(inner, "thread_safe", False))  # type: ignore[misc]

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self._inner.run(inputs)


# --------------------------------------------------------------------------- devices

def _host_cc() -> str | None:
    for name in (os.environ.get("CC", "").strip(), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.lru_cache(maxsize=None)
def _version(tool: str) -> str:
    try:
        done = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout.strip().splitlines() or ["unknown"])[0]


def _shipped_variants(found: frozenset[str]) -> dict[str, str]:
    """Kernel -> variant for these features, from the shipped sources (no build)."""
    # on use only: discovery loads this module, and must stay light
    from . import build

    return features.variants_for(build.index(build.scan(build.source_dir())), found)


def _native_device() -> Device:
    cc = _host_cc()
    if cc is None:
        raise DeviceUnavailable("an AArch64 CPU, but no C compiler to build the NEON kernels "
                                "with: install gcc (or set CC)")
    found, source = features.host_features()
    if "asimd" not in found:
        raise DeviceUnavailable(f"this AArch64 CPU reports no Advanced SIMD (asimd) "
                                f"({source}: {', '.join(sorted(found)) or 'no features'})")
    try:
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        info = {}
    return Device(name=info.get("model_name") or "AArch64 CPU", kind="cpu",
                  vendor=info.get("vendor_id") or "", properties={
                      "runtime": "native", "compiler": cc, "features": sorted(found),
                      "features_from": source, "variants": _shipped_variants(found)})


def _emulated_device(mode: str) -> Device:
    cpu = "max" if mode.lower() in ("1", "max", "true", "yes", "on") else mode
    tools = {"gcc-aarch64-linux-gnu": shutil.which("aarch64-linux-gnu-gcc"),
             "qemu-user": shutil.which("qemu-aarch64")}
    missing = [pkg for pkg, path in tools.items() if path is None]
    if missing:
        raise DeviceUnavailable(f"{EMULATION_ENV}={mode} asks for NEON emulation, which "
                                f"needs {' and '.join(missing)}: apt-get install "
                                f"{' '.join(missing)}")
    qemu = tools["qemu-user"]
    known = features.QEMU_MODELS.get(cpu)
    if known is None and cpu not in _qemu_cpus(qemu):
        raise DeviceUnavailable(f"{EMULATION_ENV}={mode}: qemu-aarch64 has no CPU model "
                                f"'{cpu}'; known: {', '.join(_qemu_cpus(qemu))}")
    found = known if known is not None else frozenset({"fp", "asimd"})
    said = re.search(r"version (\S+)", _version(qemu))
    version = said.group(1) if said else "?"
    return Device(name=f"{cpu} (qemu-aarch64 {version} user-mode emulation)", kind="cpu",
                  vendor="Arm (emulated)", properties={
                      "runtime": "emulated", "qemu_cpu": cpu, "qemu": qemu,
                      "cross_compiler": tools["gcc-aarch64-linux-gnu"],
                      "features": sorted(found),
                      "features_from": f"qemu's {cpu} model (the harness reads the real "
                                       f"AT_HWCAP at start)",
                      "variants": _shipped_variants(found)})


@functools.lru_cache(maxsize=None)
def _qemu_cpus(qemu: str) -> tuple[str, ...]:
    try:
        done = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return tuple(features.QEMU_MODELS)
    return tuple(line.strip() for line in done.stdout.splitlines()[1:] if line.strip())


# --------------------------------------------------------------------------- graph paths

def _graph_path(wanted: str, graph: Any, options: CompileOptions) -> tuple[Executable | None, str]:
    """The partition compiled by another backend on this AArch64 host, or why not.
    Untested on ARM hardware (written against the backends' own compile)."""
    name = GRAPH_PATHS[wanted]
    try:
        reg = backplane.registry()
        backend = reg.backend(name)
        device = reg.resolve(name)[0]
        exe = backend.compile(graph, device, options)
    except Exception as exc:  # a backend's own errors are BackplaneErrors; be safe anyway
        return None, (f"; the {wanted} path was asked for and passed over: "
                      f"{type(exc).__name__}: {exc}")
    return NeonExecutable(exe, f"{wanted}: the partition compiled by {name} on "
                               f"{device.id}, as options['{NAME}']['path'] asked"), ""


# --------------------------------------------------------------------------- kernels
# Each registration names the op, the element types of its first input, and what the
# kernel does not handle; the host side of each is in ops.py, imported and bound to a
# device's runtime by table_for() at the first compile.

class _Lazy:
    """A kernel's registration: the function that is its host side (in ``ops.py``, or
    ``resize.py``; numpy), imported when the table is bound to a runtime (``table_for``),
    and the C kernel it calls."""

    def __init__(self, name: str, *bound: Any, kernel: str | None = None,
                 module: str = "ops", **fixed: Any):
        self.name, self.bound, self.fixed, self.kernel = name, bound, fixed, kernel
        self.module = module

    def on(self, rt: Any) -> Any:
        """This kernel bound to runtime ``rt``."""
        import importlib

        host = importlib.import_module(f"{__name__}.{self.module}")
        fn, bound, fixed = getattr(host, self.name), self.bound, self.fixed

        def run(*args: Any, **attrs: Any) -> Any:
            return fn(rt, *bound, *args, **fixed, **attrs)

        return run

    def __call__(self, *args: Any, **attrs: Any) -> Any:
        raise RuntimeError("arm-neon kernels run on a device: compile the graph with "
                           "ArmNeonBackend.compile")


_tables: dict[int, tuple[Any, KernelTable]] = {}
_tables_lock = threading.Lock()


def table_for(rt: Any) -> KernelTable:
    """The kernel table with every kernel bound to runtime ``rt`` (made once per runtime)."""
    with _tables_lock:
        held = _tables.get(id(rt))
        if held is None or held[0] is not rt:
            table = kernels.copy()
            for key in list(kernels.capabilities().ops):
                kernel = kernels.get(key)  # None for the table's built-in Identity and Constant
                if kernel is not None:
                    table.replace(key, kernel.fn.on(rt))
            held = _tables[id(rt)] = (rt, table)
        return held[1]


def _kernels_of(graph: Any) -> list[str]:
    return [op_key(n.op_type, n.domain) for n in graph.nodes]


def _lazy_kernel(key: str) -> str | None:
    k = kernels.get(key)
    return getattr(k.fn, "kernel", None) if k is not None else None


def _reg(op: str, impl: _Lazy, dtypes: Any = F, domain: str = "", **limits: Any) -> None:
    limits.setdefault("max_rank", MAX_RANK)
    if impl.kernel is not None:
        limits.setdefault("layout", "contiguous")
    kernels.register(op, domain=domain, dtypes=dtypes, **limits)(impl)


_ONLY_0 = AttributeRule(allowed=(0,))
_GELU = {"approximate": AttributeRule(allowed=("none", "tanh"))}

# Element-wise (elementwise.c; elementwise.fp16.c with asimdhp).
for _op in ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Erf", "HardSwish"):
    _reg(_op, _Lazy("unary_op", _op, kernel="unary"), FB)
_reg("LeakyRelu", _Lazy("leaky_relu", kernel="unary"), FB)
_reg("HardSigmoid", _Lazy("hard_sigmoid", kernel="unary"), FB)
_reg("Gelu", _Lazy("gelu", kernel="unary"), FB, attributes=_GELU)
_reg("Clip", _Lazy("clip", kernel="unary"), FB)
for _op in ("Add", "Sub", "Mul", "Div", "Pow"):
    _reg(_op, _Lazy("binary", _op, kernel="binary"), FB)

# Linear algebra and convolutions (gemm.c, conv.c, matmul_int8*.c).
_reg("MatMul", _Lazy("matmul", kernel="gemm"), min_rank=1)
_reg("Gemm", _Lazy("gemm", kernel="gemm"), max_rank=2)
_reg("FusedMatMulBiasGelu", _Lazy("fused_matmul_bias_gelu", kernel="gemm"),
     domain="backplane", min_rank=1, attributes=_GELU)
_reg("MatMulInteger", _Lazy("matmul_integer", kernel="matmul_int8"), ("int8", "uint8"))
_CONV = {"min_rank": 1, "max_rank": 5}  # (the bias is rank 1)
_reg("Conv", _Lazy("conv", kernel="conv"), **_CONV)
_reg("FusedConvRelu", _Lazy("fused_conv_relu", kernel="conv"), domain="backplane", **_CONV)
_reg("ConvTranspose", _Lazy("conv_transpose", kernel="conv_transpose"), **_CONV)

# Normalisation, reductions, pooling, Resize (norm.c, reduce.c, resample.c).
_reg("Softmax", _Lazy("softmax", kernel="softmax"), min_rank=1)
_reg("LayerNormalization", _Lazy("layer_norm", kernel="layer_norm"), min_rank=1,
     attributes={"stash_type": AttributeRule(allowed=(1,))})
_reg("BatchNormalization", _Lazy("batch_norm", kernel="batch_norm"), min_rank=1,
     attributes={"training_mode": _ONLY_0})
_reg("ReduceSum", _Lazy("reduce_sum", kernel="reduce"))
_reg("ReduceMean", _Lazy("reduce_mean", kernel="reduce"))
_reg("ReduceMax", _Lazy("reduce_max", kernel="reduce"))
_reg("GlobalAveragePool", _Lazy("global_average_pool", kernel="reduce"), min_rank=3)
_POOL = {"min_rank": 3, "max_rank": 5}
_reg("MaxPool", _Lazy("max_pool", kernel="pool_windows"), **_POOL)
_reg("AveragePool", _Lazy("average_pool", kernel="pool_windows"), **_POOL)

_reg("Resize", _Lazy("resize", kernel="resample", module="resize"))

# Quantization (quant.c).
_reg("QuantizeLinear", _Lazy("quantize_linear", kernel="quantize"),
     attributes={"output_dtype": AttributeRule(allowed=(0, 2, 3))})
_reg("DequantizeLinear", _Lazy("dequantize_linear", kernel="dequantize"),
     ("int8", "uint8", "int32"))

# Shapes and data movement: numpy on the host, no arithmetic.
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
_reg("Where", _Lazy("where"), ("bool",))
_reg("Cast", _Lazy("cast"), ANY, attributes={"to": AttributeRule(allowed=CAST_TO)})
_reg("Pad", _Lazy("pad"), ANY,
     attributes={"mode": AttributeRule(allowed=("constant", "reflect", "edge", "wrap"))})

__all__ = ["ArmNeonBackend", "NeonExecutable", "kernels", "table_for"]
