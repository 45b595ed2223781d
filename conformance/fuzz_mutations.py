"""The fuzzer's mutations of a model (``backplane.conformance.fuzz``).

A :class:`Mutant` is a seed model (:mod:`backplane.conformance.fuzz_seeds`) after one or
more mutations: the model (a ``ModelProto``, or bytes once a byte-level mutation has run),
the files of its folder (external data, some of it pointing outside), and what was done,
in words. :data:`MUTATIONS` break a model; :data:`KEEPING` mostly keep it valid, for
comparing backends with the reference. Everything random is drawn from the
``numpy.random.Generator`` passed in, so a case is reproduced from its seed and index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .fuzz_seeds import SEEDS, pick

F = TensorProto.FLOAT

# ---- mutants ------------------------------------------------------------------------------


@dataclass
class Mutant:
    """A model under mutation, with the files of its folder and what was done to it."""

    model: onnx.ModelProto
    data: bytes | None = None
    """The serialized model once a byte-level mutation has run (then ``model`` is stale)."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Files to write, relative to the case's root; the model's folder is ``model/``."""
    links: dict[str, str] = field(default_factory=dict)
    """Symbolic links to make (relative path -> target), relative to the case's root."""
    done: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """The model as bytes."""
        return self.data if self.data is not None else self.model.SerializeToString()


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out = []
    for n in graph.node:
        out.append(n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.extend(_all_nodes(a.g))
    return out


def _value_infos(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = m.graph
    return [*g.input, *g.output, *g.value_info]


def _value_names(m: onnx.ModelProto) -> list[str]:
    g = m.graph
    names = [i.name for i in g.input] + [t.name for t in g.initializer]
    for n in g.node:
        names.extend(o for o in n.output if o)
    return names


#: Odd dimensions: negative, zero, one, huge, and a symbolic name.
ODD_DIMS = [-1, -7, 0, 1, 2, 5, 2**31, 2**62, "s", "batch", "n", ""]


def m_dim(m: Mutant, rng: np.random.Generator) -> None:
    """A dimension of a declared input, output or value changed, a dimension added or
    removed, or the whole shape dropped."""
    vi = pick(rng, [v for v in _value_infos(m.model) if v.type.HasField("tensor_type")])
    if vi is None:
        return
    shape = vi.type.tensor_type.shape
    how = int(rng.integers(4))
    if how == 0 or not shape.dim:
        vi.type.tensor_type.shape.dim.add().dim_value = int(rng.integers(1, 4))
        m.done.append(f"added a dimension to '{vi.name}'")
    elif how == 1:
        del shape.dim[int(rng.integers(len(shape.dim)))]
        m.done.append(f"removed a dimension of '{vi.name}'")
    elif how == 2:
        vi.type.tensor_type.ClearField("shape")
        m.done.append(f"dropped the shape of '{vi.name}'")
    else:
        d = shape.dim[int(rng.integers(len(shape.dim)))]
        new = pick(rng, ODD_DIMS)
        if isinstance(new, str):
            d.dim_param = new
        else:
            d.dim_value = int(new)
        m.done.append(f"set a dimension of '{vi.name}' to {new!r}")


#: Element types to switch to (UNDEFINED and an out-of-range number included).
ELEM_TYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
              TensorProto.INT32, TensorProto.INT64, TensorProto.INT8, TensorProto.UINT8,
              TensorProto.BOOL, TensorProto.STRING, TensorProto.UNDEFINED, 99]


def m_dtype(m: Mutant, rng: np.random.Generator) -> None:
    """The element type of a declared value, of an initializer (its values converted, or
    only relabelled), or Cast's ``to``."""
    g = m.model.graph
    how = int(rng.integers(3))
    elem = int(pick(rng, ELEM_TYPES))
    if how == 0 and g.initializer:
        t = pick(rng, g.initializer)
        if rng.random() < 0.5 and elem not in (TensorProto.UNDEFINED, 99, TensorProto.STRING):
            arr = numpy_helper.to_array(t)
            new = numpy_helper.from_array(arr.astype(helper.tensor_dtype_to_np_dtype(elem)),
                                          t.name)
            t.CopyFrom(new)
            m.done.append(f"converted initializer '{t.name}' to {_elem_name(elem)}")
        else:
            t.data_type = elem
            m.done.append(f"relabelled initializer '{t.name}' as {_elem_name(elem)}")
        return
    casts = [n for n in _all_nodes(g) if n.op_type == "Cast"]
    if how == 1 and casts:
        for a in pick(rng, casts).attribute:
            if a.name == "to":
                a.i = elem
        m.done.append(f"set a Cast's 'to' to {_elem_name(elem)}")
        return
    vi = pick(rng, [v for v in _value_infos(m.model) if v.type.HasField("tensor_type")])
    if vi is not None:
        vi.type.tensor_type.elem_type = elem
        m.done.append(f"declared '{vi.name}' as {_elem_name(elem)}")


def _elem_name(elem: int) -> str:
    try:
        return TensorProto.DataType.Name(elem)
    except ValueError:
        return str(elem)


#: Attribute values to try: odd integers, floats, strings, lists, and wrong types.
ODD_INTS = [-2**62, -5, -2, -1, 0, 1, 2, 3, 7, 100, 2**31, 2**62]


def _odd_attribute(name: str, rng: np.random.Generator) -> onnx.AttributeProto:
    kind = int(rng.integers(6))
    if kind == 0:
        return helper.make_attribute(name, int(pick(rng, ODD_INTS)))
    if kind == 1:
        return helper.make_attribute(name, float(pick(rng, [0.0, -1.0, 1e-30, 1e30,
                                                             float("nan"), float("inf")])))
    if kind == 2:
        return helper.make_attribute(name, str(pick(rng, ["", "NOTSET", "SAME_UPPER", "x"])))
    if kind == 3:
        size = int(rng.integers(0, 6))
        return helper.make_attribute(name, [int(pick(rng, ODD_INTS[1:-1])) for _ in range(size)])
    if kind == 4:
        return helper.make_attribute(name, [0.5, -1.0])
    return helper.make_attribute(name, helper.make_tensor("t", F, [2], [1.0, 2.0]))


def m_attribute(m: Mutant, rng: np.random.Generator) -> None:
    """An attribute removed, given an odd value (of its type or another), or one of the
    op's schema attributes (or an unknown name) added."""
    node = pick(rng, _all_nodes(m.model.graph))
    if node is None:
        return
    how = int(rng.integers(3))
    if how == 0 and node.attribute:
        i = int(rng.integers(len(node.attribute)))
        name = node.attribute[i].name
        del node.attribute[i]
        m.done.append(f"removed attribute '{name}' of {node.op_type}")
        return
    if how == 1 and node.attribute:
        a = pick(rng, node.attribute)
        if a.type == onnx.AttributeProto.GRAPH:
            return
        if a.type == onnx.AttributeProto.INT and rng.random() < 0.6:
            a.i = int(pick(rng, ODD_INTS))
        elif a.type == onnx.AttributeProto.INTS and a.ints and rng.random() < 0.6:
            a.ints[int(rng.integers(len(a.ints)))] = int(pick(rng, ODD_INTS[1:-1]))
        else:
            a.CopyFrom(_odd_attribute(a.name, rng))
        m.done.append(f"changed attribute '{a.name}' of {node.op_type}")
        return
    try:
        names = list(onnx.defs.get_schema(node.op_type, domain=node.domain).attributes)
    except Exception:
        names = []
    name = pick(rng, [n for n in names if n not in {a.name for a in node.attribute}]
                 + ["fuzz_unknown"])
    node.attribute.append(_odd_attribute(name, rng))
    m.done.append(f"added attribute '{name}' to {node.op_type}")


def m_wiring(m: Mutant, rng: np.random.Generator) -> None:
    """Nodes, graph inputs, outputs or initializers dropped, duplicated or renamed; node
    inputs rewired (a cycle included); nodes reordered."""
    g = m.model.graph
    how = int(rng.integers(10))
    names = _value_names(m.model)
    if how == 0 and g.node:
        i = int(rng.integers(len(g.node)))
        m.done.append(f"dropped node {g.node[i].op_type}")
        del g.node[i]
    elif how == 1 and g.node:
        n = pick(rng, g.node)
        g.node.append(n)
        m.done.append(f"duplicated node {n.op_type}")
    elif how == 2 and g.node:
        n = pick(rng, g.node)
        if n.input:
            k = int(rng.integers(len(n.input)))
            n.input[k] = str(pick(rng, names + ["", "nowhere"]))
            m.done.append(f"rewired input {k} of {n.op_type} to '{n.input[k]}'")
    elif how == 3 and len(g.node) > 1:
        i, j = sorted(int(x) for x in rng.choice(len(g.node), 2, replace=False))
        later = g.node[j]
        if g.node[i].input and later.output:
            g.node[i].input[int(rng.integers(len(g.node[i].input)))] = later.output[0]
            m.done.append(f"made a cycle: {g.node[i].op_type} reads {later.op_type}")
    elif how == 4 and g.node and g.node[0].input:
        n = pick(rng, g.node)
        if n.input and n.output:
            n.input[0] = n.output[0]
            m.done.append(f"{n.op_type} reads its own output")
    elif how == 5 and len(g.node) > 1:
        order = list(rng.permutation(len(g.node)))
        nodes = [onnx.NodeProto() for _ in order]
        for new, k in zip(nodes, order):
            new.CopyFrom(g.node[int(k)])
        del g.node[:]
        g.node.extend(nodes)
        m.done.append("shuffled the node order")
    elif how == 6:
        field_ = pick(rng, ["input", "output", "initializer"])
        seq = getattr(g, field_)
        if len(seq):
            i = int(rng.integers(len(seq)))
            if rng.random() < 0.5:
                m.done.append(f"dropped graph {field_} '{seq[i].name}'")
                del seq[i]
            else:
                seq.append(seq[i])
                m.done.append(f"duplicated graph {field_} '{seq[i].name}'")
    elif how == 7:
        field_ = pick(rng, ["input", "output"])
        seq = getattr(g, field_)
        if len(seq):
            vi = pick(rng, seq)
            new = str(pick(rng, names + ["renamed", "", "x y", "\u00e9"]))
            m.done.append(f"renamed graph {field_} '{vi.name}' to '{new}'")
            vi.name = new
    elif how == 8 and g.node:
        n = pick(rng, g.node)
        if n.output:
            n.output[0] = str(pick(rng, names))
            m.done.append(f"{n.op_type} writes '{n.output[0]}' (a name taken)")
    elif how == 9 and g.node:
        n = pick(rng, g.node)
        if len(n.input) > 1 and rng.random() < 0.5:
            del n.input[-1]
            m.done.append(f"dropped the last input of {n.op_type}")
        else:
            n.input.append(str(pick(rng, names)))
            m.done.append(f"added an input to {n.op_type}")


#: Ops of the same arity a node may be switched to (a valid model, often).
SWAPS = {1: ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
             "Floor", "Ceil", "Softmax", "Identity", "Erf", "Sin", "Cos", "Round", "Sign",
             "Softplus", "HardSwish", "Not", "IsNaN", "Shape", "Size", "NonZero",
             "ReduceMax", "Flatten", "Squeeze", "GlobalAveragePool", "Elu", "Celu",
             "LeakyRelu", "Selu", "Mish", "Gelu", "Acos", "Atanh", "BitwiseNot"],
         2: ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Equal", "Less",
             "Greater", "And", "Or", "Xor", "MatMul", "PRelu", "Sum", "Mean", "BitShift",
             "Gather", "Expand", "Reshape", "Tile", "Unsqueeze", "ReduceSum", "ReduceMean",
             "GatherElements", "CumSum", "Range", "TopK", "Einsum", "Concat"]}
