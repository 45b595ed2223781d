"""openvino-cpu: runs a (sub)graph as one OpenVINO model on OpenVINO's CPU plugin.

A graph compiler: ``compile`` reads the partition's ONNX model with OpenVINO's ONNX frontend
and compiles it; where the compile fails (or waits for run-time shapes), ``query_model``
says which nodes the CPU plugin does not take (a ``CompileError`` naming them, never a
silent partial run). Partitions hold at most :data:`MAX_PARTITION_NODES` nodes, and long
element-wise trees are compiled without snippets: OpenVINO's compile time grows faster
than the model.

- Capabilities are derived, not written by hand: each core op, in each dtype its schema
  admits, is built as one-node models (:mod:`backplane.ops.trials`, shared with the other
  graph compilers); the op is declared with the dtypes for which ``query_model`` takes every
  node *and* a compile and a run succeed. Computed on first read of ``capabilities.ops``
  (:class:`~backplane.LazyOps`), cached in memory and on disk (JSON keyed by the OpenVINO,
  backplane and probe versions), narrowed by :data:`CONSTRAINTS` where a variant runs but
  gives wrong results.
- Precision is explicit: ``INFERENCE_PRECISION_HINT`` is f32 unless ``CompileOptions.precision``
  asks for fp16 or bf16 (OpenVINO would otherwise run f32 models in bf16 on CPUs with AMX
  or AVX-512 BF16), ``EXECUTION_MODE_HINT`` is ACCURACY at fp32 (no dynamic quantization of
  activations), and the compiled model's precision is read back and checked.
- Shapes: each input-shape signature gets its own model reshaped to static shapes and
  compiled once, kept in an LRU of :data:`SHAPE_CACHE_SIZE`; compiled blobs are cached on
  disk (``export_model``/``import_model``) keyed by model, options, shapes and versions.

- ``probe`` asks OpenVINO in a child process; fused ``backplane`` ops are not declared
  (OpenVINO fuses on its own), but a graph that carries them runs: ``compile`` inlines their
  decompositions, which OpenVINO's frontend does not do.

Importing this module, discovering it and listing devices import neither openvino nor numpy
nor onnx. Behaviour, measurements and known failures: ``docs/backends/openvino-cpu.md``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backplane import (API_VERSION, AttributeRule, Backend, Capabilities, CompileOptions, Device,
                       Executable, LazyOps, OpSupport, __version__ as _backplane_version)
from backplane.runtimes.openvino import (from_tensor, inlined, onnx_nodes_of, ov, ov_core,
                                         ov_version, patched, query, to_tensor, valid_survey, wrap)
from backplane.sdk.cache import ArtifactCache, cached_json
from backplane.sdk.child import run_child
from backplane.sdk.env import probe_budget_s
from backplane.sdk.errors import CompileError, DeviceUnavailable
from backplane.sdk.hostfacts import physical_cores

# What a compiled partition is, and the names the backend shares with it (OpenVINO's device
# name, the precision hints, the caches' sizes): executable.py.
from .executable import (MAX_CACHED_BLOBS, OV_DEVICE, PRECISION_HINTS, SHAPE_CACHE_SIZE,
                         OpenVINOExecutable)

#: Bump when this backend's derivation (try_op, the survey) changes, so stale disk caches
#: are ignored; the trial models' own version (backplane.ops.trials.VERSION) is in the key.
DERIVATION_VERSION = 16
#: The derived table for the OpenVINO this release was checked with, shipped so that a
#: first Session does not wait minutes for the survey (used only where its key matches).
SHIPPED = Path(__file__).with_name("capabilities.json")
#: The most nodes one compiled model holds (``Backend.max_partition_nodes``): OpenVINO's
#: compile time per node grows with the model (benchmarks/bench_scheduler.py, planning time).
MAX_PARTITION_NODES = 4096
#: The size of fusable element-wise tree (:func:`largest_elementwise_tree`) beyond which
#: the CPU plugin's snippets are turned off for a compile: their fusion costs the square of
#: the tree (a chain of 1,000 Relu/Neg took 4.3 s of CPU with them, 0.27 s without; a chain
#: of 64, 1 ms a node), where real models have trees of a few (an unfused Gelu: 5; the zoo's
#: models 1 to 3, a 40-layer transformer 2).
SNIPPETS_TREE_LIMIT = 64
#: The element types a partition's values may have. Not float64: the CPU plugin computes
#: it in float32 (ONNX's Cast to double overflowed to inf); not strings, the float8 or the
#: 2- and 4-bit types, which its tensors do not exchange with numpy here.
VALUE_DTYPES = frozenset({"float32", "float16", "bfloat16", "int8", "int16", "int32", "int64",
                          "uint8", "uint16", "uint32", "uint64", "bool"})
#: CPU flags (``/proc/cpuinfo``) with which OpenVINO's CPU plugin computes in each precision.
_PRECISION_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16", "avx_ne_convert"),
                    "fp16": ("avx512_fp16", "amx_fp16", "avx_ne_convert")}
_OPTIMIZATION_NAMES = {"bf16": "BF16", "fp16": "FP16"}


class OpenVINOBackend(Backend):
    """OpenVINO's CPU plugin: a whole partition per compiled model."""

    name = "openvino-cpu"
    api_version = API_VERSION
    version = _backplane_version
    priority = 300  # ahead of onnxruntime (200), opencl (100) and reference (-1000)
    # What the cost model assumes until 'backplane hwdb calibrate' measures this machine:
    # figures of the order measured on a 2-core Zen 5 VM (docs/performance.md).
    cost_hints = {"launch_us": 15.0, "node_us": 0.5, "compute_efficiency": 0.9,
                  "memory_efficiency": 0.6}
    known_failures = str(Path(__file__).with_name("known_failures.toml"))
    # OpenVINO's compile (and query_model) grow faster than the model: a transformer of
    # 4,640 nodes took 1.7 ms a node, one of 290 nodes 0.9 ms (docs/performance.md).
    max_partition_nodes = MAX_PARTITION_NODES

    def __init__(self) -> None:
        self._capabilities = Capabilities(ops=LazyOps(derived_ops, lambda: derive()["refused"]),
                                          precisions=host_precisions(),
                                          value_dtypes=VALUE_DTYPES)

    @property
    def capabilities(self) -> Capabilities:
        """Derived on first read of ``ops`` (see :func:`derive`); this object is data."""
        return self._capabilities

    # ------------------------------------------------------------------ devices

    def probe(self) -> list[Device]:
        """OpenVINO's CPU device, if ``Core().available_devices`` lists it.

        Asked in a child process (:func:`probe_info`), so that listing devices imports no
        runtime into the application and a plugin that crashes while loading costs only
        the child; the answer is kept for the life of the process."""
        info = probe_info()
        if not info.get("ok"):
            raise DeviceUnavailable(info.get("reason") or "OpenVINO's CPU device is not ready")
        return [Device(name=info["name"], kind="cpu", vendor=_vendor(info["name"]), properties={
            "openvino": info["openvino"], "ov_device": OV_DEVICE,
            "architecture": info["architecture"],
            "optimization_capabilities": info["optimization_capabilities"],
            "available_devices": info["available_devices"],
            "precisions": sorted(self.capabilities.precisions)})]

    # ------------------------------------------------------------------ compile

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """Read, check with ``query_model``, and compile the partition (at once when its
        input shapes are static, else once per input-shape signature at run time)."""
        fail = lambda msg, **kw: CompileError(  # noqa: E731
            msg, backend=self.name, device=device.id, located=True, **kw)
        if options.precision not in self.capabilities.precisions:
            raise fail(f"this CPU cannot compute at {options.precision} with OpenVINO; it "
                       f"admits {sorted(self.capabilities.precisions)}")
        extra = (options.extra or {}).get(self.name, {})
        config = compile_config(options, extra)
        if "SNIPPETS_MODE" not in extra and \
                largest_elementwise_tree(graph) > SNIPPETS_TREE_LIMIT:
            config["SNIPPETS_MODE"] = "DISABLE"
        # A model over 2 GiB keeps its big initializers in their files: they come as
        # constants sharing the mapped files' memory, not through the serialised model.
        model, consts = graph.split_external(patched(inlined(graph.model), graph))
        data = model.SerializeToString(deterministic=True)
        core = ov_core()
        try:
            ov_model = core.read_model(data)
            _constants(ov_model, consts)
        except Exception as exc:
            raise wrap(CompileError, exc, graph, backend=self.name, device=device.id) from exc
        # (No disk cache for a model with its weights in files: the blob would copy them.)
        blobs = None if consts else ArtifactCache(OpenVINOBackend.name, options, "compiled",
                                                  suffix=".blob", keep=MAX_CACHED_BLOBS)
        key = (hashlib.sha256(data).hexdigest(), options.precision, options.policy,
               sorted(config.items()), ov_version(), _backplane_version, device.name)
        exe = OpenVINOExecutable(ov_model, graph, device, config, options.precision, blobs, key)
        if exe.static_signature is None:  # compiled per shape at run time: ask now
            _refuse_unplaced(core, ov_model, config, graph, device, fail)
            return exe
        # query_model runs the CPU plugin's transformations and asks its node factory for
        # each operation; compile_model runs the same and fails on any operation the
        # factory refuses. So a compile that succeeds has every operation on the CPU, and
        # only a failed one pays for the query (as long again), to name what it left off.
        try:
            exe.compiled_for(exe.static_signature)  # fail here, not at the first run
        except CompileError:
            _refuse_unplaced(core, ov_model, config, graph, device, fail)
            raise
        return exe


