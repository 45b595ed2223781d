"""Op-level conformance cases: one small ONNX model per case, with fresh random inputs.

``generate(op, seed)`` builds an op's cases: every dtype the op admits (among ``DTYPES``),
ranks 0 to 5, broadcasting, empty tensors, sizes 1/7/127/1025 along the main axis,
attribute variants, special values and one large input. A case's inputs come from
``numpy.random.default_rng(seed + crc32(case id))``, so a case is reproduced from its id and
the seed alone, whatever else was generated. Its expected outputs are left to the oracle
(``backplane.conformance.oracle``); ``onnx_node_cases`` brings ONNX's own node tests, which
carry their recorded outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from backplane.graph import DTYPE_CODES, DTYPE_NAMES
from backplane.intake import MIN_OPSET
from backplane.ops import MANDATORY, RANDOM_OPS

#: The core op set: a backend that claims one of these ops must pass its cases.
MANDATORY_OPS: tuple[str, ...] = MANDATORY
#: The element types cases are generated for, in order of preference for an op's main dtype.
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64",
                           "bool")
#: The default-domain opset of generated models.
OPSET = 21
TIERS = ("mandatory", "optional")
#: Every tag a case may carry.
TAGS = frozenset({"broadcast", "rank-0", "rank-1", "rank-2", "rank-3", "rank-4", "rank-5",
                  "empty", "size-1", "size-7", "size-127", "size-1025", "attr", "special-values",
                  "large", "onnx-node-test", "model", "version"})
#: Generated cases of an op re-run at each other version of its schema (from opset 7), at
#: most: the first that convert to the opset where that version starts.
PER_VERSION = 2
SIZES = (1, 7, 127, 1025)


@dataclass(kw_only=True)
class Case:
    """One conformance case: a model, its inputs, and where its expected outputs come from."""

    id: str
    """Stable and readable, unique in a suite: ``"Add/float32/broadcast-3x1x4+4"``."""
    op: str
    domain: str = ""
    dtype: str
    """The element type of the op's main input, as in ``backplane.graph.DTYPE_NAMES``."""
    tier: str
    model: onnx.ModelProto = field(repr=False)
    inputs: dict[str, np.ndarray] = field(repr=False)
    expected: dict[str, np.ndarray] | None = field(default=None, repr=False)
    """None: the runner asks the oracle. ONNX node tests carry their recorded outputs."""
    tags: tuple[str, ...] = ()
    seed: int = 0
    """The suite seed; the inputs come from ``default_rng(seed + crc32(id))``."""
    tolerance_key: str = ""
    recorded_tolerance: tuple[float, float] | None = None
    """ONNX node tests: the (rtol, atol) ONNX states for its recorded outputs, which were
    computed in the test's own dtype by other formulas; the runner never compares tighter."""
    signed_zero: bool = False
    """A special-values case whose outputs must carry the oracle's sign of zero (Abs, Neg,
    data movement); elsewhere -0.0 equals 0.0."""


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The random generator of one case: the suite seed plus a stable hash of the case id."""
    return np.random.default_rng((seed + zlib.crc32(case_id.encode("utf-8"))) % 2 ** 63)


# --------------------------------------------------------------------------- values

_UNSIGNED = {"uint8"}
_INT_RANGES = {  # inclusive ranges for integer data, small enough that no op overflows int8
    "normal": (-8, 8), "positive": (1, 8), "nonzero": (1, 8), "nonneg": (0, 15),
    "dividend": (0, 15), "high": (8, 15), "low": (0, 7), "base": (0, 4), "exponent": (0, 3),
}


def _np_dtype(dtype: str) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(DTYPE_CODES[dtype]))


def _is_float(dtype: str) -> bool:
    return dtype in ("float32", "float16", "bfloat16", "float64")


def _values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], kind: Any) -> np.ndarray:
    """Random data of one kind: ``normal`` (standard normal / small integers), ``positive``
    (Sqrt, Log, Pow bases), ``nonzero`` (divisors) ... or a callable ``(rng, shape, dtype)``."""
    return np.asarray(_raw_values(rng, dtype, shape, kind))  # rank 0: an array, not a scalar


def _raw_values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], kind: Any) -> Any:
    dt = _np_dtype(dtype)
    if callable(kind):
        return np.asarray(kind(rng, shape, dtype)).astype(dt)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if _is_float(dtype):
        if kind in ("positive", "base"):
            v = rng.uniform(0.5, 2.0, shape)
        elif kind == "nonzero":
            v = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        elif kind == "nonneg":
            v = np.abs(rng.standard_normal(shape))
        else:
            v = rng.standard_normal(shape)
        return v.astype(dt)
    if kind == "full":  # the whole range of 8-bit types; +-2**20 for wider ones
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -2 ** 20), min(int(info.max), 2 ** 20)
        return rng.integers(lo, hi + 1, shape).astype(dt)
    lo, hi = _INT_RANGES.get(kind, _INT_RANGES["normal"])
    if dtype in _UNSIGNED:
        lo, hi = max(lo, 0), max(hi, 15 if kind == "normal" else hi)
    return rng.integers(lo, hi + 1, shape).astype(dt)


_SPECIALS = ("nan", "inf", "-inf", "-0", "0", "denormal", "-denormal", "huge")


def _special_table(dtype: str) -> dict[str, float]:
    """The value of each special kind in ``dtype``; ``huge`` is a quarter of the largest
    finite value, so that one operation with an ordinary number stays finite."""
    import ml_dtypes

    info = ml_dtypes.finfo(_np_dtype(dtype))
    return {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "-0": -0.0, "0": 0.0,
            "denormal": float(info.smallest_normal) / 4,
            "-denormal": -float(info.smallest_normal) / 4, "huge": float(info.max) / 4}


def _special(exclude: Iterable[str] = ()) -> Callable:
    """Normal data with NaN, +-inf, +-0.0, denormals and huge values at random places."""
    chosen = [s for s in _SPECIALS if s not in set(exclude)]

    def make(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        dt = _np_dtype(dtype)
        table = _special_table(dtype)
        out = rng.standard_normal(shape).astype(dt)
        flat = out.reshape(-1)
        where = rng.permutation(flat.size)[:len(chosen)]
        flat[where] = np.array([table[s] for s in chosen[:len(where)]]).astype(dt)
        return out
    return make


#: The values of the pairs cases: every special kind and two ordinary numbers.
_PAIR_VALUES = ("nan", "inf", "-inf", "-0", "0", "denormal", "-denormal", "huge", 1.5, -2.0)


def _pairs(first: bool) -> Callable:
    """One side of every pair of :data:`_PAIR_VALUES` (10 x 10 elements): the first operand
    repeats each value, the second cycles through them, so that NaN meets NaN, inf meets
    -inf, and zero meets zero of both signs."""
    def make(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        table = _special_table(dtype)
        values = np.array([table[v] if isinstance(v, str) else v for v in _PAIR_VALUES])
        n = len(values)
        grid = np.repeat(values, n) if first else np.tile(values, n)
        return grid.reshape(shape)
    return make


#: The shape of a pairs case's operands.
PAIRS_SHAPE = (len(_PAIR_VALUES), len(_PAIR_VALUES))
#: Ops whose special-values cases check the sign of zero: the ones IEEE 754 and ONNX pin it
#: down for (Abs, Neg) and those that only move or select data.
SIGNED_ZERO_OPS = frozenset({"Abs", "Neg", "Where", "Cast", "Reshape", "Transpose", "Concat",
                             "Slice", "Gather", "Squeeze", "Unsqueeze", "Flatten", "Expand",
                             "Pad"})


def _multiples(group: int) -> Callable:
    """Integers that are multiples of ``group``: an integer mean over ``group`` values is exact."""
    return lambda rng, shape, dtype: rng.integers(-8, 9, shape) * group


def _indices(n: int, negative: bool = True) -> Callable:
    """Gather indices into an axis of size ``n``, negative ones included."""
    return lambda rng, shape, dtype: rng.integers(-n if negative else 0, n, shape)


# --------------------------------------------------------------------------- building

@dataclass(frozen=True)
class _T:
    """One node input: random data of ``kind`` or a fixed ``value``; a graph input unless
    ``const`` (then an initializer). ``dtype`` None means the case's dtype."""

    shape: tuple[int, ...] = ()
    kind: Any = "normal"
    dtype: str | None = None
    const: bool = False
    value: Any = None


def _c(value: Any, dtype: str | None = "int64") -> _T:
    """A constant (initializer) with fixed contents; dtype None: the case's dtype."""
    return _T(np.shape(value), dtype=dtype, const=True, value=value)


def _w(shape: tuple[int, ...], kind: Any = "normal", dtype: str | None = None) -> _T:
    """A constant with random contents (weights, biases, statistics)."""
    return _T(tuple(shape), kind, dtype, const=True)


