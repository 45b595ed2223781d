"""The operator registry's table: every op backplane plans for, looked up by name.

Built on first use from the schema data (:mod:`backplane.ops.schemas`) and the fused ops
(:mod:`backplane.ops.fused`); reading it imports neither numpy nor onnx. The package
:mod:`backplane.ops` re-exports these names for applications and plugins; the SDK's own
modules import them from here. Nothing this module imports at run time imports the graph
IR, so :mod:`backplane.model.graph`, which asks :func:`version_of` for every node it
builds, can depend on it without a cycle.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from backplane.ops.costs import Cost, cost_function, cost_of, family_of, output_bytes
from backplane.ops.opdef import DOMAIN, FUSED, MANDATORY, TIERS, OpDef, OpVersion
from backplane.sdk.contract import op_key
from backplane.sdk.errors import UnsupportedError, did_you_mean

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
            # on use only: the op registry reads its schema tables when first asked
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


__all__ = ["DOMAINS", "all_ops", "cost", "find", "get", "version_of"]