#: Domains a node may be moved to: known and unknown ones.
DOMAINS = ["com.microsoft", "ai.onnx.ml", "com.fuzz", "ai.onnx", "ai.onnx.preview.training",
           "backplane"]


def m_op(m: Mutant, rng: np.random.Generator) -> None:
    """A node switched to another op of the same arity, an unknown op, or another domain
    (imported, or not)."""
    node = pick(rng, _all_nodes(m.model.graph))
    if node is None:
        return
    how = int(rng.integers(4))
    if how <= 1:
        old, node.op_type = node.op_type, str(pick(rng, SWAPS.get(
            min(len(node.input), 2), SWAPS[2])))
        m.done.append(f"switched {old} to {node.op_type}")
    elif how == 2:
        old, node.op_type = node.op_type, str(pick(rng, ["FuzzOp", "relu", "", "Add ",
                                                          "Attention", "QLinearConv"]))
        m.done.append(f"switched {old} to the op '{node.op_type}'")
    else:
        node.domain = str(pick(rng, DOMAINS))
        if rng.random() < 0.6:
            m.model.opset_import.append(helper.make_opsetid(node.domain, int(
                pick(rng, [1, 2, 3, 5, 99]))))
        m.done.append(f"moved {node.op_type} to domain '{node.domain}'")


