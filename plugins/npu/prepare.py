"""Preparing a partition for an NPU: static shapes, then fp16 or int8. No device needed.

Every function here is pure (a graph and options in, a model or a refusal out) so that the
preparation is tested on a machine without an NPU: the prepared OpenVINO model compiles on
OpenVINO's CPU device as well, and :func:`fp16_activations` adds to it the rounding of
every intermediate value to fp16 that the NPU's fp16 compute applies (the CPU emulation in
``tests/test_backend_npu.py`` and ``docs/backends/npu.md``).

1. **Shapes** (:func:`session_dims`, :func:`static_graph`): NPUs compile static shapes
   only. Symbolic input dimensions take the session's sizes (``CompileOptions.dims`` when
   the session passes them, ``options={"npu": {"dims": {...}}}``, else the calibration
   inputs' sizes); a dimension still unknown after that, or an output whose size depends
   on the data, is refused with a ``CompileError`` naming it, before anything is compiled.
2. **fp16** (:func:`compress_fp16`): weights are stored as fp16 (OpenVINO's
   ``save_model(compress_to_fp16=True)``, the form OpenVINO's NPU documentation asks for),
   and the compile asks the NPU for f16 inference precision. ONNX Runtime's QNN path keeps
   the fp32 graph and asks the HTP for fp16 with the provider option
   ``enable_htp_fp16_precision``.
3. **int8** (:func:`quantize_int8`, :func:`quantize_onnx`): post-training quantization
   with the calibration inputs given to the session (``options={"npu": {"calibration":
   [feeds, ...]}}``): NNCF (``nncf.quantize``, target device NPU) on the OpenVINO model;
   ONNX Runtime's QDQ quantizer for the QNN and VitisAI providers. No calibration, no int8:
   a ``CompileError`` says what to pass.

Refusals raise :class:`PrepareError` (a ``CompileError`` without a device yet); the backend
adds the device. Nothing here imports openvino, nncf or onnxruntime at module load.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backplane import __version__
from backplane.runtimes.openvino import inlined, ov_core, patched
from backplane.sdk.cache import cache_key
from backplane.sdk.errors import CompileError, InputError

#: Bump when the preparation changes what it produces, so cached blobs are not reused.
PREPARATION_VERSION = 1
#: Largest finite fp16 value: an intermediate beyond it is inf on an fp16 NPU.
FP16_MAX = 65504.0
#: Keys of ``options["npu"]["quantization"]`` and what they become in ``nncf.quantize``.
QUANTIZATION_KEYS = ("preset", "model_type", "fast_bias_correction", "subset_size")
_nncf_lock = threading.Lock()


class PrepareError(CompileError):
    """The partition cannot be prepared for an NPU (before any compile): the reason and
    what to pass instead."""


# ---------------------------------------------------------------------- shapes

def session_dims(graph: Any, options: Any, extra: Mapping[str, Any],
                 calibration: Sequence[Mapping[str, Any]] = ()) -> dict[str, int]:
    """The sizes of symbolic dimensions to compile for: the calibration inputs' sizes,
    overridden by ``options["npu"]["dims"]``, overridden by the session's own
    (``CompileOptions.dims``, when the session passes them)."""
    # on use only: discovery loads this module, and must stay light
    from backplane.model.inputs import dims_of

    dims: dict[str, int] = {}
    if calibration:
        dims.update(dims_of(graph, calibration[0]))
    for source in (extra.get("dims"), getattr(options, "dims", None)):
        if source:
            if not isinstance(source, Mapping):
                raise PrepareError(f"dims must map dimension names to sizes, not "
                                   f"{type(source).__name__}", backend="npu")
            dims.update({str(k): int(v) for k, v in source.items()})
    return dims


def static_graph(graph: Any, dims: Mapping[str, int]) -> Any:
    """``graph`` with its symbolic input dimensions fixed to ``dims`` and shapes inferred
    again; refused when an input or output dimension is still not a number."""
    # on use only: discovery loads this module, and must stay light
    from backplane.model.intake import with_dims

    names = {d for vi in graph.inputs for d in (vi.shape or ()) if isinstance(d, str)}
    wanted = {k: v for k, v in dims.items() if k in names}
    try:
        fixed = with_dims(graph, wanted) if wanted else graph
    except InputError as exc:
        raise PrepareError(f"the session's dims do not fit the partition: {exc}",
                           backend="npu") from None
    for vi in fixed.inputs:
        if vi.shape is None:
            raise PrepareError(f"input '{vi.name}' has an unknown rank; NPUs compile static "
                               "shapes only", backend="npu")
        for i, d in enumerate(vi.shape):
            if isinstance(d, int):
                continue
            if isinstance(d, str):
                raise PrepareError(
                    f"input '{vi.name}' dimension {i} ('{d}') has no size: NPUs compile "
                    f"static shapes only; give the session its size (Session(dims={{'{d}': "
                    f"N}}) or sample_inputs=..., or options={{'npu': {{'dims': {{'{d}': N}}}}}})",
                    backend="npu")
            raise PrepareError(
                f"input '{vi.name}' dimension {i} is unnamed and has no size: NPUs compile "
                "static shapes only, and an unnamed dimension cannot be given one by name; "
                "export the model with a fixed or named dimension", backend="npu")
    for vi in fixed.outputs:
        for i, d in enumerate(vi.shape or ()):
            if not isinstance(d, int):
                raise PrepareError(
                    f"output '{vi.name}' dimension {i} ({_dim(d)}) depends on the data, not "
                    "only on the input shapes; NPUs compile static shapes only, so the node "
                    "computing it cannot run on one", backend="npu")
    return fixed


def input_shapes(graph: Any) -> dict[str, tuple[int, ...]]:
    """Input name -> static shape of a graph that :func:`static_graph` accepted."""
    return {vi.name: tuple(vi.shape) for vi in graph.inputs}


def _dim(d: Any) -> str:
    return f"'{d}'" if isinstance(d, str) else "unnamed"


# ---------------------------------------------------------------------- calibration

def calibration_set(graph: Any, extra: Mapping[str, Any], required: bool
                    ) -> list[dict[str, Any]]:
    """The calibration inputs of ``options["npu"]["calibration"]``, checked against the
    partition: a list of feeds (one mapping is one sample), each naming every input of the
    partition with an array of its dtype and rank. Refused when ``required`` (int8) and
    none were given."""
    import numpy as np

    given = extra.get("calibration")
    names = [vi.name for vi in graph.inputs]
    if given is None or (isinstance(given, Sequence) and not given):
        if required:
            raise PrepareError(
                "int8 on an NPU is post-training quantization, which needs calibration "
                "inputs: pass options={'npu': {'calibration': [feeds, ...]}} (a few dozen "
                f"representative feeds of {names}), or choose precision='fp16'",
                backend="npu")
        return []
    samples = [given] if isinstance(given, Mapping) else list(given)
    out = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, Mapping):
            raise PrepareError(f"calibration sample {i} is a {type(sample).__name__}, not a "
                               "mapping of input names to arrays", backend="npu")
        missing = [n for n in names if n not in sample]
        if missing:
            raise PrepareError(
                f"calibration sample {i} lacks {missing}: the NPU partition reads "
                f"{names}; calibration feeds name {sorted(sample)}. int8 needs calibration "
                "values for the partition's own inputs (a partition that starts inside the "
                "model reads intermediate values)", backend="npu")
        feed = {}
        for vi in graph.inputs:
            arr = np.asarray(sample[vi.name])
            if vi.dtype and arr.dtype.name != vi.dtype:
                raise PrepareError(f"calibration sample {i}: '{vi.name}' is {arr.dtype}, the "
                                   f"graph declares {vi.dtype}", backend="npu")
            if vi.shape is not None and arr.ndim != len(vi.shape):
                raise PrepareError(f"calibration sample {i}: '{vi.name}' has rank {arr.ndim}, "
                                   f"the graph declares {vi.describe()}", backend="npu")
            feed[vi.name] = arr
        out.append(feed)
    return out


def calibration_digest(samples: Sequence[Mapping[str, Any]]) -> str:
    """A hash of the calibration inputs (names, dtypes, shapes, bytes), for cache keys."""
    import numpy as np

    h = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            arr = np.ascontiguousarray(sample[name])
            h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def quantization_options(extra: Mapping[str, Any]) -> dict[str, Any]:
    """``options["npu"]["quantization"]`` checked: ``preset`` (``performance``, NNCF's
    default: symmetric, or ``mixed``: asymmetric activations), ``model_type``
    (``transformer``: NNCF's scheme that keeps some attention ops unquantized),
    ``fast_bias_correction`` (bool), ``subset_size`` (samples used; default all given)."""
    given = dict(extra.get("quantization") or {})
    unknown = sorted(set(given) - set(QUANTIZATION_KEYS))
    if unknown:
        raise PrepareError(f"options['npu']['quantization'] has unknown keys {unknown}; it "
                           f"takes {list(QUANTIZATION_KEYS)}", backend="npu")
    allowed = {"preset": ("performance", "mixed"), "model_type": ("transformer",)}
    for key, values in allowed.items():
        if key in given and str(given[key]).lower() not in values:
            raise PrepareError(f"options['npu']['quantization']['{key}'] must be one of "
                               f"{list(values)}, not {given[key]!r}", backend="npu")
    return given


# ---------------------------------------------------------------------- OpenVINO

@dataclass
class Prepared:
    """An OpenVINO model ready for the NPU: static shapes, fp16 weights, int8 where asked.

    Attributes:
        model: the ``openvino.Model``.
        shapes: input name -> static shape it was prepared for.
        precision: ``fp16`` or ``int8``.
        notes: what was done, in words (shown in ``Executable.path``).
    """

    model: Any
    shapes: dict[str, tuple[int, ...]]
    precision: str
    notes: list[str]


def onnx_bytes(graph: Any) -> bytes:
    """The partition as ONNX bytes the way OpenVINO reads it (model-local functions
    inlined, the frontend's Gemm defect worked around: :mod:`backplane.runtimes.openvino`)."""
    return patched(inlined(graph.model), graph).SerializeToString(deterministic=True)


def prepare_openvino(graph: Any, shapes: Mapping[str, Sequence[int]], precision: str,
                     calibration: Sequence[Mapping[str, Any]] = (),
                     quantization: Mapping[str, Any] | None = None,
                     core: Any = None) -> Prepared:
    """Read ``graph`` into OpenVINO, quantize it (int8, with ``calibration``), fix its
    shapes to ``shapes`` and store its weights in fp16. Raises :class:`PrepareError`."""
    if precision not in ("fp16", "int8"):
        raise PrepareError(f"an NPU computes at fp16 or int8, not {precision}", backend="npu")
    core = core or ov_core()
    try:
        model = core.read_model(onnx_bytes(graph))
    except Exception as exc:
        raise PrepareError.wrap(exc, backend="npu") from exc
    notes = []
    if precision == "int8":
        if not calibration:
            calibration_set(graph, {}, required=True)  # raises with the advice
        model = quantize_int8(model, calibration, quantization or {})
        count = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        notes.append(f"int8: NNCF post-training quantization on {len(calibration)} "
                     f"calibration sample(s), {count} quantizers")
    model = reshape_static(model, shapes)
    model = compress_fp16(model, core)
    notes.append("fp16 weights")
    return Prepared(model, {k: tuple(v) for k, v in shapes.items()}, precision, notes)


def reshape_static(model: Any, shapes: Mapping[str, Sequence[int]]) -> Any:
    """``model`` reshaped to static input ``shapes`` (by input name); refused when OpenVINO
    cannot, or when an operation's output size still depends on the data."""
    import openvino as ov

    by_port = {}
    for port in model.inputs:
        name = next((n for n in port.get_names() if n in shapes), None)
        if name is None:
            raise PrepareError(f"OpenVINO's model has an input {port.get_any_name()!r} that "
                               "the partition does not declare", backend="npu")
        by_port[port] = ov.PartialShape([int(d) for d in shapes[name]])
    try:
        model.reshape(by_port)
    except Exception as exc:
        raise PrepareError(f"OpenVINO cannot fix the input shapes to "
                           f"{ {k: list(v) for k, v in shapes.items()} }: "
                           f"{_first_line(exc)}", backend="npu") from None
    for op in model.get_ops():
        for out in op.outputs():
            if out.get_partial_shape().is_dynamic:
                raise PrepareError(
                    f"OpenVINO {op.get_type_name()} '{op.get_friendly_name()}' has the output "
                    f"shape {out.get_partial_shape()} for static inputs: its size depends on "
                    "the data, and NPUs compile static shapes only", backend="npu")
    return model


def compress_fp16(model: Any, core: Any) -> Any:
    """``model`` with its float weights stored as fp16, through OpenVINO's public
    ``save_model(compress_to_fp16=True)`` into a temporary folder and read back from
    memory (so no file stays mapped)."""
    import numpy as np
    import openvino as ov

    folder = tempfile.mkdtemp(prefix="backplane-npu-")
    try:
        xml = os.path.join(folder, "model.xml")
        ov.save_model(model, xml, compress_to_fp16=True)
        with open(xml, "rb") as f:
            text = f.read()
        with open(os.path.join(folder, "model.bin"), "rb") as f:
            weights = np.frombuffer(f.read(), np.uint8)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return core.read_model(text, ov.Tensor(weights) if weights.size else ov.Tensor(
        ov.Type.u8, [0]))


def quantize_int8(model: Any, calibration: Sequence[Mapping[str, Any]],
                  quantization: Mapping[str, Any]) -> Any:
    """NNCF post-training quantization of an OpenVINO model for the NPU target, calibrated
    on ``calibration`` (all samples unless ``subset_size`` says fewer). NNCF's progress bar
    (printed by rich to stdout) is kept out of the application's output."""
    try:
        import nncf
    except ImportError:
        raise PrepareError("int8 for an NPU needs NNCF: pip install 'backplane-hal[npu]' "
                           "(or pip install nncf)", backend="npu") from None
    kwargs: dict[str, Any] = {"subset_size": int(quantization.get("subset_size")
                                                 or len(calibration)),
                              "target_device": nncf.TargetDevice.NPU}
    if "preset" in quantization:
        kwargs["preset"] = getattr(nncf.QuantizationPreset, str(quantization["preset"]).upper())
    if "model_type" in quantization:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if "fast_bias_correction" in quantization:
        kwargs["fast_bias_correction"] = bool(quantization["fast_bias_correction"])
    with _nncf_lock, contextlib.redirect_stdout(io.StringIO()):
        nncf.set_log_level(logging.ERROR)
        try:
            return nncf.quantize(model, nncf.Dataset(list(calibration)), **kwargs)
        except Exception as exc:
            raise PrepareError(f"NNCF could not quantize the partition: "
                               f"{type(exc).__name__}: {_first_line(exc)}",
                               backend="npu") from None


def fp16_activations(model: Any) -> Any:
    """A copy of ``model`` in which every float32 value an operation computes is rounded
    to fp16's 11 significant bits before its users read it: the storage rounding of an
    NPU that computes in fp16, for emulating it on a CPU (weights are rounded already by
    :func:`compress_fp16`).

    OpenVINO removes a Convert f32->f16->f32 pair, so the rounding is written as
    Veltkamp's split in float32 arithmetic: ``t = x * (2**13 + 1)``, ``x16 = t - (t - x)``
    keeps the top 11 significant bits of ``x``, rounded to nearest (exact for values in
    fp16's normal range; fp16's overflow above 65504 is not modelled: see
    :data:`FP16_MAX`)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    out = model.clone()
    split = ops.constant(np.float32(2 ** 13 + 1))
    for op in list(out.get_ordered_ops()):
        if op.get_type_name() in ("Parameter", "Result", "Constant", "Convert", "ShapeOf"):
            continue
        for port in op.outputs():
            users = list(port.get_target_inputs())
            if port.get_element_type() != ov.Type.f32 or not users:
                continue
            t = ops.multiply(port, split)
            rounded = ops.subtract(t, ops.subtract(t, port))
            for user in users:
                user.replace_source_output(rounded.output(0))
    out.validate_nodes_and_infer_types()
    return out


# ---------------------------------------------------------------------- ONNX Runtime

def quantize_onnx(model: Any, calibration: Sequence[Mapping[str, Any]], provider: str) -> Any:
    """An int8 QDQ ONNX model for ONNX Runtime's NPU providers, by ORT's own quantizer,
    calibrated on ``calibration``: the QNN recipe (``get_qnn_qdq_config``: uint8
    activations and weights, as the HTP takes them) for QNN; for VitisAI, uint8
    activations, int8 weights, per-tensor MinMax (AMD's Quark quantizer is the vendor's
    recommendation; this is ORT's generic equivalent)."""
    import onnx
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([dict(s) for s in calibration])

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    folder = tempfile.mkdtemp(prefix="backplane-npu-")
    try:
        # ORT's quantizer rewrites a ModelProto it is given (its weights become external
        # data in its own temporary folder): it gets a file instead.
        source = os.path.join(folder, "fp32.onnx")
        onnx.save(model, source)
        out = os.path.join(folder, "int8.onnx")
        with contextlib.redirect_stdout(io.StringIO()):
            if provider == "QNNExecutionProvider":
                from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

                q.quantize(source, out, get_qnn_qdq_config(source, Reader()))
            else:
                q.quantize_static(source, out, Reader(), quant_format=q.QuantFormat.QDQ,
                                  activation_type=q.QuantType.QUInt8,
                                  weight_type=q.QuantType.QInt8)
        return onnx.load(out)
    except PrepareError:
        raise
    except Exception as exc:
        raise PrepareError(f"ONNX Runtime's quantizer could not quantize the partition: "
                           f"{type(exc).__name__}: {_first_line(exc)}", backend="npu") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------- cache keys

def blob_key(model: bytes, shapes: Mapping[str, Sequence[int]], precision: str,
             calibration: str, quantization: Mapping[str, Any], device: Mapping[str, Any],
             config: Mapping[str, Any]) -> str:
    """The key of a compiled blob: everything it depends on. ``device`` carries the
    device's name and the versions of what compiles for it (runtime, driver, compiler);
    ``calibration`` is :func:`calibration_digest` (empty at fp16)."""
    return cache_key(model, sorted((k, tuple(v)) for k, v in shapes.items()), precision,
                     calibration, sorted(quantization.items()), sorted(device.items()),
                     sorted((k, str(v)) for k, v in config.items()), __version__,
                     PREPARATION_VERSION)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:400] if lines else type(exc).__name__
