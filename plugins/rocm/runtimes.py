"""The three ways the rocm backend runs a graph, whether each is ready on this machine, and
which one a compile takes.

- ``migraphx``, the graph path: ONNX Runtime's MIGraphXExecutionProvider (or its older
  ROCMExecutionProvider) runs the whole partition, CPU fallback disabled;
- ``torch``: the torch op table on HIP, where torch is a ROCm build;
- ``opencl``: the OpenCL kernels on ROCm's OpenCL platform ("AMD Accelerated Parallel
  Processing").

:func:`detect` finds out what this machine has (host-level facts: a :class:`Runtimes`),
asking torch and pyopencl in short child processes and ORT through the ONNX Runtime
adapter's provider check, all bounded by one time budget; :func:`device_paths` turns those
facts into each GPU's paths, and :func:`choose_path` picks one and says why the others were
passed over, by the SDK's compile-path rules (:data:`CHOICE`). The last two are pure
functions of data, so their logic is tested with the runtimes' availability injected.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from backplane.sdk.child import run_child
from backplane.sdk.compilepath import CompilePaths, PathUnavailable
from backplane.sdk.errors import DeviceUnavailable
from backplane.runtimes.onnxruntime import probe_providers
from backplane.runtimes.opencl import cannot_run
from backplane.sdk.env import probe_budget_s
from backplane.runtimes.torch import torch_build as _installed_torch

#: The paths in the order a compile tries them (:mod:`backplane.sdk.compilepath`).
CHOICE = CompilePaths("rocm", {"migraphx": "graph path", "torch": "torch path",
                               "opencl": "OpenCL path"},
                      messages={"none": "no path can compile here: {reasons}"})
PATHS = CHOICE.names
LABELS = CHOICE.labels
#: ORT providers of the graph path, preferred first: MIGraphX is the one AMD supports and
#: documents; the older ROCm provider is taken where a build still has it.
GRAPH_PROVIDERS = ("MIGraphXExecutionProvider", "ROCMExecutionProvider")
#: The platform name of ROCm's OpenCL runtime.
ROCM_OPENCL_PLATFORM = "AMD Accelerated Parallel Processing"
#: The whole detection (children started in parallel) may take this long; less where
#: BACKPLANE_PROBE_TIMEOUT_S is shorter.
PROBE_BUDGET_S = 4.0
INSTALL = ("torch built for ROCm (pip install torch --index-url "
           "https://download.pytorch.org/whl/rocmX.Y, the index pytorch.org lists for your "
           "ROCm), ROCm's OpenCL runtime (package rocm-opencl-runtime) with pyopencl (pip "
           "install 'backplane-hal[opencl]'), or an onnxruntime built with the MIGraphX "
           "execution provider (ROCm's documentation: 'Install ONNX Runtime for ROCm')")


@dataclass
class Runtimes:
    """What this machine offers each path, as plain data (JSON-able).

    ``torch``: version, rocm (the "+rocmX.Y" of its version, None for other builds), hip
    (torch.version.hip), devices (index, name, arch, pci_bus_id, memory_bytes), error; or
    unverified (why the devices were not checked) instead of devices.
    ``opencl``: platform, platform_index, platform_version, devices (device_index, name,
    board, pci_bus_id, memory_bytes, ready, why), platforms (all names), error.
    ``ort``: version, available (providers), providers ({name: [ready, reason]}), error.
    An ``error`` (a sentence) means that path is not usable on this machine at all.
    """

    torch: dict[str, Any] = field(default_factory=dict)
    opencl: dict[str, Any] = field(default_factory=dict)
    ort: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


# ---------------------------------------------------------------------- torch


def torch_build() -> dict[str, Any]:
    """The installed torch, from package metadata (torch is not imported), through the torch
    op table's ``torch_build``: ``{"version": "2.5.1+rocm6.2", "rocm": "6.2"}``; rocm is
    None for CPU and CUDA builds, version None when torch is not installed."""
    found = _installed_torch()
    return {"version": found.get("version"),
            "rocm": found.get("accelerator_version") if found.get("build") == "rocm" else None}


_TORCH_CHILD = r"""
import json
try:
    import torch
    out = {"hip": torch.version.hip, "available": bool(torch.cuda.is_available()), "devices": []}
    for i in range(torch.cuda.device_count() if out["available"] else 0):
        p = torch.cuda.get_device_properties(i)
        bus = getattr(p, "pci_bus_id", None)
        out["devices"].append({
            "index": i, "name": p.name, "arch": getattr(p, "gcnArchName", None),
            "memory_bytes": int(p.total_memory),
            "pci_bus_id": None if bus is None else "%04x:%02x:%02x.0" % (
                getattr(p, "pci_domain_id", 0), bus, getattr(p, "pci_device_id", 0))})