#: Opset and IR versions to try.
OPSETS = [-1, 0, 1, 5, 6, 7, 9, 11, 12, 13, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 99, 2**40]
IR_VERSIONS = [-1, 0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 99]


def m_version(m: Mutant, rng: np.random.Generator) -> None:
    """The default opset's version, the IR version, or the opset imports themselves."""
    how = int(rng.integers(4))
    ops = m.model.opset_import
    if how == 0:
        ops[0].version = int(pick(rng, OPSETS))
        m.done.append(f"opset {ops[0].version}")
    elif how == 1:
        m.model.ir_version = int(pick(rng, IR_VERSIONS))
        m.done.append(f"IR version {m.model.ir_version}")
    elif how == 2:
        del ops[:]
        m.done.append("no opset imported")
    else:
        ops.append(helper.make_opsetid("", int(pick(rng, OPSETS))))
        m.done.append("default domain imported twice")


def m_initializer(m: Mutant, rng: np.random.Generator) -> None:
    """An initializer's raw data cut or lengthened, its dims changed under its data, its
    values replaced by odd ones (NaN, infinities, huge, zero, negative), or its data moved
    to a typed field of the wrong length."""
    g = m.model.graph
    if not g.initializer:
        return
    t = pick(rng, g.initializer)
    how = int(rng.integers(5))
    if how == 0:
        raw = t.raw_data or numpy_helper.to_array(t).tobytes()
        t.ClearField("float_data")
        t.ClearField("int64_data")
        t.ClearField("int32_data")
        cut = int(rng.integers(0, len(raw) + 1))
        t.raw_data = raw[:cut] if rng.random() < 0.5 else raw + bytes(cut + 1)
        m.done.append(f"raw data of '{t.name}' of the wrong size")
    elif how == 1:
        dims = list(t.dims)
        if dims and rng.random() < 0.7:
            dims[int(rng.integers(len(dims)))] = int(pick(rng, [-1, 0, 1, 3, 2**40]))
        else:
            dims.append(2)
        del t.dims[:]
        t.dims.extend(dims)
        m.done.append(f"dims of '{t.name}' changed to {dims} under its data")
    elif how == 2:
        arr = numpy_helper.to_array(t).copy()
        if arr.size == 0:
            return
        flat = arr.reshape(-1)
        k = int(rng.integers(flat.size))
        if arr.dtype.kind == "f":
            flat[k] = pick(rng, [np.nan, np.inf, -np.inf, 1e30, -0.0, 0.0, 1e-40])
        elif arr.dtype.kind in "iu":
            info = np.iinfo(arr.dtype)
            flat[k] = pick(rng, [info.min, info.max, -1, 0, 1, 2, 11, -100])
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        m.done.append(f"element {k} of '{t.name}' set to {flat[k]!r}")
    elif how == 3:
        t.ClearField("raw_data")
        del t.float_data[:]
        t.float_data.extend([1.0] * int(rng.integers(0, 4)))
        m.done.append(f"'{t.name}' data in float_data of the wrong length")
    else:
        t.data_location = TensorProto.EXTERNAL
        m.done.append(f"'{t.name}' marked external without a location")


