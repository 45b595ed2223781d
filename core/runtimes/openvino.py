"""OpenVINO, as the openvino-cpu and npu backends use it.

The process's one ``Core``; host arrays to and from OpenVINO tensors in the dtypes an ONNX
graph declares (:func:`to_tensor`, :func:`from_tensor`, :func:`infer`); OpenVINO's errors as
backplane errors naming the backend and device they ran for (:func:`wrap`) and the ONNX
nodes an OpenVINO operation came from (:func:`onnx_nodes_of`); the ONNX rewrites OpenVINO's
frontend needs (:func:`inlined`, :func:`patched`); and ``query_model`` over the probe
models, for capabilities derived from the device itself (:func:`query`, :func:`valid_survey`).

Importing this module imports neither openvino nor numpy nor onnx.
"""

from __future__ import annotations

import collections
import functools
import re
import threading
from collections.abc import Sequence
from typing import Any

from backplane.sdk.errors import BackendError, CompileError

_core_lock = threading.Lock()
_core: Any = None


def ov() -> Any:
    """The ``openvino`` module."""
    import openvino  # defers the vendor runtime to the first use

    return openvino


def ov_core() -> Any:
    """The process's one ``openvino.Core`` (thread-safe; created on first use)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov().Core()
        return _core


def ov_version() -> str:
    """The installed OpenVINO version, from package metadata (no import) when possible."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return ov().get_version()


# ---------------------------------------------------------------------- tensors

def to_tensor(np: Any, arr: Any, dtype: str | None) -> Any:
    """A host array as an OpenVINO tensor in the graph's dtype (bfloat16 through its bits:
    OpenVINO's Python API has no numpy type for it)."""
    openvino = ov()
    plain = _plain().get(arr.dtype)
    if plain is not None and arr.flags.c_contiguous and arr.ndim \
            and (dtype is None or plain == dtype):
        return openvino.Tensor(arr, shared_memory=False)  # the common case, without checks
    if dtype == "bfloat16" or arr.dtype.name == "bfloat16":
        tensor = openvino.Tensor(openvino.Type.bf16, list(arr.shape))
        if arr.size:
            tensor.data.view(np.uint16)[...] = arr.view(np.uint16)
        return tensor
    if dtype is not None and dtype != arr.dtype.name:
        arr = arr.astype(dtype)
    if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn rank 0 into rank 1)
        arr = arr.copy(order="C")
    return openvino.Tensor(arr, shared_memory=False)


def from_tensor(np: Any, tensor: Any, dtype: str | None) -> Any:
    """A copy of an output tensor in the dtype the ONNX graph declares."""
    data = tensor.data
    if data.ndim and dtype is not None and _plain().get(data.dtype) == dtype:
        return data.copy()  # the common case: already the graph's dtype and shape
    if tensor.element_type == ov().Type.bf16:
        import ml_dtypes

        data = np.array(tensor.data, copy=True).view(np.uint16).view(ml_dtypes.bfloat16)
    else:
        data = np.array(tensor.data, copy=True)
    data = data.reshape(tuple(tensor.shape))
    if dtype and dtype != data.dtype.name:
        if dtype == "bfloat16":
            import ml_dtypes

            return data.astype(ml_dtypes.bfloat16)
        return data.astype(dtype)
    return data


@functools.lru_cache(maxsize=None)
def _plain() -> dict[Any, str]:
    """numpy dtype -> name for the types OpenVINO tensors hold as they are (built on first
    use: this module must not import numpy at load)."""
    import numpy as np

    return {np.dtype(n): n for n in ("float32", "float16", "float64", "int8", "uint8", "int16",
                                     "uint16", "int32", "uint32", "int64", "uint64")}


def outputs_of(ports: Sequence[Any], graph: Any, *, backend: str,
               device: str | None) -> list[tuple[str, int, str | None]]:
    """``(ONNX output name, index among OpenVINO's output ``ports``, declared dtype)`` for
    each output of ``graph``, in the graph's order; a CompileError for ``backend`` on
    ``device`` when OpenVINO's model has none of that name."""
    wanted = {vi.name: vi.dtype for vi in graph.outputs}
    out = []
    for name in [o.name for o in graph.model.graph.output]:
        index = next((i for i, p in enumerate(ports) if name in p.get_names()), None)
        if index is None:
            raise CompileError(f"OpenVINO's model has no output named {name!r}",
                               backend=backend, device=device)
        out.append((name, index, wanted.get(name)))
    return out


