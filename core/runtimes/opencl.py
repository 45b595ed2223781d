"""OpenCL, as the opencl and rocm backends use it: device state, the kernel table, the
executable, the probe kernel.

- Device state (:func:`state_for`, :class:`DeviceState`): one context, queue, buffer pool
  and program cache per device and process. Buffers come from a
  :class:`pyopencl.tools.MemoryPool` (size classes, freed buffers are held and reused);
  :meth:`DeviceState.trim` bounds what it holds. Programs build once per process and their
  binaries are kept on disk under ``cache_dir("opencl", options)``, keyed by device name,
  driver version, platform version, build options and the source's hash; a fresh process
  loads the binary instead of compiling the source. Launch sizes come from the device's
  limits (max work-group size, preferred work-group multiple, local memory).
- :data:`kernels`: the OpenCL C kernels (``kernels/opencl/*.cl``) registered with their
  constraints; their host side is in :data:`OPS`, imported on a kernel's first call.
- :class:`OpenCLExecutable`: the table's node-by-node runner under the device's lock.
- :func:`cannot_run`: whether a device builds and runs :data:`PROBE_KERNEL`.

The drivers pip installed are shown to the ICD loader before the first OpenCL call
(:mod:`backplane.runtimes.opencl_drivers`). Importing this module imports neither pyopencl
nor numpy: each is imported inside the functions that use it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from typing import Any

from backplane.kernels import source
from backplane.runtimes.opencl_drivers import start_loader
from backplane.sdk.cache import ArtifactCache
from backplane.sdk.child import run_child
from backplane.sdk.contract import AttributeRule, Executable
from backplane.sdk.errors import DeviceNotFoundError
from backplane.sdk.kerneltable import KernelTable, LazyKernel


#: The kernels' host side, named here and imported on first call (it imports numpy and
#: pyopencl, which listing backends must not).
OPS = "backplane.runtimes.opencl_ops"

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
#: Seconds the child measuring a CPU device's GEMM vector width may take (it builds each
#: kernel variant; not a probe of the registry's, so not within its deadline).
GEMM_WIDTH_TIMEOUT_S = 60.0
#: Every device builds and runs this, as the kernels are built, before it is listed: a
#: driver whose compiler cannot target the device (PoCL 3.0 on a CPU its LLVM does not
#: know) is reported with its own words instead of failing every compile later.
PROBE_KERNEL = ("__kernel void bp_probe(__global float *x) "
                "{ x[get_global_id(0)] = 2.0f * x[get_global_id(0)] + 1.0f; }")

kernels = KernelTable(precisions=frozenset({"fp32"}), thread_safe=True)


# --------------------------------------------------------------------------- device state

#: OpenCL C type of each numpy dtype the kernels compute on.
CL_TYPES = {"float32": "float", "float64": "double", "int8": "char", "uint8": "uchar",
            "int16": "short", "uint16": "ushort", "int32": "int", "uint32": "uint",
            "int64": "long", "uint64": "ulong", "bool": "uchar"}
#: Raw (bit-moving) OpenCL type by element size, for data-movement kernels.
RAW_TYPES = {1: "uchar", 2: "ushort", 4: "uint", 8: "ulong"}
#: Unsigned numpy type (its name) by element size: an element's bits.
RAW_NUMPY = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}
#: Small integer arrays keep a host copy next to the device one (shapes, axes, indices),
#: so that kernels reading them as parameters need no device-to-host transfer: the array's
#: ``host_mirror`` (set by ``upload``, kept by the kernels' views, read by :func:`mirror`).
HOST_MIRROR_MAX = 64
#: Entries of the layout-descriptor cache (shape/stride tables uploaded once).
LAYOUT_CACHE = 512
MAXR = 8

_states: dict[tuple[int, int], "DeviceState"] = {}
_by_context: dict[int, "DeviceState"] = {}
_states_lock = threading.Lock()


def cl_device(platform_index: int, device_index: int, platform: str | None = None,
              name: str | None = None) -> Any:
    """The pyopencl device at (platform, device) index; with ``platform`` and ``name``
    given, it must carry them (this process's loader may see other drivers than the one
    that listed the device, e.g. when OpenCL was used before the plugin was imported)."""
    import pyopencl as cl  # defers the vendor runtime to the first device used

    start_loader()
    try:
        d = cl.get_platforms()[platform_index].get_devices()[device_index]
    except (IndexError, cl.Error) as exc:
        raise DeviceNotFoundError(
            f"OpenCL device {device_index} of platform {platform_index} is gone ({exc}); "
            f"run 'backplane devices' to list what is there now") from exc
    found = (d.platform.name.strip(), d.name.strip())
    if platform is not None and name is not None and found != (platform, name):
        raise DeviceNotFoundError(
            f"OpenCL device {device_index} of platform {platform_index} is '{found[1]}' on "
            f"'{found[0]}' in this process, not '{name}' on '{platform}' as when it was "
            f"listed; import backplane before making any OpenCL call, or set "
            f"OCL_ICD_VENDORS so that every process loads the same drivers")
    return d


def state_for(device: Any) -> "DeviceState":
    """The process-wide state of an OpenCL device: a backplane ``Device`` of the opencl
    backend, or one whose properties name the same (platform, platform_index,
    device_index: rocm's OpenCL path)."""
    import pyopencl as cl  # defers the vendor runtime to the first device used

    key = (int(device.properties["platform_index"]), int(device.properties["device_index"]))
    with _states_lock:
        st = _states.get(key)
        if st is None:
            d = cl_device(*key, device.properties.get("platform"), device.name)
            width = device.properties.get("gemm_vector_width")
            if width is None and d.type & cl.device_type.CPU:  # listed by another plugin
                width = gemm_width_of(*key)
            st = DeviceState(d, width)
            _states[key] = st
            _by_context[st.ctx.int_ptr] = st
        return st


def state_of(array: Any) -> "DeviceState":
    """The state owning a device array (found from its context)."""
    return _by_context[array.context.int_ptr]


class DeviceState:
    """Context, queue, buffer pool, program cache and limits of one device."""

    def __init__(self, device: Any, gemm_width: int | None = None):
        import numpy as np  # defers the vendor runtime (and numpy) to the first device used
        import pyopencl as cl
        import pyopencl.array as cla
        import pyopencl.tools as cltools

        self.device = device
        self.ctx = cl.Context([device])
        self.queue = cl.CommandQueue(self.ctx)
        self.pool = cltools.MemoryPool(cltools.ImmediateAllocator(self.queue))
        #: Serialises runs: kernel objects carry their arguments, so two threads must not
        #: set them at once; a CPU device is busy on all cores with one run anyway.
        self.lock = threading.RLock()
        self._programs: dict[tuple[str, str], Any] = {}
        self._kernels: dict[tuple[str, str, str], Any] = {}
        #: Device tables by content (:meth:`layout`), least recently used first; the kernels
        #: (``opencl_ops``) keep their int32 tables here too, under a tagged key.
        self._layouts: OrderedDict[tuple, Any] = OrderedDict()
        self.disk = ArtifactCache("opencl")  # program binaries (.bin), by device and source
        self.stats = {"builds": 0, "disk_hits": 0, "memory_hits": 0}
        # Limits, from the device.
        self.max_work_group = int(device.max_work_group_size)
        self.local_mem = int(device.local_mem_size)
        self.max_item_sizes = [int(s) for s in device.max_work_item_sizes]
        self.is_cpu = bool(device.type & cl.device_type.CPU)
        vw = int(device.preferred_vector_width_float)
        if vw not in (4, 8, 16):
            # Intel's CPU runtime prefers 1 (it vectorises across work-items itself) yet
            # runs the CPU GEMM's explicit vectors of its native width 3x faster than of 4.
            vw = int(device.native_vector_width_float)
        self.vector_width = vw if vw in (4, 8, 16) else 4
        #: The widest vector width the CPU GEMM program builds at, found by the device
        #: listing's child process (:func:`gemm_width`); None: not checked, the device's own.
        self.gemm_width = gemm_width
        # (Intel's CPU runtime generates code for CL_CONFIG_CPU_TARGET_ARCH, which the
        # plugin may set: a binary built for one target must not load under another.)
        self.identity = (device.name, device.driver_version, device.platform.version,
                         device.version, os.environ.get("CL_CONFIG_CPU_TARGET_ARCH", ""))
        self.build_options = build_options(device)
        self.pool_limit = min(512 << 20, int(device.global_mem_size) // 4)
        probe_prog = self.program("elementwise", _probe_prelude())
        knl = probe_prog.map_contig
        self.wg_multiple = int(knl.get_work_group_info(
            cl.kernel_work_group_info.PREFERRED_WORK_GROUP_SIZE_MULTIPLE, device))
        # 1-D launches: a few multiples of the preferred size, within the device's limit.
        self.local_1d = _round_down(min(self.max_work_group, max(self.wg_multiple * 8, 64),
                                        256), self.wg_multiple)
        self._dummy = cla.zeros(self.queue, (1,), np.uint64)

    # ------------------------------------------------------------------ programs

    def program(self, name: str, prelude: str) -> Any:
        """The built program ``kernels/opencl/NAME.cl`` with ``prelude`` (defines) before it."""
        import pyopencl as cl  # defers the vendor runtime

        key = (name, prelude)
        prg = self._programs.get(key)
        if prg is not None:
            self.stats["memory_hits"] += 1
            return prg
        src = prelude + "\n" + source("opencl/common.h") + "\n" + source(f"opencl/{name}.cl")
        options = " ".join(self.build_options)
        digest = hashlib.sha256((src + "\0" + options).encode()).hexdigest()
        disk_key = (*self.identity, options, digest)
        prg = None
        binary = self.disk.get(disk_key)  # checked against its hash
        if binary is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", cl.CompilerWarning)
                    prg = cl.Program(self.ctx, [self.device], [binary]).build(options)
                self.stats["disk_hits"] += 1
            except (cl.Error, OSError):
                prg = None  # a stale or foreign binary: build from source and overwrite it
        if prg is None:
            with warnings.catch_warnings():
                # PoCL's clang reports notes (unused parameters of generated ops) as a
                # build log; a failed build still raises.
                warnings.simplefilter("ignore", cl.CompilerWarning)
                # Past pyopencl's own binary cache: the disk cache above is the one that
                # follows the cache options (and knows the target architecture).
                prg = cl.Program(self.ctx, src).build(options, cache_dir=False)
            self.stats["builds"] += 1
            if self.disk.folder is not None:
                binaries = prg.get_info(cl.program_info.BINARIES)
                if binaries and binaries[0]:
                    self.disk.put(disk_key, bytes(binaries[0]))
        self._programs[key] = prg
        return prg

    def kernel(self, name: str, prelude: str, entry: str) -> Any:
        """One kernel object of a program, created once."""
        key = (name, prelude, entry)
        knl = self._kernels.get(key)
        if knl is None:
            knl = getattr(self.program(name, prelude), entry)
            self._kernels[key] = knl
        return knl

    def use_cache_dir(self, options: Any) -> None:
        """Follow the compile options' cache folder for programs built from now on."""
        self.disk = ArtifactCache("opencl", options)

    # ------------------------------------------------------------------ memory

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised device array from the pool."""
        import numpy as np  # defers the vendor runtime (loaded by now: a cheap lookup)
        import pyopencl.array as cla

        return cla.empty(self.queue, tuple(int(d) for d in shape), np.dtype(dtype),
                         allocator=self.pool)

    def upload(self, value: Any) -> Any:
        """Host array (or scalar) -> dense device array; device arrays pass through."""
        import numpy as np  # defers the vendor runtime (loaded by now: a cheap lookup)
        import pyopencl as cl
        import pyopencl.array as cla

        if isinstance(value, cla.Array):
            return value
        host = np.asarray(value)
        if not host.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            host = host.copy(order="C")
        out = self.empty(host.shape, host.dtype)
        if host.size:
            cl.enqueue_copy(self.queue, out.base_data, host, is_blocking=False)
        if host.size <= HOST_MIRROR_MAX and host.dtype.kind in "iub":
            out.host_mirror = host.copy()
        return out

    def download(self, value: Any) -> Any:
        """Device array -> host numpy array."""
        import numpy as np  # defers the vendor runtime (loaded by now: a cheap lookup)
        import pyopencl as cl
        import pyopencl.array as cla

        if not isinstance(value, cla.Array):
            return np.asarray(value)
        out = np.empty(value.shape, value.dtype)
        if value.size:
            cl.enqueue_copy(self.queue, out, value.base_data, src_offset=value.offset,
                            is_blocking=True)
        return out

    def trim(self) -> None:
        """Give pooled memory back to the device when the pool holds more than its bound."""
        if self.pool.managed_bytes - self.pool.active_bytes > self.pool_limit:
            self.pool.free_held()

    def layout(self, table: tuple[int, ...], dtype: str = "int64") -> Any:
        """A small integer table (shapes, strides, int64 by default) on the device,
        uploaded once per content and type."""
        key = table if dtype == "int64" else (dtype, *table)
        buf = self._layouts.get(key)
        if buf is None:
            import numpy as np  # defers the vendor runtime (loaded by now: a cheap lookup)
            import pyopencl as cl

            host = np.asarray(table, dtype)
            buf = cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                            hostbuf=host)
            self._layouts[key] = buf
            if len(self._layouts) > LAYOUT_CACHE:
                self._layouts.popitem(last=False)
        else:
            self._layouts.move_to_end(key)
        return buf

    def buf(self, array: Any) -> Any:
        """The buffer of a device array (a one-element dummy for empty arrays)."""
        return array.base_data if array.base_data is not None else self._dummy.base_data

    # ------------------------------------------------------------------ launching

    def launch1d(self, knl: Any, n: int, *args: Any) -> None:
        """Run ``knl`` over ``n`` work-items (the kernel checks ``i < n``)."""
        if n <= 0:
            return
        local = self.local_1d
        knl(self.queue, (_round_up(n, local),), (local,), *args)

    def cpu_gemm_blocks(self) -> tuple[int, int, int, int]:
        """(rows per work-item, vector width, work-group size, k block) of the CPU GEMM:
        the device's preferred float vector width (else its native one); 8 rows (16 vector
        accumulators) where the vectors are wide, 4 otherwise; 4 work-items per group
        (measured on PoCL: 1 pays the per-group overhead, 16 no better); no k blocking
        (measured no faster)."""
        vw = min(self.vector_width, self.gemm_width or self.vector_width)
        return (8 if vw >= 8 else 4), vw, max(1, min(4, self.max_work_group)), 0

    def gemm_tiles(self) -> tuple[int, int, int, int, int]:
        """(TM, TN, TK, WGX, WGY) for the GEMM kernel, from the device's limits: the largest
        work-group of the preferred multiple's shape whose A and B tiles fit in local memory."""
        wgx = max(1, min(16, self.wg_multiple, self.max_item_sizes[0]))
        wgy = max(1, min(16, self.max_work_group // wgx, self.max_item_sizes[1]))
        tm, tn, tk = 4, 4, 16
        while wgy > 1 and 4 * tk * (wgy * tm + wgx * tn) > self.local_mem // 2:
            wgy //= 2
        while tk > 1 and 4 * tk * (wgy * tm + wgx * tn) > self.local_mem // 2:
            tk //= 2
        return tm, tn, tk, wgx, wgy


def build_options(device: Any) -> list[str]:
    """The options every program is built with on ``device``."""
    import pyopencl as cl  # defers the vendor runtime

    # -cl-mad-enable lets a * b + c contract to one fused multiply-add (as accurate or
    # more than the two operations; on CPU devices fma() itself may be a library call).
    options = ["-cl-std=CL1.2", "-cl-mad-enable"]
    if int(device.single_fp_config) & int(cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT):
        # Div, Sqrt and QuantizeLinear's x / scale must round as IEEE does.
        options.append("-cl-fp32-correctly-rounded-divide-sqrt")
    return options


def gemm_width(device: Any) -> int:
    """The widest vector width, up to the device's preferred one, at which the CPU GEMM
    program builds with its kernels in it.

    PoCL 3.0 (LLVM 14) on a Zen 4 EPYC reports width 16, then builds the 16-wide program
    with these options into a program without kernels, and aborts the process when that
    program is released ("still have references to IRs"): so this runs only in the child
    process that lists devices, never in the application, and keeps such programs until
    the child leaves by ``os._exit``."""
    import pyopencl as cl  # defers the vendor runtime

    preferred = int(device.preferred_vector_width_float) or int(device.native_vector_width_float)
    ctx = cl.Context([device])
    options = " ".join(build_options(device))
    for vw in [w for w in (16, 8) if w <= preferred]:
        src = (gemm_cpu_prelude(8, vw, 0, 0, 0) + "\n" + source("opencl/common.h") + "\n"
               + source("opencl/matmul_cpu.cl"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", cl.CompilerWarning)
                program = cl.Program(ctx, src).build(options, cache_dir=False)
        except cl.Error:
            continue
        if _kernel_names(program):
            return vw
        _EMPTY_PROGRAMS.append(program)  # PoCL aborts when one is released: keep it
    return 4


def gemm_width_of(pi: int, di: int, in_child: bool = False) -> int | None:
    """:func:`gemm_width` of device ``di`` of platform ``pi``: computed here when this is a
    child process that leaves by ``os._exit``, else in a child of its own (a failed build
    may abort the process that made it); None when that child gives no answer."""
    if in_child:
        import pyopencl as cl  # defers the vendor runtime

        start_loader()  # the drivers the parent listed, at the same indices
        return gemm_width(cl.get_platforms()[pi].get_devices()[di])

    code = ("import os; from backplane.runtimes.opencl import gemm_width_of; "
            f"print(gemm_width_of({pi}, {di}, in_child=True), flush=True); os._exit(0)")
    found = run_child(code, timeout_s=GEMM_WIDTH_TIMEOUT_S, what="the GEMM width check")
    return found.last if isinstance(found.last, int) else None


#: Programs a driver built without kernels, never released (see :func:`gemm_width`).
_EMPTY_PROGRAMS: list[Any] = []


def gemm_cpu_prelude(rm: int, vw: int, act: int, has_c: int, kb: int) -> str:
    """The defines of ``kernels/opencl/matmul_cpu.cl`` for one variant."""
    return (f"#define RM {rm}\n#define VW {vw}\n#define VT float{vw}\n"
            f"#define VLOAD vload{vw}\n#define VSTORE vstore{vw}\n#define ACT {act}\n"
            f"#define HAS_C {has_c}\n#define KB {kb}\n"
            f"#define ROWS(X) {' '.join(f'X({r})' for r in range(rm))}\n")


def _kernel_names(program: Any) -> str:
    """The kernel names a built program lists ('' for none). Only in the listing's child:
    PoCL aborts at exit when a program it was asked this of is still alive."""
    import pyopencl as cl  # defers the vendor runtime

    try:
        return str(program.get_info(cl.program_info.KERNEL_NAMES) or "")
    except cl.Error:
        return ""


def mirror(array: Any) -> Any:
    """The host value (a numpy array) of a (small) device array: its host copy when it has
    one."""
    host = getattr(array, "host_mirror", None)
    if host is not None:
        return host
    import numpy as np  # defers the vendor runtime (loaded by now: a cheap lookup)
    import pyopencl.array as cla

    if not isinstance(array, cla.Array):
        return np.asarray(array)
    return state_of(array).download(array)


def _probe_prelude() -> str:
    return ("#define T0 float\n#define T1 float\n#define T2 float\n#define TO float\n"
            "#define PT float\n"
            "inline TO bp_op(T0 a, T1 b, T2 c, PT p0, PT p1) { return a; }\n")


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _round_down(n: int, m: int) -> int:
    return max(m, n // m * m)


# --------------------------------------------------------------------------- the executable

class OpenCLExecutable(Executable):
    """A KernelExecutable whose runs hold the device's lock: kernel objects carry their
    arguments, so runs on one device are serialised (safe from any thread)."""

    thread_safe = True

    def __init__(self, inner: Executable, state: Any):
        self._inner = inner
        self._state = state

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run once under the device's lock, then trim its buffer pool."""
        with self._state.lock:
            try:
                return self._inner.run(inputs)
            finally:
                self._state.trim()


def cannot_run(cl: Any, d: Any) -> str | None:
    """Why device ``d`` cannot build and run ``PROBE_KERNEL`` (the driver's message), or None.

    The build goes through ``cl.Program(...).build()`` as the kernels' do (DeviceState), past
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


# --------------------------------------------------------------------------- kernels
# Each registration names the op, the element types of its first input, and what the
# kernel does not handle; the host side of each is in OPS, imported on first call.

#: A kernel whose implementation (OPS: numpy, pyopencl) is imported on first call.
_Lazy = functools.partial(LazyKernel, OPS)


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
