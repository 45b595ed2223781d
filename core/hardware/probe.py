"""Finding this machine's hardware: CPUs, NVIDIA and AMD GPUs, Intel NPUs, OpenCL devices.

Each probe reads what the operating system and the vendor's own tools say, through the
parsers of :mod:`backplane.sdk.hostfacts` (tested on recorded real outputs) and, for NVIDIA,
the NVML adapter the cuda-tensorrt plugin shares (:mod:`backplane.runtimes.nvml`), and returns
:class:`Hardware` records of plain facts. Probes never raise: a missing tool, driver or
package means that kind of device is simply not listed, and ``probe_all`` records why in
its notes. Nothing here imports a vendor runtime unless that vendor's device node exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backplane.runtimes import nvml
from backplane.sdk import hostfacts
from backplane.sdk.child import run_child

#: How long a vendor tool may take before its answer is ignored.
TOOL_TIMEOUT_S = 10.0
#: How long the child that lists OpenCL platforms may take.
OPENCL_CHILD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Hardware:
    """One physical device as probed: kind, name, vendor, the probe it came from, and facts.

    ``facts`` holds what match rules read: ``pci_vendor_id``/``pci_device_id``,
    ``compute_capability``, ``memory_gib``, ``gfx_target``, CPU ``vendor_id``/``family``/
    ``model``/``parts``/``flags``/``cores``/``clock_mhz``, ``full_device_name``,
    ``opencl_name`` ...
    """

    kind: str
    name: str
    vendor: str
    source: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """A stable id of this device model and configuration (not of the unit)."""
        keys = ("arch", "vendor_id", "family", "model", "cpu_part", "cores", "pci_vendor_id",
                "pci_device_id", "compute_capability", "gfx_target", "memory_gib")
        ident = {"kind": self.kind, "name": self.name,
                 **{k: self.facts[k] for k in keys if k in self.facts}}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
        return f"{self.kind}-{digest.hexdigest()[:16]}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"kind": self.kind, "name": self.name, "vendor": self.vendor,
                "source": self.source, "fingerprint": self.fingerprint,
                "facts": {k: (sorted(v) if isinstance(v, (set, frozenset)) else v)
                          for k, v in self.facts.items()}}


@dataclass
class ProbeResult:
    """Every device found, and a note per probe that found nothing (and why)."""

    hardware: list[Hardware] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_probed: ProbeResult | None = None
_probe_lock = threading.Lock()


def probe_all(refresh: bool = False) -> ProbeResult:
    """Run every probe, once per process (``refresh`` probes again); never raises."""
    global _probed
    with _probe_lock:
        if _probed is not None and not refresh:
            return _probed
        result = ProbeResult()
        for probe in (probe_cpu, probe_nvidia, probe_amd, probe_intel_npu, probe_opencl):
            try:
                found, note = probe()
            except Exception as exc:  # a probe bug must not hide the other devices
                found, note = [], f"{probe.__name__} failed: {type(exc).__name__}: {exc}"
            if probe is probe_opencl:
                found = _merge_opencl(result.hardware, found)
            result.hardware += found
            if note:
                result.notes.append(note)
        _probed = result
        return result


def _merge_opencl(known: list[Hardware], found: list[Hardware]) -> list[Hardware]:
    """OpenCL devices that are views of devices already found become facts of those.

    An OpenCL CPU device is the host CPU (its name feeds ``opencl`` match rules); an OpenCL
    GPU of a vendor another probe already listed is that GPU. The rest are new devices.
    """
    new = []
    for hw in found:
        same = [k for k in known if k.kind == hw.kind and (
            hw.kind == "cpu" or k.vendor.lower() in hw.vendor.lower())]
        if same:
            same[0].facts.setdefault("opencl_name", hw.facts["opencl_name"])
            same[0].facts.setdefault("opencl_platform", hw.facts["opencl_platform"])
        else:
            new.append(hw)
    return new


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _tool(*argv: str) -> str | None:
    """A vendor tool's stdout, or None when absent, failing or too slow."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


# -- CPU -------------------------------------------------------------------------------------