except Exception as exc:
    out = {"error": "%s: %s" % (type(exc).__name__, exc)}
print(json.dumps(out))
"""


def _torch(budget_s: float) -> dict[str, Any]:
    build = torch_build()
    if build["version"] is None:
        return {**build, "error": "torch is not installed"}
    if build["rocm"] is None:
        return {**build, "error": f"torch {build['version']} is not a ROCm build"}
    found = _child(_TORCH_CHILD, budget_s, "the torch check")
    if found.get("timeout"):
        return _unverified(build, found["error"])
    if "error" in found:
        return {**build, "error": f"torch {build['version']} failed to list HIP devices: "
                                  f"{found['error']}"}
    if not found.get("available"):
        found["error"] = (f"torch {build['version']} sees no HIP device "
                          f"(torch.cuda.is_available() is False)")
    return {**build, **found}


def _unverified(build: dict[str, Any], why: str) -> dict[str, Any]:
    """A ROCm build of torch whose device check did not finish in time (importing torch and
    starting HIP on many GPUs can take longer than a probe may): its path is offered with
    HIP indexes in KFD order, and a compile finds out for sure."""
    return {**build, "devices": [], "unverified": f"HIP devices not checked: {why}"}


# ---------------------------------------------------------------------- OpenCL


def opencl_child() -> None:
    """The child's side of the OpenCL check: ROCm's platform, its GPUs, and whether each
    builds and runs the OpenCL probe kernel; one JSON line on stdout."""
    try:
        import pyopencl as cl  # defers the vendor runtime to this child
    except Exception as exc:
        print(json.dumps({"error": f"pyopencl is not usable: {type(exc).__name__}: {exc}"}))
        return
    try:
        platforms = cl.get_platforms()
    except Exception as exc:
        print(json.dumps({"error": f"no OpenCL platform: {exc}", "platforms": []}))
        return
    out: dict[str, Any] = {"platforms": [p.name.strip() for p in platforms]}
    for pi, platform in enumerate(platforms):
        if platform.name.strip() != ROCM_OPENCL_PLATFORM:
            continue
        devices = []
        for di, d in enumerate(platform.get_devices()):
            if not d.type & cl.device_type.GPU:
                continue
            try:
                t = d.topology_amd
                bus = f"0000:{t.bus:02x}:{t.device:02x}.{t.function:x}"
            except Exception:
                bus = None
            try:
                board = d.board_name_amd.strip()
            except Exception:
                board = None
            why = cannot_run(cl, d)
            devices.append({"device_index": di, "name": d.name.strip(), "board": board,
                            "pci_bus_id": bus, "memory_bytes": int(d.global_mem_size),
                            "ready": why is None, "why": why or ""})
        out.update(platform=platform.name.strip(), platform_index=pi,
                   platform_version=platform.version.strip(), devices=devices)
        break
    print(json.dumps(out))


def _opencl(budget_s: float) -> dict[str, Any]:
    found = _child("from backplane.plugins.rocm.runtimes import opencl_child; opencl_child()",
                   budget_s, "the OpenCL check")
    if "error" not in found and "platform" not in found:
        listed = ", ".join(found.get("platforms") or []) or "none"
        found["error"] = (f"pyopencl lists no '{ROCM_OPENCL_PLATFORM}' platform (platforms: "
                          f"{listed})")
    elif "error" not in found and not found.get("devices"):
        found["error"] = f"the '{ROCM_OPENCL_PLATFORM}' platform lists no GPU"
    return found


# ---------------------------------------------------------------------- ONNX Runtime


def _ort(budget_s: float) -> dict[str, Any]:
    try:
        version, available, checks = probe_providers()
    except DeviceUnavailable as exc:
        return {"error": str(exc)}
    except Exception as exc:
        return {"error": f"onnxruntime's providers could not be checked: "
                         f"{type(exc).__name__}: {exc}"}
    providers = {p: list(checks.get(p, (False, "not checked"))) for p in GRAPH_PROVIDERS
                 if p in available}
    out: dict[str, Any] = {"version": version, "available": list(available),
                           "providers": providers}
    if not providers:
        out["error"] = (f"onnxruntime {version} has no MIGraphX or ROCm execution provider "
                        f"(it has {', '.join(available) or 'none'})")
    return out


# ---------------------------------------------------------------------- detection


def budget() -> float:
    """Seconds detection may take: PROBE_BUDGET_S, within the registry's probe timeout."""
    return probe_budget_s(cap=PROBE_BUDGET_S)


