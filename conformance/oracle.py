"""The oracle: what a model should output, and independent numpy formulas for the main ops.

``expected`` evaluates a model with ``onnx.reference`` in float64 where every node admits it:
float16, bfloat16 and float32 inputs, initializers and constants are upcast, the model's
float types are rewritten to double, and the outputs are cast back to their declared types.
A float64 evaluation rounds once, at the end, so the oracle is closer to the exact result
than any float32 backend can be. Where some node does not admit double (QuantizeLinear,
DequantizeLinear, LayerNormalization's float-only Mean output ...) the whole model runs in
its own types, and so does a model with no floating-point value at all.

The formulas in ``FORMULAS`` are written from the ONNX specification, not from
``onnx.reference``; the tests check the two against each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from backplane.ops import pool_geometry, window_pads
from backplane.runtimes.onnxref.fixes import evaluator_class

FLOAT64 = "float64"
NATIVE = "native"

#: Element types the oracle evaluates as double.
_UPCAST = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
#: Attributes that name an element type of a node's output.
_TYPE_ATTRIBUTES = frozenset({"to", "dtype", "output_dtype"})


# --------------------------------------------------------------------------- oracle

def expected(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference outputs of ``model`` on ``inputs``, by output name.

    Float64 where every node admits it (see the module docstring), the model's own types
    otherwise; each output has its declared element type either way.
    """
    return expected_with_mode(model, inputs)[0]


def expected_with_mode(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], str]:
    """``expected``, and the mode it used: ``"float64"`` or ``"native"``."""
    plan = _Float64Plan.of(model)
    if plan.blocker is not None:
        return evaluate(model, inputs), NATIVE
    feeds = {name: (np.asarray(value).astype(np.float64) if name in plan.upcast_inputs
                    else value) for name, value in inputs.items()}
    out = {}
    for name, value in evaluate(plan.model, feeds).items():
        declared = plan.output_types.get(name)
        dtype = helper.tensor_dtype_to_np_dtype(declared) if declared else value.dtype
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as it should be
            out[name] = value.astype(dtype) if value.dtype != dtype else value
    return out, FLOAT64


def native_reason(model: onnx.ModelProto) -> str | None:
    """Why the oracle evaluates ``model`` in its own types, or None when it uses float64."""
    return _Float64Plan.of(model).blocker


