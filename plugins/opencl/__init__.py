"""opencl: a kernel backend running OpenCL C kernels through pyopencl, on any OpenCL 1.2+ device.

What it is (name, api_version, capabilities as data: the kernel table of
:mod:`backplane.runtimes.opencl`, shared with rocm's OpenCL path), how it finds devices
(``probe``), how it compiles (the default node-by-node runner of ``KernelTable``, with device
arrays moved by ``upload``/``download`` hooks of the adapter's device state). The kernel
sources are ``kernels/opencl/*.cl``; the host side of each kernel is in
:mod:`backplane.runtimes.opencl_ops`.
Importing this module imports neither pyopencl nor numpy; it writes the list of the OpenCL
drivers that pip installed into a private folder, which the ICD loader is shown at the
first OpenCL call only (:mod:`backplane.runtimes.opencl_drivers`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from backplane import API_VERSION, Backend, CompileOptions, Device, Executable
from backplane import __version__ as _backplane_version
from backplane.sdk.child import run_child
from backplane.sdk.errors import DeviceUnavailable
from backplane.runtimes.opencl import (OpenCLExecutable, cannot_run, gemm_width_of, kernels,
                                       state_for)
from backplane.runtimes.opencl_drivers import register_pip_drivers, start_loader

#: Bound on the child process that lists devices (importing pyopencl, loading ICDs, building
#: the probe kernel on each device).
PROBE_CHILD_TIMEOUT_S = 20
#: When several drivers offer a device for the host CPU, one is listed: PoCL's when it
#: builds (the kernels' CPU launch sizes were measured on it), else the first that builds.
PREFERRED_CPU_PLATFORM = "Portable Computing Language"

# The list is written at import, as the plugin is discovered; the loader sees it at the first
# OpenCL call.
register_pip_drivers()


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
        state = state_for(device)
        with state.lock:
            state.use_cache_dir(options)
            inner = kernels.compile(graph, device, options, upload=state.upload,
                                    download=state.download)
        return OpenCLExecutable(inner, state)


def _list_devices() -> "list[dict[str, Any]] | str":
    """Device descriptions (``Device`` keyword arguments), or the reason there are none."""
    try:
        import pyopencl as cl  # defers the vendor runtime to the listing
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


def _label(platform: Any, d: Any) -> str:
    return f"{d.name.strip()} ({platform.name.strip()})"


def _list_devices_in_child() -> "list[dict[str, Any]] | str":
    code = ("import backplane.plugins.opencl as p; p._IN_LISTING_CHILD = True; "
            "import json; print(json.dumps(p._list_devices()), flush=True); "
            # PoCL may abort at exit after a failed build (see gemm_width); the
            # answer is out by then, and the child has nothing else to tear down.
            "import os; os._exit(0)")
    found = run_child(code, timeout_s=PROBE_CHILD_TIMEOUT_S, what="the OpenCL listing child")
    if found.reason is not None:
        return f"listing OpenCL devices failed: {found.reason}"
    return found.last if isinstance(found.last, (list, str)) else (
        f"listing OpenCL devices gave no answer: {found.last!r}")


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


__all__ = ["OpenCLBackend", "OpenCLExecutable", "kernels"]
