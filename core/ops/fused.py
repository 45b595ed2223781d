"""Fused ops of the ``backplane`` domain: schemas, costs and decompositions.

Each fused op has a decomposition into ONNX default-domain ops, an ``onnx.FunctionProto``
built by :func:`function_proto`, so any backend, and the oracle, can run a graph that
:func:`backplane.ops.fusion.fuse` rewrote: :func:`add_decompositions` puts the functions
into a model. The pass itself lives in :mod:`backplane.ops.fusion`, which imports this
module and never the other way round: the registry imports this module for the fused ops'
definitions, and the pass imports intake, which reads the registry.

- ``FusedConvRelu(X, W, B?)``: Conv, then Relu; or Clip when ``clip_min``/``clip_max`` is
  set (an unset bound is then unbounded, as in ONNX Clip). Conv's attributes except
  ``auto_pad``: the pass resolves ``auto_pad`` into explicit ``pads``, so kernels and the
  decomposition see one form.
- ``FusedMatMulBiasGelu(A, B, bias)``: ``Gelu(A @ B + bias)``, ``approximate`` ``"none"``
  (erf) or ``"tanh"``; written with opset-17 ops (no Gelu op), so it runs at opsets 17 to 21.
- ``Attention(Q, K, V, mask?)``: ``Softmax(Q @ K^T * scale + mask, axis=-1) @ V`` for
  ``[batch, heads, seq, head_dim]`` inputs; ``scale`` defaults to ``1/sqrt(head_dim)``. The
  mask is additive (the type of Q) or boolean (True keeps, False gives -inf before the
  softmax), broadcastable to ``[batch, heads, seq_q, seq_k]``.

How the decompositions cope with what a FunctionProto cannot express:

- A function body cannot branch, so behaviour chosen by an attribute value or an input's
  type is a *variant* of the function (:data:`VARIANTS`), and a model holds one function
  per op: :func:`add_decompositions` picks the variant its nodes need and refuses a model
  whose nodes need two (two Gelu modes, or boolean and additive masks). Relu and Clip
  never conflict: Relu is Clip to ``[0, inf]``, so nodes are given those bounds.
- onnx.reference requires a function node to pass every declared input and set every
  declared attribute (it applies no defaults), so :func:`add_decompositions` completes
  nodes: an absent Conv bias becomes ``""``, Conv attributes get their ONNX defaults,
  ``scale`` is computed from a static head_dim, and an absent attention mask becomes a
  zero scalar additive mask. The pass writes complete nodes in the first place; in
  particular it always passes a mask, a zero scalar when the pattern has none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from backplane.ops.costs import (ELEMENTWISE_FLOPS, NORMALISATION_FLOPS, Cost, conv_cost, dims,
                                 io_bytes, matmul_dims, result_elements)
from backplane.ops.opdef import DOMAIN, FUSED, OpDef
from backplane.sdk.contract import op_key
from backplane.sdk.errors import UnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Node

#: Version of the ``backplane`` domain these definitions belong to.
VERSION = 1
#: The oldest default-domain opset the decompositions are written for.
MIN_OPSET = 17
#: Function variants per op; the first is the default.
VARIANTS = {"FusedConvRelu": ("relu", "clip"), "FusedMatMulBiasGelu": ("none", "tanh"),
            "Attention": ("additive", "bool")}
#: Conv attributes a FusedConvRelu carries (``auto_pad`` resolved into ``pads``).
CONV_ATTRIBUTES = ("pads", "strides", "dilations", "group", "kernel_shape")

_FLOATS = frozenset({"bfloat16", "float16", "float32", "float64"})
_CONV_FLOATS = frozenset({"float16", "float32", "float64"})
_GELU_FLOPS = ELEMENTWISE_FLOPS["Gelu"]
_SOFTMAX_FLOPS = NORMALISATION_FLOPS["Softmax"]

# --------------------------------------------------------------------------- costs


def conv_relu_cost(node: "Node") -> Cost:
    """Conv's cost plus the activation: 1 flop per output element (2 for a Clip)."""
    conv = conv_cost(node)
    per = 2 if ("clip_min" in node.attributes or "clip_max" in node.attributes) else 1
    return Cost(conv.flops + per * result_elements(node), conv.bytes)


def matmul_bias_gelu_cost(node: "Node") -> Cost:
    """2*M*N*K for the product, then the bias add and Gelu per output element."""
    found = matmul_dims(dims(node.input_types[0] if node.input_types else None),
                        dims(node.input_types[1] if len(node.input_types) > 1 else None))
    if found is None:  # ranks unknown: per output element, a K=1 product, the add, Gelu
        out = result_elements(node)
        return Cost(out * (3 + _GELU_FLOPS), io_bytes(node))
    batch, m, n, k = found
    return Cost(2 * batch * m * n * k + batch * m * n * (1 + _GELU_FLOPS), io_bytes(node))


