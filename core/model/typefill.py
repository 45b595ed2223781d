"""Element types for the values ONNX shape inference leaves untyped.

ONNX shape inference knows the ONNX domains only: the output of a ``com.microsoft`` op
(FastGelu, SkipLayerNormalization, QLinearConv ...) gets no type, and with it nothing
downstream. The planner needs every value's element type (partitions are cut at typed
boundaries; capabilities check dtypes), so :func:`complete_types` types each such output
from the op's schema in the operator registry: an output bound to the same type
constraint as a typed input takes that input's type; an output of one fixed type, or of
a constraint that admits one type, takes it. Shapes stay unknown where nothing tells
them. ONNX shape inference then runs again from the typed values.
"""

from __future__ import annotations

from typing import Any

from backplane.model.dtypes import DTYPE_CODES, DTYPE_NAMES
from backplane.ops.registry import find

#: Rounds of typing and re-inference at most (each types what the one before made known).
MAX_ROUNDS = 4


def complete_types(proto: Any, infer: Any) -> Any:
    """``proto`` with a type for every node output its ops' schemas determine.

    Args:
        proto: a shape-inferred ModelProto.
        infer: the shape inference to run again (``infer(proto) -> proto``).
    """
    from onnx import helper

    for _ in range(MAX_ROUNDS):
        known = _typed(proto)
        added = []
        for node in proto.graph.node:
            for name, dtype in _output_types(node, known, proto).items():
                if name not in known:
                    known[name] = dtype
                    added.append(helper.make_tensor_value_info(name, DTYPE_CODES[dtype], None))
        if not added:
            return proto
        proto.graph.value_info.extend(added)
        proto = infer(proto)
    return proto


def _typed(proto: Any) -> dict[str, str]:
    """Value name -> dtype name of every tensor value the graph types."""
    g = proto.graph
    out = {t.name: DTYPE_NAMES.get(t.data_type, "") for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = DTYPE_NAMES.get(vi.type.tensor_type.elem_type, "")
    return {k: v for k, v in out.items() if v}


def _output_types(node: Any, known: dict[str, str], proto: Any) -> dict[str, str]:
    """The dtypes of ``node``'s outputs that its schema determines from what is known."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    definition = find(node.op_type, domain)
    opset = next((o.version for o in proto.opset_import
                  if (o.domain if o.domain != "ai.onnx" else "") == domain), 0)
    schema = definition.at(opset) if definition is not None else None
    if schema is None:
        return {}
    bound: dict[str, str] = {}
    for k, name in enumerate(node.input):
        formal = schema.inputs[min(k, len(schema.inputs) - 1)] if schema.inputs else None
        if formal is not None and name in known:
            bound.setdefault(formal[1], known[name])
    out = {}
    for k, name in enumerate(node.output):
        if not name or k >= len(schema.outputs):
            continue
        constraint = schema.outputs[k][1]
        allowed = schema.type_constraints.get(constraint, frozenset())
        dtype = bound.get(constraint) or (next(iter(allowed)) if len(allowed) == 1 else None)
        if dtype in DTYPE_CODES:
            out[name] = dtype
    return out
