"""External tensor data: confined to the model's folder, read in, or kept in its file.

A model may keep tensors in files beside it (``model.onnx.data``, as
``torch.onnx.export(dynamo=True)`` and ``onnx.save(..., save_as_external_data=True)`` write
them). Intake reads every such file only from inside the model's own folder, and checks each
tensor's byte range against the file and the tensor's type before using it.

A model whose tensors add up to more than protobuf can serialise (2 GiB) cannot be held as
one message: then the big initializers stay in their files (:data:`KEEP_BYTES` and over),
the Graph records their folder (``Graph.external_dir``), and the runtimes read them there.
While intake checks and shape-infers such a model, those initializers are presented as
graph inputs of the same type and shape (:func:`detach`): the ONNX checker, shape inference
and constant folding then never read their bytes, and the model they see stays small.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backplane.sdk.errors import ModelError

#: The largest message protobuf serialises (2 GiB - 1 byte).
PROTO_LIMIT = 2**31 - 1
#: A model is held with all its tensors inline up to this size; the margin leaves room for
#: what intake adds (inferred value infos) and for the copies backends make to serialise it.
INLINE_LIMIT = PROTO_LIMIT - 2**26
#: In a model over :data:`INLINE_LIMIT`, initializers of at least this many bytes stay in
#: their files; smaller ones (shapes, scales: what shape inference and folding read) are
#: read in.
KEEP_BYTES = 2**16


@dataclass
class Detached:
    """Initializers taken out of a model while intake works on it (see :func:`detach`)."""

    tensors: list[Any]
    was_input: set[str]


def tensors(proto: Any) -> Iterator[Any]:
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


def load_external_data(proto: Any, base_dir: Any, name: str) -> Path | None:
    """Check every tensor's external data and read it into the model, refusing any file
    outside ``base_dir``. In a model too big to hold inline (over :data:`INLINE_LIMIT`
    bytes), initializers of :data:`KEEP_BYTES` or more stay in their files.

    Returns:
        The folder the tensors left in their files are relative to, or None when every
        tensor is now inside ``proto``.
    """
    from onnx import TensorProto

    external = [t for t in tensors(proto) if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return None
    if base_dir is None:
        raise ModelError(f"{name}: tensor '{external[0].name}' keeps its data in an external "
                         "file; load the model from its path, or pass base_dir= the folder "
                         "that holds the data")
    root = Path(base_dir).resolve()
    ranges = [_checked_range(t, root, name) for t in external]
    total = proto.ByteSize() + sum(length for _, _, length in ranges)
    keep: set[int] = set()
    if total > INLINE_LIMIT:
        # tensors() yields the main graph's initializers first: those lead ``external``.
        top = sum(1 for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL)
        keep = {i for i in range(top) if ranges[i][2] >= KEEP_BYTES}
        inline = total - sum(ranges[i][2] for i in keep)
        if inline > INLINE_LIMIT:
            raise ModelError(
                f"{name}: the model holds {inline / 2**30:.2f} GiB in tensors smaller than "
                f"{KEEP_BYTES} bytes or outside the main graph's initializers, more than one "
                "ONNX message can hold (2 GiB); save the big tensors as initializers with "
                "external data")
    for i, t in enumerate(external):
        if i in keep:
            continue
        target, offset, length = ranges[i]
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
    return root if keep else None


def _checked_range(t: Any, root: Path, name: str) -> tuple[Path, int, int]:
    """(file, offset, length) of a tensor's external data, each checked."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    target = confined(root, location, t.name, name)
    offset = _byte_count(info, "offset", t.name, name) or 0
    length = _byte_count(info, "length", t.name, name)
    size = target.stat().st_size
    length = size - offset if length is None else length
    if offset + length > size:
        raise ModelError(f"{name}: tensor '{t.name}' asks for bytes {offset}..{offset + length}"
                         f" of '{location}', which has {size} bytes (truncated file?)")
    expected = tensor_nbytes(t)
    if expected is not None and length != expected:
        raise ModelError(
            f"{name}: tensor '{t.name}' ({describe_tensor(t)}) needs {expected} bytes, "
            f"but its external data in '{location}' is {length} bytes long; the data "
            "file does not belong to this model or was written incompletely")
    return target, offset, length


def confined(root: Path, location: str, tensor: str, name: str) -> Path:
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


def tensor_nbytes(t: Any) -> int | None:
    """Bytes a tensor's raw data must hold, or None for types without a fixed width."""
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


def describe_tensor(t: Any) -> str:
    """``float32[1024,4096]``."""
    from onnx import helper

    try:
        kind = helper.tensor_dtype_to_string(t.data_type).removeprefix("TensorProto.").lower()
    except (KeyError, ValueError):
        kind = f"type {t.data_type}"
    return f"{kind}[{','.join(str(d) for d in t.dims)}]"


# ------------------------------------------------------------------ initializers as inputs

def detach(proto: Any, names: set[str] | None = None) -> Detached:
    """Take initializers out of ``proto`` (in place) and declare each as a graph input of
    its type and shape: the ones named, or (``names=None``) every one kept in its file.

    An initializer the model already lists as an input (IR < 4) keeps that declaration.
    :func:`attach` puts them back.
    """
    from onnx import TensorProto, helper

    g = proto.graph
    if names is None:
        names = {t.name for t in g.initializer if t.data_location == TensorProto.EXTERNAL}
    taken = [t for t in g.initializer if t.name in names]
    if not taken:
        return Detached([], set())
    declared = {i.name for i in g.input}
    kept = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(kept)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in taken if t.name not in declared)
    return Detached(taken, declared & names)


def attach(proto: Any, detached: Detached) -> None:
    """Undo :func:`detach` on ``proto`` (which may be a later, shape-inferred copy)."""
    if not detached.tensors:
        return
    g = proto.graph
    names = {t.name for t in detached.tensors}
    added = names - detached.was_input
    for vi in [i for i in g.input if i.name in added]:
        g.input.remove(vi)
    for vi in [v for v in g.value_info if v.name in names]:
        g.value_info.remove(vi)
    g.initializer.extend(detached.tensors)


def without_big_weights(model: Any) -> Any:
    """``model`` with each initializer of :data:`KEEP_BYTES` or more (or kept in its file)
    declared as a graph input of its type instead, so that a copy for shape inference costs
    what the graph does, not what its weights do."""
    from onnx import ModelProto, TensorProto, helper

    src, out = model.graph, ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g = out.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    declared = {i.name for i in src.input}
    for t in src.initializer:
        if t.data_location != TensorProto.EXTERNAL and t.ByteSize() < KEEP_BYTES:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def split(model: Any, folder: Path) -> tuple[Any, dict[str, Any]]:
    """``model`` with every initializer kept in a file as a graph input, and those
    initializers as numpy arrays mapped from their files in ``folder`` (copy-on-write
    maps: nothing is read until used, and the files are never written)."""
    import numpy as np
    from onnx import ModelProto, helper

    out = ModelProto()
    out.CopyFrom(model)
    detached = detach(out)
    arrays = {}
    for t in detached.tensors:
        info = {e.key: e.value for e in t.external_data}
        target = confined(folder, info.get("location", ""), t.name, "model")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
        shape = tuple(int(d) for d in t.dims)
        if 0 in shape:
            arrays[t.name] = np.zeros(shape, dtype)
            continue
        arrays[t.name] = np.memmap(target, dtype=dtype, mode="c",
                                   offset=int(info.get("offset", 0)), shape=shape)
    return out, arrays
