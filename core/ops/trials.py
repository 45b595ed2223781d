"""One-node trial models that ask a runtime which core ops it runs, in which dtypes.

For any backend that must *discover* which core ops x dtypes its runtime runs because the
runtime has no op-support query that can be trusted (graph compilers such as OpenVINO and
ONNX Runtime): the backend hands :func:`discover` its own ``try_op(op, dtype, domain)``,
which builds :func:`models` for the op, runs each on the runtime and returns '' when all
ran (else the runtime's reason); :func:`discover` calls it for every op of
:data:`~backplane.ops.MANDATORY` (and, if asked, :data:`~backplane.ops.FUSED`) in every
dtype of :data:`DTYPES` its schema admits, and returns the dtypes that ran per op.

``models(op, dtype)`` yields small ONNX models of one op with their feeds: every variant
whose kernel may differ from the plain one (a second input's type, a mode or
``approximate`` attribute, constant, fed or absent optional inputs, another rank) is built,
and an op counts as running only when every variant does. A variant that matters only to
one runtime is harmless to the others: all of them probe it. Data inputs are graph inputs,
not initializers, so a runtime cannot constant-fold the node away and must have a kernel.

Importing this module imports neither numpy nor onnx (building a model does), so a plugin
may read :data:`VERSION`, :data:`OPSET` and :data:`DTYPES` while it is discovered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from backplane.model.dtypes import DTYPE_CODES
from backplane.ops.opdef import DOMAIN, FUSED, MANDATORY
from backplane.ops.registry import get

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx

#: Bump when a trial model or :func:`discover` changes: backends put it in the keys of
#: their capability caches, so that tables derived with older probes are not read back.
VERSION = 1
#: The default-domain opset of trial models (the one the conformance cases use).
OPSET = 21
#: The dtypes probed (those the conformance suite generates).
DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool")
#: The dtypes fused ops are probed in, for backends that declare them.
FUSED_DTYPES = ("float32", "float16", "bfloat16")
I64 = "int64"

#: ``try_op(op, dtype, domain)``: '' when every trial model ran, else the runtime's reason.
TryOp = Callable[[str, str, str], str]


def discover(try_op: TryOp, dtypes: tuple[str, ...] = DTYPES,
             fused_dtypes: tuple[str, ...] = ()) -> tuple[dict[str, list[str]],
                                                           dict[str, dict[str, str]]]:
    """``(ops, refused)``: ``{op key: [dtypes that ran]}`` and ``{op key: {dtype: why}}``.

    Every op of :data:`~backplane.ops.MANDATORY` is tried in each of ``dtypes`` that its
    schema admits for its main input (Where's is X, its second). Where's capability key
    reads the first input, the boolean condition, so a Where that ran in any dtype is
    declared for ``bool``. Fused ops (``backplane::`` keys) are tried in ``fused_dtypes``
    (none by default: a backend that fuses on its own need not declare them).
    """
    ops: dict[str, list[str]] = {}
    refused: dict[str, dict[str, str]] = {}

    def one(key: str, op: str, dt: str, domain: str) -> None:
        why = try_op(op, dt, domain)
        if why:
            refused.setdefault(key, {})[dt] = why
        else:
            ops.setdefault(key, []).append(dt)

    for op in MANDATORY:
        definition = get(op).at(OPSET)
        main = definition.inputs[1 if op == "Where" else 0][0]
        for dt in [d for d in dtypes if d in definition.dtypes_of(main)]:
            one(op, op, dt, "")
    if "Where" in ops:
        ops["Where"] = ["bool"]
    for op in FUSED if fused_dtypes else ():
        for dt in fused_dtypes:
            one(f"{DOMAIN}::{op}", op, dt, DOMAIN)
    return ops, refused


def np_dtype(dtype: str) -> Any:
    """The numpy dtype of a backplane dtype name (ml_dtypes for bfloat16)."""
    import numpy as np

    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _data(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Small positive values (Log, Sqrt, Div and Pow stay defined), or random booleans."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("float", "bfloat")):
        return rng.uniform(0.5, 2.0, shape).astype(np.float32).astype(np_dtype(dtype))
    return rng.integers(1, 4, shape).astype(np_dtype(dtype))


def _model(op: str, inputs: list[tuple | None], outputs: list[str], attrs: dict[str, Any],
           domain: str = "") -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """inputs: ``(name, shape, dtype)`` fed, ``(name, shape, dtype, values)`` constant
    (values None: random), or ``None`` for an absent optional input."""
    import numpy as np
    from onnx import helper, numpy_helper

    feeds, inits, infos, names = {}, [], [], []
    for k, spec in enumerate(inputs):
        if spec is None:
            names.append("")
            continue
        name, shape, dtype = spec[:3]
        names.append(name)
        if len(spec) > 3:
            values = spec[3] if spec[3] is not None else _data(shape, dtype, k)
            inits.append(numpy_helper.from_array(np.asarray(values, np_dtype(dtype)), name))
        else:
            feeds[name] = _data(shape, dtype, k)
            infos.append(helper.make_tensor_value_info(name, DTYPE_CODES[dtype], list(shape)))
    outs = [helper.make_tensor_value_info(f"y{k}", DTYPE_CODES[dt], None)
            for k, dt in enumerate(outputs)]
    node = helper.make_node(op, names, [o.name for o in outs], domain=domain, **attrs)
    graph = helper.make_graph([node], f"probe-{op}", infos, outs, initializer=inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    if domain == "backplane":
        # on use only: the op registry reads its schema tables when first asked
        from backplane.ops.fused import add_decompositions

        model = add_decompositions(model)
    return model, feeds


_UNARY = ("Sqrt", "Exp", "Log", "Erf", "Abs", "Neg", "Relu", "LeakyRelu", "Sigmoid", "Tanh",
          "HardSigmoid", "HardSwish", "Softmax", "Transpose")
_BINARY = ("Add", "Sub", "Mul", "Div", "Pow")


def models(op: str, dt: str, domain: str = "") -> Iterator[tuple[onnx.ModelProto, dict]]:
    """Every trial model of ``op`` with main dtype ``dt``, with its feeds.

    ``domain`` "backplane" asks for a fused op (its model carries the decomposition as a
    model-local function). Raises ValueError for an op without trial models.
    """
    x = ("x", (2, 3), dt)
    img = ("x", (1, 2, 5, 5), dt)
    if domain == "backplane":
        yield from _fused(op, dt)
    elif op in _BINARY:
        yield _model(op, [("a", (2, 3), dt), ("b", (3,), dt)], [dt], {})
    elif op in _UNARY:
        yield _model(op, [x], [dt], {})
    elif op == "Gelu":
        for approx in ("none", "tanh"):
            yield _model(op, [x], [dt], {"approximate": approx})
    elif op == "Flatten":
        yield _model(op, [x], [dt], {})
        yield _model(op, [("x", (2, 3, 4), dt)], [dt], {"axis": 1})
    elif op == "Shape":
        yield _model(op, [x], [I64], {})
    elif op == "GlobalAveragePool":
        yield _model(op, [img], [dt], {})
    elif op == "Clip":
        yield _model(op, [x, ("lo", (), dt, None), ("hi", (), dt, None)], [dt], {})
        yield _model(op, [x, ("lo", (), dt), ("hi", (), dt)], [dt], {})
        yield _model(op, [x], [dt], {})
    elif op == "MatMul":
        yield _model(op, [("a", (2, 3), dt), ("b", (3, 4), dt)], [dt], {})
    elif op == "Gemm":
        yield _model(op, [("a", (2, 3), dt), ("b", (4, 3), dt), ("c", (4,), dt)], [dt],
                     {"transB": 1})
    elif op == "Conv":
        yield _model(op, [img, ("w", (3, 2, 3, 3), dt, None), ("b", (3,), dt, None)], [dt],
                     {"pads": [1, 1, 1, 1]})
        yield _model(op, [img, ("w", (3, 2, 3, 3), dt)], [dt], {})
    elif op == "ConvTranspose":
        yield _model(op, [img, ("w", (2, 3, 2, 2), dt, None), ("b", (3,), dt, None)], [dt],
                     {"strides": [2, 2]})
    elif op == "BatchNormalization":
        yield _model(op, [img] + [(n, (2,), dt, None) for n in "sbmv"], [dt], {})
    elif op == "LayerNormalization":
        yield _model(op, [x, ("s", (3,), dt, None), ("b", (3,), dt, None)], [dt], {})
    elif op in ("MaxPool", "AveragePool"):
        yield _model(op, [img], [dt], {"kernel_shape": [2, 2]})
        yield _model(op, [img], [dt], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                       "strides": [2, 2]})
    elif op in ("ReduceMean", "ReduceSum", "ReduceMax"):
        yield _model(op, [x, ("axes", (1,), I64, [1])], [dt], {})
        yield _model(op, [x], [dt], {"keepdims": 0})
    elif op == "Reshape":
        yield _model(op, [x, ("shape", (2,), I64, [3, 2])], [dt], {})
    elif op == "Concat":
        yield _model(op, [("a", (2, 3), dt), ("b", (1, 3), dt)], [dt], {"axis": 0})
    elif op == "Slice":
        for ind in (I64, "int32"):
            yield _model(op, [("x", (4, 3), dt), ("s", (1,), ind, [1]), ("e", (1,), ind, [3]),
                              ("a", (1,), ind, [0])], [dt], {})
    elif op == "Gather":
        for ind in (I64, "int32"):
            yield _model(op, [("x", (3, 2), dt), ("i", (2,), ind, [2, 0])], [dt], {})
    elif op == "Squeeze":
        yield _model(op, [("x", (1, 3), dt), ("axes", (1,), I64, [0])], [dt], {})
    elif op == "Unsqueeze":
        yield _model(op, [("x", (3,), dt), ("axes", (1,), I64, [0])], [dt], {})
    elif op == "Expand":
        yield _model(op, [("x", (1, 3), dt), ("shape", (2,), I64, [2, 3])], [dt], {})
    elif op == "Cast":
        for to in DTYPES:
            yield _model(op, [x], [to], {"to": DTYPE_CODES[to]})
    elif op == "Where":
        yield _model(op, [("c", (2, 3), "bool"), ("a", (2, 3), dt), ("b", (3,), dt)], [dt], {})
    elif op == "Pad":
        for mode in ("constant", "reflect", "edge"):
            yield _model(op, [("x", (3, 4), dt), ("pads", (4,), I64, [1, 0, 1, 2])], [dt],
                         {"mode": mode})
    elif op == "Resize":
        for mode in ("nearest", "linear", "cubic"):
            yield _model(op, [("x", (1, 1, 4, 4), dt), None,
                              ("scales", (4,), "float32", [1, 1, 2, 2])], [dt], {"mode": mode})
    elif op == "QuantizeLinear":
        for zp in ("uint8", "int8"):
            yield _model(op, [x, ("s", (), dt, None), ("z", (), zp, None)], [zp], {})
    elif op == "DequantizeLinear":
        for sdt in ("float32",) if dt == "int32" else ("float32", "float16"):
            zero = [] if dt == "int32" else [("z", (), dt, None)]
            yield _model(op, [x, ("s", (), sdt, None), *zero], [sdt], {})
    elif op == "MatMulInteger":
        for bdt in ("uint8", "int8"):
            yield _model(op, [("a", (2, 3), dt), ("b", (3, 4), bdt)], ["int32"], {})
    else:
        raise ValueError(f"no probe model for {op}")


def _fused(op: str, dt: str) -> Iterator[tuple[onnx.ModelProto, dict]]:
    dom = "backplane"
    if op == "FusedConvRelu":
        for clip in ({}, {"clip_min": 0.0, "clip_max": 6.0}):
            yield _model(op, [("x", (1, 2, 5, 5), dt), ("w", (3, 2, 3, 3), dt, None),
                              ("b", (3,), dt, None)], [dt],
                         {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], **clip}, dom)
    elif op == "FusedMatMulBiasGelu":
        for approx in ("none", "tanh"):
            yield _model(op, [("a", (2, 3), dt), ("b", (3, 4), dt, None), ("c", (4,), dt, None)],
                         [dt], {"approximate": approx}, dom)
    elif op == "Attention":
        qkv = [(n, (1, 2, 3, 4), dt) for n in "qkv"]
        yield _model(op, qkv + [("m", (1, 1, 3, 3), dt)], [dt], {}, dom)
        yield _model(op, qkv + [("m", (1, 1, 3, 3), "bool")], [dt], {}, dom)
    else:
        raise ValueError(f"no probe model for backplane::{op}")
