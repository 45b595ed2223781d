"""Opset conversion for the one backend that needs it.

A graph compiler receives the model at its own opset, never converted. A kernel backend
(opencl, arm-neon, the torch op table) declares the op versions its kernels were written
for, the signatures of opset 21; a node at an older version of a changed signature
(ReduceMean-13 with ``axes`` as an attribute, Squeeze-11, Pad-2 ...) is not one of them.
Where no backend runs such a node as it is, the planner asks here whether
``onnx.version_converter`` turns it into a version the backend declares, and whether the
converted node computes what the original does: both run through the reference evaluator
on sample inputs drawn for the node's inferred shapes, and must agree exactly up to a
float rounding. A node that cannot be converted, or cannot be checked (its shapes are
unknown, its sample inputs are refused), or that disagrees, stays refused with that reason.

The partition that holds such nodes is converted, whole, to the newest opset its nodes
need when it is compiled for that backend (:func:`convert_graph`); the backend checks every
converted node against its table again there. Answers are cached per process by the
node's op, version, attributes, input types and the target opset.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from backplane import ops
from backplane.model.graph import DTYPE_CODES, Graph
from backplane.model.samples import RandomInput, draw
from backplane.sdk.contract import Verdict
from backplane.sdk.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from backplane.sdk.contract import Capabilities
    from backplane.model.graph import Node

#: Sizes given to a dimension the node's inferred shape leaves symbolic, for its samples:
#: the first the original node accepts.
SAMPLE_DIMS = (3, 1)
#: How close the converted node's outputs must be to the original's (the same arithmetic
#: in another form: only float rounding may differ).
RTOL, ATOL = 1e-5, 1e-6

#: key -> (the converted node's nodes, or None; why not)
_cache: dict[tuple, tuple[tuple["Node", ...] | None, str]] = {}
_lock = threading.Lock()


def target_opset(node: "Node", caps: "Capabilities") -> int:
    """The opset whose version of ``node``'s op the backend declares, the oldest one newer
    than the node's own (0: none; a conversion goes forward only)."""
    support = caps.ops.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    definition = ops.find(node.op_type, "")
    if support is None or support.versions is None or definition is None or not node.version:
        return 0
    newer = sorted(v for v in support.versions if v > node.version)
    return newer[0] if newer and newer[0] <= max(definition.versions) else 0


def admit(node: "Node", graph: "Graph", caps: "Capabilities", backend: str
          ) -> tuple[int, Verdict]:
    """``(target opset, verdict)``: whether ``backend`` runs ``node`` once it is converted
    (target 0 and the refusal's reason where it does not)."""
    target = 0 if node.body else target_opset(node, caps)
    if not target:
        return 0, Verdict(False, "capability:version", "no newer version of the op is declared")
    key = _key(node, graph, target)
    with _lock:
        found = _cache.get(key)
    if found is None:
        found = _check(node, graph, target)
        with _lock:
            _cache[key] = found
    converted, why = found
    if converted is None:
        return 0, Verdict(False, "capability:version",
                          f"{node.op_type}-{node.version} is not declared, and converting it "
                          f"to opset {target} {why}")
    for n in converted:
        verdict = caps.check(n)
        if not verdict:
            return 0, Verdict(False, verdict.code,
                              f"converted to opset {target}: {verdict.detail}")
    return target, Verdict(True, "converted",
                           f"converted from opset {node.opset} to {target} for {backend}, "
                           "checked against the original on sample inputs")


def convert_graph(graph: "Graph", opset: int) -> "Graph":
    """``graph`` (a partition's subgraph) converted to default-domain ``opset``."""
    from onnx import version_converter


    try:
        model = version_converter.convert_version(graph.model, opset)
    except Exception as exc:
        raise ValueError(f"onnx.version_converter cannot take {graph.name} from opset "
                         f"{graph.opsets.get('', 0)} to {opset}: {exc}") from exc
    out = Graph(model, graph.name)
    out.notes = list(graph.notes)
    return out


def _key(node: "Node", graph: "Graph", target: int) -> tuple:
    attrs = tuple(sorted((k, repr(v)) for k, v in node.attributes.items()))
    types = tuple((graph.values[v].dtype, graph.values[v].shape) if v in graph.values else None
                  for v in node.inputs)
    consts = tuple(t.SerializeToString() for t in graph.model.graph.initializer
                   if t.name in set(node.inputs))  # their values decide the node too
    return (node.op_type, node.version, attrs, types, consts, target)