def attention_cost(node: "Node") -> Cost:
    """Two batched products (Q K^T and P V), the scale, the mask and the softmax."""
    q, k, v = (dims(node.input_types[i]) if len(node.input_types) > i else None
               for i in range(3))
    if not (q and k and v) or min(len(q), len(k), len(v)) < 2:
        return Cost(2 * result_elements(node), io_bytes(node))
    batch, sq, d, sk, dv = math.prod(q[:-2]), q[-2], q[-1], k[-2], v[-1]
    scores = batch * sq * sk
    masked = len(node.inputs) > 3 and bool(node.inputs[3])
    flops = 2 * scores * d + 2 * scores * dv + scores * (1 + int(masked) + _SOFTMAX_FLOPS)
    return Cost(flops, io_bytes(node))


def opdefs() -> list[OpDef]:
    """The fused ops' definitions (tier ``fused``, domain ``backplane``)."""
    t = MappingProxyType
    return [
        OpDef("FusedConvRelu", DOMAIN, "fused",
              (("X", "T", False), ("W", "T", False), ("B", "T", True)),
              t({"T": _CONV_FLOATS}),
              t({"pads": None, "strides": None, "dilations": None, "group": 1,
                 "kernel_shape": None, "clip_min": None, "clip_max": None}),
              conv_relu_cost, outputs=(("Y", "T", False),), since=VERSION, versions=(VERSION,),
              family="contraction"),
        OpDef("FusedMatMulBiasGelu", DOMAIN, "fused",
              (("A", "T", False), ("B", "T", False), ("bias", "T", False)),
              t({"T": _FLOATS}), t({"approximate": "none"}),
              matmul_bias_gelu_cost, outputs=(("Y", "T", False),), since=VERSION,
              versions=(VERSION,), family="contraction"),
        OpDef("Attention", DOMAIN, "fused",
              (("Q", "T", False), ("K", "T", False), ("V", "T", False), ("mask", "M", True)),
              t({"T": _FLOATS, "M": _FLOATS | {"bool"}}), t({"scale": None}),
              attention_cost, outputs=(("Y", "T", False),), since=VERSION, versions=(VERSION,),
              family="contraction"),
    ]

# --------------------------------------------------------------------------- decompositions


def _ref(name: str, ref: str, kind: int) -> Any:
    """An attribute of a body node that takes the value of the function's attribute ``ref``."""
    from onnx import AttributeProto

    a = AttributeProto()
    a.name, a.ref_attr_name, a.type = name, ref, kind
    return a


def _constant(out: str, value: float | None, like: str, ref: str | None = None) -> list[Any]:
    """A float constant (literal, or the function attribute ``ref``) in the type of ``like``."""
    from onnx import AttributeProto, helper

    if ref is None:
        const = helper.make_node("Constant", [], [out + "_f"], value_float=value)
    else:
        const = helper.make_node("Constant", [], [out + "_f"])
        const.attribute.append(_ref("value_float", ref, AttributeProto.FLOAT))
    return [const, helper.make_node("CastLike", [out + "_f", like], [out])]


def _conv_relu_body(variant: str) -> tuple[list[str], list[Any], list[str]]:
    from onnx import AttributeProto, helper

    conv = helper.make_node("Conv", ["X", "W", "B"], ["conv"])
    kinds = {"group": AttributeProto.INT}
    conv.attribute.extend(_ref(a, a, kinds.get(a, AttributeProto.INTS)) for a in CONV_ATTRIBUTES)
    if variant == "relu":
        return ["X", "W", "B"], [conv, helper.make_node("Relu", ["conv"], ["Y"])], \
            list(CONV_ATTRIBUTES)
    nodes = [conv, *_constant("lo", None, "conv", "clip_min"),
             *_constant("hi", None, "conv", "clip_max"),
             helper.make_node("Clip", ["conv", "lo", "hi"], ["Y"])]
    return ["X", "W", "B"], nodes, [*CONV_ATTRIBUTES, "clip_min", "clip_max"]


