"""The runners of the oracle audit (``oracle_audit.py``), and its worker process.

Each runner takes a serialized model and its feeds and returns the outputs in graph order.
The types the runtimes' Python APIs have no numpy type for (bfloat16, the float8 and 4-bit
types) cross as their bits, so what is compared is what the runtime computed.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from backplane.conformance.worker import serve_tasks


def run_reference(model: bytes, feeds: dict[str, Any]) -> list[Any]:
    """backplane's reference evaluator (onnx.reference with the fixes), own types."""
    # on use only: onnx.reference loads when the reference runs
    import numpy as np
    import onnx

    from backplane.runtimes.onnxref.fixes import evaluator_class

    with np.errstate(all="ignore"):
        return list(evaluator_class()(onnx.load_from_string(model)).run(None, feeds))


def run_oracle(model: bytes, feeds: dict[str, Any]) -> list[Any]:
    """The conformance oracle: the same evaluator, in float64 where the model admits it."""
    # on use only: the suite's modules load when a run asks for them
    import onnx

    from backplane.conformance.oracle import expected

    proto = onnx.load_from_string(model)
    got = expected(proto, feeds)
    return [got[o.name] for o in proto.graph.output]


def run_onnxruntime(model: bytes, feeds: dict[str, Any]) -> list[Any]:
    """ONNX Runtime's CPU provider, default graph optimizations, one thread; the types its
    Python API has no numpy type for (bfloat16, float8, 4-bit) pass through their bits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    types = [v.type for v in [*session.get_inputs(), *session.get_outputs()]]
    if not any(_onnx_code(t) for t in types):
        return list(session.run(None, feeds))
    values = {}
    for name, arr in feeds.items():
        code = _onnx_code(next(v.type for v in session.get_inputs() if v.name == name))
        if code and isinstance(arr, _np().ndarray):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(arr.shape), code)
            _copy_bits(_bits(arr), value.data_ptr())
            values[name] = value
        else:
            values[name] = ort.OrtValue.ortvalue_from_numpy(arr)
    out = []
    for value in session.run_with_ort_values(None, values):
        if _onnx_code(value.data_type()):
            host = _np().empty(value.tensor_size_in_bytes(), _np().uint8)
            _copy_bits(host, value.data_ptr(), into=True)
            out.append(_from_bits(host, _exotic(value.data_type()), tuple(value.shape())))
        else:
            out.append(value.numpy())
    return out


_OV_CORE: Any = None
#: ONNX types OpenVINO's Python API passes only as bits, by their ml_dtypes name.
_OV_TYPES = {"bfloat16": "bf16", "float8_e4m3fn": "f8e4m3", "float8_e5m2": "f8e5m2",
             "float8_e8m0fnu": "f8e8m0", "float4_e2m1fn": "f4e2m1", "int4": "i4",
             "uint4": "u4", "uint2": "u2"}


def run_openvino(model: bytes, feeds: dict[str, Any]) -> list[Any]:
    """OpenVINO's CPU plugin at f32 inference precision, accuracy mode, one thread; the
    types its Python API has no numpy type for pass through their bits."""
    import openvino as ov

    np = _np()
    global _OV_CORE
    core = _OV_CORE = _OV_CORE or ov.Core()
    compiled = core.compile_model(core.read_model(model), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY",
        "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    tensors = []
    for arr in feeds.values():
        arr = np.asarray(arr)
        kind = _OV_TYPES.get(arr.dtype.name)
        if kind is None:
            tensors.append(ov.Tensor(np.ascontiguousarray(arr) if arr.ndim else arr,
                                     shared_memory=False))
            continue
        tensor = ov.Tensor(getattr(ov.Type, kind), list(arr.shape))
        tensor.data.view(np.uint8).reshape(-1)[:] = _bits(arr)
        tensors.append(tensor)
    request.infer(tensors)
    by_ov = {v: k for k, v in _OV_TYPES.items()}
    out = []
    for i in range(len(compiled.outputs)):
        tensor = request.get_output_tensor(i)
        name = by_ov.get(tensor.element_type.get_type_name())
        data = np.array(tensor.data, copy=True)
        if name is not None:
            data = _from_bits(data.view(np.uint8).reshape(-1), _ml_dtype(name),
                              tuple(tensor.shape))
        out.append(data)
    return out


def _np() -> Any:
    import numpy

    return numpy


def _ml_dtype(name: str) -> Any:
    import ml_dtypes

    return _np().dtype(getattr(ml_dtypes, name))


def _exotic(ort_type: str) -> Any:
    """The ml_dtypes dtype of an ORT type string such as ``tensor(float8e4m3fn)``."""
    from onnx import helper

    return _np().dtype(helper.tensor_dtype_to_np_dtype(_onnx_code(ort_type)))


def _onnx_code(ort_type: str) -> int:
    """The ONNX type code of an ORT tensor type that numpy lacks (``tensor(bfloat16)``),
    else 0."""
    from onnx import TensorProto

    name = ort_type[len("tensor("):-1].upper() if ort_type.startswith("tensor(") else ""
    code = TensorProto.DataType.Value(name) if name in TensorProto.DataType.keys() else 0
    return code if code in _EXOTIC_CODES else 0


#: ONNX codes of the types numpy has no type of its own for (ml_dtypes has them).
_EXOTIC_CODES = frozenset({16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26})
#: Bits per element of the sub-byte types, packed low bits first (ONNX's layout).
_SUB_BYTE = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}


def _bits(arr: Any) -> Any:
    """The bytes of ``arr`` as a runtime holds them: sub-byte types packed."""
    np = _np()
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    width = _SUB_BYTE.get(arr.dtype.name)
    if width is None:
        return raw
    per = 8 // width
    raw = np.concatenate([raw & ((1 << width) - 1), np.zeros(-raw.size % per, np.uint8)])
    packed = np.zeros(raw.size // per, np.uint8)
    for k in range(per):
        packed |= (raw[k::per] << (k * width)).astype(np.uint8)
    return packed


def _from_bits(buf: Any, dtype: Any, shape: tuple[int, ...]) -> Any:
    """The array of ``dtype`` and ``shape`` whose bytes (packed for sub-byte types) are
    ``buf``."""
    np = _np()
    count = int(np.prod(shape, dtype=np.int64))
    width = _SUB_BYTE.get(dtype.name)
    if width is None:
        return buf[:count * dtype.itemsize].view(dtype).reshape(shape)
    per = 8 // width
    parts = np.stack([(buf >> (k * width)) & ((1 << width) - 1) for k in range(per)], axis=-1)
    return parts.reshape(-1)[:count].astype(np.uint8).view(dtype).reshape(shape)


def _copy_bits(host: Any, address: int, into: bool = False) -> None:
    """Copy ``host``'s bytes to the runtime buffer at ``address`` (or from it, ``into``)."""
    import ctypes

    if host.nbytes:
        src, dst = (address, host.ctypes.data) if into else (host.ctypes.data, address)
        ctypes.memmove(dst, src, host.nbytes)


_RUN = {"reference": run_reference, "oracle": run_oracle, "onnxruntime": run_onnxruntime,
        "openvino": run_openvino}


def serve(conn: Any) -> None:
    """A worker process: run ``(key, runner, model, feeds)`` tasks until told to stop."""
    warnings.simplefilter("ignore")
    conn.send(("ready",))
    serve_tasks(conn, "run", _answer)


def _answer(message: tuple) -> tuple:
    """``("done", key, ("ok", outputs) or ("error", message), seconds)`` for one task."""
    _, key, runner, model, feeds = message
    t0 = time.perf_counter()
    try:
        reply = ("ok", _RUN[runner](model, feeds))
    except Exception as exc:  # a runtime's refusal is a result, not the audit's failure
        reply = ("error", f"{type(exc).__name__}: {str(exc).strip()[:400]}")
    return ("done", key, reply, time.perf_counter() - t0)