#: External data locations: outside the folder (relative, absolute, through a link), with
#: a NUL, missing, and inside.
LOCATIONS = ["../outside.bin", "/etc/passwd", "link.bin", "sub/../../outside.bin", "a\0b",
             "missing.bin", "weights.bin", "weights.bin", ".", "", "sub"]


def m_external(m: Mutant, rng: np.random.Generator) -> None:
    """An initializer moved to external data: inside the folder with right or wrong
    offsets and lengths, or pointing outside it (relative, absolute, a symbolic link)."""
    g = m.model.graph
    if not g.initializer:
        return
    t = pick(rng, g.initializer)
    raw = numpy_helper.to_array(t).tobytes()
    location = str(pick(rng, LOCATIONS))
    m.files["model/weights.bin"] = b"\0" * 16 + raw
    m.files["outside.bin"] = raw * 2
    m.files["model/sub/keep"] = b""
    m.links["model/link.bin"] = "../outside.bin"
    offset = pick(rng, [16, 16, 0, -1, 3, 2**40, "x", None])
    length = pick(rng, [len(raw), len(raw), None, 0, len(raw) + 1, -4, 2**62, "1e3"])
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    t.ClearField("raw_data")
    for f in ("float_data", "int64_data", "int32_data", "double_data"):
        t.ClearField(f)
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    if rng.random() < 0.1:
        t.external_data.add(key="checksum", value="0")
    m.done.append(f"'{t.name}' external at {location!r}, offset {offset}, length {length}")


