"""npu: neural processing units, through OpenVINO's NPU device (Intel Core Ultra) first, and
ONNX Runtime's QNN (Qualcomm Hexagon) and VitisAI (AMD XDNA) providers where present.

What it is: a graph compiler whose limits are data. ``capabilities``: static shapes only
(every op declares ``dynamic_shapes=False``, so the scheduler places on an NPU only nodes
whose shapes the session fixed), precisions fp16 and int8 (no fp32: OpenVINO's NPU, QNN's
HTP and VitisAI compute fp32 models in fp16 or not at all, so declaring fp32 would let a
plan promise numerics the device does not keep), and the op table from OpenVINO's
``query_model`` on the NPU when one is present, else :data:`DECLARED_OPS`.

How it finds devices (``probe``, ``devices.py``): accel nodes in sysfs, then OpenVINO's NPU
device or ONNX Runtime's NPU providers in bounded child processes, each ready only when a
one-node model compiled and ran on it. Without one, ``DeviceUnavailable`` says why for
each path (no node; a node OpenVINO does not list; no QNN or VitisAI build of onnxruntime).

How it compiles: ``prepare.py`` fixes the partition's shapes to the session's (or refuses
before compiling, naming the input and dimension), then makes it fp16 (fp16 weights) or
int8 (post-training quantization with the session's calibration inputs: NNCF for OpenVINO,
ONNX Runtime's QDQ quantizer for QNN and VitisAI); OpenVINO's ``query_model`` must place
every operation on the NPU (never a partial run); the compiled blob is cached on disk
(``export_model``/``import_model``; QNN's EP context model; VitisAI's own cache) under
``backplane.sdk.cache.cache_dir("npu")``, keyed by model, shapes, precision, calibration,
device and driver, compiler and runtime versions. A run at other input sizes compiles
that signature once more (kept in a small LRU).

Options (``Session(options={"npu": {...}})``): ``dims`` (sizes of symbolic dimensions),
``calibration`` (a list of feeds, for int8), ``quantization`` (NNCF's ``preset``,
``model_type``, ``fast_bias_correction``, ``subset_size``), ``config`` (raw OpenVINO NPU
properties), ``provider_options`` (raw ONNX Runtime provider options).

Importing this module imports neither openvino nor onnxruntime nor numpy. Behaviour, the
CPU emulation of the preparation and what awaits real hardware: ``docs/backends/npu.md``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from backplane import (API_VERSION, Backend, Capabilities, CompileOptions, Device, Executable,
                       LazyOps, OpSupport, __version__ as _backplane_version)
from backplane.runtimes import onnxruntime as ort_rt
from backplane.runtimes.openvino import (infer, onnx_nodes_of, outputs_of, ov_core, query,
                                         valid_survey, wrap)
from backplane.runtimes.shapecache import ShapeCache
from backplane.sdk.cache import ArtifactCache, cache_dir, cache_key, cached_json, model_bytes
from backplane.sdk.errors import BackendError, CompileError, DeviceUnavailable, ExecutionError

from . import devices as found
from . import prepare
from .prepare import PrepareError

log = logging.getLogger("backplane")

__all__ = ["NpuBackend", "NpuExecutable", "DECLARED_OPS"]

#: OpenVINO's name of its NPU device.
OV_DEVICE = "NPU"
#: Compiled signatures kept per executable (an NPU compile takes seconds; blobs are on disk).
SHAPE_CACHE_SIZE = 4
#: Compiled blobs kept on disk; the least recently used beyond this are deleted.
MAX_CACHED_BLOBS = 256
#: Bump when the derivation of the op table from query_model changes.
DERIVATION_VERSION = 2

_FLOAT = frozenset({"float32", "float16"})
_LAYOUT = frozenset({"float32", "float16", "int8", "uint8"})
#: The op table used when no OpenVINO NPU is here to be asked (the ONNX Runtime paths, and
#: listings on machines without an NPU): core ops that every NPU path documents, and only
#: those. Source: ONNX Runtime's QNN execution provider "Supported ONNX operators" table
#: (HTP), intersected with the backplane core op set and with the ops OpenVINO's ONNX
#: frontend lowers to operations its NPU plugin compiles (OpenVINO's NPU conformance
#: report); Erf, Shape, Gather, Expand, Where, Cast, HardSigmoid and MatMulInteger are left
#: out as not documented for every path. Float ops are declared for float32 and float16
#: graphs (computed in fp16 or int8: the precision is the session's, not the graph's);
#: layout ops also carry int8/uint8 values of quantized (QDQ) graphs.
DECLARED_OPS: dict[str, OpSupport] = {
    **{op: OpSupport(dtypes=_FLOAT, dynamic_shapes=False) for op in (
        "Abs", "Add", "AveragePool", "BatchNormalization", "Clip", "Conv", "ConvTranspose",
        "Div", "Exp", "Gelu", "Gemm", "GlobalAveragePool", "HardSwish", "LayerNormalization",
        "LeakyRelu", "Log", "MatMul", "MaxPool", "Mul", "Neg", "Pow", "ReduceMax",
        "ReduceMean", "ReduceSum", "Relu", "Resize", "Sigmoid", "Softmax", "Sqrt", "Sub",
        "Tanh", "QuantizeLinear")},
    **{op: OpSupport(dtypes=_LAYOUT, dynamic_shapes=False) for op in (
        "Concat", "Flatten", "Pad", "Reshape", "Slice", "Squeeze", "Transpose", "Unsqueeze")},
    "DequantizeLinear": OpSupport(dtypes=frozenset({"int8", "uint8"}), dynamic_shapes=False),
}


class NpuBackend(Backend):
    """NPUs: OpenVINO's NPU device, ONNX Runtime's QNN and VitisAI providers.

    Args:
        sys_accel: where the kernel lists accel nodes (tests pass a recorded tree).
        openvino: ``() -> dict``, OpenVINO's answer about its NPU
            (default :func:`devices.openvino_npu`).
        ort: ``() -> {provider: {"ready", "reason", "onnxruntime"}}``, ONNX Runtime's NPU
            providers (default :func:`devices.ort_npus`).
        platform: ``sys.platform`` (on Windows OpenVINO is asked without a sysfs node).
    """

    name = "npu"
    api_version = API_VERSION
    version = _backplane_version
    priority = 450  # after the GPUs (cuda-tensorrt 500), ahead of rocm (400) and the CPUs
    # What the cost model assumes until 'backplane hwdb calibrate' measures an NPU: a call
    # into an NPU costs of the order of 100 us (driver submission), nodes are fused by the
    # compiler, the MAC arrays reach a modest share of their peak on small models.
    cost_hints = {"launch_us": 150.0, "node_us": 1.0, "compute_efficiency": 0.35,
                  "memory_efficiency": 0.5}

    def __init__(self, sys_accel: str = found.SYS_ACCEL,
                 openvino: Callable[[], dict[str, Any]] | None = None,
                 ort: Callable[[], dict[str, dict[str, Any]]] | None = None,
                 platform: str | None = None) -> None:
        self._sys_accel = sys_accel
        self._openvino = openvino or found.openvino_npu
        self._ort = ort or found.ort_npus
        self._platform = platform or sys.platform
        self._capabilities = Capabilities(ops=LazyOps(self._ops),
                                          precisions=frozenset({"fp16", "int8"}))

    @property
    def capabilities(self) -> Capabilities:
        """Static shapes, fp16 and int8, ops from the NPU's ``query_model`` or declared."""
        return self._capabilities

    # ------------------------------------------------------------------ devices

    def probe(self) -> list[Device]:
        """OpenVINO's NPU, then ONNX Runtime's ready NPU providers; ``DeviceUnavailable``
        with every path's reason when none is ready."""
        listed, reasons = self.find()
        if not listed:
            raise DeviceUnavailable("no NPU is ready: " + "; ".join(reasons))
        return listed

    def find(self) -> tuple[list[Device], list[str]]:
        """``(ready devices, why each other path is not ready)``, in the order of the paths
        (:data:`devices.PATHS`); never raises."""
        nodes = found.accel_nodes(self._sys_accel)
        intel = [n for n in nodes if n["driver"] == "intel_vpu"]
        info = self._openvino() if intel or self._platform == "win32" else None
        answers = self._ort()
        ready, passed = found.PATHS.survey(lambda p: found.why_not(p, info, answers, intel))
        listed = [self._openvino_device(info or {}, intel[0] if intel else {})
                  if p == "openvino" else self._ort_device(p, answers[p]) for p in ready]
        reasons = [p.reason for p in passed]
        return listed, reasons + ([] if answers else [found.no_ort_reason(nodes)])

    @staticmethod
    def _ort_device(provider: str, answer: Mapping[str, Any]) -> Device:
        vendor = found.ORT_PROVIDERS.get(provider, ("", "", ""))[0]
        return Device(
            name=f"{vendor} NPU ({provider}, ONNX Runtime {answer.get('onnxruntime')})",
            kind="npu", vendor=vendor, properties={
                "path": "onnxruntime", "provider": provider,
                "onnxruntime": answer.get("onnxruntime", ""),
                "precisions": list(found.PRECISIONS.get(provider, ("int8",)))})

    @staticmethod
    def _openvino_device(info: Mapping[str, Any], node: Mapping[str, str]) -> Device:
        memory = info.get("memory_bytes")
        return Device(name=str(info.get("name") or "Intel NPU"), kind="npu", vendor="Intel",
                      memory_bytes=int(memory) if isinstance(memory, int) and memory else None,
                      properties={
                          "path": "openvino", "ov_device": OV_DEVICE,
                          "openvino": info.get("openvino"),
                          "architecture": info.get("architecture"),
                          "driver_version": info.get("driver_version"),
                          "compiler_version": info.get("compiler_version"),
                          "optimization_capabilities": info.get("optimization_capabilities"),
                          "precisions": list(found.PRECISIONS["openvino"]),
                          **{k: v for k, v in node.items() if k.startswith("pci_")},
                          **({"accel_node": node["node"]} if node else {})})

    # ------------------------------------------------------------------ capabilities

    def _ops(self) -> Mapping[str, OpSupport]:
        """The NPU's own answer (``query_model`` over the trial models) when OpenVINO has
        an NPU here, else :data:`DECLARED_OPS`."""
        intel = [n for n in found.accel_nodes(self._sys_accel) if n["driver"] == "intel_vpu"]
        if not (intel or self._platform == "win32"):
            return DECLARED_OPS
        info = self._openvino()
        if not info.get("ok"):
            return DECLARED_OPS
        try:
            return derived_ops(info)
        except Exception as exc:  # capabilities answer, they don't raise
            log.warning("backplane: npu: query_model on the NPU failed (%s); using the "
                        "declared op table", exc)
            return DECLARED_OPS

    # ------------------------------------------------------------------ compile

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """Prepare (static shapes, fp16 or int8) and compile for ``device``; the first
        signature compiles now, so a refusal comes here, not at the first run."""
        extra = dict((options.extra or {}).get(self.name) or {})
        path = device.properties.get("path", "openvino")
        precisions = list(device.properties.get("precisions") or sorted(
            self.capabilities.precisions))
        try:
            if options.precision not in precisions:
                raise PrepareError(
                    f"{device.name} computes at {precisions}, not {options.precision} (an NPU "
                    "runs fp32 graphs in fp16): choose precision='fp16', 'int8' or 'auto'",
                    backend=self.name)
            calibration = prepare.calibration_set(graph, extra,
                                                  required=options.precision == "int8")
            dims = prepare.session_dims(graph, options, extra, calibration)
            static = prepare.static_graph(graph, dims)
            quantization = prepare.quantization_options(extra)
            if path == "openvino":
                build: _Build = _OpenVINOBuild(graph, device, options, extra, calibration,
                                               quantization)
            else:
                build = _ORTBuild(graph, device, options, extra, calibration)
            exe = NpuExecutable(graph, device, build)
            exe.compiled_for(tuple(prepare.input_shapes(static)[vi.name]
                                   for vi in graph.inputs), at_compile=True)
        except PrepareError as exc:
            raise _located(CompileError, exc, device) from None
        return exe


