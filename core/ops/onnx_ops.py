"""The mandatory op set: 49 ONNX default-domain ops, their schemas as data, their costs.

Schemas are those in force at opset 21 (``onnx.defs.get_schema(op, 21)``), kept in the
checked-in ``onnx_types.json`` so that the planner reads type constraints without importing
onnx. :func:`regenerate` rebuilds that data from the installed onnx; a test checks that the
file is current. Run ``python -m backplane.ops.onnx_ops`` to rewrite it.

Cost conventions (all counts per element of the tensor named):

- a multiply-add counts 2 flops; an add, multiply, compare or select counts 1;
- a transcendental function (exp, log, erf, tanh, pow, sqrt) counts
  :data:`TRANSCENDENTAL_FLOPS`;
- unknown or symbolic dimensions count as 1, an unknown rank as a scalar, and an unknown
  element type as 0 bytes: a cost is always computed from what is known.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import MANDATORY, Cost, OpDef

if TYPE_CHECKING:  # pragma: no cover
    from ..graph import Node, ValueInfo

#: The opset whose schemas the data records.
OPSET = 21
#: The data file, beside this module.
DATA_FILE = "onnx_types.json"
#: Flops per element of a transcendental function (a polynomial or table evaluation).
TRANSCENDENTAL_FLOPS = 8

#: Bits per element by dtype name; types not listed count 0 (strings are variable-length).
ITEM_BITS = {
    "float32": 32, "float64": 64, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8,
    "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64,
    "bool": 8, "complex64": 64, "complex128": 128, "float8e4m3fn": 8, "float8e4m3fnuz": 8,
    "float8e5m2": 8, "float8e5m2fnuz": 8, "uint4": 4, "int4": 4, "float4e2m1": 4,
}

# --------------------------------------------------------------------------- shapes, bytes


def dims(vi: "ValueInfo | None") -> tuple[int, ...] | None:
    """A value's dimensions with unknown and symbolic ones as 1; None if the rank is unknown."""
    if vi is None or vi.shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else 1 for d in vi.shape)


def elements(vi: "ValueInfo | None") -> int:
    """Element count of a value: 0 when absent, 1 for an unknown rank."""
    if vi is None:
        return 0
    return math.prod(dims(vi) or ())


def nbytes(vi: "ValueInfo | None") -> int:
    """Bytes a value occupies (sub-byte types packed, rounded up)."""
    if vi is None:
        return 0
    return (elements(vi) * ITEM_BITS.get(vi.dtype, 0) + 7) // 8


def output_bytes(node: "Node") -> int:
    """Bytes written to the node's outputs."""
    return sum(nbytes(vi) for vi in node.output_types)


def io_bytes(node: "Node") -> int:
    """Bytes read from every present input plus bytes written to the outputs."""
    return sum(nbytes(vi) for vi in node.input_types) + output_bytes(node)


