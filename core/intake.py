"""Model intake: from a path, bytes or ModelProto to a checked, shape-inferred Graph.

Every way a model can be wrong ends here as a :class:`ModelError` naming what is wrong and
what to do; every way a run's inputs can be wrong ends as an :class:`InputError`.
External data is read only from files inside the model's own folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import InputError, ModelError, did_you_mean
from .fold import fold_constants
from .graph import Graph, ValueInfo
from .ops import schemas
from .typefill import complete_types

#: The oldest default-domain opset a model keeps as it is (older ones are upgraded to it):
#: the operator registry records every op version from here on.
MIN_OPSET = schemas.MIN_OPSET


def load_model(model: Any, *, base_dir: str | os.PathLike | None = None) -> Graph:
    """Read, check and shape-infer a model.

    Args:
        model: a path to an ``.onnx`` file, the file's bytes, or an ``onnx.ModelProto``.
        base_dir: the folder external data is read from, for bytes or a ModelProto that
            refer to external data. For a path, it is the model's own folder.

    Returns:
        A :class:`Graph`.

    Raises:
        ModelError: the model cannot be read, is invalid, uses an unsupported opset or
            domain, or refers to external data outside its folder.
    """
    import onnx

    name = "model"
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ModelError(f"model file '{path}' {what}; pass the path of an .onnx file")
        name = path.stem
        base_dir = path.resolve().parent
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"model file '{path}' cannot be read: {exc.strerror or exc}; "
                             "check its permissions") from None
        proto = _parse(data, f"model file '{path}'")
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = _parse(bytes(model), "model bytes")
    elif isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        raise ModelError(f"cannot read a model from a {type(model).__name__}; "
                         "pass a path, the file's bytes, or an onnx.ModelProto")
    if name == "model" and proto.graph.name:
        name = proto.graph.name
    notes: list[str] = []
    _check_opset_versions(proto, name)
    # External data is confined and read first: the checker would otherwise resolve its
    # locations against the process's working directory, with its own rules and words.
    _load_external_data(proto, base_dir, name)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises ValidationError and, for odd protos, others
        raise ModelError(f"{name}: the ONNX checker rejected the model: {exc}") from None
    proto = _check_opset(proto, name, notes)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                                  data_prop=True)
    except Exception as exc:
        raise ModelError(f"{name}: shape inference failed, the model is inconsistent: {exc}"
                         ) from None
    proto = complete_types(proto, lambda p: _reinfer(p, name))
    proto, folded = fold_constants(proto, lambda p: _reinfer(p, name))
    if folded:
        notes.append(f"{folded} node(s) computing constants (Constant nodes, shape "
                     "arithmetic) folded before planning")
    _name_nodes(proto)
    graph = Graph(proto, name)
    graph.notes.extend(notes)
    return graph


def _reinfer(proto: Any, name: str) -> Any:
    """Shape inference again, after types or constants were added."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except Exception as exc:
        raise ModelError(f"{name}: shape inference failed, the model is inconsistent: {exc}"
                         ) from None


def _parse(data: bytes, what: str) -> Any:
    import onnx

    if not data:
        raise ModelError(f"{what} is empty; it should hold a serialised ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, and RuntimeError from its C++ parser
        raise ModelError(f"{what} is not a valid ONNX file (truncated or not ONNX): {exc}"
                         ) from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelError(f"{what} is not an ONNX model (no graph or no opset); "
                         "it may be truncated or another format")
    return proto


def _all_nodes(nodes: Any) -> Iterator[Any]:
    """Nodes, and the nodes of their subgraphs, recursively."""
    from onnx import AttributeProto

    for n in nodes:
        yield n
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from _all_nodes(a.g.node)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g.node)


def _check_opset_versions(proto: Any, name: str) -> None:
    """Refuse a model at an opset of an ONNX domain newer than the installed onnx knows:
    its ops may mean what no installed runtime, nor the oracle, can tell."""
    import onnx

    newest = schemas.newest_opsets()
    for o in proto.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in ("", "ai.onnx.ml") and o.version > newest[domain]:
            what = "default-domain" if domain == "" else f"'{domain}'"
            raise ModelError(
                f"{name}: {what} opset {o.version} is newer than the installed onnx "
                f"{onnx.__version__} knows (it knows opsets up to {newest[domain]}); upgrade "
                f"onnx (pip install -U onnx) or export the model at opset {newest[domain]} or "
                "older")


def _check_opset(proto: Any, name: str, notes: list[str]) -> Any:
    """The model as it is, at its own opset; one older than :data:`MIN_OPSET` (before 2017)
    is upgraded to it, and the plan says so."""
    from onnx import version_converter

    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version >= MIN_OPSET:
        return proto
    try:
        upgraded = version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:
        raise ModelError(
            f"{name}: default-domain opset {version} is older than backplane reads as it is "
            f"({MIN_OPSET} and newer) and could not be upgraded automatically: {exc}. "
            f"Re-export the model at opset {MIN_OPSET} or newer.") from None
    notes.append(f"upgraded from opset {version} to {MIN_OPSET}")
    return upgraded