def _refuse_unplaced(core: Any, ov_model: Any, config: dict[str, Any], graph: Any,
                     device: Device, fail: Any) -> None:
    """A CompileError naming the operations ``query_model`` leaves off the CPU, and the
    ONNX nodes they come from (the session plans those elsewhere), if there are any."""
    try:
        placed = core.query_model(ov_model, OV_DEVICE, config)
    except Exception as exc:
        raise wrap(CompileError, exc, graph, backend=OpenVINOBackend.name,
                   device=device.id) from exc
    missing = [op for op in ov_model.get_ops() if op.get_friendly_name() not in placed]
    if not missing:
        return
    names = ", ".join(f"{op.get_friendly_name()} ({op.get_type_name()})" for op in missing[:10])
    nodes = onnx_nodes_of(missing, graph)
    labels = ", ".join(f"'{n.name or n.outputs[0]}' ({n.op_type})" for n in nodes)
    raise fail(f"OpenVINO's query_model leaves {len(missing)} operation(s) off the CPU "
               f"device: {names}" + (f"; they come from ONNX nodes {labels}" if nodes
                                     else "") + "; the graph is not run partially",
               op=nodes[0].op_type if nodes else None,
               vendor_message=f"query_model: unsupported {names}",
               nodes=tuple(n.name for n in nodes if n.name))


