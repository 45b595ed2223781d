"""backplane: run an ML model on the best hardware this machine has, and say why.

::

    import backplane as bp
    s = bp.Session("model.onnx")          # devices="auto", policy="latency", precision="fp32"
    out = s.run({"x": x})
    print(s.plan.explain())

``import backplane`` is cheap: numpy, onnx and every vendor runtime are imported only when
a model is loaded or a backend needs them.
"""

from __future__ import annotations

from typing import Any

from backplane.sdk.contract import (API_CHANGES, API_VERSION, DEVICE_KINDS, MIN_API_VERSION,
                                    PRECISIONS, AttributeRule, Backend, Capabilities,
                                    CompileOptions, Device, Executable, LazyOps, OpSupport, Verdict)
from backplane.sdk.errors import (BackendError, BackplaneError, CompileError, ConformanceError,
                                  DeadlineError, DeviceNotFoundError, DeviceUnavailable,
                                  ExecutionError, InputError, ModelError, OverloadError,
                                  PluginDeprecationWarning, PluginLoadError, RequestError,
                                  UnsupportedError, VerificationError)
from backplane.sdk.hookspecs import hookimpl
from backplane.sdk.kerneltable import KernelTable
from backplane.engine.registry import devices, plugin_records, registry
from backplane.sdk.hooks import plugin_manager

__version__ = "0.1.0"

_LAZY = {"Session": ".engine.session", "load_model": ".model.intake",
         "Plan": ".engine.plan", "Candidate": ".engine.plan",
         "Graph": ".model.graph", "Constraints": ".engine.scheduler",
         "plan_model": ".engine.scheduler", "diagnose": ".cli.doctor",
         "Batcher": ".engine.batcher"}


def __getattr__(name: str) -> Any:
    # Session and model intake pull in numpy and onnx; load them on first use only.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backplane' has no attribute '{name}'")


__all__ = [
    "API_CHANGES", "API_VERSION", "DEVICE_KINDS", "MIN_API_VERSION", "PRECISIONS", "AttributeRule", "Backend", "BackendError",
    "Batcher", "DeadlineError", "OverloadError",
    "BackplaneError", "Candidate", "Capabilities", "CompileError", "CompileOptions", "ConformanceError",
    "Constraints", "Device", "DeviceNotFoundError", "DeviceUnavailable", "Executable", "ExecutionError",
    "Graph", "InputError", "KernelTable", "LazyOps", "ModelError", "OpSupport", "Plan", "PluginDeprecationWarning", "PluginLoadError",
    "RequestError", "Session", "UnsupportedError", "Verdict", "VerificationError", "devices", "diagnose", "hookimpl", "load_model",
    "plan_model",
    "plugin_manager", "plugin_records", "registry",
]
