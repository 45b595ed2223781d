"""NVIDIA's management library (NVML, through nvidia-ml-py) and, without it, nvidia-smi.

What the cuda-tensorrt plugin and core's hardware probe both read of each NVIDIA GPU: its
name, PCI ids and bus id, memory, compute capability, driver version, the newest CUDA the
driver supports, the SM clock. :func:`gpus` returns these as plain records; :func:`facts`
turns a record into the facts hwdb match rules read.

pynvml is imported only after an NVIDIA device node or nvidia-smi was found, so a machine
without an NVIDIA GPU pays for neither. A driver that fails mid-query raises (the callers
record why: the probe's note, or the plugin's records left empty).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from backplane.sdk import hostfacts

#: How long nvidia-smi may take before its answer is ignored.
TOOL_TIMEOUT_S = 10.0
#: The device node the NVIDIA driver creates when it is loaded.
NVIDIACTL = "/dev/nvidiactl"


def present() -> bool:
    """Whether this machine shows an NVIDIA driver: its device node, or nvidia-smi."""
    return Path(NVIDIACTL).exists() or shutil.which("nvidia-smi") is not None


def gpus() -> tuple[list[dict[str, Any]], str] | None:
    """(each GPU as a record, the source: ``"nvml"`` or ``"nvidia-smi"``), from NVML, else
    nvidia-smi; None when no NVIDIA driver is present or neither answered.

    A record has index, name, pci_bus_id, pci_vendor_id, pci_device_id, memory_mib,
    compute_capability, driver_version and max_sm_clock_mhz (NVML adds
    cuda_driver_version), None where the source does not say.
    """
    if not present():
        return None
    found = _nvml()
    if found is not None:
        return found, "nvml"
    text = _smi(f"--query-gpu={','.join(hostfacts.NVIDIA_SMI_QUERY)}",
                "--format=csv,noheader,nounits")
    if text is not None:
        return hostfacts.parse_nvidia_smi_csv(text), "nvidia-smi"
    return None


def facts(record: dict[str, Any]) -> dict[str, Any]:
    """A GPU record's facts as hwdb match rules read them: the fields it has but the name,
    and memory_gib (from memory_mib)."""
    out = {k: v for k, v in record.items() if v is not None and k != "name"}
    if record.get("memory_mib"):
        out["memory_gib"] = round(record["memory_mib"] / 1024, 1)
    return out


def _smi(*args: str) -> str | None:
    """nvidia-smi's stdout, or None when it is absent, fails or takes too long."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _nvml() -> list[dict[str, Any]] | None:
    """Every GPU as NVML lists it; None when nvidia-ml-py is absent or NVML does not start."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        out = []
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        try:  # the newest CUDA this driver supports: 12040 -> "12.4"
            cuda = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
            cuda_version = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        except Exception:
            cuda_version = None
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            pci = pynvml.nvmlDeviceGetPciInfo(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                sm_clock = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
            except Exception:
                sm_clock = None
            ids = int(pci.pciDeviceId)
            out.append({
                "index": i, "name": _text(pynvml.nvmlDeviceGetName(h)),
                "pci_bus_id": _text(pci.busId), "pci_vendor_id": f"0x{ids & 0xFFFF:04x}",
                "pci_device_id": f"0x{ids >> 16:04x}", "memory_mib": int(mem.total) // 2**20,
                "compute_capability": f"{major}.{minor}", "driver_version": driver,
                "cuda_driver_version": cuda_version, "max_sm_clock_mhz": sm_clock})
        return out
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)