def _matmul_bias_gelu_body(variant: str) -> tuple[list[str], list[Any], list[str]]:
    from onnx import helper

    n = helper.make_node
    nodes = [n("MatMul", ["A", "B"], ["mm"]), n("Add", ["mm", "bias"], ["x"])]
    if variant == "none":  # 0.5 * x * (1 + erf(x / sqrt(2)))
        nodes += [*_constant("inv_sqrt2", 1 / math.sqrt(2), "x"),
                  n("Mul", ["x", "inv_sqrt2"], ["t"]), n("Erf", ["t"], ["g"])]
    else:  # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
        nodes += [*_constant("c", 0.044715, "x"), *_constant("k", math.sqrt(2 / math.pi), "x"),
                  n("Mul", ["x", "x"], ["x2"]), n("Mul", ["x2", "x"], ["x3"]),
                  n("Mul", ["x3", "c"], ["cx3"]), n("Add", ["x", "cx3"], ["inner"]),
                  n("Mul", ["inner", "k"], ["t"]), n("Tanh", ["t"], ["g"])]
    nodes += [*_constant("one", 1.0, "x"), *_constant("half", 0.5, "x"),
              n("Add", ["g", "one"], ["p"]), n("Mul", ["x", "half"], ["h"]),
              n("Mul", ["h", "p"], ["Y"])]
    return ["A", "B", "bias"], nodes, []


def _attention_body(variant: str) -> tuple[list[str], list[Any], list[str]]:
    from onnx import helper

    n = helper.make_node
    nodes = [n("Transpose", ["K"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["Q", "kt"], ["s"]),
             *_constant("scale", None, "s", "scale"), n("Mul", ["s", "scale"], ["ss"])]
    if variant == "additive":
        nodes.append(n("Add", ["ss", "mask"], ["m"]))
    else:
        nodes += [*_constant("ninf", -math.inf, "ss"), n("Where", ["mask", "ss", "ninf"], ["m"])]
    nodes += [n("Softmax", ["m"], ["p"], axis=-1), n("MatMul", ["p", "V"], ["Y"])]
    return ["Q", "K", "V", "mask"], nodes, ["scale"]


_BODIES = {"FusedConvRelu": _conv_relu_body, "FusedMatMulBiasGelu": _matmul_bias_gelu_body,
           "Attention": _attention_body}


def function_proto(name: str, *, opset: int = MIN_OPSET, variant: str | None = None) -> Any:
    """The decomposition of fused op ``name`` as an ``onnx.FunctionProto``.

    Args:
        name: a fused op (:data:`backplane.ops.FUSED`).
        opset: the default-domain opset the body imports; use the model's own (the checker
            wants function and model to agree); 17 or newer.
        variant: one of ``VARIANTS[name]``; ``None`` is the first.

    Raises:
        UnsupportedError: unknown op, variant, or an opset older than 17.
    """
    from onnx import helper

    if name not in _BODIES:
        raise UnsupportedError(f"{name} is not a fused op; fused ops are {', '.join(FUSED)}")
    variant = variant or VARIANTS[name][0]
    if variant not in VARIANTS[name]:
        raise UnsupportedError(f"{name} has no variant {variant!r}; "
                               f"its variants are {', '.join(VARIANTS[name])}")
    if opset < MIN_OPSET:
        raise UnsupportedError(f"the decomposition of {name} needs default-domain opset "
                               f"{MIN_OPSET} or newer, not {opset}; upgrade the model")
    inputs, nodes, attributes = _BODIES[name](variant)
    return helper.make_function(
        DOMAIN, name, inputs, ["Y"], nodes, [helper.make_opsetid("", opset)],
        attributes=attributes, doc_string=f"backplane::{name} ({variant}) in ONNX ops")


def _value_types(model: Any) -> dict[str, tuple[int, tuple[Any, ...] | None]]:
    """name -> (ONNX element type, dims or None) for every typed value of the main graph."""
    g = model.graph
    out: dict[str, tuple[int, tuple[Any, ...] | None]] = {
        t.name: (t.data_type, tuple(t.dims)) for t in g.initializer}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None
                          for d in tt.shape.dim) if tt.HasField("shape") else None
            out[vi.name] = (tt.elem_type, shape)
    return out


