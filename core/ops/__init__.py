"""The operator registry: every op backplane plans for, with its schemas and its cost.

An op is found from its name: :func:`get` returns its :class:`OpDef` (its schema at every
recorded version, its family, its cost function), and :func:`cost` prices a graph node.

Four tiers (:data:`TIERS`):

- ``mandatory``: :data:`MANDATORY`, the 49 ONNX default-domain ops of the core set that
  the conformance suite's mandatory tier checks;
- ``optional``: every other op the installed onnx defines in the default domain and in
  ``ai.onnx.ml``, at every version from opset 7 to the newest;
- ``contrib``: the ``com.microsoft`` ops of ONNX Runtime's contrib registry, which its
  optimizer and quantizer write into models (Attention, SkipLayerNormalization,
  QLinearConv, MatMulNBits ...), planned wherever a backend declares them;
- ``fused``: :data:`FUSED`, ops of the ``backplane`` domain (:mod:`backplane.ops.fused`),
  each with a decomposition into ONNX ops so any backend, and the oracle, can run a graph
  that the fusion pass (:func:`backplane.ops.fused.fuse`) rewrote.

Schemas are data (:mod:`backplane.ops.schemas`), read from checked-in JSON; costs come from
each op's family (:mod:`backplane.ops.costs`). Importing this package imports neither
numpy nor onnx; ``import backplane`` does not import it at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from backplane.sdk.contract import op_key
from backplane.sdk.errors import UnsupportedError, did_you_mean
from backplane.ops.costs import Cost, cost_function, cost_of, family_of, output_bytes
from backplane.ops.opdef import DOMAIN, FUSED, MANDATORY, RANDOM_OPS, TIERS, OpDef, OpVersion

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Node

_lock = threading.Lock()
_registry: dict[str, OpDef] | None = None
#: Domains the registry holds ops of, besides the ``backplane`` domain.
DOMAINS = ("", "ai.onnx.ml", "com.microsoft")


def _from_data(data: dict, tier_of: "dict[str, str]", default_tier: str) -> dict[str, OpDef]:
    out = {}
    mandatory = set(MANDATORY)
    for key, op in data["ops"].items():
        schemas = tuple(OpVersion.from_record(int(v), rec) for v, rec in op["versions"].items())
        family = family_of(op["name"], next(iter(op["versions"].values())))
        tier = "mandatory" if op["domain"] == "" and op["name"] in mandatory else \
            tier_of.get(op["domain"], default_tier)
        out[key] = OpDef.from_versions(op["name"], op["domain"], tier, int(op["since"]),
                                       schemas, family, cost_function(op["name"], family))
    return out


def _ops() -> dict[str, OpDef]:
    """The registry by op key, built on first use (reads the JSON, imports no onnx)."""
    global _registry
    with _lock:
        if _registry is None:
            from backplane.ops import fused, schemas

            table = _from_data(schemas.load(schemas.DATA_FILE), {}, "optional")
            table.update(_from_data(schemas.load(schemas.CONTRIB_FILE), {}, "contrib"))
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
        f"The registry lists every op of the installed onnx (default domain and ai.onnx.ml), "
        f"ONNX Runtime's com.microsoft ops and the fused ops {', '.join(FUSED)}; see "
        "backplane.ops.all_ops().")


def find(op: str, domain: str = "") -> OpDef | None:
    """The definition of ``op`` in ``domain``, or None (never raises)."""
    return _ops().get(op_key(op, domain))


def all_ops(tier: str | None = None) -> list[OpDef]:
    """Every registered op (or those of one tier): the mandatory ones in :data:`MANDATORY`
    order, then the other ONNX ops, the contrib ops and the fused ops, each by name."""
    ops = _ops()
    first = [ops[n] for n in MANDATORY]
    rest = sorted((d for d in ops.values() if d.tier not in ("mandatory", "fused")),
                  key=lambda d: (TIERS.index(d.tier), d.domain, d.name))
    rest += [ops[op_key(n, DOMAIN)] for n in FUSED]
    if tier is None:
        return first + rest
    return [d for d in first + rest if d.tier == tier]


def version_of(op: str, domain: str, opset: int) -> int:
    """The version of ``op`` in force at ``opset`` of its domain (its ``since``), or 0 for
    an op the registry does not know there."""
    found = _ops().get(op_key(op, domain))
    return found.version_at(opset) if found is not None else 0


def cost(node: "Node") -> Cost:
    """The cost of one node, from its op's cost function (its family's, for an op not in
    the registry).

    Unknown dimensions count as 1 and unknown types as 0 bytes, so a cost is always
    returned: a cost function that fails on an odd node prices it from the bytes of its
    outputs alone.
    """
    definition = _ops().get(op_key(node.op_type, node.domain))
    if definition is None:
        return cost_of(node)
    try:
        return definition.cost(node)
    except Exception:  # a malformed node must not stop planning; price it as unknown
        return Cost(0, output_bytes(node))


__all__ = ["DOMAIN", "DOMAINS", "FUSED", "MANDATORY", "RANDOM_OPS", "TIERS", "Cost", "OpDef", "OpVersion",
           "all_ops", "cost", "find", "get", "version_of"]


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