def evaluate(model: onnx.ModelProto, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """onnx.reference on ``model`` as it is, in its own types (with the kernel fixes below)."""
    names = [o.name for o in model.graph.output]
    # Special-value cases overflow and divide by zero on purpose.
    with np.errstate(all="ignore"):
        results = _evaluator_class()(model).run(None, dict(feeds))
    return {name: np.asarray(value) for name, value in zip(names, results)}


def _evaluator_class() -> type:
    """onnx.reference's evaluator with the reference backend's kernel fixes (Erf in float64,
    MaxPool, Pad, ConvTranspose ...: ``backplane.runtimes.onnxref.fixes``)."""
    return evaluator_class()


class _Float64Plan:
    """The float64 rewrite of a model, or the reason there is none."""

    def __init__(self, blocker: str | None, model: onnx.ModelProto | None = None,
                 upcast_inputs: frozenset[str] = frozenset(),
                 output_types: dict[str, int] | None = None):
        self.blocker = blocker
        self.model = model
        self.upcast_inputs = upcast_inputs
        self.output_types = output_types or {}

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Float64Plan:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # an invalid model: let the evaluator say what is wrong
            return cls(f"shape inference failed: {exc}")
        graph = inferred.graph
        types = _value_types(graph)
        if not any(t in _UPCAST for t in types.values()):
            return cls("no floating-point values")
        opsets = {o.domain or "": o.version for o in model.opset_import}
        fixed: set[str] = set()      # float values in slots typed tensor(float) etc.: kept as is
        generic: set[str] = set()    # float values in slots whose type parameter admits double
        for node in graph.node:
            reason = _bind_node(node, opsets, types, fixed, generic)
            if reason:
                return cls(reason)
        clash = fixed & generic
        if clash:
            return cls(f"value {sorted(clash)[0]!r} is both a fixed-float and a generic operand")

        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        g = rewritten.graph
        del g.value_info[:]  # intermediate types change; the evaluator needs none of them
        for vi in list(g.input) + list(g.output):
            tt = vi.type.tensor_type
            if tt.elem_type in _UPCAST and vi.name not in fixed:
                tt.elem_type = TensorProto.DOUBLE
        for i, init in enumerate(g.initializer):
            if init.data_type in _UPCAST and init.name not in fixed:
                g.initializer[i].CopyFrom(_double_tensor(init))
        for node in g.node:
            if any(o in fixed for o in node.output):
                continue
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR and attr.t.data_type in _UPCAST:
                    attr.t.CopyFrom(_double_tensor(attr.t))
                elif (attr.name in _TYPE_ATTRIBUTES and attr.type == AttributeProto.INT
                      and attr.i in _UPCAST):
                    attr.i = TensorProto.DOUBLE
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                _constant_scalars_to_double(node)
            if (node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx")
                    and not any(a.name == "value" for a in node.attribute)):
                # Its default value is a float32 zero.
                node.attribute.append(helper.make_attribute(
                    "value", numpy_helper.from_array(np.zeros(1, np.float64))))
        upcast = frozenset(vi.name for vi in model.graph.input
                           if vi.type.tensor_type.elem_type in _UPCAST and vi.name not in fixed)
        output_types = {vi.name: (vi.type.tensor_type.elem_type or types.get(vi.name, 0))
                        for vi in model.graph.output}
        return cls(None, rewritten, upcast, output_types)


#: Ops the oracle runs in the model's own types, and why float64 would change them.
_OWN_TYPES = {
    "BitCast": "reinterprets the bits of its input: a wider type changes the result",
    "MeanVarianceNormalization": "is a function whose body has float32 constants, which meet "
                                 "a float64 input",
}


def _value_types(graph: onnx.GraphProto) -> dict[str, int]:
    types: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def _bind_node(node: onnx.NodeProto, opsets: dict[str, int], types: dict[str, int],
               fixed: set[str], generic: set[str]) -> str | None:
    """Sort the node's float operands into fixed and generic; a reason if double is refused."""
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
        return f"{node.op_type} has a subgraph"
    if node.op_type in _OWN_TYPES and node.domain in ("", "ai.onnx"):
        return f"{node.op_type} {_OWN_TYPES[node.op_type]}"
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    if domain not in opsets and not (domain == "" and "ai.onnx" in opsets):
        return f"{node.op_type}: no opset for domain {domain!r}"
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, opsets.get("ai.onnx", 0)),
                                      domain)
    except onnx.defs.SchemaError:
        return f"{node.op_type}: no schema in domain {domain!r}"
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for names, formals, kind in ((node.input, schema.inputs, "input"),
                                 (node.output, schema.outputs, "output")):
        for i, name in enumerate(names):
            if not name or types.get(name) not in _UPCAST or not formals:
                continue
            formal = formals[min(i, len(formals) - 1)]
            allowed = constraints.get(formal.type_str)
            if allowed is None:
                fixed.add(name)          # e.g. Resize's scales: tensor(float), not a parameter
            elif "tensor(double)" in allowed:
                generic.add(name)
            else:
                return (f"{node.op_type} {kind} {formal.name} ({formal.type_str}) does not "
                        f"admit double at opset {opsets.get(domain)}")
    return None


def _double_tensor(tensor: TensorProto) -> TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float64)
    return numpy_helper.from_array(array, tensor.name)


def _constant_scalars_to_double(node: onnx.NodeProto) -> None:
    """Constant's value_float(s) produce float32; turn them into a double ``value``."""
    for attr in list(node.attribute):
        if attr.name in ("value_float", "value_floats"):
            value = np.array(attr.f if attr.name == "value_float" else list(attr.floats),
                             dtype=np.float32).astype(np.float64)
            node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))


# --------------------------------------------------------------------------- formulas

