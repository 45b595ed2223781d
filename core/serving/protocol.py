"""The KServe Open Inference Protocol v2 over HTTP: tensors in and out, JSON and binary.

A request is a JSON object (``inputs``: name, shape, datatype, data) optionally followed
by raw tensor bytes: the *binary tensor data* extension, which tritonclient and KServe
clients use by default. Then the header ``Inference-Header-Content-Length`` says how many
bytes of the body are JSON, each binary input says its byte count in
``parameters.binary_data_size``, and the bytes follow the JSON in the order of the inputs.
A response puts an output in binary when the request asks for it (``parameters.
binary_data: true`` on a requested output, or ``parameters.binary_data_output: true`` on
the request for every output not requested otherwise); it then has the same header and the
content type ``application/octet-stream``.

Element types and their wire form:

========  ==========  =====================================================
datatype  numpy       binary form
========  ==========  =====================================================
BOOL      bool        one byte per element (0 or 1)
UINT8..   uint8..     little-endian, row-major
INT8..    int8..      little-endian, row-major
FP16      float16     little-endian IEEE half (in JSON: numbers)
FP32      float32     little-endian
FP64      float64     little-endian
BYTES     object      per element: 4-byte little-endian length, then the bytes
========  ==========  =====================================================

In JSON, ``data`` is a flat row-major list or nested lists of the tensor's shape; BYTES
elements are strings. Everything that is no valid request raises :class:`ProtocolError`
(an :class:`~backplane.sdk.errors.InputError`: the request is at fault), naming the input and
what is wrong with it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backplane.sdk.errors import DeadlineError, InputError, OverloadError
from backplane.sdk.text import shown

#: The request header that gives the length of the JSON part of a body with binary data.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Content types of a response: all JSON, or JSON followed by binary tensors.
JSON_TYPE, BINARY_TYPE = "application/json", "application/octet-stream"

#: OIP datatype name -> numpy dtype name (BYTES: object arrays of str or bytes).
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object",
}
#: backplane dtype name (``ValueInfo.dtype``) -> OIP datatype name.
_FROM_BACKPLANE = {v: k for k, v in DATATYPES.items() if k != "BYTES"} | {"string": "BYTES"}
#: JSON numbers a datatype accepts, by numpy kind: ints are fine where floats are expected.
_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


class ProtocolError(InputError):
    """A request that is no valid Open Inference Protocol v2 request: malformed JSON or
    body, an unknown datatype, a shape that does not match the data. A server answers
    400; the message names the input and what is wrong."""


def error_status(exc: BaseException) -> tuple[int, dict[str, str]]:
    """(HTTP status, headers) of a backplane error answered to a request: 400 for the
    request's fault (InputError, ProtocolError and RequestError too), 503 for an
    OverloadError (with ``Retry-After`` in whole seconds when it says when to retry), 504
    for a DeadlineError, 500 for anything else."""
    if isinstance(exc, InputError):
        return 400, {}
    if isinstance(exc, OverloadError):
        retry = exc.retry_after_s
        return 503, ({"Retry-After": str(max(1, math.ceil(retry)))} if retry is not None
                     else {})
    if isinstance(exc, DeadlineError):
        return 504, {}
    return 500, {}


def datatype_of(dtype: str) -> str | None:
    """The OIP datatype of a backplane dtype name (``float32`` -> ``FP32``), or None for
    one the protocol cannot carry (bfloat16, float8, complex, sequences, maps)."""
    return _FROM_BACKPLANE.get(dtype)


def shape_of(shape: Sequence[Any] | None) -> list[int]:
    """A model's shape as OIP metadata gives it: -1 for every dynamic dimension (a rank
    that is itself unknown is given as ``[-1]``)."""
    if shape is None:
        return [-1]
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


@dataclass(frozen=True)
class RequestedOutput:
    """An output a request names, and whether it wants it as binary data."""

    name: str
    binary: bool | None = None
    """True/False as asked; None: as the request's ``binary_data_output`` says."""


