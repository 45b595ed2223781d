"""onnxruntime: runs a (sub)graph as one ONNX Runtime InferenceSession.

A graph compiler: ``compile`` hands the whole partition to ORT. Device 0 is ORT's CPU
execution provider; every other compute provider of the installed build (CUDA, TensorRT,
ROCm, OpenVINO, QNN, DirectML, CoreML ...) becomes a device only after a readiness check
has run a one-node model on it with ``session.disable_cpu_ep_fallback`` set, so ORT cannot
quietly place the nodes on the CPU. Providers that fail the check are listed, with the
reason, in the CPU device's ``not_ready`` property (``backplane devices --json``). Compiles
for those devices keep the same setting: a provider that does not take the nodes it was given
is a ``CompileError`` naming it, never a silent run on the CPU.
The CUDA, TensorRT, ROCm, MIGraphX, QNN and VitisAI providers are run by the
``cuda-tensorrt``, ``rocm`` and ``npu`` backends (ORT is one of their paths), so they are
devices here only while those backends are disabled: one GPU or NPU is one device to the
scheduler.

The capabilities are ORT's own kernel registrations: for every op of the operator registry
in ORT's domains (the default domain, ``ai.onnx.ml`` and ``com.microsoft``), every version,
the dtypes its CPU kernels are registered for (``get_all_opkernel_def``), plus the op
versions ORT runs without a kernel (Constant; ops with a function body, which ORT expands).
The result is cached in memory and on disk (JSON, keyed by the ORT and backplane versions),
and computed only when first read (:class:`~backplane.LazyOps`): listing plugins imports
neither onnxruntime nor numpy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from backplane import (API_VERSION, Backend, Capabilities, CompileOptions, Device, Executable,
                       LazyOps, OpSupport, __version__ as _backplane_version)
from backplane.runtimes.onnxruntime import (CPU, ORTExecutable, open_session, probe_providers,
                                            runtime, session_options)
from backplane.sdk.cache import cached_json
from backplane.sdk.env import plugin_enabled
from backplane.sdk.errors import CompileError, DeviceUnavailable

#: Device kind and vendor of the providers backplane knows; others are "accelerator".
PROVIDER_KINDS = {
    "CUDAExecutionProvider": ("gpu", "NVIDIA"), "TensorrtExecutionProvider": ("gpu", "NVIDIA"),
    "ROCMExecutionProvider": ("gpu", "AMD"), "MIGraphXExecutionProvider": ("gpu", "AMD"),
    "DmlExecutionProvider": ("gpu", "Microsoft"), "WebGpuExecutionProvider": ("gpu", ""),
    "OpenVINOExecutionProvider": ("accelerator", "Intel"),
    "QNNExecutionProvider": ("npu", "Qualcomm"),
    "CoreMLExecutionProvider": ("npu", "Apple"), "VitisAIExecutionProvider": ("npu", "AMD"),
    "DnnlExecutionProvider": ("cpu", "Intel"), "XnnpackExecutionProvider": ("cpu", ""),
}
#: GPU providers that a dedicated backplane backend runs (as one of its paths, next to its
#: own kernels): listed there, not here, so that one GPU is not two devices to the
#: scheduler; listed here again when that backend is disabled.
SERVED_BY = {"CUDAExecutionProvider": "cuda-tensorrt", "TensorrtExecutionProvider": "cuda-tensorrt",
             "ROCMExecutionProvider": "rocm", "MIGraphXExecutionProvider": "rocm",
             "QNNExecutionProvider": "npu", "VitisAIExecutionProvider": "npu"}
#: The element types a partition's values may have: what ORT's Python API exchanges with
#: numpy, directly or as raw OrtValues (bfloat16, the float8 types). Not the 2- and 4-bit
#: types, float4e2m1 or float8e8m0: the bridge cannot pass them (2-bit, e8m0, fp4) or
#: unpacks them wrong (ONNX's Cast node tests to int4/uint4 came back wrong).
VALUE_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "int8", "int16",
                          "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
                          "string", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2",
                          "float8e5m2fnuz"})
#: Bump when this backend's derivation changes, so stale disk caches are ignored.
DERIVATION_VERSION = 14
#: The derived table for the ONNX Runtime this release was checked with, shipped so that
#: a first Session does not wait for the derivation (used only where its key matches).
SHIPPED = Path(__file__).with_name("capabilities.json")


class ORTBackend(Backend):
    """ONNX Runtime: a whole partition per InferenceSession, CPU provider plus ready others."""

    name = "onnxruntime"
    api_version = API_VERSION
    version = _backplane_version
    priority = 200  # after openvino-cpu (300), before opencl (100) and reference (-1000)
    # What the cost model assumes until 'backplane hwdb calibrate' measures this machine:
    # figures of the order measured on a 2-core Zen 5 VM (docs/performance.md).
    cost_hints = {"launch_us": 5.0, "node_us": 0.5, "compute_efficiency": 0.7,
                  "memory_efficiency": 0.8}
    known_failures = str(Path(__file__).with_name("known_failures.toml"))

    def __init__(self) -> None:
        self._capabilities = Capabilities(ops=LazyOps(derived_ops, lambda: derive()["refused"]),
                                          precisions=frozenset({"fp32"}),
                                          value_dtypes=VALUE_DTYPES)

    @property
    def capabilities(self) -> Capabilities:
        """Derived on first read of ``ops`` (see :func:`derived_ops`); this object is data."""
        return self._capabilities

    # ------------------------------------------------------------------ devices

    def probe(self) -> list[Device]:
        """The CPU provider, then every other compute provider that passes its readiness check.

        The checks run in a child process (:func:`probe_providers`): a provider whose driver
        crashes cannot take the application down, and listing devices imports no runtime.
        """
        version, available, checks = probe_providers()
        checks = dict(checks)
        for p, owner in SERVED_BY.items():
            if checks.get(p, (False, ""))[0] and plugin_enabled(owner):
                checks[p] = (False, f"ready, and run by the '{owner}' backend (its ONNX "
                                    f"Runtime path); BACKPLANE_DISABLE_PLUGINS={owner} "
                                    "lists it here instead")
        not_ready = {p: reason for p, (ok, reason) in checks.items() if not ok}
        devices = []
        if checks.get(CPU, (False, ""))[0]:
            devices.append(Device(
                name=f"ONNX Runtime {version} CPUExecutionProvider", kind="cpu",
                properties={"provider": CPU, "onnxruntime": version,
                            "available_providers": list(available), "not_ready": not_ready}))
        for p, (ok, _) in checks.items():
            if ok and p != CPU:
                kind, vendor = PROVIDER_KINDS.get(p, ("accelerator", ""))
                devices.append(Device(name=f"ONNX Runtime {version} {p}", kind=kind,
                                      vendor=vendor, properties={"provider": p,
                                                                 "onnxruntime": version}))
        if not devices:
            raise DeviceUnavailable("no onnxruntime execution provider is ready: " + "; ".join(
                f"{p}: {r}" for p, r in not_ready.items()))
        return devices

    # ------------------------------------------------------------------ compile

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """One InferenceSession over the partition, with session options from the policy."""
        provider = device.properties.get("provider", CPU)
        extra = dict(options.extra.get(self.name, {})) if options.extra else {}
        if options.precision not in self.capabilities.precisions:
            raise CompileError(f"backend '{self.name}' computes at fp32 only, not "
                               f"{options.precision}", backend=self.name, device=device.id)
        so = session_options(runtime(), options.policy, provider, extra)
        if graph.external_dir is not None:  # a model over 2 GiB: big initializers in files
            so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                        str(graph.external_dir))
        session = open_session(graph.model.SerializeToString(), so, provider,
                               extra.get("provider_options", {}), backend=self.name,
                               device=device.id, graph=graph)
        return ORTExecutable(session, graph, device, thread_safe=options.policy == "throughput",
                             backend=self.name)


# ---------------------------------------------------------------------- capabilities

#: Narrowings of the derived support, where an op runs in a one-node probe but some of its
#: variants give wrong results (each with the reason). Op key -> OpSupport keywords.
CONSTRAINTS: dict[str, dict[str, Any]] = {
    # The CPU kernel takes per-tensor zero points only ("Non per-tensor quantization is not
    # supported now"): ONNX's padded ConvInteger test gives per-channel ones; a quantizer's
    # (and DynamicQuantizeLinear's) are scalars.
    "ConvInteger": {"scalar_inputs": frozenset({2, 3})},
}


def derived_ops() -> dict[str, OpSupport]:
    """The op table: the versions and dtypes ORT's CPU provider registers kernels for
    (:func:`derive`), narrowed by CONSTRAINTS."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.registrations import op_supports
    from backplane.ops.verify import attribute_rules, merged_constraints

    data = derive()
    return op_supports(data["ops"], merged_constraints(
        CONSTRAINTS, attribute_rules(data.get("rules", {}))))


