"""rocm: AMD GPUs through ROCm, by whichever of three paths this machine has.

What it is: a backend whose devices are the GPUs of the amdgpu driver's KFD topology, and
whose capabilities are data read without importing a runtime: the torch op table's
(:mod:`backplane.runtimes.torch`) when the installed torch is a ROCm build by its package
metadata, else the OpenCL kernel table (:mod:`backplane.runtimes.opencl`).

How it finds devices (``probe``): the KFD topology and DRM cards in sysfs (``sysfs.py``:
gfx target, PCI ids and address, compute units, VRAM, driver version, the hwdb entry),
named by amd-smi or rocm-smi; then, only when a usable GPU is there, what each path needs
(``runtimes.py``, in short child processes, bounded). A GPU is listed when at least one
path is ready on it. Without one, ``DeviceUnavailable`` says which of these it is: no AMD
GPU; a GPU without amdgpu's KFD (or without /dev/kfd, or without access to it); or a GPU
with no ROCm runtime package, and what to install.

How it compiles: the graph path first (ONNX Runtime's MIGraphX or ROCm provider, CPU
fallback disabled, through the ONNX Runtime adapter), else the torch op table on HIP
(``compile_on(..., torch_device="cuda:N")``: ROCm builds of torch call HIP GPUs "cuda"),
else the OpenCL kernels on ROCm's OpenCL device. Every path runs for this backend: its
errors name ``rocm`` and the device.
``Executable.path`` says which path ran and why the ones before it were passed over;
``options={"rocm": {"path": "migraphx" | "torch" | "opencl"}}`` forces one. A path whose
compile raises a CompileError (a node the graph compiler refuses) hands over to the next
one unless it was forced (the rule of :mod:`backplane.sdk.compilepath`). The sysfs and
/dev roots are constructor parameters, so tests probe recorded trees; the runtimes and the
vendor tools can be injected the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from backplane import (API_VERSION, Backend, Capabilities, CompileOptions, Device, Executable,
                       LazyOps)
from backplane import __version__ as _backplane_version
from backplane.sdk.errors import BackendError, CompileError, DeviceUnavailable
from backplane.runtimes import onnxruntime as ort_rt
from backplane.runtimes import opencl as cl_rt
from backplane.runtimes import torch as torch_rt

from . import runtimes as rt
from . import sysfs

__all__ = ["RocmBackend"]


def _table() -> Any:
    """The kernel table the capabilities come from: torch's op table when torch is a ROCm
    build (package metadata only), else the OpenCL kernels'."""
    return torch_rt.kernels if rt.torch_build()["rocm"] else cl_rt.kernels


