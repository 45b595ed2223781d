"""Model intake: from a path, bytes or ModelProto to a checked, shape-inferred Graph.

Every way a model can be wrong ends here as a :class:`ModelError` naming what is wrong and
what to do. The model is read and checked as protobuf in :mod:`backplane.model.modelfile`;
a run's inputs are checked in :mod:`backplane.model.inputs`. External data is read only from
files inside the model's own folder (:mod:`backplane.model.external`).

Models are accepted as ONNX Runtime accepts them: a negative dimension in an input or output
declaration is a dynamic one (Paddle2ONNX writes -1); a declared output shape that shape
inference contradicts is a warning, and the inferred shape is used; an initializer the model
also lists as an input (IR < 4) is a constant a run may override; a model over 2 GiB keeps
its big initializers in their files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from backplane.model.external import INLINE_LIMIT, attach, detach, load_external_data
from backplane.model.fold import fold_constants
from backplane.model.graph import Dim, Graph, ValueInfo, value_info_from_proto
from backplane.model.modelfile import (check_raw_data, keepdims_as_read, name_nodes, read_proto,
                                       take_as_inputs)
from backplane.model.shapecheck import contradiction, propagates
from backplane.model.typefill import complete_types
from backplane.ops import schemas
from backplane.sdk.errors import InputError, ModelError
from backplane.sdk.text import shown

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
    proto, stem, base_dir = read_proto(model, base_dir)
    if stem is not None:  # a path: the file's stem names the model
        name = stem
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
    check_raw_data(proto, label)
    if proto.ByteSize() > INLINE_LIMIT:
        raise ModelError(f"{label}: the model is {proto.ByteSize() / 2**30:.2f} GiB with its "
                         "tensors inline, more than one ONNX message can hold (2 GiB); save "
                         "it with external data (onnx.save(model, path, "
                         "save_as_external_data=True)) and load it from that path")
    take_as_inputs(proto, set(as_inputs), label)
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
    keepdims_as_read(proto)
    unconfirmed = _settle_outputs(proto, declared, label, notes)
    attach(proto, kept)
    name_nodes(proto)
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


def _check_node_shapes(proto: Any, name: str) -> None:
    """Refuse a model whose inferred shapes already break a rule of a node that ONNX's
    inference leaves unchecked (:func:`backplane.model.shapecheck.contradiction`: a Conv's kernel
    against its weight, a Reshape's element count ...): no input could run it."""
    why = contradiction(proto)
    if why:
        raise ModelError(f"{name}: {why}; no input can run the model as it is: correct the "
                         "node, its attributes or its weights")


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


    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=strict,
                                                 data_prop=propagates(proto))
    except Exception as exc:
        raise ModelError(f"{name}: shape inference failed, the model is inconsistent: {exc}"
                         ) from None


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


def with_dims(graph: Graph, dims: dict[str, int]) -> Graph:
    """``graph`` with symbolic input dimensions fixed to ``dims`` and shapes inferred
    again: the graph a plan for those sizes is priced on (nodes keep names and order)."""
    from onnx import shape_inference


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
