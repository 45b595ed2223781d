"""The operator registry: every op backplane plans for, with its schema and its cost.

An op is found from its name: :func:`get` returns its :class:`OpDef` (inputs, type
constraints, attribute defaults, the cost function), and :func:`cost` prices a graph node.

Two tiers:

- ``mandatory``: :data:`MANDATORY`, 49 ops of the ONNX default domain with the semantics of
  opsets 13 to 21 (:mod:`backplane.ops.onnx_ops`). Their schemas are data, read from the
  checked-in ``onnx_types.json``, so the planner reads them without importing onnx.
- ``fused``: :data:`FUSED`, ops of the ``backplane`` domain (:mod:`backplane.ops.fused`),
  each with a decomposition into ONNX ops so any backend, and the oracle, can run a graph
  that the fusion pass (:func:`backplane.ops.fused.fuse`) rewrote.

Importing this package imports neither numpy nor onnx; ``import backplane`` does not import
it at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..contract import op_key
from ..errors import UnsupportedError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from ..graph import Node

#: The mandatory op set, in the order of the project's op list (default domain).
MANDATORY: tuple[str, ...] = (
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Abs", "Neg", "Relu",
    "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Clip", "MatMul",
    "Gemm", "Conv", "ConvTranspose", "BatchNormalization", "LayerNormalization", "Softmax",
    "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "ReduceMax",
    "Reshape", "Transpose", "Concat", "Slice", "Gather", "Squeeze", "Unsqueeze", "Flatten",
    "Expand", "Shape", "Cast", "Where", "Pad", "Resize", "QuantizeLinear", "DequantizeLinear",
    "MatMulInteger",
)
#: The fused ops of the ``backplane`` domain.
FUSED: tuple[str, ...] = ("FusedConvRelu", "FusedMatMulBiasGelu", "Attention")
#: The domain of fused ops.
DOMAIN = "backplane"
#: Tier names.
TIERS = ("mandatory", "fused")


@dataclass(frozen=True)
class Cost:
    """What running one node costs, independent of the hardware.

    Attributes:
        flops: floating-point (or integer arithmetic) operations; a multiply-add counts 2.
        bytes: bytes read from the inputs plus bytes written to the outputs.
    """

    flops: int
    bytes: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, flops per byte (0 when no byte moves)."""
        return self.flops / self.bytes if self.bytes else 0.0

    def to_dict(self) -> dict[str, int]:
        """Plain data."""
        return {"flops": self.flops, "bytes": self.bytes}


