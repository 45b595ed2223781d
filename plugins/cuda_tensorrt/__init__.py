"""cuda-tensorrt: NVIDIA GPUs, through TensorRT, ONNX Runtime's CUDA provider, or kernels.

What it is: one backend, three ways to compile a partition, tried in this order:

1. ``tensorrt``: TensorRT's ONNX parser and an engine built at the session's precision
   (``tensorrt.py``), when the ``tensorrt`` package is installed;
2. ``onnxruntime``: an ONNX Runtime session on its CUDA provider (fp32, TF32 off), when
   onnxruntime-gpu is installed and its CUDA provider passes a readiness check;
3. ``kernels``: the torch op table shared with rocm (:mod:`backplane.runtimes.torch`) on
   the torch CUDA device, with custom CUDA kernels from ``kernels/cuda/*.cu`` compiled at
   run time by NVRTC (``nvrtc.py``, ``cudakernels.py``) for the fused ops and the ops
   listed in ``custom_kernels``.

A path that is missing, or that cannot take the partition at its precision, is passed
over with the reason, and so is one whose compile fails (TensorRT's parser refusing an
op); the plan's partition says which path compiled it and why the others did not
(:attr:`backplane.Executable.path`). ``options={"cuda-tensorrt": {"path": "kernels"}}``
forces a path, loudly.

Capabilities are the kernel path's (the torch op table), the one path that is always
there when a device is listed: TensorRT and ORT take at least those ops.

How it finds devices: the CUDA driver API through ctypes (``driver.py``: no runtime
import), names and driver versions from NVML or nvidia-smi (:mod:`backplane.runtimes.nvml`),
the hwdb entry through the ``backplane_hwdb_match`` hook.
A GPU is listed when the driver initialises and at least one path has its runtime
installed; otherwise the probe says which of GPU, driver or runtime package is missing.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from backplane import (API_VERSION, Backend, Capabilities, CompileOptions, Device, Executable,
                       LazyOps)
from backplane import __version__ as _backplane_version
from backplane.sdk.compilepath import CompilePaths
from backplane.sdk.errors import CompileError, DeviceUnavailable
from backplane.sdk.hooks import plugin_manager
from backplane.runtimes import nvml
from backplane.runtimes import onnxruntime as ort_rt
from backplane.runtimes.torch import compile_on, torch_build
from backplane.runtimes.torch import kernels as torch_kernels

from . import driver

NAME = "cuda-tensorrt"
#: The compile paths, in the order they are tried (:mod:`backplane.sdk.compilepath`).
CHOICE = CompilePaths(NAME, {"tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime CUDA provider",
                             "kernels": "kernel path"}, messages={
    "forced": "{backend} path {path!r} was asked for (options {backend}.{option}) but "
              "cannot be taken: {reason}"})
PATHS = CHOICE.names
LABELS = CHOICE.labels
#: The precisions each path computes at.
PATH_PRECISIONS = {"tensorrt": frozenset({"fp32", "fp16", "bf16", "int8"}),
                   "onnxruntime": frozenset({"fp32"}),
                   "kernels": frozenset({"fp32", "fp16", "bf16"})}
#: Distributions that provide the ``tensorrt`` module.
TENSORRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11",
                  "tensorrt_cu12", "tensorrt-lean")
CUDA_PROVIDER = "CUDAExecutionProvider"


def _precisions() -> frozenset[str]:
    base = PATH_PRECISIONS["kernels"] | PATH_PRECISIONS["onnxruntime"]
    return base | (PATH_PRECISIONS["tensorrt"] if tensorrt_version() else frozenset())


class CudaTensorRTBackend(Backend):
    """NVIDIA GPUs: TensorRT, else ONNX Runtime's CUDA provider, else torch + CUDA kernels."""

    name = NAME
    api_version = API_VERSION
    version = _backplane_version
    priority = 500  # a GPU before the CPU backends (openvino-cpu 300) in fixed order
    # Until 'backplane hwdb calibrate' measures the GPU: a call from Python costs tens of
    # microseconds (launches and synchronisation), each node of the kernel path ~10 µs.
    cost_hints = {"launch_us": 30.0, "node_us": 10.0, "compute_efficiency": 0.5,
                  "memory_efficiency": 0.7}
    known_failures = str(Path(__file__).with_name("known_failures.toml"))

    def __init__(self) -> None:
        self._caps = Capabilities(ops=LazyOps(graph_path_ops), precisions=_precisions())

    @property
    def capabilities(self) -> Capabilities:
        """What the installed paths run (:func:`graph_path_ops`); precisions of the paths
        installed. Computed on first read of ``ops``."""
        return self._caps

    # ------------------------------------------------------------------ devices

    def probe(self) -> list[Device]:
        """Every GPU the CUDA driver gives this process, when some path can run on it."""
        found = survey()
        if isinstance(found, str):
            raise DeviceUnavailable(found)
        return [Device(**d) for d in found]

    # ------------------------------------------------------------------ compile

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """The first path that takes the partition (see the module's docstring)."""
        extra = dict(options.extra.get(NAME, {})) if options.extra else {}
        exe, choice = CHOICE.compile(
            _why_not(device.properties.get("paths", {}), options.precision),
            lambda path: _COMPILERS[path](graph, device, options, extra), extra.get("path"),
            device=device.id, precision=options.precision)
        # Every path passed over is named: those not ready, then those that failed.
        notes = [str(p) for p in choice.passed if p.error is None] + [
            f"{p.label} failed: {p.error}" for p in choice.passed if p.error is not None]
        if notes:
            exe.path = f"{exe.path}; passed over: {'; '.join(notes)}"
        return exe


