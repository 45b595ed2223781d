"""Model intake: from a path, bytes or ModelProto to a checked, shape-inferred Graph.

Every way a model can be wrong ends here as a :class:`ModelError` naming what is wrong and
what to do; every way a run's inputs can be wrong ends as an :class:`InputError`.
External data is read only from files inside the model's own folder (:mod:`backplane.model.external`).

Models are accepted as ONNX Runtime accepts them: a negative dimension in an input or output
declaration is a dynamic one (Paddle2ONNX writes -1); a declared output shape that shape
inference contradicts is a warning, and the inferred shape is used; an initializer the model
also lists as an input (IR < 4) is a constant a run may override; a model over 2 GiB keeps
its big initializers in their files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from backplane.sdk.errors import InputError, ModelError, did_you_mean
from backplane.model.external import (INLINE_LIMIT, PROTO_LIMIT, attach, describe_tensor, detach,
                                      load_external_data, tensor_nbytes, tensors)
from backplane.model.fold import fold_constants
from backplane.model.graph import (NON_TENSOR, Dim, Graph, ValueInfo, numpy_dtype,
                                   value_info_from_proto)
from backplane.ops import schemas
from backplane.sdk.text import shown
from backplane.model.typefill import complete_types

#: The oldest default-domain opset a model keeps as it is (older ones are upgraded to it):
#: the operator registry records every op version from here on.
MIN_OPSET = schemas.MIN_OPSET


log = logging.getLogger("backplane")


def load_model(model: Any, *, base_dir: str | os.PathLike | None = None,
               as_inputs: Iterable[str] = ()) -> Graph:
    """Read, check and shape-infer a model.

    Args:
        model: a path to an ``.onnx`` file, the file's bytes, or an ``onnx.ModelProto``;
            a :class:`Graph` is returned as it is.
        base_dir: the folder external data is read from, for bytes or a ModelProto that
            refer to external data. For a path, it is the model's own folder.
        as_inputs: initializers the model also lists as graph inputs (IR < 4) to take as
            plain inputs, their stored values dropped: the model a run overriding those
            constants uses.

    Returns:
        A :class:`Graph`.

    Raises:
        ModelError: the model cannot be read, is invalid, uses an unsupported opset or
            domain, refers to external data outside its folder, or holds over 2 GiB of
            tensors inline.
    """
    import onnx

    name = "model"
    if isinstance(model, Graph):
        if not as_inputs:
            return model
        # (Taken in again from its folded model: nodes folded away that read one of
        # ``as_inputs`` keep the stored value. A session re-reads its source instead.)
        model, base_dir, name = model.model, model.external_dir, model.name
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ModelError(f"model file '{path}' {what}; pass the path of an .onnx file")
        name = path.stem
        base_dir = path.resolve().parent
        if path.stat().st_size > PROTO_LIMIT:
            raise ModelError(f"model file '{path}' is over 2 GiB, more than protobuf can "
                             "read as one message; save the model with its tensors as "
                             "external data (onnx.save(model, path, save_as_external_data="
                             "True))")
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
    label = shown(name)  # (the model's name as messages show it)
    notes: list[str] = []
    _check_opset_versions(proto, label)
    if not proto.graph.output:
        raise ModelError(f"{label}: the model has no outputs, so a run would compute nothing; "
                         "list the values it should return in graph.output")
    # External data is confined and read first: the checker would otherwise resolve its
    # locations against the process's working directory, with its own rules and words.
    external_dir = load_external_data(proto, base_dir, label)
    _check_raw_data(proto, label)
    if proto.ByteSize() > INLINE_LIMIT:
        raise ModelError(f"{label}: the model is {proto.ByteSize() / 2**30:.2f} GiB with its "
                         "tensors inline, more than one ONNX message can hold (2 GiB); save "
                         "it with external data (onnx.save(model, path, "
                         "save_as_external_data=True)) and load it from that path")
    _take_as_inputs(proto, set(as_inputs), label)
    # Initializers left in their files are graph inputs of their type while the model is
    # checked, inferred and folded: none of those steps reads their bytes.
    kept = detach(proto)
    _dynamic_negative_dims(proto, notes)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises ValidationError and, for odd protos, others
        raise ModelError(f"{label}: the ONNX checker rejected the model: {exc}") from None
    proto = _check_opset(proto, label, notes)
    declared = _strip_output_shapes(proto)
    proto, strict = _infer(proto, label, notes)
    _check_node_shapes(proto, label)

    def reinfer(p: Any) -> Any:
        return _reinfer(p, label, strict)

    proto = complete_types(proto, reinfer)
    proto, folded = fold_constants(proto, reinfer)
    if folded:
        notes.append(f"{folded} node(s) computing constants (Constant nodes, shape "
                     "arithmetic) folded before planning")
    _keepdims_as_read(proto)
    unconfirmed = _settle_outputs(proto, declared, label, notes)
    attach(proto, kept)
    _name_nodes(proto)
    graph = Graph(proto, name)
    graph.notes.extend(notes)
    graph.external_dir = external_dir
    graph.unconfirmed_outputs = unconfirmed
    return graph


def _infer(proto: Any, name: str, notes: list[str]) -> tuple[Any, bool]:
    """Shape inference in strict mode, and whether it stays strict.

    Declared shapes of intermediate values that it contradicts are dropped, as ONNX Runtime
    drops them, with a note and a warning. Where onnx's strict inference still fails (its
    own function bodies have failed it: MeanVarianceNormalization-9's), the model is
    inferred leniently, as ONNX Runtime loads it, with a note and a warning naming the
    error: values past the failing node may have no known shape, and the backends' own
    checks then decide. A contradiction in the graph's own nodes (``Add`` of [2, 3] and
    [4, 5]) stays a ModelError, as ONNX Runtime refuses such a model.
    """
    try:
        return _reinfer(proto, name), True
    except ModelError as exc:
        first = exc
    why = str(first).split("inconsistent: ", 1)[-1].splitlines()[0]
    declared = [vi for vi in proto.graph.value_info
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")]
    if declared:
        for vi in declared:
            vi.type.tensor_type.ClearField("shape")
        try:
            proto = _reinfer(proto, name)
        except ModelError:
            pass
        else:
            notes.append("the model's declared shapes of intermediate values contradict "
                         f"shape inference ({why}); the inferred shapes are used")
            log.warning("backplane: %s: the model's declared shapes of intermediate values "
                        "contradict shape inference (%s); using the inferred shapes", name, why)
            return proto, True
    if str(first).count("Inference error(s)") < 2:  # a node of the graph itself is wrong
        raise first from None
    try:  # the error is inside an op's function body, which is onnx's to answer for
        proto = _reinfer(proto, name, strict=False)
    except ModelError:
        raise first from None
    notes.append(f"onnx's strict shape inference fails ({why}); the model is inferred "
                 "leniently, as ONNX Runtime loads it")
    log.warning("backplane: %s: onnx's strict shape inference fails (%s); inferring "
                "leniently, as ONNX Runtime does", name, why)
    return proto, False


def _check_raw_data(proto: Any, name: str) -> None:
    """Refuse a stored tensor whose raw data is not the size its shape and type need: the
    checker does not compare them; ONNX Runtime refuses such a model, OpenVINO read it
    (found by fuzzing)."""
    from onnx import TensorProto

    for t in tensors(proto):
        if t.data_location == TensorProto.EXTERNAL or not t.HasField("raw_data"):
            continue
        need = tensor_nbytes(t)
        if need is not None and len(t.raw_data) != need:
            raise ModelError(f"{name}: tensor '{shown(t.name)}' ({describe_tensor(t)}) holds "
                             f"{len(t.raw_data)} bytes of raw data, its shape and type need "
                             f"{need}; the model is damaged or was written wrongly: export "
                             "it again")


def _check_node_shapes(proto: Any, name: str) -> None:
    """Refuse a model whose inferred shapes already break a rule of a node that ONNX's
    inference leaves unchecked (:func:`backplane.model.shapecheck.contradiction`: a Conv's kernel
    against its weight, a Reshape's element count ...): no input could run it."""
    from backplane.model.shapecheck import contradiction

    why = contradiction(proto)
    if why:
        raise ModelError(f"{name}: {why}; no input can run the model as it is: correct the "
                         "node, its attributes or its weights")


def _take_as_inputs(proto: Any, names: set[str], name: str) -> None:
    """Drop the stored values of the initializers ``names``, which the model also lists as
    graph inputs (IR < 4): they become plain inputs."""
    if not names:
        return
    listed = {i.name for i in proto.graph.input} & {t.name for t in proto.graph.initializer}
    unknown = sorted(names - listed)
    if unknown:
        given = ", ".join(f"'{shown(n)}'" for n in unknown)
        allowed = ", ".join(shown(n) for n in sorted(listed)) or "this model has none"
        raise ModelError(f"{name}: {given} are not initializers the model also lists as "
                         f"inputs; only those can be fed ({allowed})")
    detach(proto, names)


def _names_a_size(param: str) -> bool:
    """Whether a dim_param names a size shared by every dimension that carries it: not the
    placeholders exporters write for "unknown" (Paddle2ONNX's ``?``, ``-1``, ``None``)."""
    return bool(param) and param.strip() not in ("?", "-1", "None", "none", "unknown", "*")


def _dynamic_negative_dims(proto: Any, notes: list[str]) -> None:
    """Read a negative ``dim_value`` as a dynamic dimension, as ONNX Runtime does.

    In an input or output declaration it becomes a dimension parameter of its own
    (``x_dim0``), so that every backend sees a dynamic dimension and a run may feed any
    size there; in an intermediate value's declaration it becomes unknown. (A dimension
    of 0 stays static: ONNX Runtime too takes it as an empty dimension.) A placeholder
    dim_param that names no size (``?``, which Paddle2ONNX writes on every dynamic axis)
    gets a name of its own too: two axes marked ``?`` need not agree.
    """
    g = proto.graph
    taken = {d.dim_param for vi in list(g.input) + list(g.output) + list(g.value_info)
             if vi.type.HasField("tensor_type")
             for d in vi.type.tensor_type.shape.dim if d.HasField("dim_param")}
    named = []
    for vi in list(g.input) + list(g.output):
        if not vi.type.HasField("tensor_type"):
            continue
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if (d.HasField("dim_value") and d.dim_value < 0) or (
                    d.HasField("dim_param") and not _names_a_size(d.dim_param)):
                param, k = f"{vi.name}_dim{axis}", 2
                while param in taken:
                    param, k = f"{vi.name}_dim{axis}_{k}", k + 1
                taken.add(param)
                d.dim_param = param  # (clears dim_value: the two are a oneof)
                named.append(f"'{shown(vi.name)}' dimension {axis} as '{shown(param)}'")
    for vi in g.value_info:
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.ClearField("dim_value")
    if named:
        notes.append("negative dimensions declared dynamic: " + ", ".join(named))


def _dims(vi: Any) -> list[Dim] | None:
    """The declared dimensions of a value (None: no shape, not even a rank)."""
    info = value_info_from_proto(vi)
    return None if info is None or info.shape is None else list(info.shape)


def _set_dims(vi: Any, dims: list[Dim]) -> None:
    tt = vi.type.tensor_type
    tt.ClearField("shape")
    tt.shape.SetInParent()  # a rank-0 shape is a shape with no dims, not no shape
    for d in dims:
        dim = tt.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def _strip_output_shapes(proto: Any) -> dict[str, list[Dim]]:
    """Take the declared shapes off the graph's outputs (their types stay) and return them:
    shape inference then says what the model computes, and :func:`_settle_outputs` compares
    the two instead of failing on a contradiction."""
    declared = {}
    for o in proto.graph.output:
        dims = _dims(o) if o.type.HasField("tensor_type") else None
        if dims is not None:
            declared[o.name] = dims
            o.type.tensor_type.ClearField("shape")
    return declared


def _settle_outputs(proto: Any, declared: dict[str, list[Dim]], name: str,
                    notes: list[str]) -> dict[str, ValueInfo]:
    """Give each output the shape shape inference found, completed by its declaration
    where inference knows less; a declaration inference contradicts is warned about.

    Returns:
        The outputs whose declared shape (in whole or part) inference could not confirm,
        with their declarations: what a backend produces there is trusted over them.
    """
    unconfirmed = {}
    for o in proto.graph.output:
        want = declared.get(o.name)
        if want is None:
            continue
        got = _dims(o)
        if got is not None and (len(got) != len(want) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(got, want))):
            declared_text, inferred = _shape_text(want), _shape_text(got)
            notes.append(f"output '{shown(o.name)}' is declared {declared_text}, shape "
                         f"inference gives {inferred}; the inferred shape is used")
            log.warning("backplane: %s: output '%s' is declared %s but shape inference gives "
                        "%s; using the inferred shape", name, shown(o.name), declared_text,
                        inferred)
            continue
        # Inference's own names for what it cannot tell start with "unk__".
        unknown = (lambda d: d is None or (isinstance(d, str) and d.startswith("unk__")))
        merged = list(want) if got is None else [
            w if unknown(g) and w is not None else g for g, w in zip(got, want)]
        _set_dims(o, merged)
        if got is None or any(unknown(g) and isinstance(w, int) for g, w in zip(got, want)):
            unconfirmed[o.name] = ValueInfo(o.name, value_info_from_proto(o).dtype, tuple(want))
    return unconfirmed


