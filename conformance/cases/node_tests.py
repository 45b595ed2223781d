"""ONNX's own node tests as conformance cases, with their recorded inputs and outputs."""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from backplane.conformance.casedef import Case
from backplane.conformance.cases.build import MANDATORY_OPS
from backplane.conformance.oracle import evaluate
from backplane.model.graph import DTYPE_NAMES
from backplane.model.intake import MIN_OPSET
from backplane.ops import RANDOM_OPS
from backplane.ops.survey import relabeled


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
