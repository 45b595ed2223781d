"""Constant folding before planning: ops that compute nothing never push a node off a backend.

Exporters write Constant nodes instead of initializers, and long chains of shape arithmetic
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape) whose every value is known before the
model runs. A kernel backend has no kernel for most of those ops, and a graph compiler
folds them anyway; left in the graph, they would split partitions for nothing. So, before
planning, :func:`fold_constants` replaces, in the main graph:

- every Constant node by an initializer;
- Shape and Size of a value whose shape is fully known by that shape or size;
- every other deterministic node of the ONNX default domain whose inputs are all
  constants and whose outputs are integers or booleans (shape arithmetic), or small (at
  most :data:`MAX_FOLDED_BYTES`), by its outputs, computed with onnx.reference.

It never folds a node with subgraphs, a random or sequence op, or what quantization
patterns are made of (QuantizeLinear, DequantizeLinear): graph compilers recognise those
and run them in integers. Initializers left unread are dropped. The fold is exact: only
integer arithmetic, or the reference's float arithmetic on values no larger than a few
kilobytes, which every backend would compute the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Float outputs larger than this are left to the backends (weights transformed at load:
#: a graph compiler folds them in its own precision and layout).
MAX_FOLDED_BYTES = 4096
#: Ops never folded: nondeterministic, stateful, sequences, control flow, quantization
#: patterns that graph compilers turn into integer kernels.
NEVER = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
    "Multinomial", "If", "Loop", "Scan", "SequenceMap", "QuantizeLinear", "DequantizeLinear",
    "DynamicQuantizeLinear", "Optional", "OptionalGetElement", "OptionalHasElement",
    "SequenceConstruct", "SequenceEmpty", "SequenceAt", "SequenceInsert", "SequenceErase",
    "SequenceLength", "SplitToSequence", "ConcatFromSequence", "ImageDecoder",
})
_INTEGERS = {2, 3, 4, 5, 6, 7, 9, 12, 13}  # uint8 int8 uint16 int16 int32 int64 bool uint32 uint64


def fold_constants(proto: Any, infer: Callable[[Any], Any]) -> tuple[Any, int]:
    """``(model, how many nodes were folded)``; ``infer`` re-runs shape inference on the
    folded model (new constants make more shapes known)."""
    from onnx import numpy_helper

    g = proto.graph
    consts: dict[str, Any] = {t.name: t for t in g.initializer}
    shapes = _static_shapes(g)
    folded: list[int] = []
    outputs = {o.name for o in g.output}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    for i, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in NEVER or _has_subgraph(node):
            continue
        if any(o in outputs for o in node.output):
            continue  # a graph output stays computed: its producer is what the caller sees
        values = _evaluate(node, consts, shapes, opset)
        if values is None:
            continue
        for name, value in zip(node.output, values):
            if name:
                consts[name] = numpy_helper.from_array(value, name)
        folded.append(i)
    if not folded:
        return proto, 0
    # Each repeated field is rebuilt once: deleting or removing entries one by one costs
    # a pass over the field each, quadratic in a graph of thousands of nodes.
    gone = set(folded)
    _keep_only(g.node, [n for i, n in enumerate(g.node) if i not in gone])
    read = {n for node in g.node for n in node.input} | _outer_reads(g) | outputs
    keep = [t for t in consts.values() if t.name in read]
    _keep_only(g.initializer, keep)
    kept = {t.name for t in keep}
    _keep_only(g.value_info, [vi for vi in g.value_info if vi.name not in kept])
    dropped = {t for t in consts if t not in kept}
    # an initializer also listed as an input (IR < 4) goes with it
    _keep_only(g.input, [vi for vi in g.input if vi.name not in dropped])
    # Before IR 4 an initializer had to be a graph input too, and inference types no other;
    # the folded constants are not inputs, so the model is read as IR 4, which allows them
    # and means the same otherwise.
    proto.ir_version = max(proto.ir_version, 4)
    return infer(proto), len(folded)


def _keep_only(field: Any, entries: list[Any]) -> None:
    """Replace a protobuf repeated field's entries by ``entries`` in one pass."""
    copies = []
    for entry in entries:  # copied first: clearing the field may release its entries
        copy = type(entry)()
        copy.CopyFrom(entry)
        copies.append(copy)
    del field[:]
    field.extend(copies)