# ---------------------------------------------------------------------- the executable

class _Build:
    """Compiles one input-shape signature: ``(shapes) -> (run, how)``."""

    def __call__(self, shapes: dict[str, tuple[int, ...]]) -> tuple[Callable, str]:
        raise NotImplementedError


class NpuExecutable(Executable):
    """One compiled static model per input-shape signature (the session's first, others
    when a run brings them), each compiled once and kept in an LRU of
    :data:`SHAPE_CACHE_SIZE`. Runs are serialised (one infer request per model)."""

    thread_safe = False

    def __init__(self, graph: Any, device: Device, build: _Build):
        self._graph, self._device, self._build = graph, device, build
        self._names = [vi.name for vi in graph.inputs]
        self._compiled = ShapeCache(SHAPE_CACHE_SIZE)
        self.path = ""

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run once at the inputs' shapes (compiling that signature first if new)."""
        import numpy as np

        runner = self.compiled_for(tuple(tuple(np.shape(inputs[n])) for n in self._names))
        try:
            return runner(inputs)
        except BackendError:  # the ORT path's executable runs for this backend: it says so
            raise
        except Exception as exc:
            raise ExecutionError.wrap(exc, backend=NpuBackend.name,
                                      device=self._device.id) from exc

    def compiled_for(self, signature: tuple, at_compile: bool = False) -> Callable:
        """The runner for one signature: from the LRU, else compiled now."""
        def build(signature: tuple) -> Callable:
            try:
                runner, how = self._build(dict(zip(self._names, signature)))
            except BackendError as exc:  # at run time, a new signature that fails is a
                # run failure of this device (the session re-plans without it)
                raise _located(CompileError if at_compile else ExecutionError, exc,
                               self._device) from None
            if at_compile:
                self.path = how
            return runner

        return self._compiled.get(signature, build)