def m_bytes(m: Mutant, rng: np.random.Generator) -> None:
    """The serialized model's bytes flipped, cut, or spliced."""
    data = bytearray(m.to_bytes())
    how = int(rng.integers(3))
    if how == 0 and data:
        n = int(rng.integers(1, 9))
        for _ in range(n):
            k = int(rng.integers(len(data)))
            data[k] ^= 1 << int(rng.integers(8))
        m.done.append(f"{n} bit(s) flipped")
    elif how == 1:
        cut = int(rng.integers(0, len(data) + 1))
        data = data[:cut]
        m.done.append(f"truncated to {cut} bytes")
    elif data:
        a, b = sorted(int(x) for x in rng.integers(0, len(data), 2))
        data = data[:a] + data[b:] + data[a:b] if rng.random() < 0.5 else data + data[a:b]
        m.done.append(f"bytes {a}:{b} moved")
    m.data = bytes(data)


# ---- mutations that keep a model valid, mostly: for comparing with the reference ----------

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
    m.done.append(f"the model in {_elem_name(elem)}")


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
    nodes = [n for n in _all_nodes(m.model.graph) if any(n.op_type in k for k in KIN)]
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
    pairs = [(n, a) for n in _all_nodes(m.model.graph) for a in n.attribute
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


#: Model mutations with their weights: byte-level ones run last (they end the proto's use).
MUTATIONS: list[tuple[Callable[[Mutant, np.random.Generator], None], float]] = [
    (m_dim, 3), (m_dtype, 2), (m_attribute, 3), (m_wiring, 3), (m_op, 3), (m_version, 1),
    (m_initializer, 2), (m_external, 1)]
#: Mutations that keep a model valid, mostly, with their weights.
KEEPING: list[tuple[Callable[[Mutant, np.random.Generator], None], float]] = [
    (s_retype, 2), (s_swap, 4), (s_attribute, 4), (s_values, 3), (s_symbolic, 1)]
#: The share of cases mutated by :data:`KEEPING` rather than :data:`MUTATIONS`.
KEEPING_RATE = 0.55


def mutate(seed_name: str, rng: np.random.Generator) -> Mutant:
    """The seed ``seed_name`` after 0 to 3 mutations drawn from ``rng``: either ones that
    keep it valid, mostly, or ones that break it (then byte-level ones now and then,
    last)."""
    m = Mutant(SEEDS[seed_name]())
    keeping = rng.random() < KEEPING_RATE
    fns, weights = zip(*(KEEPING if keeping else MUTATIONS))
    p = np.array(weights, float) / sum(weights)
    for _ in range(int(rng.choice(4, p=[0.1, 0.5, 0.3, 0.1]))):
        before, fn = len(m.done), fns[int(rng.choice(len(fns), p=p))]
        try:
            fn(m, rng)
        except Exception as exc:  # an earlier mutation left nothing this one can read
            m.done.append(f"({fn.__name__} stopped: {type(exc).__name__})")
        if len(m.done) == before:
            m.done.append(f"({fn.__name__} found nothing to change)")
    if not keeping and rng.random() < 0.2:
        m_bytes(m, rng)
    return m