def _label(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


class _Builder:
    """Collects the cases of one op."""

    def __init__(self, op: str, seed: int, wanted: set[str] | None, tier: str = "mandatory"):
        self.op, self.seed, self.wanted, self.tier = op, seed, wanted, tier
        self.schema = onnx.defs.get_schema(op, OPSET)
        self.cases: list[Case] = []
        self._ids: set[str] = set()

    def add(self, dtype: str, label: str, inputs: Sequence[_T | None],
            attrs: dict[str, Any] | None = None, *, tags: Iterable[str] = (),
            outputs: int = 1, expect: Callable[[list], list] | None = None) -> None:
        """Add the case ``OP/DTYPE/LABEL``: a one-node model over ``inputs`` (None: omitted).

        ``expect`` computes the outputs from the node's input arrays, for the few cases
        where onnx.reference is wrong; outputs that are statically empty need no oracle.
        """
        case_id = f"{self.op}/{dtype}/{label}"
        if case_id in self._ids:
            raise ValueError(f"duplicate case id {case_id}")
        self._ids.add(case_id)
        if self.wanted is not None and dtype not in self.wanted:
            return
        rng = case_rng(self.seed, case_id)
        names, graph_inputs, initializers, feeds, arrays = [], [], [], {}, []
        formals = self.schema.inputs
        for i, spec in enumerate(inputs):
            if spec is None:
                names.append("")
                arrays.append(None)
                continue
            formal = formals[min(i, len(formals) - 1)]
            variadic = formal.option == onnx.defs.OpSchema.FormalParameterOption.Variadic
            name = f"{formal.name}_{i}" if variadic else formal.name
            names.append(name)
            dt = spec.dtype or dtype
            array = (np.array(spec.value, dtype=_np_dtype(dt)) if spec.value is not None
                     else _values(rng, dt, tuple(spec.shape), spec.kind))
            arrays.append(array)
            if spec.const:
                initializers.append(numpy_helper.from_array(array, name))
            else:
                graph_inputs.append(helper.make_tensor_value_info(
                    name, DTYPE_CODES[dt], list(array.shape)))
                feeds[name] = array
        out_names = [o.name for o in self.schema.outputs[:outputs]]
        node = helper.make_node(self.op, names, out_names, **(attrs or {}))
        graph = helper.make_graph([node], case_id, graph_inputs,
                                  [helper.make_value_info(n, onnx.TypeProto()) for n in out_names],
                                  initializer=initializers)
        opset = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(graph, opset_imports=opset,
                                  ir_version=helper.find_min_ir_version_for(opset))
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        for out in model.graph.output:
            if not out.type.tensor_type.HasField("shape"):
                raise ValueError(f"{case_id}: shape inference left output {out.name} unshaped")
        first = next(s for s in inputs if s is not None)
        all_tags = {f"rank-{len(first.shape)}", *tags}
        # Empty: a data input or an output with no element (not an empty axes list).
        shapes = [tuple(s.shape) for s in inputs if s is not None and not s.const] + [
            tuple(d.dim_value if d.HasField("dim_value") else -1
                  for d in o.type.tensor_type.shape.dim) for o in model.graph.output]
        if any(0 in s for s in shapes):
            all_tags.add("empty")
        unknown = all_tags - TAGS
        if unknown:
            raise ValueError(f"{case_id}: unknown tags {sorted(unknown)}")
        out_shapes = shapes[len(shapes) - len(out_names):]
        out_types = [_np_dtype(DTYPE_NAMES[o.type.tensor_type.elem_type])
                     for o in model.graph.output]
        expected = None
        if expect is not None:
            expected = {n: np.asarray(v).astype(t)
                        for n, v, t in zip(out_names, expect(arrays), out_types)}
        elif all(0 in s for s in out_shapes):
            expected = {n: np.zeros(s, t) for n, s, t in zip(out_names, out_shapes, out_types)}
        self.cases.append(Case(id=case_id, op=self.op, dtype=dtype, tier=self.tier, model=model,
                               inputs=feeds, expected=expected,
                               tags=tuple(sorted(all_tags, key=_tag_order)),
                               seed=self.seed, tolerance_key=self.op,
                               signed_zero="special-values" in all_tags
                               and self.op in SIGNED_ZERO_OPS))


def _tag_order(tag: str) -> tuple[int, str]:
    order = ["rank-0", "rank-1", "rank-2", "rank-3", "rank-4", "rank-5", "broadcast", "empty",
             "size-1", "size-7", "size-127", "size-1025", "attr", "special-values", "large"]
    return (order.index(tag) if tag in order else len(order), tag)


def admitted_dtypes(op: str) -> list[str]:
    """The dtypes among ``DTYPES`` that the op's main input admits at ``OPSET``."""
    schema = onnx.defs.get_schema(op, OPSET)
    main = schema.inputs[_MAIN_INPUT.get(op, 0)].type_str
    allowed = next((set(c.allowed_type_strs) for c in schema.type_constraints
                    if c.type_param_str == main), {main})
    return [d for d in DTYPES if _tensor_type(d) in allowed]


def _tensor_type(dtype: str) -> str:
    onnx_name = {"float32": "float", "float64": "double"}.get(dtype, dtype)
    return f"tensor({onnx_name})"


_MAIN_INPUT = {"Where": 1}

RANK_SHAPES = {0: (), 1: (7,), 2: (3, 4), 3: (2, 3, 4), 4: (2, 3, 4, 5), 5: (2, 1, 3, 2, 4)}
LARGE = (1024, 1024)          # ~1e6 elements
IMAGE = (1, 16, 64, 64)       # the large input of convolutions and pools


# --------------------------------------------------------------------------- element-wise

def _unary(kind: str = "normal", exclude: Iterable[str] | None = (),
           variants: Sequence[tuple[str, dict, Callable[[str], list]]] = (),
           extra: Callable[[str], list] = lambda dtype: []) -> Callable:
    """An element-wise op of one data input; ``extra`` gives its other inputs per dtype;
    ``exclude`` names the special values whose result is not pinned down (None: no
    special-value case)."""
    def gen(b: _Builder, dtypes: list[str]) -> None:
        main = dtypes[0]
        for rank, shape in RANK_SHAPES.items():
            b.add(main, f"rank-{rank}-{_label(shape)}", [_T(shape, kind), *extra(main)])
        b.add(main, "empty-2x0x3", [_T((2, 0, 3), kind), *extra(main)])
        for n in SIZES:
            b.add(main, f"size-{n}", [_T((2, n), kind), *extra(main)], tags=[f"size-{n}"])
        b.add(main, "large-1024x1024", [_T(LARGE, kind), *extra(main)], tags=["large"])
        for label, attrs, more in variants:
            b.add(main, f"attr-{label}", [_T((3, 4), kind), *more(main)], attrs, tags=["attr"])
        for dt in dtypes:
            if dt != main:
                b.add(dt, "rank-2-3x4", [_T((3, 4), kind), *extra(dt)])
            if exclude is not None and _is_float(dt):
                b.add(dt, "special-values", [_T((4, 8), _special(exclude)), *extra(dt)],
                      tags=["special-values"])
    return gen


_BROADCASTS = [((3, 1, 4), (4,)), ((2, 3, 4), (3, 1)), ((), (3, 4)), ((1, 4), (3, 1)),
               ((2, 1, 3, 1, 4), (3, 5, 1))]


def _binary(kinds: tuple[str, str], special: bool = True) -> Callable:
    """An element-wise op of two inputs with numpy broadcasting."""
    kx, ky = kinds

    def gen(b: _Builder, dtypes: list[str]) -> None:
        main = dtypes[0]
        for rank, shape in RANK_SHAPES.items():
            b.add(main, f"rank-{rank}-{_label(shape)}", [_T(shape, kx), _T(shape, ky)])
        for sx, sy in _BROADCASTS:
            b.add(main, f"broadcast-{_label(sx)}+{_label(sy)}", [_T(sx, kx), _T(sy, ky)],
                  tags=["broadcast"])
        b.add(main, "empty-0x4", [_T((0, 4), kx), _T((0, 4), ky)])
        b.add(main, "broadcast-empty-2x0x3+3", [_T((2, 0, 3), kx), _T((3,), ky)],
              tags=["broadcast"])
        for n in SIZES:
            b.add(main, f"size-{n}", [_T((2, n), kx), _T((2, n), ky)], tags=[f"size-{n}"])
        b.add(main, "large-1024x1024", [_T(LARGE, kx), _T(LARGE, ky)], tags=["large"])
        for dt in dtypes:
            if dt != main:
                b.add(dt, "rank-2-3x4", [_T((3, 4), kx), _T((3, 4), ky)])
                b.add(dt, "broadcast-3x1x4+4", [_T((3, 1, 4), kx), _T((4,), ky)],
                      tags=["broadcast"])
            if special and _is_float(dt):
                b.add(dt, "special-values", [_T((4, 8), _special()), _T((4, 8), ky)],
                      tags=["special-values"])
        _special_pairs(b)
    return gen


def _special_pairs(b: _Builder, dtype: str = "float32") -> None:
    """The ``special-values-pairs`` case of a binary op: every pair of special values."""
    b.add(dtype, "special-values-pairs", [_T(PAIRS_SHAPE, _pairs(True)),
                                          _T(PAIRS_SHAPE, _pairs(False))],
          tags=["special-values"])


def _small_integers(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Integer-valued exponents from -2 to 3: a power of a negative base stays real."""
    return rng.integers(-2, 4, shape)


def _pow(b: _Builder, dtypes: list[str]) -> None:
    _binary(("base", "exponent"), special=False)(b, dtypes)
    # IEEE 754's pow: pow(x, 0) is 1 even for NaN, pow(1, y) is 1 even for NaN, a negative
    # base to an integer power is real; onnx.reference computes it with numpy's C pow.
    b.add("float32", "special-values", [_T((4, 8), _special()), _T((4, 8), _small_integers)],
          tags=["special-values"])
    # The exponent has its own type parameter (T1).
    b.add("float32", "attr-exponent-int64", [_T((3, 4), "base"), _T((3, 4), "exponent", "int64")],
          tags=["attr"])
    b.add("float16", "attr-exponent-float32",
          [_T((3, 4), "base"), _T((3, 4), "normal", "float32")], tags=["attr"])
    b.add("int32", "attr-exponent-int64", [_T((3, 4), "base"), _T((3, 4), "exponent", "int64")],
          tags=["attr"])


def _clip_bounds(dtype: str) -> list[_T]:
    lo, hi = (-0.5, 0.5) if _is_float(dtype) else ((3, 9) if dtype in _UNSIGNED else (-3, 3))
    return [_c(lo, None), _c(hi, None)]


_CLIP_VARIANTS = [
    ("min-only", {}, lambda dt: [_clip_bounds(dt)[0]]),
    ("max-only", {}, lambda dt: [None, _clip_bounds(dt)[1]]),
    ("no-bounds", {}, lambda dt: []),
]


def _clip(b: _Builder, dtypes: list[str]) -> None:
    _unary(variants=_CLIP_VARIANTS, extra=_clip_bounds)(b, dtypes)
    # Without bounds Clip is the identity: infinities stay infinite, NaN stays NaN.
    b.add("float32", "special-values-no-bounds", [_T((4, 8), _special())],
          tags=["special-values"])


def _where(b: _Builder, dtypes: list[str]) -> None:
    cond = functools.partial(_T, kind="normal", dtype="bool")
    main = dtypes[0]
    for rank, shape in RANK_SHAPES.items():
        b.add(main, f"rank-{rank}-{_label(shape)}", [cond(shape), _T(shape), _T(shape)])
    for sc, sx, sy in [((3, 1), (1, 4), (3, 4)), ((), (3, 4), ()), ((2, 1, 4), (3, 1), (4,)),
                       ((2, 1, 3, 1, 1), (1, 4, 1, 2, 1), (5,))]:
        b.add(main, f"broadcast-{_label(sc)}+{_label(sx)}+{_label(sy)}",
              [cond(sc), _T(sx), _T(sy)], tags=["broadcast"])
    b.add(main, "empty-0x4", [cond((0, 4)), _T((0, 4)), _T((0, 4))])
    for n in SIZES:
        b.add(main, f"size-{n}", [cond((2, n)), _T((2, n)), _T((2, n))], tags=[f"size-{n}"])
    b.add(main, "large-1024x1024", [cond(LARGE), _T(LARGE), _T(LARGE)], tags=["large"])
    for dt in dtypes:
        if dt != main:
            b.add(dt, "broadcast-3x1+1x4+3x4", [cond((3, 1)), _T((1, 4)), _T((3, 4))],
                  tags=["broadcast"])
        if _is_float(dt):
            b.add(dt, "special-values", [cond((4, 8)), _T((4, 8), _special()),
                                         _T((4, 8), _special())], tags=["special-values"])


# --------------------------------------------------------------------------- linear algebra

def _matmul(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    pairs = [("rank-2", (3, 4), (4, 5), ()), ("rank-1-vector-matrix", (4,), (4, 5), ()),
             ("rank-2-matrix-vector", (3, 4), (4,), ()), ("rank-1-dot", (4,), (4,), ()),
             ("rank-3-batched", (2, 3, 4), (2, 4, 5), ()),
             ("broadcast-rank-3-by-rank-2", (2, 3, 4), (4, 5), ("broadcast",)),
             ("broadcast-rank-4", (2, 1, 3, 4), (1, 3, 4, 5), ("broadcast",)),
             ("broadcast-rank-5", (2, 1, 2, 3, 4), (3, 1, 4, 5), ("broadcast",)),
             ("empty-m-0", (0, 4), (4, 5), ()), ("empty-k-0", (3, 0), (0, 5), ())]
    for label, sa, sb, tags in pairs:
        b.add(main, f"{label}-{_label(sa)}@{_label(sb)}", [_T(sa), _T(sb)], tags=tags)
    for n in SIZES:
        b.add(main, f"size-{n}-k", [_T((3, n)), _T((n, 5))], tags=[f"size-{n}"])
    b.add(main, "large-512x512@512x512", [_T((512, 512)), _T((512, 512))], tags=["large"])
    # NaN and infinities propagate through every sum they enter; inf - inf is NaN. No huge
    # values: a sum of one and other terms may overflow in float32 and not in float64.
    b.add(main, "special-values", [_T((4, 8), _special(["huge"])), _T((8, 5))],
          tags=["special-values"])
    for dt in dtypes[1:]:
        b.add(dt, "rank-2-3x4@4x5", [_T((3, 4)), _T((4, 5))])
        b.add(dt, "broadcast-rank-4", [_T((2, 1, 3, 4)), _T((1, 3, 4, 5))], tags=["broadcast"])


def _gemm(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, a, bb, c, attrs=None, tags=(), dt=main):
        b.add(dt, label, [_T(a), _w(bb), _w(c) if c is not None else None], attrs, tags=tags)

    add("rank-2-3x4x5", (3, 4), (4, 5), (5,), tags=["broadcast"])
    add("attr-transA", (4, 3), (4, 5), (5,), {"transA": 1}, ["attr", "broadcast"])
    add("attr-transB", (3, 4), (5, 4), (5,), {"transB": 1}, ["attr", "broadcast"])
    add("attr-transA-transB", (4, 3), (5, 4), (3, 5), {"transA": 1, "transB": 1}, ["attr"])
    add("attr-alpha-beta", (3, 4), (4, 5), (3, 5), {"alpha": 0.5, "beta": 2.0}, ["attr"])
    add("attr-alpha-no-c", (3, 4), (4, 5), None, {"alpha": -1.5}, ["attr"])
    add("c-scalar", (3, 4), (4, 5), (), tags=["broadcast"])
    add("c-column-3x1", (3, 4), (4, 5), (3, 1), tags=["broadcast"])
    add("c-row-1x5", (3, 4), (4, 5), (1, 5), tags=["broadcast"])
    add("c-full-3x5", (3, 4), (4, 5), (3, 5))
    add("no-c", (3, 4), (4, 5), None)
    add("empty-m-0", (0, 4), (4, 5), (5,), tags=["broadcast"])
    for n in SIZES:
        add(f"size-{n}-k", (3, n), (n, 5), (5,), tags=[f"size-{n}", "broadcast"])
    add("large-512x512x512", (512, 512), (512, 512), (512,), tags=["large", "broadcast"])
    b.add(main, "special-values", [_T((4, 8), _special(["huge"])), _w((8, 5)), _w((5,))],
          tags=["special-values", "broadcast"])
    for dt in dtypes[1:]:
        add("rank-2-3x4x5", (3, 4), (4, 5), (5,), tags=["broadcast"], dt=dt)
        add("attr-transB", (3, 4), (5, 4), (3, 5), {"transB": 1}, ["attr"], dt=dt)


def _matmul_integer_rows(arrays: list) -> list:
    a, b, za, zb = (np.asarray(x, np.int64) for x in arrays)
    return [np.matmul(a - za[:, None], b - zb)]


def _matmul_integer(b: _Builder, dtypes: list[str]) -> None:
    zp = functools.partial(_w, kind="low")
    for a_dt in dtypes:
        for b_dt in dtypes:
            b.add(a_dt, f"rank-2-{b_dt}-3x4@4x5",
                  [_T((3, 4), "full"), _T((4, 5), "full", b_dt)])
    main = dtypes[0]
    cases = [("rank-1-vector-matrix", (4,), (4, 5), None, None, ()),
             ("rank-3-batched", (2, 3, 4), (2, 4, 5), None, None, ()),
             ("broadcast-rank-4", (2, 1, 3, 4), (1, 3, 4, 5), None, None, ("broadcast",)),
             ("broadcast-rank-5", (2, 1, 2, 3, 4), (3, 1, 4, 5), None, None, ("broadcast",)),
             ("zero-points-scalar", (3, 4), (4, 5), (), (), ("attr",)),
             ("zero-points-per-row-column", (3, 4), (4, 5), (3,), (5,), ("attr",)),
             ("empty-m-0", (0, 4), (4, 5), None, None, ())]
    for label, sa, sb, za, zb, tags in cases:
        ins = [_T(sa, "full"), _T(sb, "full", "uint8")]
        expect = None
        if za is not None:
            ins += [zp(za), zp(zb, dtype="uint8")]
        if za == (3,):  # onnx.reference (1.23) broadcasts a per-row zero point along columns
            expect = _matmul_integer_rows
        b.add(main, label, ins, tags=tags, expect=expect)
    for n in SIZES:
        b.add(main, f"size-{n}-k", [_T((3, n), "full"), _T((n, 5), "full", "uint8")],
              tags=[f"size-{n}"])
    b.add(main, "large-512x512@512x512", [_T((512, 512), "full"), _T((512, 512), "full", "uint8")],
          tags=["large"])


# --------------------------------------------------------------------------- convolutions

def _he(fan_in: int) -> Callable:
    return lambda rng, shape, dtype: rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _conv(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, w, attrs=None, bias=False, tags=(), dt=main):
        fan_in = int(np.prod(w[1:]))
        ins = [_T(x), _w(w, _he(fan_in))] + ([_w((w[0],))] if bias else [])
        b.add(dt, label, ins, attrs, tags=tags)

    add("rank-3-1d-k3", (1, 2, 9), (4, 2, 3))
    add("rank-4-2d-k3", (1, 2, 7, 7), (4, 2, 3, 3))
    add("rank-5-3d-k3", (1, 2, 5, 5, 5), (3, 2, 3, 3, 3))
    add("bias", (2, 2, 6, 6), (4, 2, 3, 3), bias=True)
    add("attr-kernel-1x1", (1, 4, 5, 5), (3, 4, 1, 1), tags=["attr"])
    add("attr-kernel-3x2", (1, 2, 6, 7), (3, 2, 3, 2), tags=["attr"])
    add("attr-strides-2-pads-1", (1, 2, 8, 8), (4, 2, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"])
    add("attr-strides-2x1", (1, 2, 7, 7), (4, 2, 3, 3), {"strides": [2, 1]}, tags=["attr"])
    add("attr-pads-asymmetric", (1, 2, 6, 6), (4, 2, 3, 3), {"pads": [0, 1, 2, 1]},
        tags=["attr"])
    add("attr-dilations-2", (1, 2, 9, 9), (4, 2, 3, 3), {"dilations": [2, 2]}, tags=["attr"])
    add("attr-group-2", (1, 4, 6, 6), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, True,
        ["attr"])
    add("attr-depthwise", (1, 4, 6, 6), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, True,
        ["attr"])
    add("attr-depthwise-multiplier-2", (1, 3, 6, 6), (6, 1, 3, 3), {"group": 3}, tags=["attr"])
    for pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        add(f"attr-auto-pad-{pad.lower().replace('_', '-')}", (1, 2, 7, 7), (3, 2, 2, 2),
            {"auto_pad": pad, "strides": [2, 2]}, tags=["attr"])
    add("empty-batch-0", (0, 2, 5, 5), (3, 2, 3, 3))
    for n in SIZES:
        add(f"size-{n}-1d", (1, 2, n), (3, 2, 3), {"pads": [1, 1]}, tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}, True, ["large"])
    # A NaN or an infinity reaches exactly the outputs whose windows hold it.
    b.add(main, "special-values", [_T((1, 2, 6, 6), _special(["huge"])),
                                   _w((3, 2, 3, 3), _he(18))], {"pads": [1, 1, 1, 1]},
          tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-4-2d-k3", (1, 2, 7, 7), (4, 2, 3, 3), dt=dt)
        add("attr-depthwise", (1, 4, 6, 6), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]},
            True, ["attr"], dt=dt)
        add("attr-strides-2-pads-1", (1, 2, 8, 8), (4, 2, 3, 3),
            {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"], dt=dt)


def _conv_transpose(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, w, attrs=None, bias=False, tags=(), dt=main):
        fan_in = int(np.prod(w[1:]))
        ins = [_T(x), _w(w, _he(fan_in))] + ([_w((w[1] * attrs_group(attrs),))] if bias else [])
        b.add(dt, label, ins, attrs, tags=tags)

    def attrs_group(attrs):
        return (attrs or {}).get("group", 1)

    add("rank-3-1d-k3", (1, 2, 5), (2, 3, 3))
    add("rank-4-2d-k3", (1, 2, 4, 4), (2, 3, 3, 3))
    add("rank-5-3d-k3", (1, 2, 3, 3, 3), (2, 2, 3, 3, 3))
    add("bias", (2, 2, 4, 4), (2, 3, 3, 3), bias=True)
    add("attr-strides-2", (1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2]}, tags=["attr"])
    add("attr-strides-2-pads-1", (1, 2, 4, 4), (2, 3, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"])
    add("attr-pads-asymmetric", (1, 2, 5, 5), (2, 3, 3, 3), {"pads": [0, 1, 2, 1]},
        tags=["attr"])
    add("attr-output-padding", (1, 2, 4, 4), (2, 3, 3, 3),
        {"strides": [2, 2], "output_padding": [1, 0]}, tags=["attr"])
    add("attr-output-shape", (1, 2, 4, 4), (2, 3, 3, 3),
        {"strides": [2, 2], "output_shape": [10, 9]}, tags=["attr"])
    add("attr-dilations-2", (1, 2, 4, 4), (2, 3, 3, 3), {"dilations": [2, 2]}, tags=["attr"])
    add("attr-depthwise", (1, 4, 4, 4), (4, 1, 3, 3), {"group": 4}, tags=["attr"])
    add("attr-group-2-bias", (1, 4, 4, 4), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]},
        True, ["attr"])
    for pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        add(f"attr-auto-pad-{pad.lower().replace('_', '-')}", (1, 2, 4, 5), (2, 3, 3, 3),
            {"auto_pad": pad, "strides": [2, 2]}, tags=["attr"])
    add("empty-batch-0", (0, 2, 4, 4), (2, 3, 3, 3))
    for n in SIZES:
        add(f"size-{n}-1d", (1, 2, n), (2, 3, 3), {"pads": [1, 1]}, tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}, True, ["large"])
    b.add(main, "special-values", [_T((1, 2, 4, 4), _special(["huge"])),
                                   _w((2, 3, 3, 3), _he(18))], {"strides": [2, 2]},
          tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-4-2d-k3", (1, 2, 4, 4), (2, 3, 3, 3), dt=dt)
        add("attr-strides-2-pads-1", (1, 2, 4, 4), (2, 3, 3, 3),
            {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"], dt=dt)


def _max_pool_expect(attrs: dict, outputs: int) -> Callable[[list], list]:
    """MaxPool by the numpy formula, where onnx.reference (1.23) is wrong: asymmetric pads
    and SAME_LOWER give it the wrong output shape, and its Indices count padding and ignore
    the storage order."""
    from backplane.conformance.oracle import np_pool

    def expect(arrays: list) -> list:
        y, indices = np_pool("max", arrays[0], **attrs)
        return [y, indices][:outputs]
    return expect


def _nan_pool_expect(kind: str, attrs: dict) -> Callable[[list], list]:
    """A pool by the numpy formula where a window holding NaN gives NaN: onnx.reference
    (1.23) pads with NaN and leaves NaN out of every window, and the formula's max skips
    it too (NaN > x is false)."""
    from backplane.conformance.oracle import np_pool

    def expect(arrays: list) -> list:
        y = np_pool(kind, arrays[0], **attrs)[0]
        touched = np_pool("max", np.isnan(arrays[0]).astype(np.float64), **attrs)[0] > 0
        return [np.where(touched, np.nan, y)]
    return expect


def _max_pool(b: _Builder, dtypes: list[str]) -> None:
    _pool(b, dtypes, {"storage-order-1": {"kernel_shape": [2, 2], "storage_order": 1}},
          outputs_variant=True)


def _average_pool(b: _Builder, dtypes: list[str]) -> None:
    _pool(b, dtypes, {
        "count-include-pad-0": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        "count-include-pad-1": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                "count_include_pad": 1},
        "count-include-pad-1-asymmetric": {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1],
                                           "count_include_pad": 1},
    })


def _pool(b: _Builder, dtypes: list[str], extra: dict[str, dict], outputs_variant=False) -> None:
    main = dtypes[0]

    def add(label, x, attrs, tags=(), dt=main, outputs=1):
        wrong = (outputs == 2 or attrs.get("auto_pad") == "SAME_LOWER"
                 or "pads" in attrs and attrs["pads"][:len(x) - 2] != attrs["pads"][len(x) - 2:])
        expect = _max_pool_expect(attrs, outputs) if outputs_variant and wrong else None
        b.add(dt, label, [_T(x)], attrs, tags=tags, outputs=outputs, expect=expect)

    add("rank-3-1d-k3", (1, 2, 9), {"kernel_shape": [3]})
    add("rank-4-2d-k2-s2", (1, 3, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]})
    add("rank-5-3d-k2", (1, 2, 4, 4, 4), {"kernel_shape": [2, 2, 2]})
    add("attr-k3-s1-pads-1", (2, 2, 5, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        ["attr"])
    add("attr-pads-asymmetric", (1, 2, 6, 6), {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1]},
        ["attr"])
    add("attr-strides-2x1", (1, 2, 7, 7), {"kernel_shape": [3, 2], "strides": [2, 1]}, ["attr"])
    add("attr-dilations-2", (1, 2, 8, 8), {"kernel_shape": [2, 2], "dilations": [2, 2]},
        ["attr"])
    add("attr-ceil-mode", (1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2],
                                         "ceil_mode": 1}, ["attr"])
    add("attr-ceil-mode-pads", (1, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2],
                                              "pads": [1, 1, 1, 1], "ceil_mode": 1}, ["attr"])
    for pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        add(f"attr-auto-pad-{pad.lower().replace('_', '-')}", (1, 2, 7, 7),
            {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": pad}, ["attr"])
    for label, attrs in extra.items():
        add(f"attr-{label}", (1, 2, 6, 6), attrs, ["attr"],
            outputs=2 if outputs_variant else 1)
    if outputs_variant:
        add("attr-indices-output", (1, 2, 6, 6), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
            ["attr"], outputs=2)
    add("empty-batch-0", (0, 2, 5, 5), {"kernel_shape": [2, 2]})
    for n in SIZES:
        pad = 1 if n >= 3 else 0  # a window wholly in the padding has no average
        add(f"size-{n}-1d", (1, 2, n), {"kernel_shape": [min(3, n)], "pads": [pad, pad]},
            [f"size-{n}"])
    add("large-1x16x64x64", IMAGE, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, ["large"])
    # A window holding NaN gives NaN, as a max or a sum of it does.
    window = {"kernel_shape": [2, 2], "strides": [2, 2]}
    b.add(main, "special-values", [_T((1, 2, 6, 6), _special())], window,
          tags=["special-values"], expect=_nan_pool_expect("max" if outputs_variant else "avg",
                                                           window))
    for dt in dtypes[1:]:
        add("rank-4-2d-k2-s2", (1, 3, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}, dt=dt)
        add("attr-k3-s1-pads-1", (2, 2, 5, 5),
            {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, ["attr"], dt=dt)
        add("attr-strides-2x1", (1, 2, 7, 7), {"kernel_shape": [3, 2], "strides": [2, 1]},
            ["attr"], dt=dt)


def _global_average_pool(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    for shape in [(1, 3, 7), (2, 3, 4, 5), (1, 2, 3, 4, 5)]:
        b.add(main, f"rank-{len(shape)}-{_label(shape)}", [_T(shape)])
    b.add(main, "empty-batch-0", [_T((0, 3, 4, 4))])
    for n in SIZES:
        b.add(main, f"size-{n}", [_T((1, 2, n))], tags=[f"size-{n}"])
    b.add(main, "large-1x16x64x64", [_T(IMAGE)], tags=["large"])
    b.add(main, "special-values", [_T((1, 4, 4, 4), _special())], tags=["special-values"])
    for dt in dtypes[1:]:
        b.add(dt, "rank-4-2x3x4x5", [_T((2, 3, 4, 5))])


# --------------------------------------------------------------------------- normalization

def _batch_norm(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, attrs=None, tags=(), dt=main, params=None):
        c = x[1]
        p = params or dt
        b.add(dt, label, [_T(x), _w((c,), dtype=p), _w((c,), dtype=p), _w((c,), dtype=p),
                          _w((c,), "positive", p)], attrs, tags=tags)

    for shape in [(3, 4), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)]:
        add(f"rank-{len(shape)}-{_label(shape)}", shape)
    add("attr-epsilon-1e-2", (2, 3, 4, 4), {"epsilon": 1e-2}, ["attr"])
    add("empty-batch-0", (0, 3, 4, 4))
    for n in SIZES:
        add(f"size-{n}-channels", (2, n, 3), tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, tags=["large"])
    c = 4
    b.add(main, "special-values", [_T((2, c, 4), _special(["huge"])), _w((c,)), _w((c,)),
                                   _w((c,)), _w((c,), "positive")], tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-4-2x3x4x5", (2, 3, 4, 5), dt=dt)
        add("attr-float32-statistics", (2, 3, 4, 5), tags=["attr"], dt=dt, params="float32")


def _layer_norm(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, axis=-1, attrs=None, tags=(), dt=main, bias=True, outputs=1):
        norm = x[axis % len(x):]
        ins = [_T(x), _w(norm, "positive"), _w(norm) if bias else None]
        b.add(dt, label, ins if bias else ins[:2], {"axis": axis, **(attrs or {})}, tags=tags,
              outputs=outputs)

    for rank in range(1, 6):
        shape = RANK_SHAPES[rank]
        add(f"rank-{rank}-{_label(shape)}", shape)
    add("attr-axis-1-of-3", (2, 3, 4), 1, tags=["attr"])
    add("attr-axis-neg2", (2, 3, 4), -2, tags=["attr"])
    add("attr-axis-0", (3, 4), 0, tags=["attr"])
    add("attr-epsilon-1e-2", (3, 4), attrs={"epsilon": 1e-2}, tags=["attr"])
    add("attr-no-bias", (3, 4), bias=False, tags=["attr"])
    add("attr-mean-inv-std-outputs", (3, 4), tags=["attr"], outputs=3)
    add("empty-rows-0x4", (0, 4))
    for n in SIZES:
        add(f"size-{n}", (2, n), tags=[f"size-{n}"])
    add("large-1024x1024", LARGE, tags=["large"])
    # A NaN or an infinity in a row makes the whole row NaN (its mean and variance are).
    b.add(main, "special-values", [_T((4, 8), _special(["huge"])), _w((8,), "positive"),
                                   _w((8,))], {"axis": -1}, tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-3-2x3x4", (2, 3, 4), dt=dt)
        add("size-1025", (2, 1025), tags=["size-1025"], dt=dt)


def _masked(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Attention-mask logits: -inf at random places, never a whole row."""
    x = rng.standard_normal(shape)
    mask = rng.random(shape) < 0.4
    mask[..., 0] = False
    return np.where(mask, -np.inf, x)


def _softmax(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    for rank in range(1, 6):
        shape = RANK_SHAPES[rank]
        b.add(main, f"rank-{rank}-{_label(shape)}", [_T(shape)])
    for axis in (0, 1, -2):
        b.add(main, f"attr-axis-{axis}", [_T((2, 3, 4))], {"axis": axis}, tags=["attr"])
    b.add(main, "large-logits", [_T((3, 8), lambda rng, s, d: rng.standard_normal(s) * 30)])
    b.add(main, "special-values-masked", [_T((3, 8), _masked)], tags=["special-values"])
    # exp(x - max(x)) / sum: a row with NaN or +inf is NaN throughout (inf - inf).
    b.add(main, "special-values", [_T((4, 8), _special())], tags=["special-values"])
    b.add(main, "empty-0x4", [_T((0, 4))])
    for n in SIZES:
        b.add(main, f"size-{n}", [_T((2, n))], tags=[f"size-{n}"])
    b.add(main, "large-1024x1024", [_T(LARGE)], tags=["large"])
    for dt in dtypes[1:]:
        b.add(dt, "rank-2-3x4", [_T((3, 4))])
        b.add(dt, "size-1025", [_T((2, 1025))], tags=["size-1025"])


# --------------------------------------------------------------------------- reductions

def _reduce(op: str) -> Callable:
    def gen(b: _Builder, dtypes: list[str]) -> None:
        main = dtypes[0]

        def add(label, shape, axes, attrs=None, tags=(), dt=main):
            kind = "normal"
            if op == "ReduceMean" and not _is_float(dt):
                reduced = [shape[a] for a in (axes if axes else range(len(shape)))] or [1]
                kind = _multiples(int(np.prod(reduced)))
            ins = [_T(shape, kind)] + ([] if axes is None else [_c(axes)])
            b.add(dt, label, ins, attrs, tags=tags)

        add("rank-0-all", (), None)
        add("rank-1-axes-0", (7,), [0])
        add("rank-2-axes-1", (3, 4), [1])
        add("attr-rank-2-axes-1-keepdims-0", (3, 4), [1], {"keepdims": 0}, ["attr"])
        add("attr-rank-2-all-keepdims-0", (3, 4), None, {"keepdims": 0}, ["attr"])
        add("attr-rank-3-axes-0-2", (2, 3, 4), [0, 2], tags=["attr"])
        add("attr-rank-3-axes-neg2", (2, 3, 4), [-2], tags=["attr"])
        add("attr-rank-4-axes-1-neg1", (2, 3, 4, 5), [1, -1], tags=["attr"])
        add("rank-5-axes-2-3", (2, 1, 3, 2, 4), [2, 3])
        add("attr-noop-with-empty-axes", (3, 4), [], {"noop_with_empty_axes": 1}, ["attr"])
        add("empty-0x4-axes-1", (0, 4), [1])
        if op != "ReduceMean":  # the mean of nothing is undefined
            # The max of nothing is -inf, the identity of max: a special value.
            add("empty-reduced-3x0-axes-1", (3, 0), [1],
                tags=["special-values"] if op == "ReduceMax" else ())
        for n in SIZES:
            add(f"size-{n}", (2, n), [1], tags=[f"size-{n}"])
        add("large-1024x1024", LARGE, [1], tags=["large"])
        # NaN propagates through a max as through a sum (numpy's max, the oracle's, does).
        for dt in (d for d in dtypes if _is_float(d)):
            b.add(dt, "special-values", [_T((4, 8), _special()), _c([1])],
                  tags=["special-values"])
        for dt in dtypes[1:]:
            add("rank-2-axes-1", (3, 4), [1], dt=dt)
            add("attr-rank-3-axes-0-2-keepdims-0", (2, 3, 4), [0, 2], {"keepdims": 0}, ["attr"],
                dt=dt)
    return gen


# --------------------------------------------------------------------------- data movement

def _movement(variants: Callable[[], list[tuple]], special: tuple | None) -> Callable:
    """A data-movement op: ``variants()`` lists (label, inputs, attrs, tags[, expect]) for
    the main dtype (inputs: a list of _T, the data first); ``special`` is (inputs, attrs) for the
    special-value case, its data given as ``_T(shape)``; other dtypes get the first variant."""
    def gen(b: _Builder, dtypes: list[str]) -> None:
        main = dtypes[0]
        items = variants()
        for label, ins, attrs, tags, *expect in items:
            b.add(main, label, ins, attrs, tags=tags, expect=expect[0] if expect else None)
        label, ins, attrs, tags = items[0][:4]
        for dt in dtypes[1:]:
            b.add(dt, label, ins, attrs, tags=tags)
        if special:
            sins, sattrs = special
            for dt in (d for d in dtypes if _is_float(d)):
                data = _T(sins[0].shape, _special())
                b.add(dt, "special-values", [data, *sins[1:]], sattrs, tags=["special-values"])
    return gen


def _sizes_and_large(make: Callable[[tuple], tuple]) -> list[tuple]:
    """Size and large variants: ``make(shape) -> (inputs, attrs)`` for a 2-D data shape."""
    out = []
    for n in SIZES:
        ins, attrs = make((2, n))
        out.append((f"size-{n}", ins, attrs, [f"size-{n}"]))
    ins, attrs = make(LARGE)
    out.append(("large-1024x1024", ins, attrs, ["large"]))
    return out


def _reshape_variants() -> list[tuple]:
    v = [("rank-2-3x4-to-4x3", [_T((3, 4)), _c([4, 3])], None, [])]
    for label, shape, target, attrs in [
            ("rank-0-to-1", (), [1], None), ("rank-1-12-to-3x4", (12,), [3, 4], None),
            ("rank-2-3x4-to-minus1", (3, 4), [-1], None),
            ("rank-3-copy-dim-0", (2, 3, 4), [0, -1], None),
            ("rank-4-to-6x-1x5", (2, 3, 4, 5), [6, -1, 5], None),
            ("rank-5-to-2x3x8", (2, 1, 3, 2, 4), [2, 3, 8], None),
            ("attr-to-rank-0", (1,), [], None),
            ("attr-allowzero-empty", (2, 0, 3), [3, 0], {"allowzero": 1}),
            ("empty-copy-zero-dim", (2, 0, 3), [0, 0], None)]:
        v.append((label, [_T(shape), _c(target)], attrs, ["attr"] if attrs else []))
    v += _sizes_and_large(lambda s: ([_T(s), _c([s[1], s[0]])], None))
    return v


def _transpose_variants() -> list[tuple]:
    v = []
    for rank, perm in [(2, [1, 0]), (0, None), (1, [0]), (3, [2, 0, 1]), (4, [0, 2, 3, 1]),
                       (5, [4, 1, 3, 0, 2])]:
        shape = RANK_SHAPES[rank]
        v.append((f"rank-{rank}-{_label(shape)}", [_T(shape)],
                  None if perm is None else {"perm": perm}, []))
    v.append(("attr-default-perm-reverses", [_T((2, 3, 4))], None, ["attr"]))
    v.append(("attr-identity-perm", [_T((2, 3, 4))], {"perm": [0, 1, 2]}, ["attr"]))
    v.append(("empty-0x3x4", [_T((0, 3, 4))], {"perm": [2, 0, 1]}, []))
    v += _sizes_and_large(lambda s: ([_T(s)], {"perm": [1, 0]}))
    return v


def _concat_variants() -> list[tuple]:
    v = [("rank-2-axis-1", [_T((3, 4)), _T((3, 2))], {"axis": 1}, [])]
    for label, shapes, axis in [
            ("rank-1-axis-0", [(3,), (4,)], 0), ("rank-2-axis-0", [(3, 4), (2, 4)], 0),
            ("rank-3-axis-neg1", [(2, 3, 4), (2, 3, 1)], -1),
            ("rank-4-three-inputs-axis-1", [(1, 2, 3, 3), (1, 4, 3, 3), (1, 1, 3, 3)], 1),
            ("rank-5-axis-2", [(2, 1, 3, 2, 4), (2, 1, 1, 2, 4)], 2),
            ("attr-single-input", [(3, 4)], 0), ("empty-input-axis-1", [(3, 0), (3, 4)], 1)]:
        v.append((label, [_T(s) for s in shapes], {"axis": axis},
                  ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: ([_T(s), _T(s)], {"axis": 0}))
    return v


_I64_MAX, _I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def _slice_variants() -> list[tuple]:
    def sl(shape, starts, ends, axes=None, steps=None, ind="int64"):
        ins = [_T(shape), _c(starts, ind), _c(ends, ind)]
        if axes is not None or steps is not None:
            ins.append(_c(axes, ind) if axes is not None else None)
        if steps is not None:
            ins.append(_c(steps, ind))
        return ins

    v = [("rank-2-axes-0-1", sl((5, 6), [1, 0], [4, 6], [0, 1]), None, [])]
    for label, ins in [
            ("rank-1", sl((10,), [2], [8])),
            ("rank-3-axis-1", sl((2, 5, 4), [1], [4], [1])),
            ("rank-4-two-axes", sl((2, 3, 6, 6), [1, 2], [3, 5], [2, 3])),
            ("rank-5-steps-2", sl((2, 1, 5, 3, 6), [0, 1], [5, 6], [2, 4], [2, 2])),
            ("attr-negative-starts-ends", sl((5, 6), [-3], [-1], [1])),
            ("attr-negative-axis", sl((5, 6), [1], [5], [-1])),
            ("attr-step-2", sl((10,), [1], [9], [0], [2])),
            ("attr-step-minus-1-reverse", sl((5, 6), [-1], [_I64_MIN], [1], [-1])),
            ("attr-step-minus-2", sl((10,), [8], [1], [0], [-2])),
            ("attr-axes-omitted", sl((5, 6), [1, 2], [3, 5])),
            ("attr-clamped-out-of-range", sl((5, 6), [-100, 2], [_I64_MAX, 1000], [0, 1])),
            ("attr-int32-indices", sl((5, 6), [1], [4], [0], [1], ind="int32")),
            ("empty-result", sl((5, 6), [3], [3], [1])),
            ("empty-input", sl((0, 6), [1], [4], [1]))]:
        v.append((label, ins, None, ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: (sl(s, [0, 0], [s[0], s[1]], [0, 1], [1, 2]), None))
    return v


def _gather_variants() -> list[tuple]:
    def g(shape, idx_shape, axis=0, ind="int64", negative=True):
        n = shape[axis]
        return [_T(shape), _T(idx_shape, _indices(n, negative), ind)], {"axis": axis}

    v = []
    for label, (ins, attrs), tags in [
            ("rank-2-axis-0", g((5, 4), (2, 3)), []),
            ("rank-1", g((7,), (3,)), []),
            ("rank-3-axis-1", g((2, 5, 4), (3,), 1), ["attr"]),
            ("rank-4-axis-neg1", g((2, 3, 4, 5), (2, 2), -1), ["attr"]),
            ("rank-5-axis-2", g((2, 1, 4, 2, 3), (3,), 2), ["attr"]),
            ("attr-scalar-index", g((5, 4), (), 0), ["attr"]),
            ("attr-int32-indices", g((5, 4), (3,), 1, "int32"), ["attr"]),
            ("empty-indices", g((5, 4), (0,)), []),
            ("empty-data-rows", g((0, 4), (2,), 1), [])]:
        v.append((label, ins, attrs, tags))
    for n in SIZES:
        ins, attrs = g((n, 3), (5,))
        v.append((f"size-{n}", ins, attrs, [f"size-{n}"]))
    ins, attrs = g(LARGE, (512,))
    v.append(("large-1024x1024", ins, attrs, ["large"]))
    return v


def _squeeze_variants() -> list[tuple]:
    v = [("rank-4-axes-0-2", [_T((1, 3, 1, 4)), _c([0, 2])], None, [])]
    for label, shape, axes in [
            ("rank-0-no-axes", (), None),
            ("rank-1-to-scalar", (1,), None), ("rank-2-axes-0", (1, 4), [0]),
            ("rank-3-axes-1", (3, 1, 4), [1]), ("rank-5-axes-1-3", (2, 1, 3, 1, 4), [1, 3]),
            ("attr-negative-axis", (3, 1, 4), [-2]), ("attr-no-axes", (1, 3, 1, 4), None),
            ("empty-0x1x4", (0, 1, 4), [1])]:
        ins = [_T(shape)] + ([_c(axes)] if axes is not None else [])
        v.append((label, ins, None, ["attr"] if label.startswith("attr") else []))
    for n in SIZES:
        v.append((f"size-{n}", [_T((1, n)), _c([0])], None, [f"size-{n}"]))
    v.append(("large-1x1024x1024", [_T((1, *LARGE)), _c([0])], None, ["large"]))
    return v


def _unsqueeze_variants() -> list[tuple]:
    v = [("rank-2-axes-0", [_T((3, 4)), _c([0])], None, [])]
    for label, shape, axes in [
            ("rank-0-axes-0", (), [0]), ("rank-1-axes-1", (7,), [1]),
            ("rank-3-axes-0-3", (2, 3, 4), [0, 3]), ("rank-4-axes-neg1", (2, 3, 4, 5), [-1]),
            ("rank-5-axes-2", (2, 1, 3, 2, 4), [2]), ("attr-negative-axes", (3, 4), [-1, -3]),
            ("empty-0x4", (0, 4), [1])]:
        v.append((label, [_T(shape), _c(axes)], None,
                  ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: ([_T(s), _c([1])], None))
    return v


def _flatten_variants() -> list[tuple]:
    v = [("rank-4-axis-1", [_T((2, 3, 4, 5))], None, [])]
    for label, shape, axis in [
            ("rank-0-axis-0", (), 0),
            ("rank-1-axis-0", (7,), 0), ("rank-2-axis-1", (3, 4), 1),
            ("rank-3-axis-2", (2, 3, 4), 2), ("rank-5-axis-3", (2, 1, 3, 2, 4), 3),
            ("attr-axis-0", (2, 3, 4), 0), ("attr-axis-neg1", (2, 3, 4), -1),
            ("attr-axis-rank", (2, 3, 4), 3), ("empty-0x3x4", (0, 3, 4), 1)]:
        v.append((label, [_T(shape)], {"axis": axis},
                  ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: ([_T(s)], {"axis": 1}))
    return v


def _expand_variants() -> list[tuple]:
    v = [("broadcast-3x1-to-2x3x4", [_T((3, 1)), _c([2, 3, 4])], None, ["broadcast"])]
    for label, shape, target in [
            ("broadcast-scalar-to-2x3", (), [2, 3]), ("broadcast-1-to-5", (1,), [5]),
            ("broadcast-two-way-4-by-3x1", (4,), [3, 1]),
            ("broadcast-smaller-shape", (3, 1, 4), [1, 1]),
            ("broadcast-rank-4", (2, 1, 4, 1), [2, 3, 4, 5]),
            ("broadcast-rank-5", (2, 1, 3, 1, 4), [2, 2, 3, 2, 4]),
            ("broadcast-empty", (0, 1), [0, 4])]:
        v.append((label, [_T(shape), _c(target)], None, ["broadcast"]))
    for n in SIZES:
        v.append((f"size-{n}", [_T((1, n)), _c([3, n])], None, [f"size-{n}", "broadcast"]))
    v.append(("large-1x1024-to-1024x1024", [_T((1, 1024)), _c([1024, 1024])], None,
              ["large", "broadcast"]))
    return v


def _shape_variants() -> list[tuple]:
    v = [("rank-2-3x4", [_T((3, 4))], None, [])]
    for rank in (0, 1, 3, 4, 5):
        v.append((f"rank-{rank}-{_label(RANK_SHAPES[rank])}", [_T(RANK_SHAPES[rank])], None, []))
    for label, attrs in [("start-1", {"start": 1}), ("end-neg1", {"end": -1}),
                         ("start-neg2", {"start": -2}), ("start-1-end-2", {"start": 1, "end": 2}),
                         ("start-past-end", {"start": 3, "end": 1})]:
        v.append((f"attr-{label}", [_T((2, 3, 4, 5))], attrs, ["attr"]))
    v.append(("empty-0x3", [_T((0, 3))], None, []))
    v += _sizes_and_large(lambda s: ([_T(s)], None))
    return v


def _pad_variants() -> list[tuple]:
    def p(shape, pads, mode=None, value=None, axes=None):
        ins = [_T(shape), _c(pads)]
        if value is not None or axes is not None:
            ins.append(_c(value, None) if value is not None else None)
        if axes is not None:
            ins.append(_c(axes))
        return ins, ({"mode": mode} if mode else None)

    v = []
    for label, (ins, attrs) in [
            ("rank-2-constant", p((3, 4), [1, 2, 0, 1])),
            ("rank-1-constant", p((7,), [2, 3])),
            ("rank-3-edge", p((2, 3, 4), [0, 1, 1, 0, 2, 1], "edge")),
            ("rank-4-reflect", p((1, 2, 4, 5), [0, 0, 1, 2, 0, 0, 2, 1], "reflect")),
            ("rank-5-constant", p((2, 1, 3, 2, 4), [0, 0, 1, 0, 1, 0, 0, 0, 1, 1])),
            ("attr-constant-value", p((3, 4), [1, 1, 1, 1], value=1)),
            ("attr-reflect", p((3, 4), [2, 1, 1, 3], "reflect")),
            ("attr-edge", p((3, 4), [2, 1, 1, 3], "edge")),
            ("attr-wrap", p((3, 4), [1, 2, 2, 1], "wrap")),
            ("attr-axes", p((2, 3, 4), [2, 3], axes=[1])),
            ("attr-negative-axes", p((2, 3, 4), [1, 1, 2, 2], "edge", axes=[-1, 0])),
            ("empty-input-constant", p((0, 4), [1, 0, 1, 0]))]:
        v.append((label, ins, attrs, ["attr"] if label.startswith("attr") else []))
    # onnx.reference (1.23) rejects negative pads; cropping is plain slicing.
    ins, attrs = p((4, 5), [-1, 0, 0, -2])
    v.append(("attr-negative-pads-crop", ins, attrs, ["attr"], lambda a: [a[0][1:, :3]]))
    v += _sizes_and_large(lambda s: p(s, [0, 1, 0, 1], "reflect" if s[1] > 1 else None))
    return v


# --------------------------------------------------------------------------- Cast, Resize, Q/DQ

_CAST_RANGE = {"int8": (-100, 100), "uint8": (0, 200), "int32": (-1000, 1000),
               "int64": (-1000, 1000), "float16": (-1000, 1000), "bfloat16": (-1000, 1000),
               "float32": (-1000, 1000), "bool": (0, 1)}


def _cast_values(src: str, dst: str) -> Callable:
    """Data that every target type represents: in range, with zeros for bool targets."""
    lo = max(_CAST_RANGE[src][0], _CAST_RANGE[dst][0])
    hi = min(_CAST_RANGE[src][1], _CAST_RANGE[dst][1])

    def make(rng, shape, dtype):
        if src == "bool":
            return rng.random(shape) < 0.5
        if _is_float(src):
            v = rng.uniform(lo, hi, shape) if dst != "bool" else rng.standard_normal(shape)
        else:
            v = rng.integers(lo, hi + 1, shape)
        if dst == "bool":
            v = np.where(rng.random(shape) < 0.3, 0, v)
        return v
    return make


def _cast(b: _Builder, dtypes: list[str]) -> None:
    def add(src, dst, label=None, shape=(3, 4), kind=None, tags=()):
        label = label or f"to-{dst}"
        b.add(src, label, [_T(shape, kind or _cast_values(src, dst))],
              {"to": DTYPE_CODES[dst]}, tags=["attr", *tags])

    for dst in dtypes:
        add("float32", dst)
    for src in dtypes[1:]:
        for dst in ("float32", "float16", "int64", "bool"):
            if dst != src:
                add(src, dst)
    add("int8", "uint8")
    add("uint8", "int8")
    add("int64", "int32")
    add("float16", "bfloat16")
    for rank in (0, 1, 3, 4, 5):
        add("float32", "float16", f"rank-{rank}-to-float16", RANK_SHAPES[rank])
    add("float32", "float16", "empty-to-float16", (2, 0, 3))
    for n in SIZES:
        add("float32", "float16", f"size-{n}-to-float16", (2, n), tags=[f"size-{n}"])
    add("float32", "float16", "large-to-float16", LARGE, tags=["large"])
    for src, dst in [("float32", "float16"), ("float32", "bfloat16"), ("float16", "float32"),
                     ("bfloat16", "float32"), ("float16", "bfloat16")]:
        add(src, dst, f"special-values-to-{dst}", (4, 8), _special(), ["special-values"])


def _resize(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    scales = functools.partial(_c, dtype="float32")

    def add(label, x, attrs, sc=None, sizes=None, roi=None, tags=(), dt=main):
        ins = [_T(x), _c(roi, "float32") if roi is not None else None,
               scales(sc) if sc is not None else None]
        if sizes is not None:
            ins.append(_c(sizes))
        b.add(dt, label, ins, attrs, tags=tags)

    nearest, linear = {"mode": "nearest"}, {"mode": "linear"}
    add("rank-4-nearest-scales-2", (1, 2, 3, 4), nearest, [1, 1, 2, 2])
    add("rank-1-nearest", (5,), nearest, [2.0])
    add("rank-2-linear", (3, 4), linear, [2.0, 1.5])
    add("rank-3-linear", (1, 3, 5), linear, [1, 1, 2.5])
    add("rank-5-linear", (1, 1, 2, 3, 3), linear, [1, 1, 2, 2, 2])
    for mode in ("floor", "ceil", "round_prefer_ceil", "round_prefer_floor"):
        add(f"attr-nearest-mode-{mode.replace('_', '-')}", (1, 1, 4, 5),
            {**nearest, "nearest_mode": mode}, [1, 1, 1.7, 2.3], tags=["attr"])
    for ctm in ("asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"):
        add(f"attr-linear-{ctm.replace('_', '-')}", (1, 2, 4, 4),
            {**linear, "coordinate_transformation_mode": ctm}, [1, 1, 1.5, 2.5], tags=["attr"])
    add("attr-nearest-asymmetric", (1, 2, 4, 4),
        {**nearest, "coordinate_transformation_mode": "asymmetric"}, [1, 1, 2, 3], tags=["attr"])
    add("attr-linear-downsample", (1, 2, 8, 8), linear, [1, 1, 0.5, 0.6], tags=["attr"])
    add("attr-linear-antialias", (1, 2, 8, 8), {**linear, "antialias": 1}, [1, 1, 0.5, 0.5],
        tags=["attr"])
    add("attr-cubic", (1, 1, 4, 4), {"mode": "cubic"}, [1, 1, 2, 2], tags=["attr"])
    add("attr-nearest-sizes", (1, 2, 3, 4), nearest, sizes=[1, 2, 7, 5], tags=["attr"])
    add("attr-linear-sizes", (1, 2, 3, 4), linear, sizes=[1, 2, 5, 9], tags=["attr"])
    add("attr-axes-scales", (1, 2, 3, 4), {**linear, "axes": [2, 3]}, [2, 2], tags=["attr"])
    add("attr-keep-aspect-not-larger", (1, 2, 4, 6),
        {**linear, "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, sizes=[8, 8],
        tags=["attr"])
    add("attr-tf-crop-and-resize", (1, 1, 5, 5),
        {**linear, "coordinate_transformation_mode": "tf_crop_and_resize",
         "extrapolation_value": 0.5}, [1, 1, 1.6, 1.6],
        roi=[0, 0, 0.1, 0.2, 1, 1, 0.9, 1.2], tags=["attr"])
    add("empty-batch-0", (0, 2, 3, 3), nearest, [1, 1, 2, 2])
    for n in SIZES:
        add(f"size-{n}", (1, 1, 1, n), linear, [1, 1, 2, 2], tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, nearest, [1, 1, 2, 2], tags=["large"])
    # Nearest only copies: every special value arrives as it is. onnx.reference (1.23)
    # weighs every input element, 0 x inf spreading NaN: doubling is repeating each twice.
    b.add(main, "special-values", [_T((1, 1, 4, 8), _special()), None,
                                   scales([1, 1, 2, 2])], nearest, tags=["special-values"],
          expect=lambda arrays: [arrays[0].repeat(2, axis=2).repeat(2, axis=3)])
    for dt in dtypes[1:]:
        if dt == "bool":  # onnx.reference cannot resize booleans
            continue
        add("rank-4-nearest-scales-2", (1, 2, 3, 4), nearest, [1, 1, 2, 2], dt=dt)
        if _is_float(dt):
            add("attr-linear-downsample", (1, 2, 8, 8), linear, [1, 1, 0.5, 0.6], tags=["attr"],
                dt=dt)


def _quantize(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    # Power-of-two scales: x / scale is exact, so only the rounding rule decides the result.

    def add(label, x, scale, zp=None, zp_dtype="uint8", attrs=None, tags=(), dt=main, kind="normal"):
        sdt = dt
        ins = [_T(x, kind), _c(scale, sdt)]
        if zp is not None:
            ins.append(_c(zp, zp_dtype))
        b.add(dt, label, ins, attrs, tags=tags)

    add("rank-2-per-tensor-uint8", (3, 4), 1 / 32, 128)
    add("attr-per-tensor-int8", (3, 4), 1 / 32, -3, "int8", tags=["attr"])
    add("attr-no-zero-point", (3, 4), 1 / 32, tags=["attr"])
    add("attr-output-dtype-int8", (3, 4), 1 / 32, attrs={"output_dtype": TensorProto.INT8},
        tags=["attr"])
    add("attr-per-axis-1", (2, 3, 4), [1 / 16, 1 / 32, 1 / 64], [120, 128, 130],
        tags=["attr"])
    add("attr-per-axis-0", (2, 3, 4), [1 / 16, 1 / 32], [100, 128], attrs={"axis": 0},
        tags=["attr"])
    add("attr-per-axis-neg1", (2, 3, 4), [1 / 16, 1 / 32, 1 / 64, 1 / 8], [0, 10, 20, 30],
        "int8", {"axis": -1}, ["attr"])
    add("attr-blocked-axis-1", (3, 4), [[1 / 16, 1 / 32]] * 3, [[120, 130]] * 3,
        attrs={"axis": 1, "block_size": 2}, tags=["attr"])
    add("attr-saturation", (3, 4), 1 / 256, 0, "int8", tags=["attr"])
    ties = lambda rng, s, d: rng.permutation(np.arange(-4.5, 5.5, 1.0)).reshape(s)  # noqa: E731
    add("attr-ties-to-even", (2, 5), 1.0, 0, "int8", tags=["attr"], kind=ties)
    # round(x / scale) + zero point, not round(x / scale + zero point): the two differ at
    # every tie where the zero point is odd.
    add("attr-ties-to-even-odd-zero-point", (2, 5), 1.0, 3, "int8", tags=["attr"], kind=ties)
    for rank in (0, 1, 3, 4, 5):
        add(f"rank-{rank}-per-tensor-uint8", RANK_SHAPES[rank], 1 / 32, 128)
    add("empty-0x4", (0, 4), 1 / 32, 128)
    for n in SIZES:
        add(f"size-{n}", (2, n), 1 / 32, 128, tags=[f"size-{n}"])
    add("large-1024x1024", LARGE, 1 / 32, 128, tags=["large"])
    # Saturation: +-inf and huge values go to the ends of the range; NaN is undefined.
    # onnx.reference (1.23) casts before it saturates (inf becomes 0): the formula instead.
    b.add(main, "special-values", [_T((4, 8), _special(["nan"])), _c(1 / 32, main),
                                   _c(128, "uint8")], tags=["special-values"],
          expect=lambda arrays: [np.clip(np.rint(arrays[0].astype(np.float64) / arrays[1])
                                         + 128, 0, 255)])
    for dt in dtypes[1:]:
        if dt == "int32":  # integer input: the scale is an int32 too at opset 21
            add("rank-2-per-tensor-uint8", (3, 4), 2, 128, dt=dt)
            continue
        add("rank-2-per-tensor-uint8", (3, 4), 1 / 32, 128, dt=dt)
        add("attr-per-axis-1", (2, 3, 4), [1 / 16, 1 / 32, 1 / 64], [120, 128, 130],
            tags=["attr"], dt=dt)


def _dequantize(b: _Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, scale, zp=None, attrs=None, tags=(), dt=main, sdt="float32"):
        ins = [_T(x, "full"), _c(scale, sdt)]
        if zp is not None:
            ins.append(_c(zp, dt))
        b.add(dt, label, ins, attrs, tags=tags)

    add("rank-2-per-tensor", (3, 4), 0.05, 3)
    add("attr-no-zero-point", (3, 4), 0.05, tags=["attr"])
    add("attr-per-axis-1", (2, 3, 4), [0.1, 0.05, 0.02], [1, 0, 2], tags=["attr"])
    add("attr-per-axis-0", (2, 3, 4), [0.1, 0.05], [1, 2], {"axis": 0}, ["attr"])
    add("attr-per-axis-neg1", (2, 3, 4), [0.1, 0.05, 0.02, 0.2], [0, 1, 2, 3], {"axis": -1},
        ["attr"])
    add("attr-blocked-axis-1", (3, 4), [[0.1, 0.05]] * 3, [[1, 2]] * 3,
        {"axis": 1, "block_size": 2}, ["attr"])
    add("attr-scale-float16", (3, 4), 0.05, 3, tags=["attr"], sdt="float16")
    add("attr-scale-bfloat16", (3, 4), 0.05, 3, tags=["attr"], sdt="bfloat16")
    for rank in (0, 1, 3, 4, 5):
        add(f"rank-{rank}-per-tensor", RANK_SHAPES[rank], 0.05, 3)
    add("empty-0x4", (0, 4), 0.05, 3)
    for n in SIZES:
        add(f"size-{n}", (2, n), 0.05, 3, tags=[f"size-{n}"])
    add("large-1024x1024", LARGE, 0.05, 3, tags=["large"])
    for dt in dtypes[1:]:
        # int32 data (accumulators) carry no zero point.
        add("rank-2-per-tensor", (3, 4), 0.05, None if dt == "int32" else 3, dt=dt)
        add("attr-per-axis-1", (2, 3, 4), [0.1, 0.05, 0.02],
            None if dt == "int32" else [1, 0, 2], tags=["attr"], dt=dt)


# --------------------------------------------------------------------------- registry

_GENERATORS: dict[str, Callable[[_Builder, list[str]], None]] = {
    "Add": _binary(("normal", "normal")),
    "Sub": _binary(("high", "low")),
    "Mul": _binary(("normal", "normal")),
    "Div": _binary(("dividend", "nonzero")),
    "Pow": _pow,
    "Sqrt": _unary("positive"),
    "Exp": _unary(),
    "Log": _unary("positive"),
    "Erf": _unary(),
    "Abs": _unary(),
    "Neg": _unary(),
    # NaN propagates through max and min as through every IEEE 754 operation (numpy's
    # maximum, the oracle's, does; IEEE 754-2019 maximum does): Relu(NaN) is NaN.
    "Relu": _unary(),
    "LeakyRelu": _unary(variants=[("alpha-0.2", {"alpha": 0.2}, lambda dt: [])]),
    "Sigmoid": _unary(),
    "Tanh": _unary(),
    "HardSigmoid": _unary(variants=[
        ("alpha-0.5-beta-0.3", {"alpha": 0.5, "beta": 0.3}, lambda dt: [])]),
    # inf * 0 inside the formula: the limits at +-inf are not what a formula computes.
    "HardSwish": _unary(exclude=["inf", "-inf"]),
    "Gelu": _unary(exclude=["inf", "-inf"], variants=[
        ("approximate-tanh", {"approximate": "tanh"}, lambda dt: []),
        ("approximate-none", {"approximate": "none"}, lambda dt: [])]),
    "Clip": _clip,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "Softmax": _softmax,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce("ReduceMean"),
    "ReduceSum": _reduce("ReduceSum"),
    "ReduceMax": _reduce("ReduceMax"),
    "Reshape": _movement(_reshape_variants, ([_T((4, 8)), _c([8, 4])], None)),
    "Transpose": _movement(_transpose_variants, ([_T((4, 8))], {"perm": [1, 0]})),
    "Concat": _movement(_concat_variants, ([_T((4, 8)), _T((4, 8))], {"axis": 1})),
    "Slice": _movement(_slice_variants, ([_T((4, 8)), _c([1]), _c([7]), _c([1]), _c([2])],
                                         None)),
    "Gather": _movement(_gather_variants, ([_T((4, 8)), _c([3, -1, 0, 2])], {"axis": 1})),
    "Squeeze": _movement(_squeeze_variants, ([_T((1, 4, 8)), _c([0])], None)),
    "Unsqueeze": _movement(_unsqueeze_variants, ([_T((4, 8)), _c([1])], None)),
    "Flatten": _movement(_flatten_variants, ([_T((2, 4, 8))], {"axis": 2})),
    "Expand": _movement(_expand_variants, ([_T((4, 1)), _c([4, 8])], None)),
    "Shape": _movement(_shape_variants, None),
    "Cast": _cast,
    "Where": _where,
    "Pad": _movement(_pad_variants, ([_T((4, 8)), _c([1, 2, 2, 1])], {"mode": "edge"})),
    "Resize": _resize,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "MatMulInteger": _matmul_integer,
}


def _special_only(exclude: Iterable[str] = (), axes: bool = False) -> Callable:
    """The one special-values case of an op outside the core set (float32)."""
    def gen(b: _Builder, dtypes: list[str]) -> None:
        b.add("float32", "special-values", [_T((4, 8), _special(exclude))]
              + ([_c([1])] if axes else []), tags=["special-values"])
    return gen


#: Ops outside the core set whose results on NaN, infinities and zeros ONNX defines (by
#: IEEE 754: NaN propagates through max and min and compares false): each has special-values
#: cases only, in the mandatory tier, so a backend that declares one is checked on them.
_SPECIAL_ONLY: dict[str, Callable[[_Builder, list[str]], None]] = {
    **{op: lambda b, dtypes: _special_pairs(b) for op in ("Max", "Min", "Equal", "Less",
                                                          "Greater")},
    "ReduceMin": _special_only(axes=True),
    "Elu": _special_only(),
    # log(exp(x) + 1) of a huge x overflows in the oracle's float64 too; the limit is x.
    "Softplus": _special_only(["huge"]),
    "IsNaN": _special_only(),
    "IsInf": _special_only(),
}
#: The ops :data:`_SPECIAL_ONLY` checks, beside :data:`MANDATORY_OPS`.
SPECIAL_VALUE_OPS: tuple[str, ...] = tuple(_SPECIAL_ONLY)
_GENERATORS.update(_SPECIAL_ONLY)


def generate(op: str, seed: int, dtypes: Iterable[str] | None = None) -> list[Case]:
    """The generated cases of one mandatory op (or of one of :data:`SPECIAL_VALUE_OPS`),
    restricted to ``dtypes`` if given."""
    if op not in _GENERATORS:
        raise ValueError(f"no case generator for op {op!r}; generated ops: "
                         f"{', '.join(MANDATORY_OPS + SPECIAL_VALUE_OPS)}")
    wanted = None if dtypes is None else set(dtypes)
    builder = _Builder(op, seed, wanted)
    _GENERATORS[op](builder, admitted_dtypes(op))
    return builder.cases + versioned(builder.cases)


def versioned(cases: list[Case]) -> list[Case]:
    """Cases at each other version of their op's schema (from opset 7 to the newest):
    the first :data:`PER_VERSION` cases (in generation order), relabelled to the opset where that
    version starts (or converted by onnx.version_converter where the node's form changed:
    attributes that became inputs); versions no case converts to are left out. Tag
    ``version``; the id ends in ``/opset-N``. The oracle computes their outputs at that
    version, so a backend is checked on each version it declares."""
    from backplane.ops import get
    from backplane.ops.survey import _converted

    out: list[Case] = []
    if not cases:
        return out
    definition = get(cases[0].op)
    here = definition.version_at(OPSET)
    plain = [c for c in cases if c.expected is None
             and not {"empty", "large", "special-values"} & set(c.tags)]
    for version in definition.versions:
        if version == here or version < MIN_OPSET:
            continue
        schema = definition.schemas[definition.versions.index(version)]
        main = schema.dtypes_of(schema.inputs[_MAIN_INPUT.get(definition.name, 0)][0])
        kept = 0
        for case in plain:
            if kept == PER_VERSION:
                break
            model = _converted(case.model, version) if case.dtype in main else None
            if model is not None:
                kept += 1
                out.append(dataclasses.replace(
                    case, id=f"{case.id}/opset-{version}", model=model,
                    tags=tuple(sorted({*case.tags, "version"}, key=_tag_order))))
    return out


def all_cases(seed: int, ops: Iterable[str] | None = None, tier: str = "mandatory", *,
              onnx_node_tests: bool = False, models: bool = False) -> list[Case]:
    """The generated cases of ``ops`` (default: ``MANDATORY_OPS``, and the special-values
    cases of :data:`SPECIAL_VALUE_OPS`) in ``tier``.

    ``tier``: ``"mandatory"``, ``"optional"`` or ``"all"``. ``onnx_node_tests`` adds ONNX's
    node tests for ``ops`` (an op without a generator contributes only those); ``models``
    adds the zoo's model-level cases. Both are off by default: the mandatory tier of
    generated cases stays under 1200 (ONNX's node tests for the 49 ops add about 400).
    """
    if tier not in (*TIERS, "all"):
        raise ValueError(f"tier must be one of {TIERS + ('all',)}, not {tier!r}")
    names = list(MANDATORY_OPS if ops is None else ops)
    out: list[Case] = []
    for op in names + (list(SPECIAL_VALUE_OPS) if ops is None else []):
        if op in _GENERATORS:
            out += generate(op, seed)
    if onnx_node_tests:
        out += onnx_node_cases(names)
    if models:
        from backplane.conformance.zoo import zoo_cases

        out += zoo_cases(seed)
    return out if tier == "all" else [c for c in out if c.tier == tier]


# --------------------------------------------------------------------------- ONNX node tests

def onnx_node_cases(ops: Iterable[str]) -> list[Case]:
    """ONNX's own node tests for ``ops``, with their recorded inputs and outputs.

    Tier "mandatory" for a mandatory op, "optional" otherwise; tag ``onnx-node-test``.
    Each test keeps the opset ONNX recorded it at (a backend declares the op versions it
    runs); one recorded below opset 7, the oldest backplane reads as it is, is kept, at
    opset 7, only where it reproduces its outputs there. The tests of random ops
    (:data:`backplane.ops.RANDOM_OPS`, and Dropout given ``training_mode``) are left out:
    their recorded outputs are one draw.
    """
    wanted = set(ops)
    out: list[Case] = []
    for test in _node_testcases(tuple(sorted(wanted))):
        g = test.model.graph
        if len(g.node) != 1 or "_expanded" in test.name or g.node[0].op_type not in wanted:
            continue
        if g.node[0].op_type in RANDOM_OPS or (g.node[0].op_type == "Dropout"
                                               and len(g.node[0].input) > 2):
            continue  # random draws: a Dropout given training_mode drops at random
        if g.node[0].domain not in ("", "ai.onnx"):
            continue
        case = _node_case(test)
        if case is not None:
            out.append(case)
    return out


def _node_case(test: Any) -> Case | None:
    model = test.model
    op = model.graph.node[0].op_type
    inputs, outputs = test.data_sets[0]
    if not all(isinstance(v, (np.ndarray, np.generic, TensorProto)) for v in [*inputs, *outputs]):
        return None  # sequences and optionals: not tensors
    as_array = lambda v: numpy_helper.to_array(v) if isinstance(v, TensorProto) else np.asarray(v)
    feeds = {vi.name: as_array(v) for vi, v in zip(model.graph.input, inputs)}
    expected = {vi.name: as_array(v) for vi, v in zip(model.graph.output, outputs)}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        # Recorded at an opset backplane does not read as it is: kept only where opset 7
        # reproduces the recorded outputs.
        model = _retarget(model, feeds, expected, test.rtol, test.atol, MIN_OPSET)
        if model is None:
            return None
    first = (model.graph.input or model.graph.output)[0]
    dtype = DTYPE_NAMES.get(first.type.tensor_type.elem_type, "unknown")
    return Case(id=f"{op}/{dtype}/onnx-node-test/{test.name}", op=op, dtype=dtype,
                tier="mandatory" if op in MANDATORY_OPS else "optional", model=model,
                inputs=feeds, expected=expected, tags=("onnx-node-test",), seed=0,
                tolerance_key=op, recorded_tolerance=(float(test.rtol), float(test.atol)))


def _retarget(model: onnx.ModelProto, feeds: dict, expected: dict, rtol: float, atol: float,
              target: int) -> onnx.ModelProto | None:
    """The model at opset ``target`` if it is valid there and still gives the recorded
    outputs."""
    from backplane.conformance.oracle import evaluate
    from backplane.ops.survey import relabeled

    copy = relabeled(model, target)
    try:
        onnx.checker.check_model(copy, full_check=True)
        got = evaluate(copy, feeds)
    except Exception:
        return None
    for name, want in expected.items():
        have = got.get(name)
        if have is None or have.shape != want.shape or have.dtype != want.dtype:
            return None
        try:
            np.testing.assert_allclose(have.astype(np.float64), want.astype(np.float64),
                                       rtol=rtol, atol=atol, equal_nan=True)
        except (AssertionError, TypeError, ValueError):
            if not np.array_equal(have, want):
                return None
    return copy


@functools.lru_cache(maxsize=None)
def _node_testcases(ops: tuple[str, ...]) -> tuple:
    """ONNX's node test cases, importing only the test modules named after ``ops``."""
    import pkgutil

    import onnx.backend.test.case.node as node_tests

    modules = {m.name.replace("_", "").lower(): m.name
               for m in pkgutil.iter_modules(node_tests.__path__)}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for op in ops:
            name = modules.get(op.lower())
            if name is None:  # no module of its own: collect everything (slow, once)
                from onnx.backend.test.case.utils import import_recursive

                import_recursive(node_tests)
            else:
                importlib.import_module(f"{node_tests.__name__}.{name}")
    return tuple(node_tests._NodeTestCases)