def probe_cpu(cpuinfo: str | None = None, sysfs: str = "/sys/devices/system/cpu"
              ) -> tuple[list[Hardware], str | None]:
    """The host CPU from /proc/cpuinfo, its caches and clock from sysfs."""
    import platform

    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    info = hostfacts.parse_cpuinfo(text) if text else {}
    facts: dict[str, Any] = {k: info.get(k) for k in (
        "arch", "vendor_id", "model_name", "family", "model", "stepping", "cpu_part",
        "cpu_implementer", "physical_cores", "sockets") if info.get(k) is not None}
    facts["arch"] = facts.get("arch") or platform.machine()
    facts["flags"] = sorted(info.get("flags") or [])
    facts["parts"] = list(info.get("parts") or ([info["model_name"]] if info.get("cpu_part")
                                                 is not None and info.get("model_name") else []))
    facts["logical_cpus"] = info.get("logical_cpus") or os.cpu_count() or 1
    usable = hostfacts.usable_cores()
    facts["usable_logical_cpus"] = usable
    # Peak rates count physical cores: SMT siblings share the FMA units.
    physical = info.get("physical_cores")
    smt = facts["logical_cpus"] / physical if physical else 1
    facts["cores"] = max(1, round(usable / smt))
    max_khz = _read(f"{sysfs}/cpu0/cpufreq/cpuinfo_max_freq")
    clock = int(max_khz) / 1000 if max_khz and max_khz.strip().isdigit() else info.get("mhz")
    if clock:
        facts["clock_mhz"] = round(float(clock), 1)
        facts["clock_source"] = "cpufreq max" if max_khz else "/proc/cpuinfo MHz"
    facts.update({k: v for k, v in hostfacts.parse_cache_sysfs(f"{sysfs}/cpu0/cache").items()
                  if v is not None})
    name = info.get("model_name") or platform.processor() or facts["arch"]
    return [Hardware("cpu", name, str(facts.get("vendor_id") or "unknown"), "cpuinfo",
                     facts)], None


# -- NVIDIA ----------------------------------------------------------------------------------


def probe_nvidia() -> tuple[list[Hardware], str | None]:
    """NVIDIA GPUs through NVML (nvidia-ml-py), else nvidia-smi (:mod:`backplane.runtimes.nvml`),
    else torch."""
    if not nvml.present():
        return [], "no NVIDIA GPU: no /dev/nvidiactl and no nvidia-smi"
    found = nvml.gpus()
    if found is not None:
        records, source = found
        return [_nvidia_hw(g, source) for g in records], None
    torch_found = _torch_cuda()
    if torch_found:
        return torch_found, None
    return [], "NVIDIA device nodes exist but neither NVML, nvidia-smi nor torch answered"