def _shape_text(dims: list[Dim]) -> str:
    """``[1,seqlen,?]``: inference's own names for what it cannot tell are ``?``."""
    return "[" + ",".join("?" if d is None or str(d).startswith("unk__") else shown(d)
                          for d in dims) + "]"


def _reinfer(proto: Any, name: str, strict: bool = True) -> Any:
    """Shape inference again, after types or constants were added."""
    import onnx

    from backplane.model.shapecheck import propagates

    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=strict,
                                                 data_prop=propagates(proto))
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
    seen: dict[str, int] = {}
    for o in proto.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in seen:  # (the checker lets it pass; runtimes pick one or the other)
            what = "the default domain" if domain == "" else f"domain '{shown(domain)}'"
            raise ModelError(f"{name}: the model imports {what} twice (opsets {seen[domain]} "
                             f"and {o.version}), so what its nodes mean cannot be told; keep "
                             "one opset_import per domain")
        seen[domain] = o.version
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


def _keepdims_as_read(proto: Any) -> None:
    """A ``keepdims`` of other than 0 or 1 set to 0: ONNX's inference and ONNX Runtime keep
    the reduced axes only for 1, OpenVINO and opencl kept them for any non-zero value and
    the outputs had another shape, onnx.reference raised on 2**31 (found by fuzzing)."""
    for node in _all_nodes(proto.graph.node):
        if node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "keepdims" and a.i not in (0, 1):
                    a.i = 0


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
    # An optional input may be left out (or given as None): the optional is empty.
    missing = [n for n in expected if n not in feeds
               and not expected[n].dtype.startswith("optional(")]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        # A misspelt name is both unknown and missing: name what was given, then what is
        # missing, then the model's inputs and the likely meaning of each unknown name.
        problems, hints = [], ""
        if extra:
            problems.append(f"unknown input{'s' if len(extra) > 1 else ''} "
                            + ", ".join(f"'{shown(n)}'" for n in extra))
            for n in extra:
                hint = did_you_mean(str(n), missing or expected)
                if hint:
                    hints += (f" For '{shown(n)}':" if len(extra) > 1 else "") + hint
        if missing:
            problems.append(f"missing input{'s' if len(missing) > 1 else ''} "
                            + ", ".join(f"'{shown(n)}' ({expected[n].describe()})"
                                        for n in missing))
        raise InputError("; ".join(problems)
                         + f"; the model's inputs are: {graph.describe_inputs()}.{hints}")
    bound: dict[str, tuple[int, str]] = {}
    out: dict[str, Any] = {}
    for name, vi in expected.items():
        if name in feeds:
            out[name] = _check_one(np, name, vi, feeds[name], bound)
    return out