def detect(budget_s: float | None = None) -> Runtimes:
    """What this machine offers each path; the three checks run side by side, each bounded
    by ``budget_s``. Never raises: a check that fails or does not finish in time is an
    ``error`` of its path."""
    budget_s = budget() if budget_s is None else budget_s
    box: dict[str, dict[str, Any]] = {}

    def run(key: str, fn: Any) -> None:
        try:
            box[key] = fn(budget_s)
        except Exception as exc:  # a check's own bug must not hide the other paths
            box[key] = {"error": f"{type(exc).__name__}: {exc}"}

    threads = [threading.Thread(target=run, args=(k, fn), daemon=True,
                                name=f"backplane-rocm-{k}")
               for k, fn in (("torch", _torch), ("opencl", _opencl), ("ort", _ort))]
    deadline = time.monotonic() + budget_s + 0.5
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    late = f"the check did not finish within {budget_s:g} s"
    build = torch_build()
    torch = box.get("torch") or (_unverified(build, late) if build["rocm"] else {"error": late})
    return Runtimes(torch=torch, opencl=box.get("opencl", {"error": late}),
                    ort=box.get("ort", {"error": late}))


def _child(code: str, timeout_s: float, what: str) -> dict[str, Any]:
    """Run ``code`` in a probe child (:func:`backplane.sdk.child.run_child`); its last JSON
    object, or ``{"error": why}`` (with ``"timeout": True`` when it ran out of time)."""
    found = run_child(code, timeout_s=timeout_s, what=what)
    answer = next((x for x in reversed(found.lines) if isinstance(x, dict)), None)
    if answer is not None:
        return answer
    return {"error": found.reason or f"{what} gave no answer",
            **({"timeout": True} if found.timed_out else {})}


# ---------------------------------------------------------------------- per device


def hip_indexes(count: int, environ: Mapping[str, str] | None = None) -> list[int | None]:
    """The HIP device index of each of ``count`` KFD GPU nodes (in node order), or None for
    those hidden by ROCR_VISIBLE_DEVICES and then HIP_VISIBLE_DEVICES (CUDA_VISIBLE_DEVICES
    when HIP's is unset). HIP numbers the visible GPUs in KFD order; a list holding
    anything but indexes (UUIDs) is not applied."""
    env = os.environ if environ is None else environ
    order: list[int | None] = list(range(count))
    for name in ("ROCR_VISIBLE_DEVICES",
                 "HIP_VISIBLE_DEVICES" if "HIP_VISIBLE_DEVICES" in env else
                 "CUDA_VISIBLE_DEVICES"):
        raw = env.get(name)
        if raw is None:
            continue
        items = [x.strip() for x in raw.split(",") if x.strip()]
        if not all(x.isdigit() for x in items):
            continue
        visible = [int(x) for x in items]
        current = [i for i in order if i is not None]
        keep = {current[v]: n for n, v in enumerate(visible) if v < len(current)}
        order = [keep.get(i) if i is not None else None for i in order]
    return order


