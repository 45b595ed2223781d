"""The fuzzer's mutations that break a model: odd shapes, types, attributes, wiring, bytes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from backplane.conformance.fuzz_mutant import Mutant, all_nodes, elem_name, value_infos, value_names
from backplane.conformance.fuzz_seeds import pick

F = TensorProto.FLOAT


#: Odd dimensions: negative, zero, one, huge, and a symbolic name.
ODD_DIMS = [-1, -7, 0, 1, 2, 5, 2**31, 2**62, "s", "batch", "n", ""]


def m_dim(m: Mutant, rng: np.random.Generator) -> None:
    """A dimension of a declared input, output or value changed, a dimension added or
    removed, or the whole shape dropped."""
    vi = pick(rng, [v for v in value_infos(m.model) if v.type.HasField("tensor_type")])
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
            m.done.append(f"converted initializer '{t.name}' to {elem_name(elem)}")
        else:
            t.data_type = elem
            m.done.append(f"relabelled initializer '{t.name}' as {elem_name(elem)}")
        return
    casts = [n for n in all_nodes(g) if n.op_type == "Cast"]
    if how == 1 and casts:
        for a in pick(rng, casts).attribute:
            if a.name == "to":
                a.i = elem
        m.done.append(f"set a Cast's 'to' to {elem_name(elem)}")
        return
    vi = pick(rng, [v for v in value_infos(m.model) if v.type.HasField("tensor_type")])
    if vi is not None:
        vi.type.tensor_type.elem_type = elem
        m.done.append(f"declared '{vi.name}' as {elem_name(elem)}")


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
    node = pick(rng, all_nodes(m.model.graph))
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
    names = value_names(m.model)
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
    node = pick(rng, all_nodes(m.model.graph))
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