@dataclass
class InferRequest:
    """A decoded inference request.

    Attributes:
        id: the request's ``id``, echoed in the response (None when absent).
        inputs: input name -> numpy array.
        datatypes: input name -> the OIP datatype it was sent as.
        outputs: the outputs asked for, in order; None: every output of the model.
        binary_output: the request's ``parameters.binary_data_output``.
        timeout_s: the request's deadline from its ``parameters.timeout`` (microseconds,
            Triton's convention), or None.
        parameters: the request's ``parameters`` as sent.
    """

    id: str | None
    inputs: dict[str, Any]
    datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    timeout_s: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_request(body: bytes, header_length: str | int | None = None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON then binary tensors when
    ``header_length``, the value of :data:`HEADER_LENGTH`, is given).

    Raises:
        ProtocolError: anything that is no valid request, with what and where.
    """
    blob = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except (TypeError, ValueError):
            raise ProtocolError(f"header {HEADER_LENGTH} must be a number of bytes, not "
                                f"'{shown(str(header_length))}'") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"header {HEADER_LENGTH} is {n}, but the body holds "
                                f"{len(body)} bytes")
        body, blob = body[:n], body[n:]
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        hint = (f"; a body with binary tensor data needs the header {HEADER_LENGTH}"
                if header_length is None else "")
        raise ProtocolError(f"the request body is not valid JSON: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"the request body must be a JSON object, not "
                            f"{type(doc).__name__}")
    params = _object(doc.get("parameters"), "the request's parameters")
    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("the request must have 'inputs': a non-empty list of tensors "
                            "(name, shape, datatype, data)")
    inputs: dict[str, Any] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for k, entry in enumerate(entries):
        name, array, used = _decode_input(entry, k, blob, offset)
        if name in inputs:
            raise ProtocolError(f"input '{shown(name)}' is given twice")
        inputs[name], datatypes[name] = array, entry["datatype"]
        offset += used
    if offset != len(blob):
        raise ProtocolError(f"the body has {len(blob) - offset} bytes of binary data after "
                            f"the inputs' binary_data_size ({offset} bytes) are read")
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list of {name, parameters}")
        outputs = [_requested(o, k) for k, o in enumerate(doc["outputs"])]
        names = [o.name for o in outputs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ProtocolError(f"output '{shown(twice[0])}' is requested twice")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output must be true or false")
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0 or not math.isfinite(timeout)):
        raise ProtocolError("parameters.timeout must be a positive number of microseconds")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("the request's 'id' must be a string")
    return InferRequest(request_id, inputs, datatypes, outputs, binary_output,
                        None if timeout is None else timeout / 1e6, params)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _decode_input(entry: Any, k: int, blob: bytes, offset: int) -> tuple[str, Any, int]:
    """(name, array, binary bytes used) of the request's ``k``-th input."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError(f"input {k} must be an object with a string 'name'")
    name = entry["name"]
    where = f"input '{shown(name)}'"
    datatype = entry.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: unknown datatype {shown(repr(datatype))}; the "
                            f"datatypes are {', '.join(DATATYPES)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                             and d >= 0 for d in shape):
        raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers, "
                            f"not {shown(json.dumps(shape), 80)}")
    params = _object(entry.get("parameters"), f"{where}: parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in entry:
            raise ProtocolError(f"{where} has both 'data' and parameters.binary_data_size; "
                                "send one")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"{where}: parameters.binary_data_size must be a number of "
                                "bytes")
        if offset + size > len(blob):
            raise ProtocolError(f"{where}: binary_data_size is {size} bytes but only "
                                f"{len(blob) - offset} bytes of binary data are left in the "
                                "body")
        return name, from_bytes(blob[offset:offset + size], datatype, shape, where), size
    if "data" not in entry:
        raise ProtocolError(f"{where} has no 'data' and no parameters.binary_data_size")
    return name, from_json(entry["data"], datatype, shape, where), 0


def _requested(entry: Any, k: int) -> RequestedOutput:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError(f"requested output {k} must be an object with a string 'name'")
    params = _object(entry.get("parameters"), f"output '{shown(entry['name'])}': parameters")
    if params.get("classification"):
        raise ProtocolError(f"output '{shown(entry['name'])}': the classification extension "
                            "is not supported; ask for the tensor")
    binary = params.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise ProtocolError(f"output '{shown(entry['name'])}': parameters.binary_data must "
                            "be true or false")
    return RequestedOutput(entry["name"], binary)


