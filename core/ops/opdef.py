"""An op's definition: its schema at every version, its family and its cost function.

The data the registry (:mod:`backplane.ops`) is made of. Importing this module imports
neither numpy nor onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from backplane.ops.costs import Cost
from backplane.sdk.contract import op_key

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Node

#: The mandatory op set, in the order of the project's op list (default domain): what a
#: backend claiming one of them must pass in the conformance suite's mandatory tier.
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
#: Tiers: the mandatory ONNX ops, the rest of ONNX (default domain and ``ai.onnx.ml``), the
#: ``com.microsoft`` contrib ops of ONNX Runtime, and backplane's fused ops.
TIERS = ("mandatory", "optional", "contrib", "fused")

#: Ops whose outputs are random draws: a recorded output is one draw that no runtime
#: reproduces, so tests of them compare structure, shapes and dtypes only.
RANDOM_OPS = frozenset({"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike",
                        "RandomUniform", "RandomUniformLike"})

Formal = tuple[str, str, bool]
"""``(name, type-constraint name, optional)`` of one input or output."""


@dataclass(frozen=True)
class OpVersion:
    """One version of an op's schema: the one in force from opset ``since`` on.

    Attributes:
        since: the opset (of the op's domain) this version starts at.
        inputs: ``(input name, type-constraint name, optional)`` per formal input, in order.
            A constraint name is a key of ``type_constraints``; an input of one fixed type
            has the ONNX type string as its constraint name (``"tensor(int64)"``).
        outputs: the same per formal output.
        type_constraints: constraint name -> admitted dtypes (names as in
            :data:`backplane.model.dtypes.DTYPE_NAMES`; ``seq(float32)`` and the like for types that
            are not tensors).
        attributes: attribute name -> default value, or ``None`` when it has none
            (required, or derived from the inputs, as Conv's ``kernel_shape``).
        variadic: whether the last input repeats (Concat).
        required_attributes: attributes a node must set.
        function: whether the schema has a function body (runtimes without a kernel for
            the op expand it).
        deprecated: whether ONNX deprecated the op at this version.
    """

    since: int
    inputs: tuple[Formal, ...]
    type_constraints: Mapping[str, frozenset[str]] = field(hash=False)
    attributes: Mapping[str, Any] = field(hash=False)
    outputs: tuple[Formal, ...] = ()
    variadic: bool = False
    required_attributes: frozenset[str] = frozenset()
    function: bool = False
    deprecated: bool = False

    def dtypes_of(self, input_name: str) -> frozenset[str]:
        """The dtypes admitted for one formal input (empty for an unknown name)."""
        for name, constraint, _ in self.inputs:
            if name == input_name:
                return self.type_constraints.get(constraint, frozenset())
        return frozenset()

    @property
    def signature(self) -> tuple[Any, ...]:
        """What a node of this version looks like: its formals and attributes with their
        defaults. Two versions with one signature differ in the types they admit only."""
        return (self.inputs, self.outputs, self.variadic,
                tuple(sorted((k, repr(v)) for k, v in self.attributes.items())),
                self.required_attributes)

    @classmethod
    def from_record(cls, since: int, d: Mapping[str, Any]) -> "OpVersion":
        """From one version's record of :mod:`backplane.ops.schemas`."""
        return cls(since=since,
                   inputs=tuple((i["name"], i["type"], i["optional"]) for i in d["inputs"]),
                   type_constraints=MappingProxyType(
                       {k: frozenset(v) for k, v in d["type_constraints"].items()}),
                   attributes=MappingProxyType(dict(d["attributes"])),
                   outputs=tuple((o["name"], o["type"], o["optional"]) for o in d["outputs"]),
                   variadic=any(i["variadic"] for i in d["inputs"]),
                   required_attributes=frozenset(d["required_attributes"]),
                   function=bool(d.get("function")), deprecated=bool(d.get("deprecated")))


@dataclass(frozen=True)
class OpDef:
    """One op: its newest schema (the fields below), every recorded version, its family
    and its cost function.

    Attributes:
        name: the op type, ``Conv``.
        domain: ``""`` (ONNX default domain), ``"ai.onnx.ml"``, ``"com.microsoft"`` or
            ``"backplane"``.
        tier: one of :data:`TIERS`.
        inputs, type_constraints, attributes, outputs, variadic, required_attributes: the
            newest version's (see :class:`OpVersion`).
        cost: ``cost(node) -> Cost``; never raises (see :func:`backplane.ops.cost`).
        since: the first opset of its domain the op exists in (1 for fused ops, which
            version with the ``backplane`` domain).
        versions: every recorded version (its ``since`` opset), oldest first: the one in
            force at opset 7 and every later one for the default domain.
        family: its cost family (:data:`backplane.ops.costs.FAMILY_NAMES`).
        schemas: the schema of each recorded version, oldest first.
    """

    name: str
    domain: str
    tier: str
    inputs: tuple[Formal, ...]
    type_constraints: Mapping[str, frozenset[str]] = field(hash=False)
    attributes: Mapping[str, Any] = field(hash=False)
    cost: Callable[["Node"], Cost] = field(compare=False, hash=False, repr=False)
    outputs: tuple[Formal, ...] = ()
    variadic: bool = False
    required_attributes: frozenset[str] = frozenset()
    since: int = 1
    versions: tuple[int, ...] = ()
    family: str = ""
    schemas: tuple[OpVersion, ...] = field(default=(), compare=False, hash=False, repr=False)

    @classmethod
    def from_versions(cls, name: str, domain: str, tier: str, since: int,
                      schemas: tuple[OpVersion, ...], family: str,
                      cost: Callable[["Node"], Cost]) -> "OpDef":
        """An op whose top-level schema is its newest version's."""
        newest = schemas[-1]
        return cls(name=name, domain=domain, tier=tier, inputs=newest.inputs,
                   type_constraints=newest.type_constraints, attributes=newest.attributes,
                   cost=cost, outputs=newest.outputs, variadic=newest.variadic,
                   required_attributes=newest.required_attributes, since=since,
                   versions=tuple(s.since for s in schemas), family=family, schemas=schemas)

    @property
    def key(self) -> str:
        """The op's key in capability tables (:func:`backplane.sdk.contract.op_key`)."""
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

    def version_at(self, opset: int) -> int:
        """The version in force at ``opset`` of the op's domain (its ``since``), or 0 when
        the op does not exist yet at that opset (or that version is not recorded)."""
        found = [v for v in self.versions if v <= opset]
        return found[-1] if found else 0

    def at(self, opset: int) -> OpVersion | None:
        """The schema in force at ``opset``, or None (see :meth:`version_at`)."""
        version = self.version_at(opset)
        return next((s for s in self.schemas if s.since == version), None)

    def same_as(self, versions: "frozenset[int] | set[int] | tuple[int, ...]") -> frozenset[int]:
        """``versions`` and every other version with the signature of one of them: the
        versions a kernel written for ``versions`` runs unchanged (they differ in the
        types they admit only)."""
        signatures = {s.signature for s in self.schemas if s.since in versions}
        return frozenset(versions) | {s.since for s in self.schemas
                                      if s.signature in signatures}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``--json`` listings print): the newest schema, and the versions."""
        return {
            "key": self.key, "name": self.name, "domain": self.domain, "tier": self.tier,
            "family": self.family, "since": self.since, "versions": list(self.versions),
            "inputs": [{"name": n, "type": t, "optional": o} for n, t, o in self.inputs],
            "outputs": [{"name": n, "type": t, "optional": o} for n, t, o in self.outputs],
            "variadic": self.variadic,
            "type_constraints": {k: sorted(v) for k, v in self.type_constraints.items()},
            "attributes": dict(self.attributes),
            "required_attributes": sorted(self.required_attributes),
        }
