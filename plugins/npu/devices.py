"""Finding NPUs: device nodes, OpenVINO's NPU device, ONNX Runtime's QNN and VitisAI providers.

Cheap first: the kernel's accel nodes are read from sysfs (no import); OpenVINO is asked
only when a node driven by ``intel_vpu`` exists (or on Windows, which has no sysfs), and
ONNX Runtime only when an installed build carries a QNN or VitisAI provider (package
metadata and provider libraries, no import). Both are asked in a child process bounded by
the probe deadline, and their readiness is a one-node model compiled and run on the NPU.
Each answer is kept for the life of the process.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backplane.runtimes.onnxruntime import session_options
from backplane.sdk.child import run_child
from backplane.sdk.compilepath import CompilePaths
from backplane.sdk.env import probe_budget_s

#: Where the kernel lists accelerator device nodes (/dev/accel/accelN).
SYS_ACCEL = "/sys/class/accel"
#: Kernel drivers of NPU nodes -> the vendor whose NPU it is.
NPU_DRIVERS = {"intel_vpu": "Intel", "amdxdna": "AMD"}
#: ONNX Runtime's NPU providers: vendor, the onnxruntime build that has it, library stem.
ORT_PROVIDERS = {
    "QNNExecutionProvider": ("Qualcomm", "onnxruntime-qnn", "qnn"),
    "VitisAIExecutionProvider": ("AMD", "onnxruntime-vitisai", "vitisai"),
}
#: What each NPU path computes at (OpenVINO's NPU: fp16 compute, int8 quantized models;
#: QNN's HTP: fp16 on v73 and later, int8/uint8 QDQ; VitisAI: int8 QDQ models).
PRECISIONS = {"openvino": ("fp16", "int8"), "QNNExecutionProvider": ("fp16", "int8"),
              "VitisAIExecutionProvider": ("int8",)}
#: Provider options every session on that provider gets: the HTP (the NPU), not QNN's
#: CPU backend.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"QNNExecutionProvider": {"backend_type": "htp"},
                                               "VitisAIExecutionProvider": {}}
#: Seconds a probe child may take at most (less under a shorter BACKPLANE_PROBE_TIMEOUT_S).
PROBE_BUDGET_S = 4.0
#: The paths, in the order their devices are listed (:mod:`backplane.sdk.compilepath`):
#: OpenVINO's NPU device, then ONNX Runtime's NPU providers. Each ready path is a device of
#: its own, so a compile takes its device's path (``properties["path"]``): none is chosen
#: among others, forced, or fallen through to.
PATHS = CompilePaths("npu", {"openvino": "OpenVINO NPU", **{p: p for p in ORT_PROVIDERS}})

_lock = threading.Lock()
_answers: dict[str, Any] = {}


def accel_nodes(root: str | os.PathLike = SYS_ACCEL) -> list[dict[str, str]]:
    """The accel nodes under ``root`` whose driver drives an NPU: ``{"node", "driver",
    "vendor", "pci_vendor_id", "pci_device_id", "pci_bus_id"}`` (what sysfs has)."""
    base = Path(root)
    out = []
    for node in sorted(base.glob("accel*")) if base.is_dir() else []:
        device = node / "device"
        try:
            driver = (device / "driver").resolve().name if (device / "driver").exists() else ""
        except OSError:
            driver = ""
        if driver not in NPU_DRIVERS:
            continue
        facts = {"node": f"/dev/accel/{node.name}", "driver": driver,
                 "vendor": NPU_DRIVERS[driver]}
        for key, fname in (("pci_vendor_id", "vendor"), ("pci_device_id", "device")):
            try:
                facts[key] = (device / fname).read_text().strip()
            except OSError:
                pass
        try:
            facts["pci_bus_id"] = device.resolve().name
        except OSError:
            pass
        out.append(facts)
    return out


def probe_budget() -> float:
    """Seconds a child may take: :data:`PROBE_BUDGET_S`, or 90% of the registry's deadline."""
    return probe_budget_s(cap=PROBE_BUDGET_S, floor=0.5)


def _ask_child(entry: str, args: list[str], what: str) -> list[dict[str, Any]]:
    """Run ``backplane.plugins.npu.devices.ENTRY(*args)`` in a probe child
    (:func:`backplane.sdk.child.run_child`); its JSON lines, or one ``{"error"}`` line
    saying why there is none."""
    code = f"import sys; from backplane.plugins.npu.devices import {entry}; {entry}(sys.argv[1:])"
    found = run_child(code, *args, timeout_s=probe_budget(), what=what)
    lines = [x for x in found.lines if isinstance(x, dict)]
    return lines or [{"error": found.reason or f"{what} gave no answer"}]