def slot(bus_id: str | None) -> str | None:
    """A PCI address without its function ("0000:05:00" of "0000:05:00.1"): what HIP and
    OpenCL report, and what the partitions of one GPU share."""
    return bus_id.rsplit(".", 1)[0].lower() if bus_id else None


def device_paths(facts: Mapping[str, Any], position: int, hip_index: int | None,
                 rt: Runtimes, torch_precisions: tuple[str, ...] = ("fp32",),
                 rank_at_slot: int = 0) -> dict[str, dict[str, Any]]:
    """Each path's status on one GPU: ``{path: {"ready": bool, "detail": str, ...}}``.

    ``facts`` are the GPU's sysfs facts (pci_bus_id, gfx_target); ``position`` its rank
    among the GPUs (for runtimes that list devices without a PCI address); ``rank_at_slot``
    its rank among the GPUs at the same PCI slot (the partitions of one MI300X: a runtime's
    k-th device at that slot is the k-th partition). A ready path carries what its compile
    needs (provider and device id; HIP index; OpenCL indexes and names) and
    ``precisions``; a path that is not ready says why in ``detail``.
    """
    at = (slot(facts.get("pci_bus_id")), rank_at_slot)
    return {"migraphx": _graph_path(rt.ort, hip_index),
            "torch": _torch_path(rt.torch, at, position, hip_index, torch_precisions),
            "opencl": _opencl_path(rt.opencl, at, position)}


def _at(devices: list[dict[str, Any]], at: tuple[str | None, int]) -> dict[str, Any] | None:
    """The device a runtime lists at a PCI slot and rank, if it lists addresses."""
    same = [d for d in devices if at[0] and slot(d.get("pci_bus_id")) == at[0]]
    return same[at[1]] if at[1] < len(same) else None


def _no(detail: str) -> dict[str, Any]:
    return {"ready": False, "detail": detail}


def _graph_path(ort: Mapping[str, Any], hip_index: int | None) -> dict[str, Any]:
    if ort.get("error"):
        return _no(ort["error"])
    if hip_index is None:
        return _no("the GPU is hidden from HIP (ROCR/HIP_VISIBLE_DEVICES)")
    reasons = []
    for provider in GRAPH_PROVIDERS:
        ready, reason = (ort.get("providers") or {}).get(provider, (False, None))
        if ready:
            return {"ready": True, "provider": provider, "device_id": hip_index,
                    "onnxruntime": ort.get("version"), "precisions": ["fp32"],
                    "detail": f"onnxruntime {ort.get('version')} {provider}"}
        if reason is not None:
            reasons.append(f"{provider} is not ready: {reason}")
    return _no("; ".join(reasons) or "onnxruntime has no MIGraphX or ROCm execution provider")


def _torch_path(torch: Mapping[str, Any], at: tuple[str | None, int], position: int,
                hip_index: int | None, precisions: tuple[str, ...]) -> dict[str, Any]:
    if torch.get("error"):
        return _no(torch["error"])
    if torch.get("unverified"):
        if hip_index is None:
            return _no("the GPU is hidden from HIP (ROCR/HIP_VISIBLE_DEVICES)")
        return {"ready": True, "hip_index": hip_index, "torch": torch.get("version"),
                "precisions": list(precisions), "unverified": torch["unverified"],
                "detail": f"torch {torch.get('version')} ({torch['unverified']})"}
    devices = list(torch.get("devices") or [])
    found = _at(devices, at)
    if found is None and not any(d.get("pci_bus_id") for d in devices):
        found = next((d for d in devices if d.get("index") == hip_index), None)
    if found is None:
        return _no(f"torch {torch.get('version')} lists no HIP device at "
                   f"{at[0] or f'position {position}'}")
    return {"ready": True, "hip_index": int(found["index"]), "torch": torch.get("version"),
            "hip": torch.get("hip"), "arch": found.get("arch"), "precisions": list(precisions),
            "detail": f"torch {torch.get('version')} (HIP {torch.get('hip')})"}


