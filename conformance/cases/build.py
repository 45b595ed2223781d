"""The case builder: node inputs, one-node models, ids and tags, and the shared shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from backplane.conformance.casedef import OPSET, Case, case_rng
from backplane.conformance.cases.values import SIGNED_ZERO_OPS, np_dtype, random_values
from backplane.model.graph import DTYPE_CODES, DTYPE_NAMES
from backplane.ops import MANDATORY

#: The core op set: a backend that claims one of these ops must pass its cases.
MANDATORY_OPS: tuple[str, ...] = MANDATORY
#: The element types cases are generated for, in order of preference for an op's main dtype.
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64",
                           "bool")
#: Every tag a case may carry.
TAGS = frozenset({"broadcast", "rank-0", "rank-1", "rank-2", "rank-3", "rank-4", "rank-5",
                  "empty", "size-1", "size-7", "size-127", "size-1025", "attr", "special-values",
                  "large", "onnx-node-test", "model", "version"})
#: The sizes along the main axis of the size-N cases.
SIZES = (1, 7, 127, 1025)


@dataclass(frozen=True)
class T:
    """One node input: random data of ``kind`` or a fixed ``value``; a graph input unless
    ``const`` (then an initializer). ``dtype`` None means the case's dtype."""

    shape: tuple[int, ...] = ()
    kind: Any = "normal"
    dtype: str | None = None
    const: bool = False
    value: Any = None


def const(value: Any, dtype: str | None = "int64") -> T:
    """A constant (initializer) with fixed contents; dtype None: the case's dtype."""
    return T(np.shape(value), dtype=dtype, const=True, value=value)


def weight(shape: tuple[int, ...], kind: Any = "normal", dtype: str | None = None) -> T:
    """A constant with random contents (weights, biases, statistics)."""
    return T(tuple(shape), kind, dtype, const=True)


def shape_label(shape: Sequence[int]) -> str:
    """A shape as case ids spell it: ``3x4``, or ``scalar``."""
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


class Builder:
    """Collects the cases of one op."""

    def __init__(self, op: str, seed: int, wanted: set[str] | None, tier: str = "mandatory"):
        self.op, self.seed, self.wanted, self.tier = op, seed, wanted, tier
        self.schema = onnx.defs.get_schema(op, OPSET)
        self.cases: list[Case] = []
        self._ids: set[str] = set()

    def add(self, dtype: str, label: str, inputs: Sequence[T | None],
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
            array = (np.array(spec.value, dtype=np_dtype(dt)) if spec.value is not None
                     else random_values(rng, dt, tuple(spec.shape), spec.kind))
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
        out_types = [np_dtype(DTYPE_NAMES[o.type.tensor_type.elem_type])
                     for o in model.graph.output]
        expected = None
        if expect is not None:
            expected = {n: np.asarray(v).astype(t)
                        for n, v, t in zip(out_names, expect(arrays), out_types)}
        elif all(0 in s for s in out_shapes):
            expected = {n: np.zeros(s, t) for n, s, t in zip(out_names, out_shapes, out_types)}
        self.cases.append(Case(id=case_id, op=self.op, dtype=dtype, tier=self.tier, model=model,
                               inputs=feeds, expected=expected,
                               tags=tuple(sorted(all_tags, key=tag_order)),
                               seed=self.seed, tolerance_key=self.op,
                               signed_zero="special-values" in all_tags
                               and self.op in SIGNED_ZERO_OPS))


def tag_order(tag: str) -> tuple[int, str]:
    """The sort key of a case's tags: ranks, then shapes and sizes, then the rest."""
    order = ["rank-0", "rank-1", "rank-2", "rank-3", "rank-4", "rank-5", "broadcast", "empty",
             "size-1", "size-7", "size-127", "size-1025", "attr", "special-values", "large"]
    return (order.index(tag) if tag in order else len(order), tag)


def admitted_dtypes(op: str) -> list[str]:
    """The dtypes among ``DTYPES`` that the op's main input admits at ``OPSET``."""
    schema = onnx.defs.get_schema(op, OPSET)
    main = schema.inputs[MAIN_INPUT.get(op, 0)].type_str
    allowed = next((set(c.allowed_type_strs) for c in schema.type_constraints
                    if c.type_param_str == main), {main})
    return [d for d in DTYPES if _tensor_type(d) in allowed]


def _tensor_type(dtype: str) -> str:
    onnx_name = {"float32": "float", "float64": "double"}.get(dtype, dtype)
    return f"tensor({onnx_name})"


#: The input that gives an op its main dtype, where it is not the first.
MAIN_INPUT = {"Where": 1}

#: The data shape of each rank's cases.
RANK_SHAPES = {0: (), 1: (7,), 2: (3, 4), 3: (2, 3, 4), 4: (2, 3, 4, 5), 5: (2, 1, 3, 2, 4)}
LARGE = (1024, 1024)          # ~1e6 elements
IMAGE = (1, 16, 64, 64)       # the large input of convolutions and pools

#: A case generator: adds an op's cases to the builder, given the dtypes the op admits (its
#: main dtype first).
CaseGenerator = Callable[[Builder, list[str]], None]