# ---------------------------------------------------------------------- readiness

def why_not(path: str, openvino: Mapping[str, Any] | None,
            ort: Mapping[str, Mapping[str, Any]], intel: list[dict[str, str]]) -> str | None:
    """The readiness check of a path of :data:`PATHS`: ``""`` when ready, else why not;
    None for an ONNX Runtime provider that no installed build carries (not mentioned).

    ``openvino`` is :func:`openvino_npu`'s answer (None: not asked, there being no Intel
    NPU node), ``ort`` :func:`ort_npus`'s, ``intel`` the Intel NPU nodes."""
    if path == "openvino":
        if openvino is None:
            return "no Intel NPU: no /dev/accel node driven by intel_vpu"
        where = f"the Intel NPU at {intel[0]['node']}: " if intel else ""
        return "" if openvino.get("ok") else where + str(
            openvino.get("reason") or "OpenVINO's NPU is not ready")
    answer = ort.get(path)
    if answer is None:
        return None
    return "" if answer.get("ready") else f"{path}: {answer.get('reason') or 'not ready'}"


def no_ort_reason(nodes: list[dict[str, str]]) -> str:
    """Why no ONNX Runtime NPU provider is offered: what is installed, what each NPU needs,
    and an AMD XDNA node among ``nodes`` if there is one."""
    installed, _ = ort_builds()
    amd = [n for n in nodes if n["driver"] == "amdxdna"]
    return ("no QNN or VitisAI build of onnxruntime (installed: "
            f"{installed or 'none'}; Snapdragon X NPUs need onnxruntime-qnn, AMD XDNA "
            "NPUs Ryzen AI Software's onnxruntime-vitisai)"
            + (f"; an AMD XDNA NPU node is present at {amd[0]['node']}" if amd else ""))


# ---------------------------------------------------------------------- OpenVINO

def openvino_npu() -> dict[str, Any]:
    """OpenVINO's answer about its NPU device, once per process: ``{"ok": True, "name",
    "openvino", "architecture", "driver_version", "compiler_version", "memory_bytes",
    "optimization_capabilities"}`` when the NPU is listed and a one-node model compiled
    and ran on it, else ``{"ok": False, "reason"}``."""
    with _lock:
        if "openvino" in _answers:
            return _answers["openvino"]
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        answer = {"ok": False, "reason": "openvino is not installed: pip install "
                                         "'backplane-hal[npu]'"}
    else:
        answer = _ask_child("_openvino_child", [], "the OpenVINO NPU probe")[-1]
        if "error" in answer:
            answer = {"ok": False, "reason": answer["error"]}
    with _lock:
        return _answers.setdefault("openvino", answer)