def _opencl_path(ocl: Mapping[str, Any], at: tuple[str | None, int],
                 position: int) -> dict[str, Any]:
    if ocl.get("error") or not ocl.get("platform"):
        return _no(ocl.get("error") or f"no '{ROCM_OPENCL_PLATFORM}' platform was found")
    devices = list(ocl.get("devices") or [])
    found = _at(devices, at)
    if found is None and not any(d.get("pci_bus_id") for d in devices) and \
            position < len(devices):
        found = devices[position]
    if found is None:
        return _no(f"the '{ocl.get('platform')}' platform lists no GPU at "
                   f"{at[0] or f'position {position}'}")
    if not found.get("ready"):
        return _no(f"OpenCL device '{found.get('name')}' cannot build the probe kernel: "
                   f"{found.get('why')}")
    return {"ready": True, "platform": ocl.get("platform"),
            "platform_index": int(ocl.get("platform_index", 0)),
            "device_index": int(found["device_index"]), "name": found.get("name"),
            "precisions": ["fp32"],
            "detail": f"{ocl.get('platform')} ({ocl.get('platform_version')})"}


# ---------------------------------------------------------------------- choice


def describe(path: str, status: Mapping[str, Any], gfx: str | None) -> str:
    """What a ready path runs on, in words."""
    target = f" ({gfx})" if gfx else ""
    if path == "migraphx":
        return (f"onnxruntime {status.get('onnxruntime')} {status.get('provider')} on HIP "
                f"device {status.get('device_id')}{target}, CPU fallback disabled")
    if path == "torch":
        return (f"torch {status.get('torch')} on HIP device {status.get('hip_index')}{target}"
                + (f" ({status['unverified']})" if status.get("unverified") else ""))
    return (f"OpenCL kernels on '{status.get('name')}' ({status.get('platform')}, platform "
            f"{status.get('platform_index')}, device {status.get('device_index')})")


def why_not(paths: Mapping[str, Mapping[str, Any]], precision: str = "fp32"
            ) -> Callable[[str], str]:
    """The readiness check of a device's ``paths`` (:func:`device_paths`) at ``precision``:
    ``""`` for a ready path computing at it, else why not."""
    def check(path: str) -> str:
        status = paths.get(path) or _no("not probed")
        if not status.get("ready"):
            return str(status.get("detail") or "not available")
        precisions = status.get("precisions") or ["fp32"]
        if precision not in precisions:
            return f"computes at {', '.join(precisions)} only, the plan asks {precision}"
        return ""

    return check


def choose_path(paths: Mapping[str, Mapping[str, Any]], forced: str | None = None,
                precision: str = "fp32", gfx: str | None = None) -> tuple[str, str]:
    """The path a compile takes, and the explanation shown in the plan.

    The first ready path of :data:`PATHS` that computes at ``precision`` is taken, and each
    path before it is named with the reason it was passed over: ``"torch 2.5.1+rocm6.2 on
    HIP device 0 (gfx942); graph path passed over: onnxruntime has no MIGraphX or ROCm
    provider"``. ``forced`` (options ``{"rocm": {"path": ...}}``) takes that path or none.
    Raises PathUnavailable with every reason when no path will do.
    """
    choice = CHOICE.choose(why_not(paths, precision), forced, precision=precision)
    return choice.path, choice.explain(describe(choice.path, paths[choice.path], gfx))


__all__ = ["CHOICE", "GRAPH_PROVIDERS", "INSTALL", "LABELS", "PATHS", "PROBE_BUDGET_S",
           "PathUnavailable", "ROCM_OPENCL_PLATFORM", "Runtimes", "budget", "choose_path",
           "describe", "detect", "device_paths", "hip_indexes", "opencl_child", "slot",
           "torch_build", "why_not"]
