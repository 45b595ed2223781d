"""What a benchmark report says about the machine it ran on: the CPU and the versions."""

from __future__ import annotations

import platform

import numpy as np

import backplane as bp


def versions() -> dict[str, str]:
    """Python, numpy, backplane and each runtime's version ("absent" where not installed)."""
    out = {"python": platform.python_version(), "numpy": np.__version__,
           "backplane": bp.__version__}
    for module in ("openvino", "onnxruntime", "pyopencl", "onnx"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent runtimes are listed as such
            out[module] = "absent"
    return out


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