def graph_path_ops(table: Any) -> dict[str, Any]:
    """The kernel table's ops, widened by what ONNX Runtime's MIGraphX and ROCm providers
    register (the graph path, tried first) when the installed ONNX Runtime has them."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.registrations import merged_paths, op_supports, ort_op_table

    paths = []
    try:
        for provider in ("MIGraphXExecutionProvider", "ROCMExecutionProvider"):
            paths.append(op_supports(ort_op_table(provider, expands_functions=False)))
    except ImportError:  # no onnxruntime: no graph path
        pass
    return merged_paths(table.capabilities().ops, *paths)


class RocmBackend(Backend):
    """AMD GPUs through ROCm: ONNX Runtime MIGraphX, torch on HIP, or OpenCL kernels."""

    name = "rocm"
    api_version = API_VERSION
    version = _backplane_version
    priority = 400  # a GPU: ahead of openvino-cpu (300), onnxruntime (200) and opencl (100)
    # Assumed until 'backplane hwdb calibrate' measures a device: a HIP kernel launch is
    # some microseconds and a node-by-node runner adds a launch per node; large ops reach
    # about half the datasheet peak. Not measured: no AMD GPU was reachable here
    # (docs/backends/rocm.md).
    cost_hints = {"launch_us": 20.0, "node_us": 10.0, "compute_efficiency": 0.5,
                  "memory_efficiency": 0.7}

    def __init__(self, sysfs_root: str = "/sys", dev_root: str = "/dev",
                 runtimes: "rt.Runtimes | Callable[[], rt.Runtimes] | None" = None,
                 run_tool: "sysfs.RunTool | None" = None,
                 environ: "dict[str, str] | None" = None) -> None:
        self.sysfs_root, self.dev_root = sysfs_root, dev_root
        self._runtimes = runtimes
        self._run_tool = run_tool or sysfs.run_tool
        self._environ = environ
        self._kernels: Any = None
        self._caps: Capabilities | None = None

    # ------------------------------------------------------------------ what it is

    @property
    def kernels(self) -> Any:  # type: ignore[override]
        """The op table compiles are checked against (see :func:`_table`)."""
        if self._kernels is None:
            self._kernels = _table()
        return self._kernels

    @property
    def capabilities(self) -> Capabilities:
        """What the installed paths run: ONNX Runtime's MIGraphX and ROCm providers' kernel
        registrations where the installed ONNX Runtime has them, else the kernel table's
        own ops. Data: computed on first read of ``ops``, importing no runtime before."""
        if self._caps is None:
            table = self.kernels
            self._caps = Capabilities(ops=LazyOps(lambda: graph_path_ops(table)),
                                      precisions=table.capabilities().precisions)
        return self._caps

    # ------------------------------------------------------------------ devices

    def probe(self) -> list[Device]:
        """The KFD GPUs on which at least one path is ready, in KFD node order."""
        gpus = sysfs.find_gpus(self.sysfs_root)
        reason = sysfs.unusable_reason(self.sysfs_root, self.dev_root, gpus)
        if reason:
            raise DeviceUnavailable(reason)
        # amd-smi / rocm-smi name the GPUs while the runtimes are checked, within one budget.
        named: list[list[dict[str, Any]]] = []
        tools = threading.Thread(target=lambda: named.append(sysfs.tool_names(self._run_tool)),
                                 name="backplane-rocm-names", daemon=True)
        deadline = time.monotonic() + rt.budget() + 0.5
        tools.start()
        found = self._detect()
        tools.join(max(0.0, deadline - time.monotonic()))
        names = named[0] if named else []
        driver = sysfs.driver_version(self.sysfs_root)
        hip = rt.hip_indexes(len(gpus), self._environ)
        torch_precisions = tuple(sorted(self.capabilities.precisions)) \
            if found.torch.get("rocm") else ("fp32",)
        slots = [rt.slot(g.bus_id) for g in gpus]
        devices, unready = [], []
        for position, gpu in enumerate(gpus):
            facts = gpu.facts()
            paths = rt.device_paths(facts, position, hip[position], found, torch_precisions,
                                    rank_at_slot=slots[:position].count(slots[position]))
            name = sysfs.name_of(gpu, position, gpus, names)
            if not any(p["ready"] for p in paths.values()):
                unready.append((gpu, paths))
                continue
            entry, rule = sysfs.hwdb_match(name, facts)
            devices.append(Device(
                name=name, kind="gpu", vendor="AMD", memory_bytes=facts.get("vram_bytes"),
                properties={**facts, "driver_version": driver, "hip_index": hip[position],
                            "paths": paths,
                            "ready_paths": [p for p in rt.PATHS if paths[p]["ready"]],
                            "hwdb": entry, "hwdb_rule": rule,
                            **({"drm_note": gpu.drm_note} if gpu.drm_note else {})}))
        if not devices:
            raise DeviceUnavailable(_no_runtime_reason(unready))
        return devices

    def _detect(self) -> rt.Runtimes:
        if isinstance(self._runtimes, rt.Runtimes):
            return self._runtimes
        if callable(self._runtimes):
            return self._runtimes()
        return rt.detect()

    # ------------------------------------------------------------------ compile

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """The first path that is ready, computes at the plan's precision and compiles
        (or the forced one); ``Executable.path`` says which and why."""
        extra = dict((options.extra or {}).get(self.name) or {})
        paths = device.properties.get("paths") or {}
        exe, choice = rt.CHOICE.compile(
            rt.why_not(paths, options.precision),
            lambda path: _COMPILERS[path](self, graph, device, options, dict(paths[path]), extra),
            extra.get("path"), device=device.id, precision=options.precision)
        exe.path = choice.explain(rt.describe(  # type: ignore[misc]  # per instance
            choice.path, paths[choice.path], device.properties.get("gfx_target")))
        return exe

    def _compile_graph(self, graph: Any, device: Device, options: CompileOptions,
                       status: dict[str, Any], extra: dict[str, Any]) -> Executable:
        """One ORT session over the partition on the MIGraphX (or ROCm) provider."""
        try:
            ort = ort_rt.runtime()
        except Exception as exc:
            raise CompileError.wrap(exc, backend=self.name, device=device.id) from exc
        provider = status["provider"]
        provider_options = {"device_id": str(status.get("device_id", 0)),
                            **{str(k): str(v) for k, v in
                               dict(extra.get("provider_options") or {}).items()}}
        try:
            so = ort_rt.session_options(ort, options.policy, provider, extra)
        except Exception as exc:
            raise CompileError.wrap(exc, backend=self.name, device=device.id) from exc
        session = ort_rt.open_session(graph.model.SerializeToString(), so, provider,
                                      provider_options, backend=self.name, device=device.id,
                                      graph=graph)
        return ort_rt.ORTExecutable(session, graph, device, backend=self.name,
                                    thread_safe=options.policy == "throughput")

    def _compile_torch(self, graph: Any, device: Device, options: CompileOptions,
                       status: dict[str, Any], extra: dict[str, Any]) -> Executable:
        """The torch op table, node by node, on HIP device ``cuda:N``."""
        try:
            return torch_rt.compile_on(graph, device, options,
                                       torch_device=f"cuda:{int(status['hip_index'])}")
        except BackendError:
            raise
        except Exception as exc:
            raise CompileError.wrap(exc, backend=self.name, device=device.id) from exc

    def _compile_opencl(self, graph: Any, device: Device, options: CompileOptions,
                        status: dict[str, Any], extra: dict[str, Any]) -> Executable:
        """The OpenCL kernels on ROCm's OpenCL device, through the OpenCL adapter's device
        state (context, buffer pool, program cache) and its upload/download."""
        try:
            cl_device = opencl_device(status)
            state = cl_rt.state_for(cl_device)
        except Exception as exc:
            raise CompileError.wrap(exc, backend=self.name, device=device.id,
                                    advice="run 'backplane devices' to list what is there "
                                           "now") from exc
        with state.lock:
            state.use_cache_dir(options)
            inner = cl_rt.kernels.compile(graph, device, options, upload=state.upload,
                                          download=state.download)
        return cl_rt.OpenCLExecutable(inner, state)


def opencl_device(status: dict[str, Any]) -> Device:
    """The OpenCL view of a ready OpenCL path: a Device whose name and properties
    (platform, platform_index, device_index) are what ``state_for`` reads."""
    return Device(name=str(status["name"]), kind="gpu",
                  properties={"platform": status.get("platform"),
                              "platform_index": int(status["platform_index"]),
                              "device_index": int(status["device_index"])})


_COMPILERS: dict[str, Callable[..., Executable]] = {
    "migraphx": RocmBackend._compile_graph, "torch": RocmBackend._compile_torch,
    "opencl": RocmBackend._compile_opencl}


def _no_runtime_reason(unready: list[tuple[sysfs.Gpu, dict[str, dict[str, Any]]]]) -> str:
    gpus = ", ".join(f"{g.gfx_target or 'gfx?'} at {g.bus_id or f'KFD node {g.node}'}"
                     for g, _ in unready)
    _, paths = unready[0]
    why = "; ".join(f"{rt.LABELS[p]}: {paths[p]['detail']}" for p in rt.PATHS)
    return (f"{len(unready)} AMD GPU(s) found ({gpus}), but no ROCm runtime this backend can "
            f"use: {why}. Install one of: {rt.INSTALL}")
