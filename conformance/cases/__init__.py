"""Op-level conformance cases: one small ONNX model per case, with fresh random inputs.

``generate(op, seed)`` builds an op's cases: every dtype the op admits (among ``DTYPES``),
ranks 0 to 5, broadcasting, empty tensors, sizes 1/7/127/1025 along the main axis,
attribute variants, special values and one large input. A case's inputs come from
``numpy.random.default_rng(seed + crc32(case id))``, so a case is reproduced from its id and
the seed alone, whatever else was generated. Its expected outputs are left to the oracle
(``backplane.conformance.oracle``); ``onnx_node_cases`` brings ONNX's own node tests, which
carry their recorded outputs.

The generators live in one module per op family (element-wise, contraction, window,
normalisation, reduction, movement, gather, conversion, resize); this module assembles them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from backplane.conformance.casedef import OPSET, Case, case_rng
from backplane.conformance.cases import (contraction, conversion, elementwise, gather, movement,
                                         normalisation, reduction, resize, window)
from backplane.conformance.cases.build import (DTYPES, IMAGE, LARGE, MAIN_INPUT, MANDATORY_OPS,
                                               RANK_SHAPES, SIZES, TAGS, Builder, CaseGenerator,
                                               admitted_dtypes, tag_order)
from backplane.conformance.cases.node_tests import onnx_node_cases
from backplane.conformance.cases.values import PAIRS_SHAPE, SIGNED_ZERO_OPS
from backplane.model.intake import MIN_OPSET
from backplane.ops import get
from backplane.ops.survey import at_version

__all__ = ["DTYPES", "IMAGE", "LARGE", "MANDATORY_OPS", "OPSET", "PAIRS_SHAPE", "PER_VERSION",
           "RANK_SHAPES", "SIGNED_ZERO_OPS", "SIZES", "SPECIAL_VALUE_OPS", "TAGS", "TIERS",
           "Case", "admitted_dtypes", "all_cases", "case_rng", "generate", "onnx_node_cases",
           "versioned"]

#: The tiers a generated case is in.
TIERS = ("mandatory", "optional")
#: Generated cases of an op re-run at each other version of its schema (from opset 7), at
#: most: the first that convert to the opset where that version starts.
PER_VERSION = 2

#: The case generator of each op, from its family's module.
_GENERATORS: dict[str, CaseGenerator] = {
    **elementwise.GENERATORS, **contraction.GENERATORS, **window.GENERATORS,
    **normalisation.GENERATORS, **reduction.GENERATORS, **movement.GENERATORS,
    **gather.GENERATORS, **conversion.GENERATORS, **resize.GENERATORS}
#: The ops :data:`elementwise.SPECIAL_ONLY` checks, beside :data:`MANDATORY_OPS`.
SPECIAL_VALUE_OPS: tuple[str, ...] = tuple(elementwise.SPECIAL_ONLY)
_GENERATORS.update(elementwise.SPECIAL_ONLY)


def generate(op: str, seed: int, dtypes: Iterable[str] | None = None) -> list[Case]:
    """The generated cases of one mandatory op (or of one of :data:`SPECIAL_VALUE_OPS`),
    restricted to ``dtypes`` if given."""
    if op not in _GENERATORS:
        raise ValueError(f"no case generator for op {op!r}; generated ops: "
                         f"{', '.join(MANDATORY_OPS + SPECIAL_VALUE_OPS)}")
    wanted = None if dtypes is None else set(dtypes)
    builder = Builder(op, seed, wanted)
    _GENERATORS[op](builder, admitted_dtypes(op))
    return builder.cases + versioned(builder.cases)


def versioned(cases: list[Case]) -> list[Case]:
    """Cases at each other version of their op's schema (from opset 7 to the newest):
    the first :data:`PER_VERSION` cases (in generation order), relabelled to the opset where that
    version starts (or converted by onnx.version_converter where the node's form changed:
    attributes that became inputs); versions no case converts to are left out. Tag
    ``version``; the id ends in ``/opset-N``. The oracle computes their outputs at that
    version, so a backend is checked on each version it declares."""
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
        main = schema.dtypes_of(schema.inputs[MAIN_INPUT.get(definition.name, 0)][0])
        kept = 0
        for case in plain:
            if kept == PER_VERSION:
                break
            model = at_version(case.model, version) if case.dtype in main else None
            if model is not None:
                kept += 1
                out.append(dataclasses.replace(
                    case, id=f"{case.id}/opset-{version}", model=model,
                    tags=tuple(sorted({*case.tags, "version"}, key=tag_order))))
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
        # on use only: the suite's modules load when a run asks for them
        from backplane.conformance.zoo import zoo_cases

        out += zoo_cases(seed)
    return out if tier == "all" else [c for c in out if c.tier == tier]