def _check_one(np: Any, name: str, vi: ValueInfo, value: Any, bound: dict) -> Any:
    if vi.dtype.startswith(NON_TENSOR):
        return _check_non_tensor(np, name, vi, value, bound)
    want = numpy_dtype(vi.dtype) if vi.dtype != "string" else None
    if isinstance(value, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(value))
        if masked:
            raise InputError(f"input '{shown(name)}' is a masked array with {masked} masked "
                             "element(s); a model reads values, not a mask: pass "
                             f"{shown(name)}.filled(value) with the value the model should see")
        value = np.ma.getdata(value)
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise InputError(f"input '{shown(name)}' cannot be read as an array ({exc}); "
                             f"expected {vi.describe()}") from None
        # Python lists and numbers have no dtype of their own: they take the input's where
        # it holds their values. An array of another library (a torch tensor) keeps its
        # own, and is refused below like a numpy array of another dtype.
        if want is not None and arr.dtype != want and arr.dtype.kind in "biuf" and \
                want.kind in "biuf" and np.can_cast(arr.dtype, want, "same_kind") and \
                not hasattr(value, "dtype"):
            arr = arr.astype(want)
    if vi.dtype == "string":
        ok = arr.dtype.kind in "OU"
    else:
        ok = want is not None and arr.dtype == want
    if not ok:
        hint = "" if want is None else (
            f"; convert it with .astype(numpy.{vi.dtype})" if isinstance(value, np.ndarray)
            else f"; convert it to {vi.dtype} first (a torch tensor: .to(torch.{vi.dtype}))")
        raise InputError(f"input '{shown(name)}' has dtype {arr.dtype}, the model expects "
                         f"{vi.dtype} ({vi.describe()}){hint}")
    if vi.shape is None:
        return arr
    if arr.ndim != len(vi.shape):
        raise InputError(f"input '{shown(name)}' has shape {tuple(arr.shape)} (rank "
                         f"{arr.ndim}), the model expects rank {len(vi.shape)}: "
                         f"{vi.describe()}")
    for axis, (got, dim) in enumerate(zip(arr.shape, vi.shape)):
        if isinstance(dim, int) and got != dim:
            raise InputError(f"input '{shown(name)}' has shape {tuple(arr.shape)}, the model "
                             f"expects {vi.describe()}: dimension {axis} must be {dim}, got "
                             f"{got}")
        if isinstance(dim, str):
            if dim in bound and bound[dim][0] != got:
                size, other = bound[dim]
                raise InputError(f"input '{shown(name)}' dimension {axis} ('{shown(dim)}') is "
                                 f"{got}, but input '{shown(other)}' set '{shown(dim)}' = "
                                 f"{size}; inputs sharing a dimension name must agree")
            bound.setdefault(dim, (got, name))
    return arr