def broadcast(shapes: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """The numpy-broadcast shape of ``shapes`` (dimensions already made concrete)."""
    shapes = list(shapes)
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        for i, d in enumerate(reversed(s)):
            out[rank - 1 - i] = max(out[rank - 1 - i], d)
    return tuple(out)


def result_elements(node: "Node", index: int = 0) -> int:
    """Elements of output ``index``: its inferred shape where known, else the broadcast
    of the inputs' shapes (the rule of element-wise ops)."""
    out = node.output_types[index] if len(node.output_types) > index else None
    known = [d for d in (dims(vi) for vi in node.input_types) if d is not None]
    implied = broadcast(known)
    if out is None or out.shape is None:
        return math.prod(implied)
    if len(out.shape) == len(implied):
        return math.prod(d if isinstance(d, int) and d >= 0 else b
                         for d, b in zip(out.shape, implied))
    return elements(out)


def _input(node: "Node", index: int) -> "ValueInfo | None":
    if index < len(node.inputs) and node.inputs[index] and index < len(node.input_types):
        return node.input_types[index]
    return None


def _has_input(node: "Node", index: int) -> bool:
    return index < len(node.inputs) and bool(node.inputs[index])


# --------------------------------------------------------------------------- cost functions

#: Flops per output element of element-wise ops.
ELEMENTWISE_FLOPS: dict[str, int] = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Abs": 1, "Neg": 1, "Relu": 1, "Where": 1,
    "Cast": 1, "LeakyRelu": 2, "Clip": 2, "HardSigmoid": 3, "HardSwish": 4,
    "Pow": TRANSCENDENTAL_FLOPS, "Sqrt": TRANSCENDENTAL_FLOPS, "Exp": TRANSCENDENTAL_FLOPS,
    "Log": TRANSCENDENTAL_FLOPS, "Erf": TRANSCENDENTAL_FLOPS, "Tanh": TRANSCENDENTAL_FLOPS,
    "Sigmoid": TRANSCENDENTAL_FLOPS + 2,  # 1 / (1 + exp(-x))
    "Gelu": TRANSCENDENTAL_FLOPS + 4,     # 0.5 * x * (1 + erf(x / sqrt 2))
}
#: Flops per input element of normalisations and softmax.
NORMALISATION_FLOPS: dict[str, int] = {
    "BatchNormalization": 2,  # inference: one multiply-add with folded statistics
    "LayerNormalization": 8,  # mean, variance, normalise, scale and shift
    "Softmax": 4 + TRANSCENDENTAL_FLOPS,  # max, subtract, exp, sum, divide
}
#: Flops per output element of Resize, by mode.
RESIZE_FLOPS = {"nearest": 0, "linear": 8, "cubic": 32}
#: Flops per element of quantisation: scale, round, shift, saturate; and back: shift, scale.
QUANTIZE_FLOPS = 4
DEQUANTIZE_FLOPS = 2


def elementwise_cost(node: "Node") -> Cost:
    """Element-wise ops: a constant per element of the broadcast output."""
    per = ELEMENTWISE_FLOPS.get(node.op_type, 1)
    return Cost(per * result_elements(node), io_bytes(node))


def matmul_dims(a: Sequence[int] | None, b: Sequence[int] | None
                ) -> tuple[int, int, int, int] | None:
    """(batch, M, N, K) of ``a @ b`` with numpy matmul rules; None if a rank is unknown."""
    if a is None or b is None or not a or not b:
        return None
    k = a[-1]
    m = a[-2] if len(a) >= 2 else 1
    n = b[-1] if len(b) >= 2 else 1
    batch = math.prod(broadcast([a[:-2], b[:-2]]))
    return batch, m, n, k


def matmul_cost(node: "Node") -> Cost:
    """MatMul and MatMulInteger: 2*M*N*K per batch element."""
    found = matmul_dims(dims(_input(node, 0)), dims(_input(node, 1)))
    if found is None:  # ranks unknown: the output size, one product each
        return Cost(2 * result_elements(node), io_bytes(node))
    batch, m, n, k = found
    return Cost(2 * batch * m * n * k, io_bytes(node))


def gemm_cost(node: "Node") -> Cost:
    """Gemm: 2*M*N*K, plus M*N to add C when present."""
    a, b = dims(_input(node, 0)), dims(_input(node, 1))
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return Cost(2 * result_elements(node), io_bytes(node))
    m, k = (a[1], a[0]) if node.attributes.get("transA", 0) else a
    n = b[0] if node.attributes.get("transB", 0) else b[1]
    flops = 2 * m * n * k + (m * n if _has_input(node, 2) else 0)
    return Cost(flops, io_bytes(node))


