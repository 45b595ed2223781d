"""The model as protobuf: read from a path, bytes or a ModelProto, and what ONNX's checker
leaves unchecked or unnamed in it.

:func:`backplane.model.intake.load_model` reads a model with :func:`read_proto` and then
applies these steps in its own order: :func:`check_raw_data` (stored bytes against shape and
type), :func:`take_as_inputs` (initializers a run overrides), :func:`keepdims_as_read` and
:func:`name_nodes`. Each needs onnx and the model alone, not the operator registry; a model
that cannot be read is a :class:`ModelError` naming what is wrong and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backplane.model.external import PROTO_LIMIT, describe_tensor, detach, tensor_nbytes, tensors
from backplane.sdk.errors import ModelError
from backplane.sdk.text import shown


def read_proto(model: Any, base_dir: str | os.PathLike | None = None
               ) -> tuple[Any, str | None, str | os.PathLike | None]:
    """A model's ModelProto, its name where its source gives one, and its external-data folder.

    Args:
        model: a path to an ``.onnx`` file, the file's bytes, or an ``onnx.ModelProto``
            (copied, never modified).
        base_dir: the folder external data is read from, for bytes or a ModelProto.

    Returns:
        ``(proto, name, base_dir)``: for a path, ``name`` is the file's stem and ``base_dir``
        its folder; otherwise ``name`` is None and ``base_dir`` as given.

    Raises:
        ModelError: the file is missing, a folder, over 2 GiB or unreadable, the data is not
            an ONNX model, or ``model`` is of another type.
    """
    import onnx

    name = None
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
    return proto, name, base_dir


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


def check_raw_data(proto: Any, name: str) -> None:
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


def take_as_inputs(proto: Any, names: set[str], name: str) -> None:
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


def keepdims_as_read(proto: Any) -> None:
    """A ``keepdims`` of other than 0 or 1 set to 0: ONNX's inference and ONNX Runtime keep
    the reduced axes only for 1, OpenVINO and opencl kept them for any non-zero value and
    the outputs had another shape, onnx.reference raised on 2**31 (found by fuzzing)."""
    for node in _all_nodes(proto.graph.node):
        if node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "keepdims" and a.i not in (0, 1):
                    a.i = 0


def name_nodes(proto: Any) -> None:
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