def infer(request: Any, arrays: Sequence[Any], dtypes: Sequence[str | None],
          outputs: Sequence[tuple[str, int, str | None]]) -> dict[str, Any]:
    """Run an infer request once: ``arrays`` (host arrays, in the model's input order) as
    tensors of ``dtypes`` (None: their own); ``outputs`` (:func:`outputs_of`) come back as
    fresh arrays in their declared dtypes."""
    import numpy as np  # (loaded by whoever made the arrays; deferred for the import time)

    for i, (arr, dtype) in enumerate(zip(arrays, dtypes)):
        request.set_input_tensor(i, to_tensor(np, arr, dtype))
    request.infer()
    return {name: from_tensor(np, request.get_output_tensor(i), dtype)
            for name, i, dtype in outputs}


# ---------------------------------------------------------------------- errors

def wrap(cls: type[BackendError], exc: BaseException, graph: Any, *, backend: str,
         device: str | None) -> Any:
    """``cls.wrap`` for ``backend`` on ``device``, with OpenVINO's message cleaned of its
    source-location lines and the op found from the ONNX node it names (:func:`op_named`)."""
    text = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
    text = re.sub(r"Exception from src/[\w/.]+:\d+:\s*", "", text)
    text = re.sub(r"Check '.*?' failed at [\w/.]+:\d+:\s*", "", text)
    return cls.wrap(type(exc)(text), backend=backend, device=device, op=op_named(exc, graph))


def op_named(exc: BaseException, graph: Any) -> str | None:
    """The op of the ONNX node an OpenVINO message names, else the graph's only op type."""
    text = str(exc)
    nodes = list(getattr(graph, "nodes", []))
    for n in nodes:
        for name in [n.name, *n.outputs]:
            if name and len(name) > 2 and re.search(
                    rf"(?<![\w/.-]){re.escape(name)}(?![\w.-])", text):
                return n.op_type
    found = re.search(r"ONNX operations?:?\s*([\w.]+)", text)
    if found:
        return found.group(1).split(".")[-1]
    ops = {n.op_type for n in nodes}
    return ops.pop() if len(ops) == 1 else None


def onnx_nodes_of(ov_ops: list[Any], graph: Any) -> list[Any]:
    """The ONNX nodes the OpenVINO operations come from. OpenVINO's ONNX frontend names an
    operation after the ONNX output it computes (``/suffix`` for the inner operations of a
    decomposition); operations it made up (``Multiply_12``) are traced through their users."""
    by_output = {o: n for n in getattr(graph, "nodes", []) for o in n.outputs if o}
    found: dict[int, Any] = {}
    seen: set[int] = set()
    todo = collections.deque(ov_ops)
    while todo:
        op = todo.popleft()
        if id(op) in seen:
            continue
        seen.add(id(op))
        name = op.get_friendly_name()
        node = by_output.get(name) or by_output.get(name.split("/")[0])
        if node is not None:
            found.setdefault(id(node), node)
            continue
        todo += [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]
    return list(found.values())


# ---------------------------------------------------------------------- ONNX for the frontend

def inlined(model: Any) -> Any:
    """The model with its model-local functions inlined: OpenVINO's ONNX frontend has no
    conversion for a call to one (a ``backplane`` fused op carrying its decomposition)."""
    if not model.functions:
        return model
    import onnx.inliner

    return onnx.inliner.inline_local_functions(model)


