"""The fuzzer's mutations that keep a model valid, mostly: for comparing with the reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from backplane.conformance.fuzz_mutant import Mutant, all_nodes, elem_name
from backplane.conformance.fuzz_seeds import pick

_FLOAT_TYPES = [TensorProto.DOUBLE, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.FLOAT16,
                TensorProto.BFLOAT16]


def _graphs(g: onnx.GraphProto) -> list[onnx.GraphProto]:
    out = [g]
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.extend(_graphs(a.g))
    return out


def s_retype(m: Mutant, rng: np.random.Generator) -> None:
    """Every float32 value, initializer, constant and Cast of the model to float64, float16
    or bfloat16: the same model in another precision."""
    elem = int(pick(rng, _FLOAT_TYPES))
    np_type = helper.tensor_dtype_to_np_dtype(elem)

    def convert(t: onnx.TensorProto) -> None:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np_type), t.name))

    for g in _graphs(m.model.graph):
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
                vi.type.tensor_type.elem_type = elem
        for t in g.initializer:
            convert(t)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    convert(a.t)
                elif n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = elem
    m.done.append(f"the model in {elem_name(elem)}")


#: Ops a node may become without changing its types: float unary ops, binary ops (the
#: integer ones for integer nodes), reductions, pools and softmaxes.
KIN = [["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Sin", "Cos", "Erf", "Softsign",
        "Softplus", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "LeakyRelu",
        "ThresholdedRelu", "Mish", "Gelu", "Floor", "Ceil", "Round", "Sign", "Identity", "Log",
        "Sqrt", "Reciprocal", "Atan", "Asinh", "Sinh", "Cosh", "Tan", "Asin", "Acos", "Acosh",
        "Atanh", "Shrink"],
       ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Mod"],
       ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
        "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum"],
       ["MaxPool", "AveragePool", "LpPool"],
       ["Softmax", "LogSoftmax", "Hardmax"],
       ["MatMul", "Add", "Mul"],
       ["Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual"],
       ["ArgMax", "ArgMin"],
       ["Max", "Min", "Add", "Sub", "Mul", "Div", "Mod", "BitwiseAnd", "BitwiseOr",
        "BitwiseXor"]]


def s_swap(m: Mutant, rng: np.random.Generator) -> None:
    """A node switched to a kindred op (Relu to Erf, Add to Pow, ReduceMean to ReduceL2,
    MaxPool to LpPool ...), with the new op's attributes where the old ones do not fit."""
    nodes = [n for n in all_nodes(m.model.graph) if any(n.op_type in k for k in KIN)]
    node = pick(rng, nodes)
    if node is None:
        return
    kin = pick(rng, [k for k in KIN if node.op_type in k])
    old, node.op_type = node.op_type, str(pick(rng, kin))
    if node.op_type == "Mod":
        node.attribute.append(helper.make_attribute("fmod", 1))
    if kin is KIN[3]:  # pools share kernel_shape, strides and pads; drop the rest
        keep = {"kernel_shape", "strides", "pads", "auto_pad"}
        kept = [a for a in node.attribute if a.name in keep]
        del node.attribute[:]
        node.attribute.extend(kept)
    if kin is KIN[0]:
        del node.attribute[:]
    m.done.append(f"switched {old} to {node.op_type}")


_PERMS = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]]
#: Valid (or borderline) alternative attribute values, by attribute name.
ALTERNATIVES: dict[str, list[Any]] = {
    "axis": [-3, -2, -1, 0, 1, 2], "keepdims": [0, 1], "noop_with_empty_axes": [0, 1],
    "select_last_index": [0, 1], "ceil_mode": [0, 1], "storage_order": [0, 1], "fmod": [0, 1],
    "count_include_pad": [0, 1], "transA": [0, 1], "transB": [0, 1],
    "epsilon": [0.0, 1e-12, 1e-5, 1.0], "alpha": [0.0, 0.5, 1.0, 2.0],
    "kernel_shape": [[1, 1], [2, 2], [3, 3], [2, 3], [3, 1]],
    "strides": [[1, 1], [2, 2], [1, 2], [3, 3]], "dilations": [[1, 1], [2, 2], [1, 2]],
    "pads": [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0], [2, 2, 0, 0]],
    "auto_pad": [b"NOTSET", b"SAME_UPPER", b"SAME_LOWER", b"VALID"],
    "perm": _PERMS, "to": [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                           TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL,
                           TensorProto.INT8, TensorProto.UINT8],
    "approximate": [b"none", b"tanh"], "p": [1, 2, 3], "largest": [0, 1], "sorted": [0, 1],
    "exclusive": [0, 1], "reverse": [0, 1], "mode": [b"constant", b"reflect", b"edge",
                                                     b"wrap", b"nearest", b"linear", b"cubic"],
    "coordinate_transformation_mode": [b"half_pixel", b"asymmetric", b"align_corners",
                                       b"pytorch_half_pixel", b"half_pixel_symmetric"],
    "nearest_mode": [b"round_prefer_floor", b"round_prefer_ceil", b"floor", b"ceil"],
    "cubic_coeff_a": [-0.5, -0.75], "exclude_outside": [0, 1], "antialias": [0, 1]}