@dataclass(frozen=True)
class OpDef:
    """One op's schema and cost function.

    Attributes:
        name: the op type, ``Conv``.
        domain: ``""`` (ONNX default domain) or ``"backplane"``.
        tier: ``"mandatory"`` or ``"fused"``.
        inputs: ``(input name, type-constraint name, optional)`` per formal input, in order.
            A constraint name is a key of ``type_constraints``; an input of one fixed type
            has the ONNX type string as its constraint name (``"tensor(int64)"``).
        type_constraints: constraint name -> admitted dtypes (names as in
            :data:`backplane.graph.DTYPE_NAMES`), in schema order.
        attributes: attribute name -> default value, or ``None`` when it has no default
            (required, or derived from the inputs, as Conv's ``kernel_shape``).
        cost: ``cost(node) -> Cost``; never raises (see :func:`cost`).
        outputs: ``(output name, type-constraint name, optional)`` per formal output.
        variadic: whether the last input repeats (Concat).
        required_attributes: attributes a node must set.
        since: the first default-domain opset the op exists in (1 for fused ops, which
            version with the ``backplane`` domain).
        versions: the opsets up to 21 in which the op's schema changed.
    """

    name: str
    domain: str
    tier: str
    inputs: tuple[tuple[str, str, bool], ...]
    type_constraints: Mapping[str, frozenset[str]] = field(hash=False)
    attributes: Mapping[str, Any] = field(hash=False)
    cost: Callable[["Node"], Cost] = field(compare=False, hash=False, repr=False)
    outputs: tuple[tuple[str, str, bool], ...] = ()
    variadic: bool = False
    required_attributes: frozenset[str] = frozenset()
    since: int = 1
    versions: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """The op's key in capability tables (:func:`backplane.contract.op_key`)."""
        return op_key(self.name, self.domain)

    @property
    def reference_dtypes(self) -> tuple[str, ...]:
        """The dtypes of the first type constraint, sorted (the op's primary types)."""
        for dtypes in self.type_constraints.values():
            return tuple(sorted(dtypes))
        return ()

    def dtypes_of(self, input_name: str) -> frozenset[str]:
        """The dtypes admitted for one formal input (empty for an unknown name)."""
        for name, constraint, _ in self.inputs:
            if name == input_name:
                return self.type_constraints.get(constraint, frozenset())
        return frozenset()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``--json`` listings print)."""
        return {
            "key": self.key, "name": self.name, "domain": self.domain, "tier": self.tier,
            "since": self.since, "versions": list(self.versions),
            "inputs": [{"name": n, "type": t, "optional": o} for n, t, o in self.inputs],
            "outputs": [{"name": n, "type": t, "optional": o} for n, t, o in self.outputs],
            "variadic": self.variadic,
            "type_constraints": {k: sorted(v) for k, v in self.type_constraints.items()},
            "attributes": dict(self.attributes),
            "required_attributes": sorted(self.required_attributes),
        }


_lock = threading.Lock()
_registry: dict[str, OpDef] | None = None


def _ops() -> dict[str, OpDef]:
    """The registry by op key, built on first use (reads the JSON, imports no onnx)."""
    global _registry
    with _lock:
        if _registry is None:
            from . import fused, onnx_ops

            table = {d.key: d for d in onnx_ops.opdefs()}
            table.update({d.key: d for d in fused.opdefs()})
            _registry = table
        return _registry


def get(op: str, domain: str = "") -> OpDef:
    """The definition of ``op`` in ``domain``.

    Raises:
        UnsupportedError: the op is not in the registry; the message names close ops, and
            the right domain when the op exists in another one.
    """
    ops = _ops()
    key = op_key(op, domain)
    found = ops.get(key)
    if found is not None:
        return found
    elsewhere = [d for d in ops.values() if d.name == op]
    if elsewhere:
        hint = " It exists as " + " and ".join(
            f"get({d.name!r}, {d.domain!r})" for d in elsewhere) + "."
    else:
        hint = did_you_mean(key, ops) or did_you_mean(op, {d.name for d in ops.values()})
    where = f"domain {domain!r}" if domain not in ("", "ai.onnx") else "the ONNX default domain"
    raise UnsupportedError(
        f"op {op} of {where} is not in backplane's operator registry.{hint} "
        f"The registry lists {len(MANDATORY)} mandatory ONNX ops and the fused ops "
        f"{', '.join(FUSED)}; see backplane.ops.all_ops().")


def all_ops() -> list[OpDef]:
    """Every registered op: the mandatory ones in :data:`MANDATORY` order, then the fused."""
    ops = _ops()
    return [ops[n] for n in MANDATORY] + [ops[op_key(n, DOMAIN)] for n in FUSED]


def cost(node: "Node") -> Cost:
    """The cost of one node, from its op's cost function.

    Unknown dimensions count as 1 and unknown types as 0 bytes, so a cost is always
    returned: an op not in the registry, or a cost function that fails on an odd node,
    is priced from the bytes of its outputs alone.
    """
    from .onnx_ops import output_bytes

    definition = _ops().get(op_key(node.op_type, node.domain))
    if definition is not None:
        try:
            return definition.cost(node)
        except Exception:  # a malformed node must not stop planning; price it as unknown
            pass
    return Cost(0, output_bytes(node))


__all__ = ["DOMAIN", "FUSED", "MANDATORY", "TIERS", "Cost", "OpDef", "all_ops", "cost", "get"]


def window_pads(spatial: Iterable[int], kernel: Iterable[int], strides: Iterable[int],
                dilations: Iterable[int], pads: Iterable[int] | None,
                auto_pad: str = "NOTSET") -> list[int]:
    """Explicit pads (all begins, then all ends) of a convolution or pooling window.

    ``auto_pad`` SAME_UPPER / SAME_LOWER pads so that the output is ceil(size / stride),
    the odd pixel at the end / the beginning; VALID, or no ``pads``, is no padding.
    """
    spatial, kernel = list(spatial), list(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID" or pads is None:
        return [0] * (2 * len(spatial))
    return [int(p) for p in pads]


def pool_geometry(spatial: Iterable[int], kernel: Iterable[int], strides: Iterable[int],
                  dilations: Iterable[int], pads: Iterable[int] | None,
                  auto_pad: str = "NOTSET", ceil_mode: int = 0
                  ) -> tuple[list[int], list[int], list[int], list[int]]:
    """(begin pads, end pads, output sizes, extra end pads) of a pooling window, as ONNX
    defines them: with ``ceil_mode`` a last partial window counts unless it would start in
    the end padding; ``extra`` pads the input so that window is whole."""
    spatial, kernel = list(spatial), list(kernel)
    strides, dilations = list(strides), list(dilations)
    p = window_pads(spatial, kernel, strides, dilations, pads, auto_pad)
    begins, ends = p[:len(spatial)], p[len(spatial):]
    out, extra = [], []
    for size, k, s, d, b, e in zip(spatial, kernel, strides, dilations, begins, ends):
        span = size + b + e - ((k - 1) * d + 1)
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + b:  # a window may not start in the end pad
            o -= 1
        out.append(o)
        extra.append(max(0, (o - 1) * s + (k - 1) * d + 1 - (size + b + e)))
    return begins, ends, out, extra