def _complete(node: Any, model: Any, types: dict[str, Any]) -> str:
    """Make a fused node runnable by its decomposition; return the variant it needs."""
    from onnx import TensorProto, helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    where = f"{node.op_type} node '{node.name}'"

    def need(what: str) -> UnsupportedError:
        return UnsupportedError(f"{where} cannot run through its decomposition: {what}")

    def set_attr(name: str, value: Any) -> None:
        node.attribute.append(helper.make_attribute(name, value))

    if node.op_type == "FusedConvRelu":
        if "auto_pad" in attrs:
            raise need("resolve auto_pad into explicit pads")
        while len(node.input) < 3:
            node.input.append("")
        kernel = attrs.get("kernel_shape")
        if kernel is None:
            w = types.get(node.input[1], (0, None))[1]
            if w is None or len(w) < 3 or any(d is None for d in w[2:]):
                raise need("set kernel_shape (the weight's shape is unknown)")
            kernel = list(w[2:])
            set_attr("kernel_shape", kernel)
        for name, value in (("strides", [1] * len(kernel)), ("dilations", [1] * len(kernel)),
                            ("pads", [0] * 2 * len(kernel)), ("group", 1)):
            if name not in attrs:
                set_attr(name, value)
        return "clip" if ("clip_min" in attrs or "clip_max" in attrs) else "relu"
    if node.op_type == "FusedMatMulBiasGelu":
        mode = attrs.get("approximate", b"none")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in VARIANTS["FusedMatMulBiasGelu"]:
            raise need(f"approximate={mode!r}; use 'none' or 'tanh'")
        return mode
    # Attention
    if len(node.input) < 4 or not node.input[3]:
        q_type = types.get(node.input[0], (0, None))[0]
        if not q_type:
            raise need("pass a mask, or give Q a known type")
        name = _unique(f"{node.name or 'attention'}/zero_mask", model)
        model.graph.initializer.append(helper.make_tensor(name, q_type, [], [0]))
        types[name] = (q_type, ())
        del node.input[3:]
        node.input.append(name)
    if "scale" not in attrs:
        q = types.get(node.input[0], (0, None))[1]
        if not q or q[-1] is None:
            raise need("set scale (head_dim, the last dimension of Q, is unknown)")
        set_attr("scale", 1 / math.sqrt(q[-1]))
    return "bool" if types.get(node.input[3], (0,))[0] == TensorProto.BOOL else "additive"


def _unique(name: str, model: Any) -> str:
    taken = {t.name for t in model.graph.initializer} | {
        v for n in model.graph.node for v in list(n.input) + list(n.output)} | {
        i.name for i in model.graph.input}
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}#{i}"
    return candidate


def add_decompositions(model: Any) -> Any:
    """A copy of ``model`` with the decomposition of every fused op it uses.

    Fused nodes of the main graph are completed so that onnx.reference can run them (see
    the module docstring), one function per fused op is added (replacing any the model
    had), built at the model's default opset in the variant its nodes need, and the
    ``backplane`` domain is imported at version 1.

    Raises:
        UnsupportedError: the model's opset is older than 17, two nodes of one op need
            different variants, or a node lacks what its decomposition needs.
    """
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    types = _value_types(out)
    variants: dict[str, set[str]] = {}
    fused = [n for n in out.graph.node if n.domain == DOMAIN and n.op_type in _BODIES]
    for node in fused:
        variants.setdefault(node.op_type, set()).add(_complete(node, out, types))
    if variants.get("FusedConvRelu") == {"relu", "clip"}:
        for node in fused:  # Relu is Clip to [0, inf]: one clip function serves both
            if node.op_type != "FusedConvRelu":
                continue
            have = {a.name for a in node.attribute}
            if not have & {"clip_min", "clip_max"}:
                node.attribute.extend([helper.make_attribute("clip_min", 0.0),
                                       helper.make_attribute("clip_max", math.inf)])
        variants["FusedConvRelu"] = {"clip"}
    for node in fused:  # a clip node gets both bounds: the body reads both
        have = {a.name for a in node.attribute}
        if node.op_type == "FusedConvRelu" and have & {"clip_min", "clip_max"}:
            for name, bound in (("clip_min", -math.inf), ("clip_max", math.inf)):
                if name not in have:
                    node.attribute.append(helper.make_attribute(name, bound))
    for op, found in sorted(variants.items()):
        if len(found) > 1:
            raise UnsupportedError(
                f"the model's {op} nodes need different decompositions "
                f"({', '.join(sorted(found))}); "
                f"a model holds one function per op, so use one kind per model")
    if variants:
        kept = [f for f in out.functions if not (f.domain == DOMAIN and f.name in variants)]
        del out.functions[:]
        out.functions.extend(kept + [function_proto(op, opset=opset, variant=found.pop())
                                     for op, found in sorted(variants.items())])
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    return out


#: The op key of each fused op, as ``fuse``'s ``has_kernel`` receives it.
KEYS: dict[str, str] = {name: op_key(name, DOMAIN) for name in FUSED}
#: The type of ``fuse``'s ``has_kernel`` argument: op key -> whether a kernel exists.
HasKernel = Callable[[str], bool]


__all__ = ["CONV_ATTRIBUTES", "KEYS", "MIN_OPSET", "VARIANTS", "VERSION", "HasKernel",
           "add_decompositions", "attention_cost", "conv_relu_cost", "function_proto",
           "matmul_bias_gelu_cost", "opdefs"]