def _check_non_tensor(np: Any, name: str, vi: ValueInfo, value: Any, bound: dict) -> Any:
    """A sequence (a list of arrays, each checked as its element type), an optional (None,
    or its element) or a map (a dict), as ONNX Runtime takes them."""
    inner = vi.dtype[vi.dtype.index("(") + 1:-1]
    label = shown(name)
    if vi.dtype.startswith("optional("):
        if value is None:
            return None
        return _check_one(np, name, ValueInfo(name, inner, None), value, bound)
    if vi.dtype.startswith("seq("):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"input '{label}' is a sequence ({vi.dtype}): pass a list of "
                             f"arrays, not a {type(value).__name__}")
        return [_check_one(np, f"{name}[{k}]", ValueInfo(f"{name}[{k}]", inner, None), v, {})
                for k, v in enumerate(value)]
    if not isinstance(value, Mapping):
        raise InputError(f"input '{label}' is a map ({vi.dtype}): pass a dict, not a "
                         f"{type(value).__name__}")
    return dict(value)


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

    from backplane.sdk.errors import InputError
    from backplane.model.shapecheck import propagates

    if not dims:
        return graph
    proto = type(graph.model)()
    proto.CopyFrom(graph.model)
    del proto.graph.value_info[:]
    for o in proto.graph.output:
        if o.name in graph.unconfirmed_outputs:  # inference, not the declaration, decides
            o.type.tensor_type.ClearField("shape")
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                size = int(dims[d.dim_param])
                if size < 1:
                    raise InputError(f"dims: '{shown(d.dim_param)}' must be a positive size, "
                                     f"not {size}")
                d.dim_value = size
    try:
        proto = shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                             data_prop=propagates(proto))
    except Exception as exc:
        raise InputError(f"dims {dims} do not fit the model '{shown(graph.name)}': {exc}"
                         ) from None
    fixed = Graph(proto, graph.name)
    fixed.notes.extend(graph.notes)
    fixed.external_dir = graph.external_dir
    fixed.unconfirmed_outputs = dict(graph.unconfirmed_outputs)
    return fixed