def from_json(data: Any, datatype: str, shape: list[int], where: str = "tensor") -> Any:
    """The numpy array of a JSON tensor: ``data`` flat or nested, checked against the
    datatype (no silent truncation of 1.5 into an integer, no out-of-range integers) and
    the element count of ``shape``."""
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten(data, where)
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"{where}: BYTES data in JSON must be strings")
        values = flat
    else:
        try:
            arr = np.asarray(data)
        except ValueError as exc:  # ragged nesting
            raise ProtocolError(f"{where}: 'data' is not a regular array: {exc}") from None
        want = np.dtype(DATATYPES[datatype])
        if want.kind in "iu" and arr.dtype.kind in "fO":
            # Integers past int64 make numpy fall back to float64 (rounding them) or
            # object: check them one by one as the Python ints JSON gave.
            arr = _integers(_flatten(data, where), want, datatype, where)
        if arr.size and (arr.dtype.kind not in _KINDS[want.kind]):
            raise ProtocolError(f"{where}: {datatype} data must be "
                                f"{_NOUNS[want.kind]}, but holds {_noun(arr)}")
        values = arr.reshape(-1)
    if len(values) != count:
        raise ProtocolError(f"{where}: shape {shape} holds {count} elements but 'data' has "
                            f"{len(values)}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = values
        return out.reshape(shape)
    want = np.dtype(DATATYPES[datatype])
    if values.dtype == object:  # integers beyond 64 bits
        raise ProtocolError(f"{where}: a value is out of the range of {datatype}")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(want)
    if want.kind in "iu" and not np.array_equal(cast.astype(values.dtype), values):
        raise ProtocolError(f"{where}: a value is out of the range of {datatype}")
    return cast.reshape(shape)


def _integers(flat: list[Any], want: Any, datatype: str, where: str) -> Any:
    if not all(type(v) is int for v in flat):
        raise ProtocolError(f"{where}: {datatype} data must be integers")
    info = np.iinfo(want)
    if any(v < info.min or v > info.max for v in flat):
        raise ProtocolError(f"{where}: a value is out of the range of {datatype}")
    return np.array(flat, dtype=want)


_NOUNS = {"b": "true/false", "u": "integers", "i": "integers", "f": "numbers"}


def _noun(arr: Any) -> str:
    return {"b": "true/false", "i": "integers", "u": "integers", "f": "non-integral numbers",
            "U": "strings"}.get(arr.dtype.kind, "values of another kind")


def _flatten(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:  # (iterative: a deeply nested body must not exhaust the stack)
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def from_bytes(raw: bytes, datatype: str, shape: list[int], where: str = "tensor") -> Any:
    """The numpy array of a binary tensor (the wire forms in this module's table)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        pos = 0
        for k in range(count):
            if pos + 4 > len(raw):
                raise ProtocolError(f"{where}: binary BYTES data ends after {k} of {count} "
                                    "elements")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise ProtocolError(f"{where}: binary BYTES element {k} says {n} bytes, "
                                    f"{len(raw) - pos - 4} are left")
            out[k] = raw[pos + 4:pos + 4 + n]
            pos += 4 + n
        if pos != len(raw):
            raise ProtocolError(f"{where}: {len(raw) - pos} bytes are left after {count} "
                                "BYTES elements")
        return out.reshape(shape)
    dt = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dt.itemsize:
        raise ProtocolError(f"{where}: shape {shape} of {datatype} takes "
                            f"{count * dt.itemsize} bytes, binary_data_size is {len(raw)}")
    arr = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True)
    if datatype == "BOOL" and arr.view(np.uint8).max(initial=0) > 1:
        raise ProtocolError(f"{where}: binary BOOL data must be bytes 0 or 1")
    return arr.reshape(shape)


def to_bytes(arr: Any, datatype: str) -> bytes:
    """The binary wire form of an array (see :func:`from_bytes`)."""
    if datatype == "BYTES":
        parts = []
        for v in np.asarray(arr, dtype=object).reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts += [struct.pack("<I", len(b)), b]
        return b"".join(parts)
    dt = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dt).tobytes()


def to_json(arr: Any, datatype: str, name: str = "tensor") -> list[Any]:
    """The flat JSON ``data`` of an array (BYTES as UTF-8 strings)."""
    flat = np.asarray(arr).reshape(-1)
    if datatype != "BYTES":
        return flat.tolist()
    out = []
    for v in flat:
        try:
            out.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
        except UnicodeDecodeError:
            raise ProtocolError(f"output '{shown(name)}' holds bytes that are no UTF-8 text; "
                                "ask for it as binary data (parameters.binary_data: true)"
                                ) from None
    return out


def output_datatype(arr: Any, name: str) -> str:
    """The OIP datatype of an output array; ProtocolError for one the protocol cannot
    carry."""
    kind = np.asarray(arr).dtype
    if kind == object or kind.kind in "SU":
        return "BYTES"
    found = datatype_of(kind.name)
    if found is None:
        raise ProtocolError(f"output '{shown(name)}' is {kind.name}, which the Open Inference "
                            "Protocol cannot carry")
    return found


def encode_response(model: str, version: str, request: InferRequest,
                    outputs: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the response to ``request`` with the model's ``outputs``.

    Outputs are those the request asked for, in its order (all of them when it asked for
    none); each is binary where asked (see the module's docstring).

    Raises:
        ProtocolError: a requested output the model does not have.
    """
    if request.outputs is None:
        wanted = [RequestedOutput(n) for n in outputs]
    else:
        wanted = request.outputs
        unknown = [o.name for o in wanted if o.name not in outputs]
        if unknown:
            raise ProtocolError(f"unknown output '{shown(unknown[0])}'; the model's outputs "
                                f"are {', '.join(repr(shown(n)) for n in outputs)}")
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        doc["id"] = request.id
    tensors, blobs = [], []
    for o in wanted:
        arr = np.asarray(outputs[o.name])
        datatype = output_datatype(arr, o.name)
        tensor: dict[str, Any] = {"name": o.name, "datatype": datatype,
                                  "shape": list(arr.shape)}
        if request.binary_output if o.binary is None else o.binary:
            raw = to_bytes(arr, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = to_json(arr, datatype, o.name)
        tensors.append(tensor)
    doc["outputs"] = tensors
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": JSON_TYPE}
    return b"".join([head, *blobs]), {"content-type": BINARY_TYPE,
                                      HEADER_LENGTH: str(len(head))}