def _located(cls: type, exc: BackendError, device: Device) -> BackendError:
    """``exc`` as ``cls`` carrying the device (a refusal from ``prepare`` has none yet), its
    message rendered for this stage and device."""
    return cls(exc.detail, backend=NpuBackend.name, device=device.id, op=exc.op,
               vendor_message=exc.vendor_message, located=True)


# ---------------------------------------------------------------------- OpenVINO path

class _OpenVINOBuild(_Build):
    """OpenVINO's NPU: the prepared model (quantized once), reshaped and fp16-compressed
    per signature, checked with ``query_model``, compiled, and its blob cached."""

    def __init__(self, graph: Any, device: Device, options: CompileOptions,
                 extra: Mapping[str, Any], calibration: list, quantization: dict):
        self._graph, self._device, self._precision = graph, device, options.precision
        self._calibration, self._quantization = calibration, quantization
        self._config = {"PERFORMANCE_HINT": "THROUGHPUT" if options.policy == "throughput"
                        else "LATENCY"}
        self._config.update({str(k): v if isinstance(v, (int, float, bool)) else str(v)
                             for k, v in dict(extra.get("config") or {}).items()})
        # "NPU" for every device probe lists; a test device may name OpenVINO's CPU to run
        # this whole path (prepare, query_model, compile, blob cache) without an NPU.
        self._ov_device = str(device.properties.get("ov_device") or OV_DEVICE)
        self._blobs = ArtifactCache(NpuBackend.name, options, "compiled", suffix=".blob",
                                    keep=MAX_CACHED_BLOBS)
        self._onnx = prepare.onnx_bytes(graph)
        self._calibration_key = prepare.calibration_digest(calibration) if calibration else ""
        props = device.properties
        self._device_key = {k: str(props.get(k)) for k in (
            "openvino", "driver_version", "compiler_version", "architecture")}
        self._device_key.update(name=device.name, ov_device=self._ov_device)
        self._base: Any = None

    def __call__(self, shapes: dict[str, tuple[int, ...]]) -> tuple[Callable, str]:
        core = ov_core()
        key = prepare.blob_key(self._onnx, shapes, self._precision, self._calibration_key,
                               self._quantization, self._device_key, self._config)
        blob = self._blobs.get(key)  # checked against its hash
        if blob is not None:
            try:
                compiled = core.import_model(blob, self._ov_device, self._config)
                return self._runner(compiled), self._how(shapes, "from the blob cache")
            except Exception:  # a blob of another driver or a broken write: compile again
                pass
        model = self._prepared(core, shapes)
        self._check_placement(core, model)
        try:
            compiled = core.compile_model(model, self._ov_device, self._config)
        except Exception as exc:
            raise _ov_error(exc, self._device) from exc
        if self._blobs.folder is not None:
            try:
                self._blobs.put(key, compiled.export_model().getvalue())
            except Exception:  # caching is an optimisation
                pass
        return self._runner(compiled), self._how(shapes, "compiled")

    def _prepared(self, core: Any, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        """The base model (read; quantized at int8) once, then per signature a clone with
        static shapes and fp16 weights."""
        if self._base is None:
            try:
                base = core.read_model(self._onnx)
            except Exception as exc:
                raise _ov_error(exc, self._device) from exc
            if self._precision == "int8":
                base = prepare.quantize_int8(base, self._calibration, self._quantization)
            self._base = base
        model = prepare.reshape_static(self._base.clone(), shapes)
        return prepare.compress_fp16(model, core)

    def _check_placement(self, core: Any, model: Any) -> None:
        """Every operation on the NPU, or a refusal naming the ONNX nodes it leaves off."""
        try:
            placed = core.query_model(model, self._ov_device, self._config)
        except Exception as exc:
            raise _ov_error(exc, self._device) from exc
        missing = [op for op in model.get_ops() if op.get_friendly_name() not in placed]
        if missing:
            names = ", ".join(f"{op.get_friendly_name()} ({op.get_type_name()})"
                              for op in missing[:10])
            nodes = onnx_nodes_of(missing, self._graph)
            raise CompileError(
                f"OpenVINO's query_model leaves {len(missing)} operation(s) off the NPU: {names}"
                + (" (ONNX nodes " + ", ".join(f"'{n.name}' ({n.op_type})" for n in nodes)
                   + ")" if nodes else "") + "; the graph is not run partially",
                backend=NpuBackend.name, device=self._device.id, located=True,
                op=nodes[0].op_type if nodes else None, vendor_message=f"query_model: {names}")

    def _runner(self, compiled: Any) -> Callable:
        import numpy as np

        request = compiled.create_infer_request()
        declared = {vi.name: vi.dtype for vi in self._graph.inputs}
        names = [p.get_any_name() for p in compiled.inputs]
        dtypes = [declared.get(name) for name in names]
        outs = outputs_of(compiled.outputs, self._graph, backend=NpuBackend.name,
                          device=self._device.id)

        def run(inputs: Mapping[str, Any]) -> dict[str, Any]:
            return infer(request, [np.asarray(inputs[name]) for name in names], dtypes, outs)

        return run

    def _how(self, shapes: Mapping[str, tuple[int, ...]], origin: str) -> str:
        shape_text = ", ".join(f"{k}{list(v)}" for k, v in shapes.items())
        what = ("int8 (NNCF, NPU target)" if self._precision == "int8" else "fp16")
        return f"OpenVINO {self._ov_device}, {what}, static {shape_text}, {origin}"


def _ov_error(exc: BaseException, device: Device) -> CompileError:
    return wrap(CompileError, exc, None, backend=NpuBackend.name, device=device.id)


# ---------------------------------------------------------------------- ONNX Runtime path

class _ORTBuild(_Build):
    """ONNX Runtime's QNN or VitisAI provider: the partition (quantized to QDQ once at
    int8) with static shapes per signature, one InferenceSession each, CPU fallback off."""

    def __init__(self, graph: Any, device: Device, options: CompileOptions,
                 extra: Mapping[str, Any], calibration: list):
        self._graph, self._device, self._options = graph, device, options
        self._provider = str(device.properties.get("provider"))
        self._calibration = calibration
        self._extra = extra
        self._prepared: Any = None

    def __call__(self, shapes: dict[str, tuple[int, ...]]) -> tuple[Callable, str]:
        # on use only: discovery loads this module, and must stay light
        from backplane.model.graph import Graph

        if self._prepared is None:
            model = self._graph.model
            if self._options.precision == "int8":
                model = prepare.quantize_onnx(model, self._calibration, self._provider)
            self._prepared = Graph(model, self._graph.name)
        dims = _dims_for(self._prepared, shapes)
        static = prepare.static_graph(self._prepared, dims)
        so = ort_rt.session_options(ort_rt.runtime(), self._options.policy, self._provider,
                                    dict(self._extra.get("session") or {}))
        options = dict(found.PROVIDER_OPTIONS.get(self._provider, {}))
        if self._provider == "QNNExecutionProvider":
            options["enable_htp_fp16_precision"] = "1" if self._options.precision == "fp16" \
                else "0"
        data = model_bytes(static.model)
        key = cache_key(data, self._options.precision, self._provider,
                        self._device.properties.get("onnxruntime"), _backplane_version,
                        sorted(options.items()))
        folder = cache_dir(NpuBackend.name, self._options)
        source: Any = data
        origin = "compiled"
        if folder is not None and self._provider == "QNNExecutionProvider":
            context = folder / f"{key}_ctx.onnx"  # QNN's EP context model: the HTP binary
            if context.is_file():
                source, origin = str(context), "from the QNN context cache"
            else:
                so.add_session_config_entry("ep.context_enable", "1")
                so.add_session_config_entry("ep.context_file_path", str(context))
        elif folder is not None and self._provider == "VitisAIExecutionProvider":
            options.update({"cache_dir": str(folder), "cache_key": key})
        options.update({str(k): str(v) for k, v in
                        dict(self._extra.get("provider_options") or {}).items()})
        session = ort_rt.open_session(source, so, self._provider, options,
                                      backend=NpuBackend.name, device=self._device.id,
                                      graph=static)
        exe = ort_rt.ORTExecutable(session, static, self._device, thread_safe=False,
                                   backend=NpuBackend.name)
        shape_text = ", ".join(f"{k}{list(v)}" for k, v in shapes.items())
        how = (f"ONNX Runtime {self._provider}, "
               + ("int8 QDQ (ORT quantizer)" if self._options.precision == "int8" else "fp16")
               + f", static {shape_text}, {origin}")
        return exe.run, how


def _dims_for(graph: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The sizes of ``graph``'s symbolic input dimensions in input ``shapes``."""
    dims: dict[str, int] = {}
    for vi in graph.inputs:
        for d, size in zip(vi.shape or (), shapes.get(vi.name, ())):
            if isinstance(d, str):
                dims.setdefault(d, int(size))
    return dims


# ---------------------------------------------------------------------- op table

def derived_ops(info: Mapping[str, Any]) -> dict[str, OpSupport]:
    """The op table the NPU itself gives: every op of the registry surveyed
    (:mod:`backplane.ops.survey`), each model asked of ``query_model`` on the NPU (no
    compile: an NPU compile per model would take minutes). Cached on disk, keyed by the
    OpenVINO, driver and compiler versions and the device name."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops import trials
    from backplane.ops.registrations import op_supports
    from backplane.ops.survey import survey

    key = (info.get("openvino"), info.get("driver_version"), info.get("compiler_version"),
           info.get("name"), _backplane_version, DERIVATION_VERSION, trials.VERSION)
    data = cached_json(NpuBackend.name, key,
                       lambda: survey(lambda model: query(model, OV_DEVICE)),
                       valid=valid_survey)
    return op_supports(data["ops"], dynamic_shapes=False)
