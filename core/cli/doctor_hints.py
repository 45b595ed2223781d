"""``backplane doctor``'s hints: what to install, set or look at, derived from the doctor's
rows, the hardware probes' notes and facts about this machine.

:func:`derive_hints` is a pure function of its arguments, so every hint is testable on
injected facts; :func:`machine_facts` gathers the facts (device nodes, installed packages,
settings) without importing any vendor runtime.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backplane.cli.doctor_trial import FAIL
from backplane.engine.isolation import NOT_IMPORTED

#: Python packages whose presence decides hints (imported by none of this: only looked up).
PACKAGES = ("torch", "cupy", "tensorrt", "openvino", "onnxruntime", "pyopencl")
#: The pip extra that brings each CPU backend's runtime.
CPU_EXTRAS = {"openvino-cpu": "openvino", "onnxruntime": "onnxruntime", "opencl": "opencl"}


@dataclass(frozen=True)
class Hint:
    """Something to install, set or look at; ``level`` is ``action`` or ``info``."""

    about: str
    text: str
    level: str = "action"

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def machine_facts(probed: Any = None) -> dict[str, Any]:
    """What hints read about this machine: device nodes, installed packages, settings.

    ``probed`` is a ``probe_all()`` result (its hardware records name the GPUs found).
    Looks packages up without importing them.
    """
    import importlib.util
    import platform

    def spec(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    hardware = list(getattr(probed, "hardware", []) or [])
    nvidia = "/dev/nvidiactl" if Path("/dev/nvidiactl").exists() else (
        "nvidia-smi" if shutil.which("nvidia-smi") else None)
    amd = "/dev/kfd" if Path("/dev/kfd").exists() else None
    accel = sorted(str(p) for p in Path("/dev/accel").glob("accel*")) \
        if Path("/dev/accel").is_dir() else []
    return {
        "arch": platform.machine(),
        "nvidia_gpu": nvidia or next((h.name for h in hardware if h.vendor == "nvidia"), None),
        "amd_gpu": amd or next((h.name for h in hardware
                                if h.kind == "gpu" and h.vendor == "amd"), None),
        "accel_nodes": accel,
        "packages": {name: spec(name) for name in PACKAGES},
        "env": {k: os.environ[k] for k in ("BACKPLANE_PLUGINS", "BACKPLANE_DISABLE_PLUGINS",
                                           "BACKPLANE_TORCH_CPU") if k in os.environ},
    }


def derive_hints(rows: list[dict[str, Any]], notes: list[str], facts: dict[str, Any],
                 deprecations: dict[str, str] | None = None) -> list[Hint]:
    """What to install or set, from the doctor's rows, the probe notes and machine facts.

    A pure function of its arguments: ``rows`` as
    :meth:`backplane.cli.doctor.Row.to_dict` gives them, ``notes`` as
    ``probe_all().notes``, ``facts`` as :func:`machine_facts`, ``deprecations`` as backend
    name -> the registry's deprecation text. A GPU or NPU backend without a device
    is only worth a hint where this machine has that hardware.
    """
    hints: list[Hint] = []
    by_name = {r["backend"]: r for r in rows}
    packages = facts.get("packages", {})

    def state(name: str) -> str | None:
        return (by_name.get(name) or {}).get("verdict")

    def why(name: str) -> str:
        r = by_name.get(name) or {}
        return r.get("reason") or "not installed"

    unready = ("NO DEVICE", "FAILED", "DISABLED", None)
    nvidia = facts.get("nvidia_gpu")
    if nvidia and state("cuda-tensorrt") in unready:
        if not (packages.get("torch") or packages.get("cupy") or packages.get("tensorrt")):
            text = (f"an NVIDIA GPU is present ({nvidia}) but no CUDA runtime package: "
                    "pip install 'backplane-hal[cuda]' (or 'backplane-hal[tensorrt]' for "
                    "TensorRT too)")
        else:
            text = (f"an NVIDIA GPU is present ({nvidia}) but cuda-tensorrt lists no device: "
                    f"{why('cuda-tensorrt')}")
        hints.append(Hint("cuda-tensorrt", text))
    for note in notes:
        if note.startswith("NVIDIA device nodes exist but"):
            hints.append(Hint("nvidia", f"{note}: check the driver (nvidia-smi must list the "
                                        "GPU); pip install nvidia-ml-py for NVML"))
    amd = facts.get("amd_gpu")
    if amd and state("rocm") in unready:
        hints.append(Hint("rocm", f"an AMD GPU is present ({amd}) but rocm lists no device: "
                                  f"{why('rocm')} (docs/backends/rocm.md)"))
    accel = facts.get("accel_nodes") or []
    for note in notes:
        if "NPU node exists but OpenVINO does not list it" in note:
            node = accel[0] if accel else "/dev/accel"
            hints.append(Hint("npu", (
                f"an NPU device node exists ({node}) but OpenVINO does not list it: install "
                "the NPU driver (Intel's linux-npu-driver: the NPU compiler and Level Zero) "
                "and check that the user may open the node (group render)")
                + ("" if packages.get("openvino") else
                   "; OpenVINO itself is missing: pip install 'backplane-hal[openvino]'")))
    if accel and state("npu") in ("NO DEVICE", "FAILED") and not any(
            h.about == "npu" for h in hints):
        hints.append(Hint("npu", f"an NPU device node exists ({accel[0]}) but npu lists no "
                                 f"device: {why('npu')}"))
    for note in notes:
        if note.startswith("no OpenCL probe: pyopencl is not installed"):
            hints.append(Hint("opencl", "pyopencl is not installed: pip install "
                                        "'backplane-hal[opencl]' (with PoCL, OpenCL runs on "
                                        "this CPU)"))
        elif note.startswith(("OpenCL has no platform", "OpenCL platforms list no device")):
            hints.append(Hint("opencl", f"{note}: pip install 'backplane-hal[opencl]' (PoCL's "
                                        "CPU platform), or install the GPU vendor's OpenCL "
                                        "driver (ICD)"))
    for name, extra in CPU_EXTRAS.items():
        if state(name) == "NO DEVICE" and not any(h.about == name for h in hints):
            hints.append(Hint(name, f"{name} has no device: {why(name)}"
                              + ("" if f"[{extra}]" in why(name) else
                                 f" (pip install 'backplane-hal[{extra}]')")))
    arch = str(facts.get("arch", "")).lower()
    if arch in ("aarch64", "arm64") and state("arm-neon") in ("NO DEVICE", "FAILED"):
        hints.append(Hint("arm-neon", f"this is an ARM CPU but arm-neon lists no device: "
                                      f"{why('arm-neon')}"))
    if state("torch-cpu") == "NO DEVICE" and "BACKPLANE_TORCH_CPU" not in facts.get("env", {}):
        hints.append(Hint("torch-cpu", "torch-cpu is off: BACKPLANE_TORCH_CPU=1 backplane "
                                       "doctor checks the GPU backends' torch op table on the "
                                       "CPU (for verification, not for inference)", "info"))
    for r in rows:
        name = r["backend"]
        if r.get("side_effects"):
            hints.append(Hint(name, f"{name} changes the process that imports it: "
                                    f"{'; '.join(r['side_effects'])}. It is loaded; a plugin "
                                    "should leave process state alone (tell its maintainers)"))
        if r["verdict"] == "FAILED":
            hints.append(Hint(name, _failed_hint(name, r.get("reason") or "",
                                                 r.get("distribution"))))
        elif r["verdict"] == FAIL:
            hints.append(Hint(name, (
                f"{name} fails on {r['device']} ({r.get('stage') or 'error'}): "
                f"`backplane conformance run --backend {name} --device {r['device']} -j 2` "
                "checks the contract and every op; sessions re-plan past a failing device "
                f"(strict=True raises), BACKPLANE_DISABLE_PLUGINS={name} keeps it out")))
    disabled = sorted(r["backend"] for r in rows if r["verdict"] == "DISABLED")
    if disabled:
        hints.append(Hint("settings", f"disabled by BACKPLANE_PLUGINS / BACKPLANE_DISABLE_PLUGINS"
                                      f": {', '.join(disabled)} (unset them to check these too)",
                          "info"))
    for name, text in sorted((deprecations or {}).items()):
        if text:
            hints.append(Hint(name, text))
    return hints


def _failed_hint(name: str, reason: str, distribution: str | None) -> str:
    where = f" (from {distribution})" if distribution else ""
    skip = f"BACKPLANE_DISABLE_PLUGINS={name} skips it"
    if "ModuleNotFoundError" in reason and "No module named" in reason:
        module = reason.split("No module named", 1)[1].strip().strip("'\"")
        return (f"{name}{where} failed to import: module '{module}' is missing; install it "
                f"(see the plugin's documentation for its extra), or {skip}")
    if "backend API" in reason:
        return f"{name}{where}: {reason}"
    if reason.startswith("probe did not return"):
        return (f"{name}{where}: its probe hangs (a wedged driver or device?); {skip}; report "
                "it to the plugin's maintainers")
    if NOT_IMPORTED in reason:
        return (f"{name}{where} {reason.replace(NOT_IMPORTED, '')}, so it is never imported "
                f"(report it to its maintainers); after an update `backplane plugins "
                f"--recheck` checks it again; {skip}")
    return (f"{name}{where} failed: {reason}. `BACKPLANE_DEBUG=1 backplane plugins` shows the "
            f"traceback; {skip}")