def ort_version() -> str:
    """The installed ORT version, from package metadata (no import) when possible."""
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-qnn",
                 "onnxruntime-directml", "onnxruntime-rocm", "ort-nightly", "ort-nightly-gpu"):
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"onnxruntime=={runtime().__version__}"


def derive(use_cache: bool = True) -> dict[str, Any]:
    """``{"ops": {op key: {version: [dtypes]}}, ...}``: what ORT's CPU provider runs.

    Read from ``cache_dir("onnxruntime")/capabilities-KEY.json`` when present (KEY hashes
    the ORT and backplane versions, the derivation version and the machine), else computed
    and written (:func:`backplane.sdk.cache.cached_json`).
    """
    return cached_json(ORTBackend.name, derivation_key(), _derive_now, use_cache=use_cache,
                       valid=_valid_derivation, shipped=SHIPPED,
                       keep=lambda data: "unverified" not in data)


def derivation_key() -> tuple[Any, ...]:
    """What the derived table depends on: the ORT and backplane versions, the derivation's
    and the machine."""
    import platform

    return (ort_version(), _backplane_version, DERIVATION_VERSION, platform.machine())


def _valid_derivation(data: Any) -> bool:
    """A cached derivation is read back only in the shape this code writes."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.verify import valid_rules

    ops = data.get("ops") if isinstance(data, dict) else None
    return isinstance(ops, dict) and valid_rules(data) and all(
        isinstance(k, str) and isinstance(v, dict) and all(
            str(ver).isdigit() and isinstance(d, list) and all(isinstance(t, str) for t in d)
            for ver, d in v.items()) for k, v in ops.items())


def _derive_now() -> dict[str, Any]:
    """The CPU provider's kernel registrations (:func:`backplane.ops.registrations.
    ort_op_table`), less the op versions and dtypes whose ONNX node tests came back wrong
    (:func:`backplane.ops.verify.verify`: ONNX Runtime registers kernels that compute some
    variants wrong, or that backplane's bridge cannot exchange).

    The fused ``backplane`` ops are not declared: ORT fuses on its own, and a graph fused
    for it would only be inlined back, less well than the graph as written (measured: the
    transformer block of benchmarks/bench_cpu_backends.py ran 5% slower fused). A graph that
    carries fused nodes still runs: ORT inlines their model-local decompositions."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.registrations import ort_op_table
    from backplane.ops.verify import VerificationError, narrowed, verify

    t0 = time.perf_counter()
    ops = ort_op_table(CPU)
    try:
        refused, rules = verify(ORTBackend.name, ops)
    except VerificationError as exc:  # used as it is, not cached: checked next time
        return {"onnxruntime": ort_version(), "ops": ops, "unverified": str(exc)}
    return {"onnxruntime": ort_version(), "backplane": _backplane_version,
            "source": "onnxruntime.capi._pybind_state.get_all_opkernel_def, checked by "
                      "ONNX's node tests (backplane.ops.verify)",
            "seconds": round(time.perf_counter() - t0, 3), "ops": narrowed(ops, refused),
            "rules": rules, "refused": refused}