def graph_path_ops() -> dict[str, Any]:
    """The op table: the ops TensorRT's ONNX parser supports (when TensorRT is installed
    and a GPU answers) and the CUDA provider's kernel registrations (when the installed
    ONNX Runtime has the provider), else the torch op table's own kernels: a partition goes
    to the first path that takes it (:meth:`CudaTensorRTBackend.compile`)."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.registrations import merged_paths, op_supports, ort_op_table

    paths = []
    if tensorrt_version():
        # on use only: discovery loads this module, and must stay light
        from .tensorrt import supported_ops

        paths.append(supported_ops())
    try:
        paths.append(op_supports(ort_op_table(CUDA_PROVIDER)))
    except ImportError:  # no onnxruntime: no ONNX Runtime path
        pass
    return merged_paths(torch_kernels.capabilities().ops, *paths)


def choose_paths(paths: Mapping[str, str], precision: str, requested: str | None = None,
                 device: str = "") -> tuple[list[str], list[str]]:
    """(paths to try in order, why each other path was passed over).

    ``paths`` maps each path to ``""`` when its runtime is installed, else the reason
    (the device's ``paths`` property). A ``requested`` path is the only one tried; it
    raises CompileError when unknown, missing or unable to compute at ``precision``.
    """
    order, passed = CHOICE.order(_why_not(paths, precision), requested, device=device or None,
                                 precision=precision)
    return order, [str(p) for p in passed]


def _why_not(paths: Mapping[str, str], precision: str) -> Callable[[str], str]:
    """The readiness check of the paths: each one's runtime installed (``paths``) and its
    precisions holding ``precision``."""
    def why_not(path: str) -> str:
        reason = paths.get(path, "not probed")
        if reason:
            return reason
        if precision not in PATH_PRECISIONS[path]:
            return (f"computes at {', '.join(sorted(PATH_PRECISIONS[path]))}, not "
                    f"{precision}")
        return ""

    return why_not


# ---------------------------------------------------------------------- the three paths

def _compile_tensorrt(graph: Any, device: Device, options: CompileOptions,
                      extra: Mapping[str, Any]) -> Executable:
    # on use only: discovery loads this module, and must stay light
    from .tensorrt import compile_engine

    gpu = {"name": device.name, "compute_capability":
           device.properties.get("compute_capability")}
    try:
        return compile_engine(graph, device, options, gpu,
                              _static_shapes(graph, getattr(options, "dims", {}) or {}))
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError.wrap(exc, backend=NAME, device=device.id) from exc


def _static_shapes(graph: Any, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The input sizes the session was planned for (the graph's static sizes, its symbols
    from the session's ``dims``), as the TensorRT profile's optimum; inputs with sizes
    still unknown take the first run's."""
    out = {}
    for vi in graph.inputs:
        shape = [d if isinstance(d, int) else dims.get(d) for d in (vi.shape or ())]
        if vi.shape is not None and all(isinstance(d, int) for d in shape):
            out[vi.name] = tuple(shape)
    return out


def _compile_onnxruntime(graph: Any, device: Device, options: CompileOptions,
                         extra: Mapping[str, Any]) -> Executable:
    ort = ort_rt.runtime()
    so = ort_rt.session_options(ort, options.policy, CUDA_PROVIDER,
                                dict(extra.get("onnxruntime", {})))
    ordinal = int(device.properties.get("ordinal", 0))
    # ORT's CUDA provider computes fp32 MatMul and Conv in TF32 unless told otherwise.
    provider_options = {"device_id": str(ordinal), "use_tf32": "0"}
    session = ort_rt.open_session(graph.model.SerializeToString(), so, CUDA_PROVIDER,
                                  provider_options, backend=NAME, device=device.id, graph=graph)
    exe = ort_rt.ORTExecutable(session, graph, device, backend=NAME,
                               thread_safe=options.policy == "throughput")
    exe.path = (f"ONNX Runtime {ort.__version__} CUDAExecutionProvider on GPU {ordinal}, "
                "fp32 with TF32 off")
    return exe


def _compile_kernels(graph: Any, device: Device, options: CompileOptions,
                     extra: Mapping[str, Any]) -> Executable:
    # on use only: discovery loads this module, and must stay light
    from .cudakernels import DEFAULT_CUSTOM

    wanted = extra.get("custom_kernels", DEFAULT_CUSTOM)
    table, note = kernel_table(tuple(wanted))
    torch_device = str(device.properties.get("torch_device", "cuda:0"))
    if options.precision == "fp32" and torch_device.startswith("cuda"):
        # torch lets cuDNN convolutions use TF32 by default: fp32 must mean fp32. The flags
        # are process-wide (docs/backends/cuda-tensorrt.md).
        import torch  # defers the vendor runtime to the kernel path's compile

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    version = device.properties.get("torch")
    text = (f"kernel path: the torch{' ' + version if version else ''} op table on "
            f"{torch_device}, {note}")
    try:
        return compile_on(graph, device, options, torch_device, table=table, path=text)
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError.wrap(exc, backend=NAME, device=device.id) from exc


_COMPILERS = {"tensorrt": _compile_tensorrt, "onnxruntime": _compile_onnxruntime,
              "kernels": _compile_kernels}


# ---------------------------------------------------------------------- kernels

_tables: dict[tuple[str, ...], tuple[Any, str]] = {}
_tables_lock = threading.Lock()


def kernel_table(custom: tuple[str, ...]) -> tuple[Any, str]:
    """(the kernel path's table with custom CUDA kernels for the ``custom`` op keys, a
    line saying which are in use or why none is). The custom kernels fall back to the
    torch op table for calls outside their limits."""
    from . import cudakernels  # (its kernel planning tables: loaded when a kernel path compiles)

    unknown = [k for k in custom if k not in cudakernels.OPS]
    if unknown:
        raise CompileError(f"custom_kernels names ops without a custom CUDA kernel: "
                           f"{unknown}; there are kernels for {', '.join(cudakernels.OPS)}",
                           backend=NAME)
    with _tables_lock:
        if custom in _tables:
            return _tables[custom]
    table = torch_kernels.copy(precisions=PATH_PRECISIONS["kernels"])
    if not custom:
        found = (table, "no custom CUDA kernels (none asked for)")
    else:
        ok, why = cudakernels.available()
        if not ok:
            found = (table, f"custom CUDA kernels unavailable ({why})")
        else:
            made = cudakernels.custom_kernels(lambda key: torch_kernels.get(key).fn)
            for key in custom:
                table.replace(key, made[key])
            found = (table, "custom CUDA kernels (NVRTC) for " + ", ".join(custom)
                     + ", falling back to torch outside their limits")
    with _tables_lock:
        return _tables.setdefault(custom, found)


# ---------------------------------------------------------------------- probing

_survey: "list[dict[str, Any]] | str | None" = None
_survey_lock = threading.Lock()


def survey(refresh: bool = False) -> "list[dict[str, Any]] | str":
    """The devices (``Device`` keyword arguments), or why there are none; once per process."""
    global _survey
    with _survey_lock:
        if _survey is None or refresh:
            gpus, why = driver.gpus(refresh)
            _survey = describe(gpus, why, runtimes(
                gpus[0]["cuda_driver_version"] if gpus else None))
        return _survey


def runtimes(driver_cuda: str | None = None) -> dict[str, str]:
    """Each path's runtime: ``""`` where installed (and runnable by a driver supporting
    CUDA ``driver_cuda``), else what is missing and how to get it."""
    torch_why = torch_cuda_missing(driver_cuda)
    trt = tensorrt_version()
    return {
        "tensorrt": "" if trt and not torch_why else (
            f"TensorRT {trt} is installed but its buffers need torch with CUDA: {torch_why}"
            if trt else "the tensorrt package is not installed (pip install tensorrt-cu12)"),
        "onnxruntime": ort_cuda_missing(),
        "kernels": torch_why,
    }


def describe(gpus: list[dict[str, Any]], why: str | None, paths: Mapping[str, str]
             ) -> "list[dict[str, Any]] | str":
    """Device descriptions from the driver's GPUs and the paths' runtimes, or the reason
    none is listed (no GPU, no driver, or no runtime package)."""
    if not gpus:
        if not Path("/dev/nvidiactl").exists() and "cannot be loaded" in (why or ""):
            return f"no NVIDIA GPU: no /dev/nvidiactl and {why}"
        return why or "no NVIDIA GPU"
    if all(paths.values()):
        names = ", ".join(sorted({g["name"] for g in gpus}))
        return (f"{len(gpus)} NVIDIA GPU(s) ({names}) but no runtime package to run them: "
                + "; ".join(f"{LABELS[p]}: {r}" for p, r in paths.items())
                + ". pip install 'backplane-hal[cuda]' (torch with CUDA, CuPy, NVRTC)")
    named = _nvml_records()
    out = []
    for g in gpus:
        rec = named.get(g["pci_bus_id"], {})
        props = {"ordinal": g["ordinal"], "torch_device": f"cuda:{g['ordinal']}",
                 "compute_capability": g["compute_capability"],
                 "multiprocessors": g["multiprocessors"], "pci_bus_id": g["pci_bus_id"],
                 "cuda_driver_version": g["cuda_driver_version"],
                 "driver_version": rec.get("driver_version"), "torch": torch_version(),
                 "tensorrt": tensorrt_version(), "paths": dict(paths),
                 "hwdb_entry": _hwdb_entry(g, rec)}
        out.append({"name": g["name"], "kind": "gpu", "vendor": "NVIDIA",
                    "memory_bytes": g["memory_bytes"], "properties": props})
    return out


def _nvml_records() -> dict[str, dict[str, Any]]:
    """NVML's (else nvidia-smi's) facts of each GPU, by normalised PCI bus id."""
    try:
        found = nvml.gpus()
    except Exception:  # a driver failing mid-query leaves the names to the CUDA driver
        return {}
    records = found[0] if found else []
    return {driver.normal_bus_id(str(g["pci_bus_id"])): nvml.facts(g)
            for g in records if g.get("pci_bus_id")}


def _hwdb_entry(gpu: Mapping[str, Any], facts: Mapping[str, Any]) -> str | None:
    """The id of the hwdb entry this GPU matches (the ``backplane_hwdb_match`` hook), or
    None."""
    try:
        found = plugin_manager().hook.backplane_hwdb_match(
            kind="gpu", name=gpu["name"], vendor="nvidia", source="cuda-driver", facts={
                **facts, "compute_capability": gpu["compute_capability"],
                "units": gpu["multiprocessors"],
                "memory_gib": round(gpu["memory_bytes"] / 2**30, 1)})
    except Exception:  # the database is optional to listing devices
        return None
    return found[0] if found else None


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_version() -> str | None:
    """The installed TensorRT's version (package metadata; nothing imported), or None."""
    found = _dist_version(*TENSORRT_DISTS)
    if found is None and importlib.util.find_spec("tensorrt") is not None:
        return "unknown version"
    return found


def torch_version() -> str | None:
    """torch's version from its metadata, or None when it is not installed."""
    return torch_build()["version"]


def torch_cuda_missing(driver_cuda: str | None = None) -> str:
    """``""`` when torch is a CUDA build that the driver (supporting CUDA ``driver_cuda``)
    can run, else what is missing; torch is not imported (:func:`torch_build`)."""
    build = torch_build()
    if not build["installed"]:
        return "torch is not installed"
    if build["build"] != "cuda":
        return (f"torch {build['version']} is a {build['build']} build; install a CUDA build "
                "of torch")
    return driver_too_old(build["accelerator_version"], driver_cuda) or ""


def driver_too_old(runtime_cuda: str | None, driver_cuda: str | None) -> str | None:
    """Why a runtime built for CUDA ``runtime_cuda`` cannot run on a driver supporting
    ``driver_cuda``, or None. Within one major version a driver runs newer runtimes (CUDA's
    minor version compatibility); across major versions it does not."""
    try:
        need, have = int(str(runtime_cuda).split(".")[0]), int(str(driver_cuda).split(".")[0])
    except ValueError:
        return None
    if need <= have:
        return None
    return (f"torch is built for CUDA {runtime_cuda} and this driver supports CUDA "
            f"{driver_cuda}: update the NVIDIA driver or install a torch built for CUDA "
            f"{have}.x")


def ort_cuda_missing() -> str:
    """``""`` when onnxruntime-gpu is installed and its CUDA provider passed the readiness
    check (a child process, run only when onnxruntime-gpu is installed), else why not."""
    version = _dist_version("onnxruntime-gpu")
    if version is None:
        return "onnxruntime-gpu is not installed"
    try:
        _, available, checks = ort_rt.probe_providers()
    except Exception as exc:
        return f"onnxruntime-gpu {version} is not usable: {exc}"
    ready, reason = checks.get(CUDA_PROVIDER, (False, f"{CUDA_PROVIDER} is not in this build "
                                                      f"({', '.join(available)})"))
    return "" if ready else f"onnxruntime-gpu {version}: {reason}"


def __getattr__(name: str) -> Any:
    # DEFAULT_CUSTOM: the ops whose custom CUDA kernels the kernel path uses unless told
    # otherwise (``options={"cuda-tensorrt": {"custom_kernels": [...]}}``), owned by
    # cudakernels.py, which discovery does not import.
    if name == "DEFAULT_CUSTOM":
        # on use only: discovery loads this module, and must stay light
        from .cudakernels import DEFAULT_CUSTOM

        return DEFAULT_CUSTOM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CudaTensorRTBackend", "choose_paths", "describe", "kernel_table", "runtimes",
           "survey"]