def window_output_spatial(node: "Node", spatial_in: Sequence[int], kernel: Sequence[int]
                          ) -> list[int]:
    """Output spatial size of a Conv/pool window from its attributes (ceil_mode ignored)."""
    n = len(kernel)
    strides = list(node.attributes.get("strides") or [1] * n)
    dilations = list(node.attributes.get("dilations") or [1] * n)
    pads = list(node.attributes.get("pads") or [0] * (2 * n))
    auto_pad = node.attributes.get("auto_pad", "NOTSET")
    out = []
    for i in range(n):
        s = max(strides[i], 1)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-spatial_in[i] // s))
            continue
        extent = dilations[i] * (kernel[i] - 1) + 1
        total = 0 if auto_pad == "VALID" else pads[i] + pads[i + n]
        out.append(max((spatial_in[i] + total - extent) // s + 1, 1))
    return out


def conv_cost(node: "Node") -> Cost:
    """Conv: 2 * output elements * (C_in/group) * prod(kernel), plus the bias add."""
    x, w = dims(_input(node, 0)), dims(_input(node, 1))
    if w is None or len(w) < 2:
        return Cost(2 * result_elements(node), io_bytes(node))
    kernel = list(node.attributes.get("kernel_shape") or w[2:])
    out_vi = node.output_types[0] if node.output_types else None
    if out_vi is not None and out_vi.shape is not None:
        out = result_elements(node)
    elif x is not None and len(x) == 2 + len(kernel):
        out = x[0] * w[0] * math.prod(window_output_spatial(node, x[2:], kernel))
    else:
        out = w[0]
    flops = 2 * out * w[1] * math.prod(kernel) + (out if _has_input(node, 2) else 0)
    return Cost(flops, io_bytes(node))


def conv_transpose_cost(node: "Node") -> Cost:
    """ConvTranspose: every input element scatters into (C_out/group) * prod(kernel)
    outputs, 2 flops each, plus the bias add.

    Counted from the input rather than the output: with strides above 1 most of the
    output positions receive fewer than prod(kernel) contributions.
    """
    x, w = dims(_input(node, 0)), dims(_input(node, 1))
    if w is None or len(w) < 2:
        return Cost(2 * result_elements(node), io_bytes(node))
    kernel = list(node.attributes.get("kernel_shape") or w[2:])
    inputs = math.prod(x) if x is not None else w[0]
    flops = 2 * inputs * w[1] * math.prod(kernel)
    if _has_input(node, 2):
        flops += result_elements(node)
    return Cost(flops, io_bytes(node))


def pool_cost(node: "Node") -> Cost:
    """MaxPool, AveragePool: one compare or add per output element per kernel position."""
    kernel = list(node.attributes.get("kernel_shape") or [])
    out_vi = node.output_types[0] if node.output_types else None
    x = dims(_input(node, 0))
    if (out_vi is None or out_vi.shape is None) and x is not None and len(x) == 2 + len(kernel):
        out = x[0] * x[1] * math.prod(window_output_spatial(node, x[2:], kernel))
    else:
        out = elements(out_vi)
    return Cost(out * math.prod(kernel), io_bytes(node))


def input_elements_cost(node: "Node") -> Cost:
    """Reductions and global pooling: one operation per input element."""
    return Cost(elements(_input(node, 0)), io_bytes(node))


def normalisation_cost(node: "Node") -> Cost:
    """BatchNormalization, LayerNormalization, Softmax: a few operations per element."""
    per = NORMALISATION_FLOPS.get(node.op_type, 4)
    return Cost(per * elements(_input(node, 0)), io_bytes(node))


def movement_cost(node: "Node") -> Cost:
    """Data movement (Reshape, Transpose, Concat, ...): no flops; bytes in and out."""
    return Cost(0, io_bytes(node))


def gather_cost(node: "Node") -> Cost:
    """Gather and Slice read only what they copy: the output's bytes, plus the indices."""
    small = sum(nbytes(vi) for vi in node.input_types[1:])
    return Cost(0, 2 * output_bytes(node) + small)


def shape_cost(node: "Node") -> Cost:
    """Shape reads metadata only: the bytes of the small int64 output."""
    return Cost(0, output_bytes(node))


def resize_cost(node: "Node") -> Cost:
    """Resize: interpolation work per output element, by mode."""
    per = RESIZE_FLOPS.get(str(node.attributes.get("mode", "nearest")), 8)
    return Cost(per * result_elements(node), io_bytes(node))


def quantize_cost(node: "Node") -> Cost:
    """QuantizeLinear: scale, round, shift and saturate each element."""
    return Cost(QUANTIZE_FLOPS * elements(_input(node, 0)), io_bytes(node))


def dequantize_cost(node: "Node") -> Cost:
    """DequantizeLinear: shift and scale each element."""
    return Cost(DEQUANTIZE_FLOPS * elements(_input(node, 0)), io_bytes(node))


#: The cost function of each mandatory op.
COSTS: dict[str, Callable[["Node"], Cost]] = {
    **{op: elementwise_cost for op in ELEMENTWISE_FLOPS},
    "MatMul": matmul_cost, "MatMulInteger": matmul_cost, "Gemm": gemm_cost,
    "Conv": conv_cost, "ConvTranspose": conv_transpose_cost,
    "MaxPool": pool_cost, "AveragePool": pool_cost, "GlobalAveragePool": input_elements_cost,
    "ReduceMean": input_elements_cost, "ReduceSum": input_elements_cost,
    "ReduceMax": input_elements_cost,
    **{op: normalisation_cost for op in NORMALISATION_FLOPS},
    **{op: movement_cost for op in ("Reshape", "Transpose", "Concat", "Squeeze", "Unsqueeze",
                                    "Flatten", "Expand", "Pad")},
    "Gather": gather_cost, "Slice": gather_cost, "Shape": shape_cost, "Resize": resize_cost,
    "QuantizeLinear": quantize_cost, "DequantizeLinear": dequantize_cost,
}

# --------------------------------------------------------------------------- schema data


def load_data() -> dict[str, Any]:
    """The checked-in schema data (``onnx_types.json``), parsed."""
    text = resources.files(__package__).joinpath(DATA_FILE).read_text("utf-8")
    return json.loads(text)


def opdefs() -> list[OpDef]:
    """An :class:`OpDef` per mandatory op, from the checked-in data."""
    data = load_data()["ops"]
    missing = [op for op in MANDATORY if op not in data]
    if missing:
        raise RuntimeError(f"{DATA_FILE} lacks {missing}; run regenerate() and check it in")
    out = []
    for op in MANDATORY:
        d = data[op]
        out.append(OpDef(
            name=op, domain="", tier="mandatory",
            inputs=tuple((i["name"], i["type"], i["optional"]) for i in d["inputs"]),
            type_constraints=MappingProxyType(
                {k: frozenset(v) for k, v in d["type_constraints"].items()}),
            attributes=MappingProxyType(dict(d["attributes"])),
            cost=COSTS[op],
            outputs=tuple((o["name"], o["type"], o["optional"]) for o in d["outputs"]),
            variadic=any(i["variadic"] for i in d["inputs"]),
            required_attributes=frozenset(d["required_attributes"]),
            since=d["since"], versions=tuple(d["versions"]),
        ))
    return out


def onnx_type_to_dtype(type_str: str) -> str:
    """``tensor(float)`` -> ``float32``: an ONNX type string as a backplane dtype name."""
    from onnx import TensorProto

    from ..graph import DTYPE_NAMES

    if not (type_str.startswith("tensor(") and type_str.endswith(")")):
        raise ValueError(f"not a tensor type: {type_str!r}")
    code = getattr(TensorProto, type_str[len("tensor("):-1].upper(), None)
    if code not in DTYPE_NAMES:
        raise ValueError(f"ONNX type {type_str!r} has no backplane dtype name")
    return DTYPE_NAMES[code]


def _attribute_default(attr: Any) -> Any:
    """A schema attribute's default as JSON data, or None when it has none."""
    import numpy as np
    from onnx import AttributeProto, helper, numpy_helper

    default = attr.default_value
    if attr.required or default.type == AttributeProto.UNDEFINED:
        return None
    if default.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(default.t).tolist()
    value = helper.get_attribute_value(default)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, float):  # stored as float32: keep its shortest decimal form
        return float(str(np.float32(value)))
    if isinstance(value, list):
        return [v.decode("utf-8") if isinstance(v, bytes) else
                float(str(np.float32(v))) if isinstance(v, float) else v for v in value]
    return value


def _formals(params: Any, constraints: dict[str, list[str]]) -> list[dict[str, Any]]:
    from onnx.defs import OpSchema

    out = []
    for p in params:
        if p.type_str not in constraints:  # a fixed type: the type string names itself
            constraints[p.type_str] = [onnx_type_to_dtype(p.type_str)]
        out.append({"name": p.name, "type": p.type_str,
                    "optional": p.option == OpSchema.FormalParameterOption.Optional,
                    "variadic": p.option == OpSchema.FormalParameterOption.Variadic})
    return out


def regenerate(path: str | Path | None = None) -> dict[str, Any]:
    """The schema data of the mandatory ops, from the installed onnx.

    Args:
        path: where to write it as JSON; ``None`` writes nothing.

    Returns:
        ``{"opset": 21, "ops": {op: {since, schema_version, versions, inputs, outputs,
        type_constraints, attributes, required_attributes}}}``: ``since`` is the first
        opset that has the op (Gelu 20, LayerNormalization 17), ``versions`` every opset
        up to 21 where its schema changed, the rest the schema in force at opset 21.
    """
    from onnx import defs

    history: dict[str, set[int]] = {}
    for s in defs.get_all_schemas_with_history():
        if s.domain in ("", "ai.onnx") and s.name in MANDATORY:
            history.setdefault(s.name, set()).add(s.since_version)
    ops: dict[str, Any] = {}
    for op in MANDATORY:
        schema = defs.get_schema(op, OPSET, "")
        constraints = {t.type_param_str: sorted(onnx_type_to_dtype(x) for x in t.allowed_type_strs)
                       for t in schema.type_constraints}
        inputs = _formals(schema.inputs, constraints)
        outputs = _formals(schema.outputs, constraints)
        ops[op] = {
            "since": min(history[op]),
            "schema_version": schema.since_version,
            "versions": sorted(v for v in history[op] if v <= OPSET),
            "inputs": inputs,
            "outputs": outputs,
            "type_constraints": constraints,
            "attributes": {k: _attribute_default(a) for k, a in sorted(schema.attributes.items())},
            "required_attributes": sorted(k for k, a in schema.attributes.items() if a.required),
        }
    data = {"opset": OPSET,
            "generated_by": "backplane.ops.onnx_ops.regenerate()",
            "ops": ops}
    if path is not None:
        Path(path).write_text(dump(data), "utf-8")
    return data


def dump(data: dict[str, Any]) -> str:
    """The data as JSON text laid out for review: one line per field, one per formal."""
    def one(v: Any) -> str:
        return json.dumps(v, allow_nan=False)

    ops = []
    for op, d in data["ops"].items():
        fields = []
        for k, v in d.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                v_text = "[\n" + ",\n".join(f"    {one(x)}" for x in v) + "\n   ]"
            elif isinstance(v, dict) and v:
                v_text = "{\n" + ",\n".join(f"    {one(n)}: {one(x)}" for n, x in v.items()
                                              ) + "\n   }"
            else:
                v_text = one(v)
            fields.append(f"   {one(k)}: {v_text}")
        ops.append(f"  {one(op)}: {{\n" + ",\n".join(fields) + "\n  }")
    head = [f" {one(k)}: {one(v)}" for k, v in data.items() if k != "ops"]
    return "{\n" + ",\n".join(head + [' "ops": {\n' + ",\n".join(ops) + "\n }"]) + "\n}\n"


if __name__ == "__main__":  # python -m backplane.ops.onnx_ops: rewrite the data file
    target = Path(__file__).with_name(DATA_FILE)
    regenerate(target)
    print(f"wrote {target}")