def _single(node: "Node", graph: "Graph", target: int | None) -> tuple[Any, list[str]]:
    """The node as a model of its own (constant inputs kept), at its own opset or converted
    to ``target``; and the names of its non-constant inputs."""
    from onnx import helper, version_converter


    g = graph.model.graph
    proto = g.node[next(i for i, n in enumerate(graph.nodes) if n is node)]
    consts = [t for t in g.initializer if t.name in set(node.inputs)]
    const_names = {t.name for t in consts}
    feeds, inputs = [], []
    for v in node.inputs:
        if not v or v in const_names or v in feeds:
            continue
        vi = graph.values[v]
        dims = None if vi.shape is None else [d if isinstance(d, int) else None
                                              for d in vi.shape]
        inputs.append(helper.make_tensor_value_info(v, DTYPE_CODES[vi.dtype], dims))
        feeds.append(v)
    outputs = [helper.make_tensor_value_info(o, DTYPE_CODES[graph.values[o].dtype], None)
               for o in node.outputs if o]
    model = helper.make_model(
        helper.make_graph([proto], f"{node.name}-alone", inputs, outputs, initializer=consts),
        opset_imports=[helper.make_opsetid("", node.opset)], ir_version=graph.model.ir_version)
    if target is not None:
        model = version_converter.convert_version(model, target)
    return model, feeds


def _check(node: "Node", graph: "Graph", target: int) -> tuple[tuple["Node", ...] | None, str]:
    """The nodes of ``node`` converted to ``target`` if they agree with the original on
    sample inputs, else None and why not."""
    import numpy as np


    if any(v and v in graph.values and graph.values[v].shape is None for v in node.inputs):
        return None, "cannot be checked: an input's shape is unknown"
    if any(o and o not in graph.values for o in node.outputs):
        return None, "cannot be checked: an output's type is unknown"
    try:
        original, feeds = _single(node, graph, None)
        converted, _ = _single(node, graph, target)
    except Exception as exc:  # the converter has no adapter, or fails on this node
        return None, f"fails in onnx.version_converter: {str(exc).splitlines()[0][:200]}"
    for size in SAMPLE_DIMS:  # a Squeeze of a symbolic dimension needs it to be 1
        sample = _samples(graph, feeds, size)
        if isinstance(sample, str):
            return None, sample
        try:
            want = _evaluate(original, sample)
            break
        except Exception as exc:
            refused = exc
    else:
        return None, ("cannot be checked: the original refuses its sample inputs "
                      f"({type(refused).__name__})")
    try:
        got = _evaluate(converted, sample)
    except Exception as exc:
        return None, f"fails on sample inputs the original runs ({type(exc).__name__}: {exc})"
    for a, b in zip(want, got):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype or not np.allclose(
                a.astype(np.float64) if a.dtype.kind in "fc" else a,
                b.astype(np.float64) if b.dtype.kind in "fc" else b,
                rtol=RTOL, atol=ATOL, equal_nan=True):
            return None, "gives other outputs than the original on sample inputs"
    return tuple(Graph(converted, f"{node.name}-converted").nodes), ""


def _samples(graph: "Graph", feeds: list[str], size: int) -> dict[str, Any] | str:
    """Random inputs for ``feeds`` in their inferred shapes (``size`` for a symbolic
    dimension), drawn as :func:`backplane.model.samples.draw` draws; a reason where one cannot
    be drawn."""
    specs = []
    for v in feeds:
        vi = graph.values[v]
        shape = tuple(d if isinstance(d, int) else size for d in vi.shape)
        if vi.dtype.startswith(("float", "bfloat")):
            values, low, high = "standard normal", None, None
        elif vi.dtype == "bool":
            values, low, high = "booleans", None, None
        else:
            values, low, high = "integers in [0, 2)", 0, 2
        specs.append(RandomInput(v, vi.dtype, shape, values, low, high, "", True))
    try:
        return draw(specs)
    except (InputError, TypeError) as exc:  # a type numpy has no sample of
        return f"cannot be checked: {exc}"


def _evaluate(model: Any, feeds: dict[str, Any]) -> list[Any]:
    # on use only: onnx.reference loads when the reference runs
    import numpy as np

    from backplane.runtimes.onnxref.fixes import evaluator_class

    with np.errstate(all="ignore"):
        return list(evaluator_class()(model).run(None, dict(feeds)))