def _torch_cuda() -> list[Hardware]:
    """NVIDIA GPUs as a CUDA build of torch sees them, when torch is installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return []
    try:
        import torch

        if not torch.cuda.is_available() or torch.version.hip:
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(_nvidia_hw({
                "index": i, "name": p.name, "memory_mib": p.total_memory // 2**20,
                "compute_capability": f"{p.major}.{p.minor}",
                "units": p.multi_processor_count}, "torch"))
        return out
    except Exception:
        return []


def _nvidia_hw(g: dict[str, Any], source: str) -> Hardware:
    return Hardware("gpu", g.get("name") or "NVIDIA GPU", "nvidia", source, nvml.facts(g))


# -- AMD -------------------------------------------------------------------------------------


def probe_amd(kfd: str = "/sys/class/kfd/kfd/topology/nodes") -> tuple[list[Hardware], str | None]:
    """AMD GPUs from the KFD topology in sysfs, named by amd-smi or rocm-smi when present."""
    nodes = sorted(Path(kfd).glob("*/properties")) if Path(kfd).is_dir() else []
    gpus = [p for p in (hostfacts.parse_kfd_properties(_read(n) or "") for n in nodes)
            if p.get("is_gpu")]
    if not gpus:
        return [], "no AMD GPU: no KFD GPU node in sysfs"
    names: list[dict[str, Any]] = []
    text = _tool("amd-smi", "static", "--json")
    if text:
        names = hostfacts.parse_amd_smi_static_json(text)
    elif (text := _tool("rocm-smi", "--showproductname")):
        names = hostfacts.parse_rocm_smi(text)
    out = []
    for i, node in enumerate(gpus):
        named = next((n for n in names if n.get("gfx_target") == node.get("gfx_target")), {})
        name = named.get("market_name") or named.get("card_series") or \
            f"AMD GPU {node.get('gfx_target', '')}".strip()
        facts = {k: node[k] for k in ("gfx_target", "pci_vendor_id", "pci_device_id",
                                      "simd_count", "max_engine_clk_fcompute") if k in node}
        if "simd_count" in node and node.get("simd_per_cu"):
            facts["units"] = node["simd_count"] // node["simd_per_cu"]
        if node.get("max_engine_clk_fcompute"):
            facts["clock_mhz"] = node["max_engine_clk_fcompute"]
        bus = hostfacts.kfd_pci_bus_id(node)
        if bus:  # links the rocm backend's devices to this record (match.hardware_for)
            facts["pci_bus_id"] = bus
        if named.get("vram_mib"):
            facts["memory_gib"] = round(named["vram_mib"] / 1024, 1)
        out.append(Hardware("gpu", name, "amd", "kfd" + ("+amd-smi" if named else ""),
                            {"index": i, **facts}))
    return out, None


# -- Intel NPU -------------------------------------------------------------------------------


def probe_intel_npu(accel: str = "/sys/class/accel") -> tuple[list[Hardware], str | None]:
    """Intel NPUs: /dev/accel nodes driven by intel_vpu, named by OpenVINO when installed."""
    nodes = sorted(Path(accel).glob("accel*")) if Path(accel).is_dir() else []
    npus = []
    for node in nodes:
        driver = Path(node, "device", "driver")
        if driver.exists() and driver.resolve().name == "intel_vpu":
            facts = {"pci_vendor_id": (_read(node / "device" / "vendor") or "").strip() or None,
                     "pci_device_id": (_read(node / "device" / "device") or "").strip() or None}
            npus.append({k: v for k, v in facts.items() if v})
    if not npus:
        return [], "no Intel NPU: no /dev/accel node driven by intel_vpu"
    full_name = None
    try:
        import openvino

        core = openvino.Core()
        if "NPU" in core.available_devices:
            full_name = core.get_property("NPU", "FULL_DEVICE_NAME")
    except Exception:
        pass
    note = None if full_name else "an Intel NPU node exists but OpenVINO does not list it"
    return [Hardware("npu", full_name or "Intel NPU", "intel", "accel",
                     {**f, **({"full_device_name": full_name} if full_name else {})})
            for f in npus], note


# -- OpenCL ----------------------------------------------------------------------------------


def probe_opencl() -> tuple[list[Hardware], str | None]:
    """Every OpenCL device of every platform, through pyopencl when installed.

    The platforms are listed in a short child process: loading an OpenCL driver starts its
    worker threads (which contend with other runtimes for the cores) and some print
    warnings, and a process that only plans must not pay for that; and a process's first
    OpenCL call fixes which drivers its ICD loader sees, which is the opencl plugin's call
    to make (with the drivers pip installed beside the system's).
    """
    code = ("import json; from backplane.hardware.probe import opencl_records; "
            "found, note = opencl_records(); "
            "print(json.dumps([[h.kind, h.name, h.vendor, h.source, h.facts] for h in found]"
            " + [note]))")
    found = run_child(code, timeout_s=OPENCL_CHILD_TIMEOUT_S, what="the OpenCL listing")
    if not isinstance(found.last, list) or not found.last:
        return [], f"OpenCL probe failed: {found.reason or f'unexpected answer {found.last!r}'}"
    *records, note = found.last
    return [Hardware(*r) for r in records], note


def opencl_records() -> tuple[list[Hardware], str | None]:
    """:func:`probe_opencl` in this process (what its child runs)."""
    try:
        import pyopencl as cl
    except ImportError:
        return [], "no OpenCL probe: pyopencl is not installed"
    out = []
    try:
        platforms = cl.get_platforms()
    except Exception as exc:
        return [], f"OpenCL has no platform: {exc}"
    kinds = {cl.device_type.CPU: "cpu", cl.device_type.GPU: "gpu",
             cl.device_type.ACCELERATOR: "accelerator"}
    for p in platforms:
        for d in p.get_devices():
            kind = next((k for t, k in kinds.items() if d.type & t), "accelerator")
            out.append(Hardware(kind, d.name.strip(), d.vendor.strip(), "opencl", {
                "opencl_name": d.name.strip(), "opencl_platform": p.name.strip(),
                "units": d.max_compute_units, "clock_mhz": d.max_clock_frequency,
                "memory_gib": round(d.global_mem_size / 2**30, 1),
                "driver_version": d.driver_version}))
    return out, None if out else "OpenCL platforms list no device"