def np_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product with numpy broadcasting of the batch dimensions, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    squeeze = []
    if a.ndim == 1:
        a, squeeze = a[None, :], [-2]
    if b.ndim == 1:
        b, squeeze = b[:, None], squeeze + [-1]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    out = np.einsum("...ik,...kj->...ij", a, b)
    return np.squeeze(out, axis=tuple(squeeze)) if squeeze else out


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *,
            strides: Iterable[int] | None = None, pads: Iterable[int] | None = None,
            dilations: Iterable[int] | None = None, group: int = 1,
            auto_pad: str = "NOTSET") -> np.ndarray:
    """N-D convolution (ONNX Conv: cross-correlation), by a loop over kernel offsets."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nsp = x.ndim - 2
    kernel = w.shape[2:]
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    p = window_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p[i], p[i + nsp]) for i in range(nsp)])
    out_sp = [(xp.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
              for i in range(nsp)]
    n, m = x.shape[0], w.shape[0]
    cg, mg = x.shape[1] // group, m // group
    out = np.zeros((n, m, *out_sp))
    for offset in np.ndindex(*kernel):
        window = tuple(slice(o * d, o * d + s * (size - 1) + 1, s)
                       for o, d, s, size in zip(offset, dilations, strides, out_sp))
        patch = xp[(slice(None), slice(None)) + window]        # N, C, *out
        for g in range(group):
            wg = w[(slice(g * mg, (g + 1) * mg), slice(None)) + offset]  # Mg, Cg
            out[:, g * mg:(g + 1) * mg] += np.einsum(
                "nc...,mc->nm...", patch[:, g * cg:(g + 1) * cg], wg)
    if b is not None:
        out += np.asarray(b, np.float64).reshape((1, m) + (1,) * nsp)
    return out


def np_pool(kind: str, x: np.ndarray, kernel_shape: Iterable[int], *,
            strides: Iterable[int] | None = None, pads: Iterable[int] | None = None,
            dilations: Iterable[int] | None = None, ceil_mode: int = 0,
            auto_pad: str = "NOTSET", count_include_pad: int = 0, storage_order: int = 0
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """MaxPool (``kind="max"``) or AveragePool (``"avg"``) over N-D windows, in float64.

    Returns the pooled values and, for max, the ONNX ``Indices`` output: the flat index of
    each selected element in the unpadded input (row-major, or column-major within each
    image for ``storage_order=1``).
    """
    x = np.asarray(x, np.float64)
    kernel = list(kernel_shape)
    nsp = len(kernel)
    spatial = list(x.shape[2:])
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    begins, ends, out_sp, extra = pool_geometry(spatial, kernel, strides, dilations, pads,
                                                auto_pad, ceil_mode)
    widths = [(b, e + x_) for b, e, x_ in zip(begins, ends, extra)]
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + widths, constant_values=fill)
    if kind == "max":
        flat = np.arange(int(np.prod(spatial))).reshape(spatial[::-1] if storage_order
                                                         else spatial)
        if storage_order:
            flat = flat.transpose(list(range(nsp))[::-1])
        index = np.pad(flat, widths, constant_values=-1)
        best = np.full(x.shape[:2] + tuple(out_sp), -np.inf)
        where = np.full(best.shape, -1, np.int64)
    else:
        inside = np.ones(spatial) if not count_include_pad else np.ones(
            [s + b + e for s, b, e in zip(spatial, begins, ends)])
        region = np.pad(inside, widths if not count_include_pad else [(0, x_) for x_ in extra])
        total, count = np.zeros(x.shape[:2] + tuple(out_sp)), np.zeros(out_sp)
    for offset in np.ndindex(*kernel):
        window = tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                       for o, d, s, n in zip(offset, dilations, strides, out_sp))
        patch = xp[(slice(None), slice(None)) + window]
        if kind == "max":
            better = patch > best
            best = np.where(better, patch, best)
            where = np.where(better, index[window], where)
        else:
            total += patch
            count += region[window]
    if kind != "max":
        return total / count, None
    image = int(np.prod(spatial))
    offsets = (np.arange(x.shape[0] * x.shape[1]) * image).reshape(x.shape[:2] + (1,) * nsp)
    return best, where + offsets


def np_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along ``axis``, in float64."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None,
                  axis: int = -1, epsilon: float = 1e-5) -> np.ndarray:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the axes from ``axis`` on."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(axis % x.ndim if x.ndim else 0, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon) * np.asarray(scale, np.float64)
    return y if bias is None else y + np.asarray(bias, np.float64)


_erf = np.frompyfunc(math.erf, 1, 1)


def np_gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """Gelu: x * Phi(x) exactly, or its tanh approximation."""
    x = np.asarray(x, np.float64)
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.asarray(_erf(x / math.sqrt(2)), np.float64))


def np_reduce(kind: str, x: np.ndarray, axes: Iterable[int] | None = None,
              keepdims: bool = True) -> np.ndarray:
    """``mean``, ``sum`` or ``max`` over ``axes`` (None: all), in float64."""
    x = np.asarray(x, np.float64)
    axes = None if axes is None else tuple(int(a) % max(x.ndim, 1) for a in axes)
    if kind == "max":  # the max of nothing is -inf (ONNX ReduceMax, opset 18 on)
        return np.asarray(np.max(x, axis=axes, keepdims=bool(keepdims), initial=-np.inf))
    fn = {"mean": np.mean, "sum": np.sum}[kind]
    return np.asarray(fn(x, axis=axes, keepdims=bool(keepdims)))


def _reduce_formula(kind: str) -> Callable[[list, dict], np.ndarray]:
    def formula(inputs: list, attrs: dict) -> np.ndarray:
        axes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        if axes is not None and len(axes) == 0:
            axes = None
        if axes is None and attrs.get("noop_with_empty_axes", 0):
            return np.asarray(inputs[0], np.float64)
        return np_reduce(kind, inputs[0], axes, attrs.get("keepdims", 1))
    formula.__doc__ = f"Reduce{kind.capitalize()} from (inputs, attributes)."
    return formula


def _conv_formula(inputs: list, attrs: dict) -> np.ndarray:
    """Conv from (inputs, attributes)."""
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    return np_conv(x, w, b, strides=attrs.get("strides"), pads=attrs.get("pads"),
                   dilations=attrs.get("dilations"), group=attrs.get("group", 1),
                   auto_pad=attrs.get("auto_pad", "NOTSET"))


def _pool_formula(kind: str) -> Callable[[list, dict], np.ndarray]:
    def formula(inputs: list, attrs: dict) -> np.ndarray:
        keys = ("strides", "pads", "dilations", "ceil_mode", "auto_pad", "count_include_pad",
                "storage_order")
        return np_pool(kind, inputs[0], attrs["kernel_shape"],
                       **{k: attrs[k] for k in keys if k in attrs})[0]
    formula.__doc__ = f"{'MaxPool' if kind == 'max' else 'AveragePool'} from (inputs, attributes)."
    return formula


#: Independent float64 formulas by op name, each taking (inputs, attributes) -> output.
#: ``inputs`` lists the node's inputs in order (None for an omitted optional one);
#: ``attributes`` holds python values as ``backplane.model.graph.attribute_values`` gives them.
FORMULAS: dict[str, Callable[[list, dict], np.ndarray]] = {
    "MatMul": lambda inputs, attrs: np_matmul(inputs[0], inputs[1]),
    "Conv": _conv_formula,
    "Softmax": lambda inputs, attrs: np_softmax(inputs[0], attrs.get("axis", -1)),
    "LayerNormalization": lambda inputs, attrs: np_layer_norm(
        inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None,
        attrs.get("axis", -1), attrs.get("epsilon", 1e-5)),
    "Gelu": lambda inputs, attrs: np_gelu(inputs[0], attrs.get("approximate", "none")),
    "MaxPool": _pool_formula("max"),
    "AveragePool": _pool_formula("avg"),
    "ReduceMean": _reduce_formula("mean"),
    "ReduceSum": _reduce_formula("sum"),
    "ReduceMax": _reduce_formula("max"),
}