def largest_elementwise_tree(graph: Any) -> int:
    """The most element-wise operations the CPU plugin's snippets could fuse into one
    kernel: the largest tree of element-wise nodes in which each value feeds only the next
    node (a value with two readers, as a residual stream's, starts a new tree), a variadic
    node (Sum, Max, Min, Mean of k inputs) counting as the k - 1 binary operations OpenVINO
    makes of it. Snippets' cost grows with the square of that number."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.costs import family_of

    readers: collections.Counter[str] = collections.Counter(
        v for node in graph.nodes for v in node.inputs if v)
    readers.update(vi.name for vi in graph.outputs)
    tree: dict[str, int] = {}
    largest = 0
    for node in graph.nodes:
        if family_of(node.op_type) != "elementwise":
            continue
        ins = [v for v in node.inputs if v]
        here = max(1, len(ins) - 1) + sum(tree.get(v, 0) for v in set(ins)
                                          if readers[v] == 1)
        for v in node.outputs:
            tree[v] = here
        largest = max(largest, here)
    return largest


_probe_lock = threading.Lock()
_probe_answer: dict[str, Any] | None = None


def probe_info() -> dict[str, Any]:
    """What OpenVINO says about its CPU device, asked once per process in a child process
    (within 4 s, or 90% of ``BACKPLANE_PROBE_TIMEOUT_S`` if shorter): ``{"ok": True,
    "name", "openvino", "architecture", "optimization_capabilities", "available_devices"}``
    or ``{"ok": False, "reason"}``. Writes no file and changes no environment variable."""
    global _probe_answer
    import importlib.util

    with _probe_lock:
        if _probe_answer is not None:
            return _probe_answer
        if importlib.util.find_spec("openvino") is None:
            answer = {"ok": False, "reason": "openvino is not installed; pip install "
                                             "'backplane-hal[openvino]'"}
        else:
            found = run_child(
                "from backplane.plugins.openvino_cpu import _probe_child; _probe_child()",
                timeout_s=probe_budget_s(cap=4.0, floor=0.5), what="the OpenVINO probe process")
            answer = found.last if found.reason is None and isinstance(found.last, dict) \
                else {"ok": False, "reason": found.reason or f"the OpenVINO probe process "
                                                             f"answered {found.last!r}"}
        _probe_answer = answer
        return answer


def _probe_child() -> None:
    """The probe's child process: print OpenVINO's answer as one JSON line."""
    try:
        openvino = ov()
        core = openvino.Core()
        available = list(core.available_devices)
        if OV_DEVICE not in available:
            answer = {"ok": False, "reason": f"OpenVINO {openvino.get_version()} lists no CPU "
                                             f"device (it lists {available or 'none'})"}
        else:
            prop = lambda key: core.get_property(OV_DEVICE, key)  # noqa: E731
            answer = {"ok": True, "name": str(prop("FULL_DEVICE_NAME")),
                      "openvino": openvino.get_version(),
                      "architecture": str(prop("DEVICE_ARCHITECTURE")),
                      "optimization_capabilities": [str(c) for c in
                                                    prop("OPTIMIZATION_CAPABILITIES")],
                      "available_devices": available}
    except Exception as exc:
        answer = {"ok": False, "reason": f"OpenVINO's CPU plugin failed to load: "
                                         f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer))


def compile_config(options: CompileOptions, extra: Mapping[str, Any]) -> dict[str, Any]:
    """OpenVINO compile properties for the options.

    - precision: ``INFERENCE_PRECISION_HINT`` f32, f16 or bf16; at fp32 also
      ``EXECUTION_MODE_HINT`` ACCURACY, which keeps OpenVINO from quantizing activations
      dynamically. ``extra`` may not change either: precision is the session's choice.
    - latency: ``PERFORMANCE_HINT`` LATENCY (one stream, every core on each request).
    - throughput: ``PERFORMANCE_HINT`` THROUGHPUT (several streams; the executable keeps one
      infer request per concurrent caller, so concurrent ``run`` calls fill the streams).
    - efficiency: LATENCY on half the physical cores (``INFERENCE_NUM_THREADS``).

    ``extra`` (``Session(options={"openvino-cpu": {...}})``) adds raw OpenVINO properties.
    """
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[options.precision],
                              "EXECUTION_MODE_HINT": "ACCURACY" if options.precision == "fp32"
                              else "PERFORMANCE"}
    if options.policy == "throughput":
        config["PERFORMANCE_HINT"] = "THROUGHPUT"
    else:
        config["PERFORMANCE_HINT"] = "LATENCY"
        if options.policy == "efficiency":
            config["INFERENCE_NUM_THREADS"] = max(1, physical_cores() // 2)
    for key, value in dict(extra).items():
        if key in ("INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT"):
            raise CompileError(f"options['openvino-cpu'] may not set {key}: the precision is "
                               "CompileOptions.precision (Session(precision=...))",
                               backend=OpenVINOBackend.name)
        config[str(key)] = value if isinstance(value, (int, float, bool)) else str(value)
    return config


def host_precisions() -> frozenset[str]:
    """fp32, plus fp16/bf16 where the CPU computes them natively (read from /proc/cpuinfo,
    without importing OpenVINO; ``compile`` checks OpenVINO's own answer again)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset({"fp32"})
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return frozenset({"fp32"} | {p for p, need in _PRECISION_FLAGS.items() if flags & set(need)})


def _vendor(name: str) -> str:
    return next((v for v in ("Intel", "AMD", "ARM", "Apple") if v.lower() in name.lower()), "")


def _constants(ov_model: Any, arrays: Mapping[str, Any]) -> None:
    """Replace the parameters named in ``arrays`` by constants sharing the arrays' memory."""
    if not arrays:
        return
    openvino = ov()
    for param in list(ov_model.get_parameters()):
        array = arrays.get(param.get_friendly_name())
        if array is not None:
            const = openvino.opset13.constant(array, shared_memory=True)
            param.output(0).replace(const.output(0))
            ov_model.remove_parameter(param)
    ov_model.validate_nodes_and_infer_types()


# ---------------------------------------------------------------------- capabilities

#: Narrowings of the derived support, where an op runs in a one-node probe but some of its
#: variants give wrong results on OpenVINO's CPU plugin (each with the reason).
CONSTRAINTS: dict[str, dict[str, Any]] = {
    # Tile with repeats fed at run time returns uninitialised memory (ONNX's test_tile came
    # back with values near 1e37); with constant repeats it is right.
    "Tile": {"constant_inputs": frozenset({1})},
    # The Indices output in column-major order is wrong (computed as row-major); with
    # ceil_mode a last window that would start in the end padding is kept, where ONNX drops
    # it (ONNX's test_maxpool_2d_ceil_output_size_reduce_by_one: 2x2 for 1x1).
    "MaxPool": {"attributes": {"storage_order": AttributeRule(allowed=(0,)),
                               "ceil_mode": AttributeRule(allowed=(0,))}},
    # The frontend drops the peepholes P (the model's input goes unread): ONNX's
    # test_lstm_with_peepholes comes back 5e-3 off at every version.
    "LSTM": {"absent_inputs": frozenset({7})},
    # The ONNX frontend has no conversion for mode "wrap".
    "Pad": {"attributes": {"mode": AttributeRule(allowed=("constant", "reflect", "edge"))}},
    # The frontend refuses half_pixel_symmetric and tf_crop_and_resize; antialias and
    # keep_aspect_ratio_policy other than "stretch" run but give wrong values and shapes.
    "Resize": {"attributes": {
        "coordinate_transformation_mode": AttributeRule(allowed=(
            "half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")),
        "antialias": AttributeRule(allowed=(0,)),
        "keep_aspect_ratio_policy": AttributeRule(allowed=("stretch",))}},
}


def derived_ops() -> dict[str, OpSupport]:
    """The op table: the versions and dtypes surveyed (:func:`derive`), narrowed by
    CONSTRAINTS."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.registrations import op_supports
    from backplane.ops.verify import attribute_rules, merged_constraints

    data = derive()
    table = {key: {v: d for v, d in versions.items()
                   if int(v) not in REFUSED_VERSIONS.get(key, {})}
             for key, versions in data["ops"].items()}
    return op_supports(table, merged_constraints(
        CONSTRAINTS, attribute_rules(data.get("rules", {}))))


#: Quantizing ops whose integer outputs may land one quantization step off: OpenVINO
#: lowers QuantizeLinear to FakeQuantize, which computes round(x / scale + zero point -
#: the type's minimum) in float32, through the scale's reciprocal. So an x / scale within
#: a few ulps of a .5 tie can round the other way, and at an exact tie the parity of the
#: zero point decides (ONNX: round(x / scale) + zero point). One step, never more; the
#: conformance tolerance for QuantizeLinear here is the same (conformance/tolerances.toml).
#: The node tests (``backplane.ops.verify``) compare these ops' integer outputs so.
QUANTIZATION_STEPS = {"QuantizeLinear": 1, "DynamicQuantizeLinear": 1}


#: Op versions OpenVINO reads but computes wrong, where no ONNX node test is recorded (so
#: the derivation's check cannot see it); found by the oracle audit's tests moved to those
#: versions (``python -m backplane.conformance.oracle_audit --old-versions``). (Softmax,
#: LogSoftmax and Hardmax 1 and 11, also computed wrong, are rewritten instead: patched.)
REFUSED_VERSIONS: dict[str, dict[int, str]] = {
    **{op: {1: "the `axes` attribute is ignored: every axis is reduced",
            11: "the same, at version 11", 13: "the same, at version 13"}
       for op in ("ReduceL1", "ReduceLogSum", "ReduceLogSumExp")},
}


def derive(use_cache: bool = True) -> dict[str, Any]:
    """``{"ops": {op key: {version: [dtypes]}}, "refused": {op key: {"version/dtype": why}},
    ...}``, surveyed by :func:`backplane.ops.survey.survey`.

    Read from ``cache_dir("openvino-cpu")/capabilities-KEY.json`` when present (KEY hashes
    the OpenVINO and backplane versions, the derivation and probe versions and the machine),
    else computed and written there (:func:`backplane.sdk.cache.cached_json`).
    """
    return cached_json(OpenVINOBackend.name, derivation_key(), _derive_now,
                       use_cache=use_cache, valid=valid_survey, shipped=SHIPPED,
                       keep=lambda data: "unverified" not in data)


def derivation_key() -> tuple[Any, ...]:
    """What the derived table depends on: the OpenVINO and backplane versions, the
    derivation's and the trial models', and the machine."""
    # on use only: discovery loads this module, and must stay light
    import platform

    from backplane.ops import trials

    return (ov_version(), _backplane_version, DERIVATION_VERSION, trials.VERSION,
            platform.machine())


def _derive_now() -> dict[str, Any]:
    """Every op of the registry surveyed (:mod:`backplane.ops.survey`): the core ops
    compiled and run in every dtype, the others asked of ``query_model``; then every op
    version and dtype whose ONNX node tests come back wrong taken out
    (:func:`backplane.ops.verify.verify`). Fused ops are not declared."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.trials import OPSET
    from backplane.ops.survey import survey
    from backplane.ops.verify import VerificationError, narrowed, verify

    t0 = time.perf_counter()
    found = survey(query, run=try_op)
    try:
        wrong, rules = verify(OpenVINOBackend.name, found["ops"])
    except VerificationError as exc:  # used as it is, not cached: checked next time
        return {"openvino": ov_version(), **found, "unverified": str(exc)}
    for key, per in wrong.items():
        found["refused"].setdefault(key, {}).update(per)
    return {"openvino": ov_version(), "backplane": _backplane_version, "opset": OPSET,
            "seconds": round(time.perf_counter() - t0, 3),
            "ops": narrowed(found["ops"], wrong), "rules": rules, "refused": found["refused"]}


def try_op(op: str, dtype: str, domain: str = "") -> str:
    """'' when every probe model of ``op`` in ``dtype`` is taken whole by ``query_model``,
    compiles and runs on the CPU plugin (f32 precision, one thread); else OpenVINO's reason."""
    # on use only: discovery loads this module, and must stay light
    import numpy as np

    from backplane.ops.trials import models

    core = ov_core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY",
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}
    for model, feeds in models(op, dtype, domain):
        try:
            ov_model = core.read_model(inlined(model).SerializeToString())
            placed = core.query_model(ov_model, OV_DEVICE, config)
            missing = [f"{o.get_friendly_name()} ({o.get_type_name()})"
                       for o in ov_model.get_ops() if o.get_friendly_name() not in placed]
            if missing:
                return "query_model leaves off the CPU: " + ", ".join(missing)
            request = core.compile_model(ov_model, OV_DEVICE, config).create_infer_request()
            for i, port in enumerate(ov_model.inputs):
                request.set_input_tensor(i, to_tensor(np, feeds[port.get_any_name()], None))
            request.infer()
            for i in range(len(ov_model.outputs)):
                from_tensor(np, request.get_output_tensor(i), None)
        except Exception as exc:
            return str(wrap(CompileError, exc, None, backend=OpenVINOBackend.name,
                            device=None).vendor_message)[:400]
    return ""


__all__ = ["CONSTRAINTS", "DERIVATION_VERSION", "MAX_PARTITION_NODES", "OV_DEVICE",
           "PRECISION_HINTS", "QUANTIZATION_STEPS", "REFUSED_VERSIONS", "SHAPE_CACHE_SIZE",
           "SHIPPED", "SNIPPETS_TREE_LIMIT", "VALUE_DTYPES", "OpenVINOBackend",
           "OpenVINOExecutable", "compile_config", "derivation_key", "derive", "derived_ops",
           "host_precisions", "largest_elementwise_tree", "probe_info", "try_op"]