def patched(model: Any, graph: Any) -> Any:
    """Work around OpenVINO frontend bugs by equivalent ONNX:

    - a Gemm whose C is given as "" (absent) loses that trailing empty input (the frontend
      otherwise leaves a NullNode the CPU plugin cannot compile; a Gemm of two inputs
      converts fine);
    - Softmax, LogSoftmax and Hardmax before version 13 flatten their input to 2-D at
      ``axis``, and OpenVINO computes them over that one axis instead: where ``axis`` is
      not the last axis, the node becomes Flatten, the op over the last axis, Reshape back;
    - ReduceMax over a float slice that is all -inf gives the lowest finite value, not
      -inf (ReduceMin over +inf the highest): a fully masked attention row then yields NaN
      where the model replaces -inf. Each float ReduceMax (ReduceMin) keeps its answer
      where the slice holds anything but -inf (+inf), and takes the other reduction, which
      OpenVINO gets right there, elsewhere.
    """
    gemms = [i for i, n in enumerate(model.graph.node) if n.op_type == "Gemm"
             and n.domain in ("", "ai.onnx") and len(n.input) > 2 and not n.input[2]]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    flat = [i for i, n in enumerate(model.graph.node) if opset < 13
            and n.op_type in _COERCED_2D and n.domain in ("", "ai.onnx")
            and not _last_axis(n, graph)]
    extremes = any(_float_extreme(n, graph) for n in model.graph.node)
    if not gemms and not flat and not extremes:
        return model
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i in gemms:
        del out.graph.node[i].input[2:]
    for i in sorted(flat, reverse=True):
        n = out.graph.node[i]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        x, y, tag = n.input[0], n.output[0], f"{n.name or n.output[0]}/bp_2d"
        out.graph.node.remove(n)
        for k, new in enumerate([
                helper.make_node("Flatten", [x], [f"{tag}/flat"], axis=axis, name=f"{tag}/flat"),
                helper.make_node(n.op_type, [f"{tag}/flat"], [f"{tag}/op"], axis=1, name=y),
                helper.make_node("Shape", [x], [f"{tag}/shape"], name=f"{tag}/shape"),
                helper.make_node("Reshape", [f"{tag}/op", f"{tag}/shape"], [y],
                                 name=f"{tag}/back")]):
            out.graph.node.insert(i + k, new)
    for i in reversed([j for j, n in enumerate(out.graph.node) if _float_extreme(n, graph)]):
        n = out.graph.node[i]
        other, positive = _EXTREMES[n.op_type]
        x, y, tag = n.input[0], n.output[0], f"{n.name or n.output[0]}/bp_inf"
        reduce = functools.partial(_reduction_like, n)
        out.graph.node.remove(n)
        for k, new in enumerate([
                reduce(n.op_type, x, f"{tag}/own", y),
                helper.make_node("IsInf", [x], [f"{tag}/inf"], name=f"{tag}/inf",
                                 detect_positive=int(positive), detect_negative=int(not positive)),
                helper.make_node("Not", [f"{tag}/inf"], [f"{tag}/other"], name=f"{tag}/other"),
                helper.make_node("Cast", [f"{tag}/other"], [f"{tag}/otherf"], to=1,
                                 name=f"{tag}/otherf"),
                reduce("ReduceMax", f"{tag}/otherf", f"{tag}/any", f"{tag}/any"),
                helper.make_node("Cast", [f"{tag}/any"], [f"{tag}/anyb"], to=9,
                                 name=f"{tag}/anyb"),
                reduce(other, x, f"{tag}/all", f"{tag}/all"),
                helper.make_node("Where", [f"{tag}/anyb", f"{tag}/own", f"{tag}/all"], [y],
                                 name=f"{tag}/where")]):
            out.graph.node.insert(i + k, new)
    return out


def _reduction_like(node: Any, op: str, data: str, result: str, name: str) -> Any:
    """Reduction ``op`` of ``data`` over what ``node`` reduces (its axes input or
    attribute, keepdims ...)."""
    from onnx import helper

    out = helper.make_node(op, [data, *node.input[1:]], [result], name=name)
    out.attribute.extend(node.attribute)
    return out


#: ReduceMax and ReduceMin: the other reduction, and whether the slice to repair is +inf.
_EXTREMES = {"ReduceMax": ("ReduceMin", False), "ReduceMin": ("ReduceMax", True)}


def _float_extreme(node: Any, graph: Any) -> bool:
    """Whether ``node`` is a ReduceMax or ReduceMin of a float input."""
    if node.op_type not in _EXTREMES or node.domain not in ("", "ai.onnx") or graph is None:
        return False
    vi = graph.values.get(node.input[0])
    return vi is not None and vi.dtype in ("float16", "float32", "float64", "bfloat16")


#: Ops that, before version 13, coerce their input to 2-D at ``axis``.
_COERCED_2D = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


def _last_axis(node: Any, graph: Any) -> bool:
    """Whether a 2-D-coercing node's ``axis`` is the last axis of its input (then the
    coercion changes nothing)."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    vi = graph.values.get(node.input[0]) if graph is not None else None
    rank = len(vi.shape) if vi is not None and vi.shape is not None else None
    return rank is not None and axis in (-1, rank - 1)


# ---------------------------------------------------------------------- capabilities

def query(model: Any, device: str = "CPU") -> str:
    """'' when ``query_model`` on OpenVINO's ``device`` takes every operation of ``model``
    (read by OpenVINO's ONNX frontend), else the reason."""
    core = ov_core()
    try:
        ov_model = core.read_model(inlined(model).SerializeToString())
        placed = core.query_model(ov_model, device)
    except Exception as exc:
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    missing = [f"{o.get_friendly_name()} ({o.get_type_name()})"
               for o in ov_model.get_ops() if o.get_friendly_name() not in placed]
    return f"query_model leaves off {device}: " + ", ".join(missing[:5]) if missing else ""


def valid_survey(data: Any) -> bool:
    """A cached survey (:func:`backplane.ops.survey.survey` of :func:`query`) is read back
    only in the shape it is written."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.verify import valid_rules

    ops = data.get("ops") if isinstance(data, dict) else None
    return isinstance(ops, dict) and valid_rules(data) and all(
        isinstance(v, dict) and all(str(ver).isdigit() and isinstance(d, list)
                                    for ver, d in v.items()) for v in ops.values())