def s_attribute(m: Mutant, rng: np.random.Generator) -> None:
    """An attribute given another plausible value (an axis, keepdims, a pool's window, a
    permutation, a Cast's target type)."""
    pairs = [(n, a) for n in all_nodes(m.model.graph) for a in n.attribute
             if a.name in ALTERNATIVES]
    if not pairs:
        return
    node, a = pairs[int(rng.integers(len(pairs)))]
    choices = ALTERNATIVES[a.name]
    if a.name == "perm":
        choices = [p[:len(a.ints)] if len(a.ints) <= 3 else [0, *[q + 1 for q in p]]
                   for p in _PERMS if len(a.ints) != 2] or [[1, 0], [0, 1]]
    value = pick(rng, choices)
    if isinstance(value, list) and a.type == onnx.AttributeProto.INTS:
        a.CopyFrom(helper.make_attribute(a.name, value))
    elif isinstance(value, bytes):
        a.s = value
    elif isinstance(value, float):
        a.f = value
    elif isinstance(value, int):
        a.i = value
    if a.name == "auto_pad" and value != b"NOTSET":
        kept = [x for x in node.attribute if x.name != "pads"]
        del node.attribute[:]
        node.attribute.extend(kept)
    m.done.append(f"{node.op_type} {a.name} = {value!r}")


def s_values(m: Mutant, rng: np.random.Generator) -> None:
    """An integer initializer (a shape, slice bounds, axes, indices) given small values of
    either sign, or a float one scaled, zeroed or given special values."""
    inits = [t for g in _graphs(m.model.graph) for t in g.initializer]
    t = pick(rng, inits)
    if t is None:
        return
    arr = numpy_helper.to_array(t).copy()
    if arr.dtype.kind in "iu":
        low = -12 if arr.dtype.kind == "i" else 0
        flat = arr.reshape(-1)
        k = int(rng.integers(flat.size)) if flat.size else 0
        if flat.size:
            flat[k] = int(rng.integers(low, 13))
        m.done.append(f"'{t.name}' = {arr.tolist() if arr.size <= 8 else 'changed'}")
    elif arr.dtype.kind == "f":
        how = pick(rng, ["scaled", "zeroed", "special", "negated"])
        with np.errstate(over="ignore"):
            if how == "scaled":
                arr = arr * arr.dtype.type(pick(rng, [1e3, 1e-3, 64.0]))
            elif how == "zeroed":
                arr = np.zeros_like(arr)
            elif how == "negated":
                arr = -arr
            elif arr.size:
                arr.reshape(-1)[int(rng.integers(arr.size))] = pick(rng, [np.nan, np.inf,
                                                                          -np.inf])
        m.done.append(f"'{t.name}' {how}")
    else:
        return
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def s_symbolic(m: Mutant, rng: np.random.Generator) -> None:
    """A static input dimension made symbolic (a new name or one already used), or a
    symbolic one made static."""
    g = m.model.graph
    dims = [d for vi in g.input for d in vi.type.tensor_type.shape.dim]
    d = pick(rng, dims)
    if d is None:
        return
    if d.HasField("dim_param"):
        d.dim_value = int(pick(rng, [1, 2, 3]))
        m.done.append(f"'{d.dim_value}' for a symbolic dimension")
    else:
        d.dim_param = str(pick(rng, ["batch", "n", "fresh", "other"]))
        m.done.append(f"'{d.dim_param}' for a static dimension")