def _openvino_child(_: list[str]) -> None:
    """The child's side of :func:`openvino_npu`: one JSON line on stdout."""
    try:
        import numpy as np
        import openvino as ov
        import openvino.opset13 as ops

        core = ov.Core()
        listed = list(core.available_devices)
        version = ov.get_version()
        if "NPU" not in listed:
            answer = {"ok": False, "reason": (
                f"OpenVINO {version} does not list an NPU device (it lists "
                f"{', '.join(listed) or 'none'}): the NPU's user-space driver (Level Zero "
                "and the NPU compiler, Intel's linux-npu-driver) is missing or does not "
                "match the kernel's intel_vpu driver")}
        else:
            def prop(key: str) -> Any:
                try:
                    value = core.get_property("NPU", key)
                    return [str(v) for v in value] if isinstance(value, (list, tuple)) \
                        else value if isinstance(value, (int, float)) else str(value)
                except Exception:
                    return None

            x = ops.parameter([1, 8], ov.Type.f32, name="x")
            model = ov.Model([ops.add(x, x)], [x], "readiness")
            data = np.arange(8, dtype=np.float32).reshape(1, 8) - 3.0
            got = np.asarray(core.compile_model(model, "NPU")({0: data})[0])
            if not np.allclose(got, data + data):
                answer = {"ok": False, "reason": f"the NPU computed a wrong Add: {got.tolist()}"}
            else:
                answer = {"ok": True, "name": prop("FULL_DEVICE_NAME") or "Intel NPU",
                          "openvino": version, "architecture": prop("DEVICE_ARCHITECTURE"),
                          "driver_version": prop("NPU_DRIVER_VERSION"),
                          "compiler_version": prop("NPU_COMPILER_VERSION"),
                          "memory_bytes": prop("NPU_DEVICE_TOTAL_MEM_SIZE"),
                          "optimization_capabilities": prop("OPTIMIZATION_CAPABILITIES")}
    except Exception as exc:
        answer = {"ok": False, "reason": f"OpenVINO's NPU plugin failed: "
                                         f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
    print(json.dumps(answer), flush=True)


# ---------------------------------------------------------------------- ONNX Runtime

def ort_builds() -> tuple[str, list[str]]:
    """``(the installed onnxruntime distributions, NPU providers one of them may carry)``
    from package metadata and the provider libraries beside ``onnxruntime/capi``, without
    importing onnxruntime."""
    import importlib.util
    from importlib import metadata

    dists = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-qnn", "onnxruntime-vitisai",
                 "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            dists.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    spec = importlib.util.find_spec("onnxruntime")
    libs: list[str] = []
    for folder in (spec.submodule_search_locations or []) if spec else []:
        capi = Path(folder) / "capi"
        libs += [p.name.lower() for p in capi.glob("*providers*")] if capi.is_dir() else []
    found = [p for p, (_, dist, stem) in ORT_PROVIDERS.items()
             if any(d.startswith(dist + " ") for d in dists) or any(stem in lib for lib in libs)]
    return ", ".join(dists), found


def ort_npus() -> dict[str, dict[str, Any]]:
    """Each NPU provider of the installed onnxruntime: ``{provider: {"ready", "reason",
    "onnxruntime"}}``, checked once per process in a child; ``{}`` with no such build
    (:func:`ort_builds` then says what is installed)."""
    with _lock:
        if "ort" in _answers:
            return _answers["ort"]
    _, candidates = ort_builds()
    answer: dict[str, dict[str, Any]] = {}
    if candidates:
        lines = _ask_child("_ort_child", candidates, "the ONNX Runtime NPU probe")
        for p in candidates:
            row = next((r for r in lines if r.get("provider") == p), None)
            error = next((r["error"] for r in lines if "error" in r), "no answer")
            answer[p] = row or {"ready": False, "reason": error, "onnxruntime": ""}
    with _lock:
        return _answers.setdefault("ort", answer)


def _ort_child(providers: list[str]) -> None:
    """The child's side of :func:`ort_npus`: one JSON line per provider."""
    try:
        import onnxruntime as ort
    except Exception as exc:
        print(json.dumps({"error": f"onnxruntime does not import: {type(exc).__name__}: "
                                   f"{exc}"}), flush=True)
        return
    available = ort.get_available_providers()
    for p in providers:
        if p not in available:
            ready, reason = False, (f"onnxruntime {ort.__version__} has no {p} (it has "
                                    f"{', '.join(available)})")
        else:
            ready, reason = provider_ready(ort, p)
        print(json.dumps({"provider": p, "ready": ready, "reason": reason,
                          "onnxruntime": ort.__version__}), flush=True)


def readiness_model(provider: str) -> tuple[Any, dict[str, Any], Any]:
    """``(ONNX model, feeds, expected output)`` of a provider's readiness check: a float32
    Add for QNN (computed in fp16 on the HTP); for VitisAI, which compiles quantized
    models only, the same Add between QuantizeLinear/DequantizeLinear pairs (uint8)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    data = (np.arange(8, dtype=np.float32).reshape(1, 8) - 3.0) / 4
    nodes, inits, x = [], [], "x"
    if provider == "VitisAIExecutionProvider":
        inits = [numpy_helper.from_array(np.float32(1 / 32), "s"),
                 numpy_helper.from_array(np.uint8(128), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        x = "xd"
    nodes.append(helper.make_node("Add", [x, x], ["sum"]))
    out = "sum"
    if provider == "VitisAIExecutionProvider":
        nodes += [helper.make_node("QuantizeLinear", ["sum", "s", "z"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
        out = "y"
    graph = helper.make_graph(
        nodes, "readiness", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model, {"x": data}, data + data


def provider_ready(ort: Any, provider: str) -> tuple[bool, str]:
    """Whether ``provider`` runs its readiness model (:func:`readiness_model`) by itself:
    a session with CPU fallback disabled (the onnxruntime backend's session options) on
    the provider's NPU options."""
    import numpy as np

    try:
        model, feeds, want = readiness_model(provider)
        so = session_options(ort, "latency", provider, {})
        options = dict(PROVIDER_OPTIONS.get(provider, {}))
        if provider == "QNNExecutionProvider":
            options["enable_htp_fp16_precision"] = "1"
        session = ort.InferenceSession(model.SerializeToString(), so,
                                       providers=[(provider, options)])
        if session.get_providers()[0] != provider:
            return False, f"ORT placed the session on {session.get_providers()}, not {provider}"
        got = session.run(None, feeds)[0]
        if not np.allclose(got, want, atol=1e-2):
            return False, f"{provider} computed a wrong Add: {np.asarray(got).tolist()}"
        return True, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc).strip()[:300]}"
