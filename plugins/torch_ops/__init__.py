"""torch-cpu: the torch op table the GPU plugins share, on torch's CPU device.

What it is: :data:`kernels`, the torch op table of :mod:`backplane.runtimes.torch` (torch
implementations of the 49 core ONNX ops, opsets 13 to 21, and the three fused ops of the
``backplane`` domain, written once, device-agnostic), which ``cuda-tensorrt`` and ``rocm``
run on a torch ``cuda`` device wherever their graph compilers leave a node over, through the
same adapter's ``compile_on``. The kernels are in :mod:`backplane.runtimes.torch_ops`.

How it is verified: ``torch-cpu`` runs the same table on torch's CPU device, so the
conformance suite checks on every commit, without a GPU, the code a GPU runs. It is a
verification backend, not a CPU backend to plan on (openvino-cpu and onnxruntime are):
its probe lists a device only when ``BACKPLANE_TORCH_CPU=1``.

Importing this module imports neither torch nor numpy: the kernels load on first call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backplane import API_VERSION, Backend, CompileOptions, Device, Executable
from backplane import __version__ as _backplane_version
from backplane.sdk.errors import DeviceUnavailable
from backplane.runtimes.torch import TorchExecutable, compile_on, kernels, torch_build

#: The environment variable that makes torch-cpu list torch's CPU device.
ENABLE_ENV = "BACKPLANE_TORCH_CPU"
#: How to install the torch this table is verified with.
INSTALL_HINT = "pip install torch==2.13.0"


class TorchCPUBackend(Backend):
    """The torch op table on torch's CPU device: how the GPU plugins' kernels are verified."""

    name = "torch-cpu"
    api_version = API_VERSION
    version = _backplane_version
    priority = 50  # below opencl (100), above the reference
    kernels = kernels
    known_failures = str(Path(__file__).with_name("known_failures.toml"))

    def probe(self) -> list[Device]:
        """torch's CPU device, only with ``BACKPLANE_TORCH_CPU=1`` and torch installed.

        torch is not imported (package metadata says whether it is installed and which
        build it is), so listing devices stays cheap with or without the variable.
        """
        if os.environ.get(ENABLE_ENV) != "1":
            raise DeviceUnavailable(
                f"torch-cpu runs the GPU plugins' torch op table on the CPU to verify it, and "
                f"lists a device only when {ENABLE_ENV}=1; for CPU inference plan on "
                f"openvino-cpu or onnxruntime")
        build = torch_build()
        if not build["installed"]:
            raise DeviceUnavailable(f"torch is not installed; {INSTALL_HINT} (the CPU build "
                                    f"is enough for torch-cpu)")
        return [Device(name=f"torch {build['version']} CPU", kind="cpu",
                       properties={"torch_device": "cpu", "torch": build["version"],
                                   "torch_build": build["build"]})]

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """The table's node-by-node runner on torch's CPU device."""
        version = device.properties.get("torch", "")
        return compile_on(graph, device, options, "cpu", kernels,
                          path=f"torch {version} op table on cpu, {options.precision}")


__all__ = ["TorchCPUBackend", "TorchExecutable", "compile_on", "kernels", "torch_build"]