def _evaluate(node: Any, consts: dict[str, Any], shapes: dict[str, tuple[int, ...]],
              opset: int) -> list[Any] | None:
    """The outputs of ``node`` when they are known before the model runs, else None."""
    import numpy as np
    from onnx import numpy_helper

    if node.op_type == "Constant":
        return _constant(node)
    if node.op_type in ("Shape", "Size") and node.input and node.input[0] in shapes:
        shape = shapes[node.input[0]]
        if node.op_type == "Size":
            return [np.asarray(int(np.prod(shape, dtype=np.int64)), np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.asarray(shape[slice(start, end)], np.int64)]
    inputs = [n for n in node.input if n]
    if not inputs or any(n not in consts for n in inputs):
        return None
    arrays = {n: numpy_helper.to_array(consts[n]) for n in inputs}
    if not all(a.dtype.kind in "iub" for a in arrays.values()) and \
            sum(a.nbytes for a in arrays.values()) > MAX_FOLDED_BYTES:
        return None
    results = _run(node, arrays, opset)
    if results is None:
        return None
    for r in results:
        if r.dtype.kind not in "iub" and r.nbytes > MAX_FOLDED_BYTES:
            return None
    return results


def _run(node: Any, arrays: dict[str, Any], opset: int) -> list[Any] | None:
    """One node evaluated by onnx.reference on constant inputs (None when it cannot be)."""
    import numpy as np
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    outs = [helper.make_value_info(o, helper.make_empty_tensor_value_info(o).type)
            for o in node.output if o]
    graph = helper.make_graph([node], "fold", [], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        with np.errstate(all="ignore"):
            values = ReferenceEvaluator(model).run(None, {})
    except Exception:  # an op the reference cannot evaluate stays for the backends
        return None
    return [np.asarray(v) for v in values]


def _constant(node: Any) -> list[Any] | None:
    import numpy as np
    from onnx import AttributeProto, helper, numpy_helper

    for a in node.attribute:
        if a.type == AttributeProto.TENSOR:
            return [numpy_helper.to_array(a.t)]
        if a.type == AttributeProto.SPARSE_TENSOR:
            return None  # left to the backends, which read sparse constants themselves
        value = helper.get_attribute_value(a)
        if a.name == "value_float":
            return [np.asarray(value, np.float32)]
        if a.name == "value_floats":
            return [np.asarray(value, np.float32)]
        if a.name in ("value_int", "value_ints"):
            return [np.asarray(value, np.int64)]
        if a.name in ("value_string", "value_strings"):
            return [np.asarray(value, object)]
    return None


def _static_shapes(g: Any) -> dict[str, tuple[int, ...]]:
    """Values whose every dimension inference knows (positive integers)."""
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is None or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in t.shape.dim]
        if all(d is not None for d in dims):
            out[vi.name] = tuple(int(d) for d in dims)
    for t in g.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


def _has_subgraph(node: Any) -> bool:
    from onnx import AttributeProto

    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def _outer_reads(g: Any) -> set[str]:
    """Names the subgraphs of ``g``'s nodes read from the enclosing scope (any depth)."""
    from onnx import AttributeProto

    names: set[str] = set()
    for node in g.node:
        for a in node.attribute:
            subs = [a.g] if a.type == AttributeProto.GRAPH else (
                list(a.graphs) if a.type == AttributeProto.GRAPHS else [])
            for sub in subs:
                names |= {n for inner in sub.node for n in inner.input} | _outer_reads(sub)
    return names