def _tensors(proto: Any) -> Iterator[Any]:
    """Every tensor stored in the model: initializers and tensor attributes, recursively."""
    from onnx import AttributeProto

    def from_graph(g: Any) -> Iterator[Any]:
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.type == AttributeProto.TENSOR:
                    yield a.t
                elif a.type == AttributeProto.TENSORS:
                    yield from a.tensors
                elif a.type == AttributeProto.GRAPH:
                    yield from from_graph(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        yield from from_graph(sub)

    yield from from_graph(proto.graph)


def _load_external_data(proto: Any, base_dir: Any, name: str) -> None:
    """Read external tensor data into the model, refusing any file outside ``base_dir``."""
    from onnx import TensorProto

    external = [t for t in _tensors(proto) if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return
    if base_dir is None:
        raise ModelError(f"{name}: tensor '{external[0].name}' keeps its data in an external "
                         "file; load the model from its path, or pass base_dir= the folder "
                         "that holds the data")
    root = Path(base_dir).resolve()
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        target = _confined(root, location, t.name, name)
        offset = _byte_count(info, "offset", t.name, name)
        length = _byte_count(info, "length", t.name, name)
        size = target.stat().st_size
        offset = offset or 0
        length = size - offset if length is None else length
        if offset + length > size:
            raise ModelError(f"{name}: tensor '{t.name}' asks for bytes {offset}..{offset + length}"
                             f" of '{location}', which has {size} bytes (truncated file?)")
        expected = _tensor_nbytes(t)
        if expected is not None and length != expected:
            raise ModelError(
                f"{name}: tensor '{t.name}' ({_describe_tensor(t)}) needs {expected} bytes, "
                f"but its external data in '{location}' is {length} bytes long; the data "
                "file does not belong to this model or was written incompletely")
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


def _confined(root: Path, location: str, tensor: str, name: str) -> Path:
    """The file ``location`` names, if it is a regular file inside ``root``."""
    outside = ModelError(
        f"{name}: tensor '{tensor}' refers to external data at '{location}', outside "
        f"the model's folder '{root}'; backplane reads external data only from "
        f"inside that folder. Move the data file next to the model.")
    if "\x00" in location:
        raise ModelError(f"{name}: tensor '{tensor}' has an external data location with a NUL "
                         f"byte ({location!r}); the model file is corrupt or was tampered with")
    if not location or Path(location).is_absolute():
        raise outside
    try:
        target = (root / location).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, names too long
        raise ModelError(f"{name}: external data location '{location}' of tensor '{tensor}' "
                         f"cannot be resolved: {exc}") from None
    if target != root and root not in target.parents:
        raise outside
    if not target.is_file():
        raise ModelError(f"{name}: external data file '{location}' of tensor '{tensor}' "
                         f"is missing from '{root}'")
    return target


def _byte_count(info: dict, key: str, tensor: str, name: str) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        value = -1
    if value < 0:
        raise ModelError(f"{name}: tensor '{tensor}' has external data {key} {info[key]!r}; "
                         f"it must be a whole number of bytes, 0 or more")
    return value


def _tensor_nbytes(t: Any) -> int | None:
    """Bytes a tensor's raw data must hold, or None for types without a fixed width."""
    import math

    from onnx import TensorProto, helper

    count = math.prod(t.dims)
    packed = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
              if hasattr(TensorProto, n)}
    if t.data_type in packed:
        return (count + 1) // 2
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        return count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _describe_tensor(t: Any) -> str:
    from onnx import helper

    try:
        kind = helper.tensor_dtype_to_string(t.data_type).removeprefix("TensorProto.").lower()
    except (KeyError, ValueError):
        kind = f"type {t.data_type}"
    return f"{kind}[{','.join(str(d) for d in t.dims)}]"


def _name_nodes(proto: Any) -> None:
    """Give every node a unique, stable name for plans and errors.

    An unnamed node becomes ``Relu_3`` (op and position); a name the model repeats keeps its
    first use and later uses get a ``#2``, ``#3`` suffix, since placements are keyed by name.
    """
    taken = {n.name for n in proto.graph.node if n.name}
    seen: set[str] = set()
    for i, n in enumerate(proto.graph.node):
        if n.name and n.name not in seen:
            seen.add(n.name)
            continue
        stem, k = (n.name, 2) if n.name else (f"{n.op_type}_{i}", 1)
        candidate = stem if k == 1 else f"{stem}#{k}"
        while candidate in taken:
            k += 1
            candidate = f"{stem}#{k}"
        n.name = candidate
        taken.add(candidate)
        seen.add(candidate)


def validate_inputs(graph: Graph, feeds: Any) -> dict[str, Any]:
    """Check a run's inputs against the model and return them as numpy arrays.

    Refuses missing, extra, mis-typed and mis-shaped inputs, and symbolic dimensions
    bound to different sizes by different inputs. Arrays are never cast: a float64 array
    for a float32 input is refused. Python lists and scalars are converted.
    """
    import numpy as np

    if not isinstance(feeds, Mapping):
        raise InputError(f"inputs must be a dict mapping input names to arrays, got a "
                         f"{type(feeds).__name__}; the model's inputs are: "
                         f"{graph.describe_inputs()}")
    expected = {vi.name: vi for vi in graph.inputs}
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        # A misspelt name is both unknown and missing: name what was given, then what is
        # missing, then the model's inputs and the likely meaning of each unknown name.
        problems, hints = [], ""
        if extra:
            problems.append(f"unknown input{'s' if len(extra) > 1 else ''} "
                            + ", ".join(f"'{n}'" for n in extra))
            for n in extra:
                hint = did_you_mean(str(n), missing or expected)
                if hint:
                    hints += (f" For '{n}':" if len(extra) > 1 else "") + hint
        if missing:
            problems.append(f"missing input{'s' if len(missing) > 1 else ''} "
                            + ", ".join(f"'{n}' ({expected[n].describe()})" for n in missing))
        raise InputError("; ".join(problems)
                         + f"; the model's inputs are: {graph.describe_inputs()}.{hints}")
    bound: dict[str, tuple[int, str]] = {}
    out: dict[str, Any] = {}
    for name, vi in expected.items():
        out[name] = _check_one(np, name, vi, feeds[name], bound)
    return out


def _check_one(np: Any, name: str, vi: ValueInfo, value: Any, bound: dict) -> Any:
    want = np.dtype(vi.dtype) if vi.dtype not in ("bfloat16", "string") else None
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise InputError(f"input '{name}' cannot be read as an array ({exc}); "
                             f"expected {vi.describe()}") from None
        if want is not None and arr.dtype != want and np.can_cast(arr.dtype, want, "same_kind"):
            arr = arr.astype(want)
    if vi.dtype == "string":
        ok = arr.dtype.kind in "OU"
    else:
        ok = want is not None and arr.dtype == want
    if not ok:
        hint = f"; convert it with .astype(numpy.{vi.dtype})" if want is not None else ""
        raise InputError(f"input '{name}' has dtype {arr.dtype}, the model expects "
                         f"{vi.dtype} ({vi.describe()}){hint}")
    if vi.shape is None:
        return arr
    if arr.ndim != len(vi.shape):
        raise InputError(f"input '{name}' has shape {tuple(arr.shape)} (rank {arr.ndim}), the "
                         f"model expects rank {len(vi.shape)}: {vi.describe()}")
    for axis, (got, dim) in enumerate(zip(arr.shape, vi.shape)):
        if isinstance(dim, int) and got != dim:
            raise InputError(f"input '{name}' has shape {tuple(arr.shape)}, the model expects "
                             f"{vi.describe()}: dimension {axis} must be {dim}, got {got}")
        if isinstance(dim, str):
            if dim in bound and bound[dim][0] != got:
                size, other = bound[dim]
                raise InputError(f"input '{name}' dimension {axis} ('{dim}') is {got}, but input "
                                 f"'{other}' set '{dim}' = {size}; inputs sharing a dimension "
                                 f"name must agree")
            bound.setdefault(dim, (got, name))
    return arr


def dims_of(graph: Graph, feeds: Any) -> dict[str, int]:
    """The size of each symbolic input dimension in ``feeds`` (``{"batch": 32}``)."""
    out: dict[str, int] = {}
    for vi in graph.inputs:
        value = feeds.get(vi.name) if hasattr(feeds, "get") else None
        shape = getattr(value, "shape", None)
        if vi.shape is None or shape is None or len(shape) != len(vi.shape):
            continue
        for d, size in zip(vi.shape, shape):
            if isinstance(d, str):
                out.setdefault(d, int(size))
    return out


def with_dims(graph: Graph, dims: dict[str, int]) -> Graph:
    """``graph`` with symbolic input dimensions fixed to ``dims`` and shapes inferred
    again: the graph a plan for those sizes is priced on (nodes keep names and order)."""
    from onnx import shape_inference

    from .errors import InputError

    if not dims:
        return graph
    proto = type(graph.model)()
    proto.CopyFrom(graph.model)
    del proto.graph.value_info[:]
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                size = int(dims[d.dim_param])
                if size < 1:
                    raise InputError(f"dims: '{d.dim_param}' must be a positive size, "
                                     f"not {size}")
                d.dim_value = size
    try:
        proto = shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                             data_prop=True)
    except Exception as exc:
        raise InputError(f"dims {dims} do not fit the model '{graph.name}': {exc}") from None
    fixed = Graph(proto, graph.name)
    fixed.notes.extend(graph.notes)
    return fixed
