"""Which ops, at which versions and in which dtypes, a graph compiler runs: surveyed.

For a runtime whose only op-support query is "does this model compile here" (OpenVINO's
``query_model``), the answer for the whole operator registry is found with one-node
models, each asked of the runtime:

- the core ops (:data:`~backplane.ops.MANDATORY`): their trial models
  (:mod:`backplane.ops.trials`), every variant in every dtype, at opset 21, compiled and
  run when the backend gives a ``run`` check;
- every other op of the registry's ONNX domains, and the core ops at their other
  versions: ONNX's own node tests (``onnx.backend.test.case.node``: valid one-node models
  of nearly every op, at its newest version), up to :data:`PER_VERSION` per op version
  and dtype; a version no test is recorded at is reached by converting a test model with
  ``onnx.version_converter``;
- ``com.microsoft`` ops: the trial models of :data:`CONTRIB_PROBES`.

An op version is declared in a dtype when every model of it in that dtype was taken
(a trial model that fails is a variant the runtime lacks; the reason is kept in
``refused``). Versions that differ from a surveyed one in the types they admit only
(:meth:`~backplane.ops.OpDef.same_as`) are declared alike, for the dtypes both admit.

Building the models imports onnx and numpy; importing this module does not.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from backplane.model.dtypes import DTYPE_CODES, DTYPE_NAMES
from backplane.model.graph import numpy_dtype
from backplane.ops.opdef import MANDATORY
from backplane.ops.trials import DTYPES, OPSET, TryOp, discover, models, np_dtype
from backplane.ops.registrations import main_constraint
from backplane.ops.registry import all_ops, find
from backplane.sdk.contract import op_key

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: Node tests asked per op version and dtype, at most (the first, in ONNX's order).
PER_VERSION = 3
#: ``query(model) -> ''`` when the runtime takes the whole model, else its reason.
Query = Callable[["onnx.ModelProto"], str]


def survey(query: Query, run: TryOp | None = None,
           domains: tuple[str, ...] = ("", "ai.onnx.ml", "com.microsoft"),
           only: frozenset[str] | None = None) -> dict[str, Any]:
    """``{"ops": {op key: {version: [dtypes]}}, "refused": {op key: {"version/dtype":
    why}}}`` for every op of the registry in ``domains``.

    Args:
        query: asks the runtime whether it takes a model (no compile needed).
        run: the core ops' full check (``try_op(op, dtype, domain)``: compile and run
            every probe variant); None asks ``query`` of them too.
        domains: the op domains the runtime reads.
        only: survey these op keys only (the core ops' ``run`` check is then skipped).
    """
    ops: dict[str, dict[int, set[str]]] = {}
    refused: dict[str, dict[str, str]] = {}
    if run is not None and only is None:
        found, why = discover(run)
        for key, dtypes in found.items():
            version = find(key).version_at(OPSET)
            ops.setdefault(key, {})[version] = set(dtypes)
        for key, per_dtype in why.items():
            version = find(key).version_at(OPSET)
            for dt, reason in per_dtype.items():
                refused.setdefault(key, {})[f"{version}/{dt}"] = reason
    checked = {(k, v) for k, versions in ops.items() for v in versions} | {
        (k, int(vd.split("/")[0])) for k, r in refused.items() for vd in r}
    verdicts: dict[tuple[str, int, str], list[str]] = {}
    if run is None and "" in domains:  # the core ops' trial models, asked of query
        for key, version, dtype, model in _core_probes():
            if only is not None and key not in only:
                continue
            verdicts.setdefault((key, version, dtype), []).append(query(model))
            checked.add((key, version))
    for key, version, dtype, model in _models(domains, checked):
        if only is not None and key not in only:
            continue
        verdicts.setdefault((key, version, dtype), []).append(query(model))
    for (key, version, dtype), answers in verdicts.items():
        bad = [a for a in answers if a]
        if bad:
            refused.setdefault(key, {})[f"{version}/{dtype}"] = \
                f"{len(bad)} of {len(answers)} models refused: {bad[0]}"[:400]
        else:
            ops.setdefault(key, {}).setdefault(version, set()).add(dtype)
    return {"ops": {k: {str(v): sorted(d) for v, d in sorted(_widened(k, per).items())}
                    for k, per in sorted(ops.items())},
            "refused": refused}


def _core_probes() -> Iterator[tuple[str, int, str, Any]]:
    """The core ops' trial models, every variant in every dtype, at opset 21."""
    for op in MANDATORY:
        schema = find(op).at(OPSET)
        main = schema.inputs[1 if op == "Where" else 0][0]
        for dtype in [d for d in DTYPES if d in schema.dtypes_of(main)]:
            for model, _ in models(op, dtype):
                yield op, schema.since, "bool" if op == "Where" else dtype, model


def _widened(key: str, per: dict[int, set[str]]) -> dict[int, set[str]]:
    """``per`` with every unsurveyed version of the same signature as a surveyed one."""
    definition = find(key)
    if definition is None or not definition.schemas:
        return per
    out = {v: set(d) for v, d in per.items()}
    for version, dtypes in per.items():
        for other in definition.same_as({version}) - {version}:
            schema = next(s for s in definition.schemas if s.since == other)
            allowed = schema.type_constraints.get(main_constraint(schema) or "", frozenset())
            if key == "Constant":  # a value: whichever type it holds, nothing is computed
                dtypes = allowed & CONSTANT_DTYPES
            out.setdefault(other, set()).update(set(dtypes) & allowed)
    if key == "Constant":
        for version in out:
            schema = next(s for s in definition.schemas if s.since == version)
            allowed = schema.type_constraints.get(main_constraint(schema) or "", frozenset())
            out[version] |= allowed & CONSTANT_DTYPES
    return {v: d for v, d in out.items() if d}


def _models(domains: tuple[str, ...], checked: set[tuple[str, int]]
            ) -> Iterator[tuple[str, int, str, "onnx.ModelProto"]]:
    """``(op key, version, dtype, model)`` of every node test and contrib probe of the
    registry's ops in ``domains``, and of conversions to versions without a test."""
    tests: dict[str, dict[tuple[int, str], list[Any]]] = {}
    for key, version, dtype, model in _node_tests():
        if find(key) is None or find(key).domain not in domains or (key, version) in checked:
            continue
        tests.setdefault(key, {}).setdefault((version, dtype), []).append(model)
    if "com.microsoft" in domains:
        for key, dtype, model in _contrib_probes():
            tests.setdefault(key, {}).setdefault((1, dtype), []).append(model)
    for key, per in tests.items():
        for (version, dtype), found in per.items():
            for model in found[:PER_VERSION]:
                yield key, version, dtype, model
        yield from _retyped_variants(key, per)
    for definition in all_ops():
        if definition.domain != "" or definition.tier not in ("mandatory", "optional"):
            continue
        per = tests.get(definition.key, {})
        have = {v for v, _ in per} | {v for k, v in checked if k == definition.key}
        seeds = _seeds(definition, per)
        for version in sorted(set(definition.versions) - have):
            converted = next((c for c in (at_version(m, version) for m in seeds)
                              if c is not None), None)
            if converted is None:
                continue
            dtype = _dtype_of(converted)
            yield definition.key, version, dtype, converted
            schema = next(s for s in definition.schemas if s.since == version)
            allowed = schema.type_constraints.get(main_constraint(schema) or "", frozenset())
            for other in RETYPE_DTYPES:  # the version in the other dtypes models compute in
                if other in allowed and other != dtype:
                    model = _retyped(converted, schema, other)
                    if model is not None:
                        yield definition.key, version, other, model


def _seeds(definition: Any, per: dict[tuple[int, str], list[Any]]) -> list[Any]:
    """Models to convert to an op's untested versions: a core op's own float32 probe
    models first (their attribute-like inputs are constants, which the converter turns
    into the attributes of older versions), then its node tests, float32 first."""
    out = list(_old_forms(definition.name))
    if definition.tier == "mandatory":
        schema = definition.at(OPSET)
        main = schema.dtypes_of(schema.inputs[1 if definition.name == "Where" else 0][0])
        dtype = "float32" if "float32" in main else next(
            (d for d in RETYPE_DTYPES if d in main), None)
        try:
            out += [m for m, _ in models(definition.name, dtype)][:2] if dtype else []
        except ValueError:  # no trial model of this op
            pass
    tests = sorted(per.items(), key=lambda item: (item[0][1] != "float32", -item[0][0]))
    return out + [models_[0] for _, models_ in tests][:3]


#: Dtypes a Constant is declared in wherever one Constant is taken (it computes nothing).
CONSTANT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "int8", "uint8",
                             "int16", "int32", "int64", "bool"})
#: Dtypes an op version is also asked in, its first test model retyped, where the test
#: covers others only (ONNX's tests are mostly float32; models compute shapes in int64).
RETYPE_DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")


def _retyped_variants(key: str, per: dict[tuple[int, str], list[Any]]
                      ) -> Iterator[tuple[str, int, str, Any]]:
    definition = find(key)
    for version in sorted({v for v, _ in per}):
        schema = next((s for s in definition.schemas if s.since == version), None)
        if schema is None:
            continue
        have = {dt for v, dt in per if v == version}
        seed = per[(version, "float32")][0] if "float32" in have else \
            per[(version, sorted(have)[0])][0]
        allowed = schema.type_constraints.get(main_constraint(schema) or "", frozenset())
        for dtype in RETYPE_DTYPES:
            if dtype in allowed and dtype not in have:
                model = _retyped(seed, schema, dtype)
                if model is not None:
                    yield key, version, dtype, model


def _retyped(model: Any, schema: Any, dtype: str) -> Any:
    """``model`` with every value bound to its node's main type constraint in ``dtype``
    (initializers cast), if still valid; else None."""
    import onnx
    from onnx import numpy_helper


    main = main_constraint(schema)
    node = model.graph.node[0]
    names = {n for k, n in enumerate(node.input)
             if schema.inputs and schema.inputs[min(k, len(schema.inputs) - 1)][1] == main}
    names |= {n for k, n in enumerate(node.output)  # (outputs past the last: variadic)
              if schema.outputs and schema.outputs[min(k, len(schema.outputs) - 1)][1] == main}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.name in names and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = DTYPE_CODES[dtype]
    for i, t in enumerate(g.initializer):
        if t.name in names:
            value = numpy_helper.to_array(t).astype(np_dtype(dtype))
            g.initializer[i].CopyFrom(numpy_helper.from_array(value, t.name))
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception:  # the op's other inputs or attributes pin the type: not this dtype
        return None
    return out


def relabeled(model: Any, opset: int) -> Any:
    """A copy of ``model`` importing default-domain opset ``opset`` (nothing else changed:
    valid only where its nodes mean the same there)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for o in copy.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    return copy


def at_version(model: Any, version: int) -> Any:
    """``model`` at opset ``version``: the same node where it is valid there (a newer
    version's node that leaves the attributes and inputs it added unset), else converted by
    onnx.version_converter; checked, or None."""
    import onnx
    from onnx import version_converter

    try:
        same = onnx.shape_inference.infer_shapes(relabeled(model, version))  # typed outputs
        onnx.checker.check_model(same, full_check=True)
        return same
    except Exception:  # the node uses what that version lacks: convert it instead
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = version_converter.convert_version(model, version)
        onnx.checker.check_model(out, full_check=True)
    except Exception:  # no adapter between these versions: the version stays unsurveyed
        return None
    return out if len(out.graph.node) == 1 else None


def _old_forms(op: str) -> list[Any]:
    """Seeds for versions no newer model converts to: the core ops whose older versions
    took as attributes (or as required inputs) what later ones take otherwise."""
    from onnx import TensorProto, helper, numpy_helper

    import numpy as np

    def one(opset: int, inputs: list[str], consts: dict[str, Any], **attrs: Any) -> Any:
        node = helper.make_node(op, inputs, ["y"], **attrs)
        fed = [n for n in inputs if n and n not in consts]
        graph = helper.make_graph(
            [node], f"old-{op}", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 4, 4])
                                  for n in fed],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(v, n) for n, v in consts.items()])
        return helper.make_model(graph, ir_version=7,
                                 opset_imports=[helper.make_opsetid("", opset)])

    scales = np.array([1, 1, 2, 2], np.float32)
    forms = {
        "Resize": lambda: [one(10, ["x", "s"], {"s": scales}),
                           one(11, ["x", "r", "s"], {"r": np.zeros(0, np.float32), "s": scales})],
        "Clip": lambda: [one(6, ["x"], {}, min=0.0, max=6.0)],
        "Pad": lambda: [one(2, ["x"], {}, pads=[0, 0, 1, 1, 0, 0, 1, 1])],
        "Slice": lambda: [one(1, ["x"], {}, starts=[1], ends=[3], axes=[2])],
        "Pow": lambda: [one(7, ["x", "e"], {"e": np.array(2, np.float32)})],
    }
    return forms[op]() if op in forms else []


@functools.lru_cache(maxsize=8)
def node_test_cases(ops: tuple[str, ...] | None = None) -> tuple[tuple[Any, ...], ...]:
    """ONNX's one-node node tests of ops the registry knows (of ``ops`` only, when given:
    then only their test modules are imported): ``(op key, version, dtype, name, model,
    feeds, expected, rtol, atol)`` each, from the test's first data set; tests whose values
    are not all tensors have empty feeds and expectations."""
    import numpy as np
    from onnx import TensorProto, numpy_helper


    out = []
    cases = _collected(ops)
    for case in cases:
        if ops is not None and case.model is not None and case.model.graph.node and \
                case.model.graph.node[0].op_type not in ops:
            continue
        model = case.model
        if model is None or len(model.graph.node) != 1 or "_expanded" in case.name:
            continue
        node = model.graph.node[0]
        key = op_key(node.op_type, node.domain)
        definition = find(key)
        opset = next((o.version for o in model.opset_import
                      if (o.domain if o.domain != "ai.onnx" else "") == node.domain), 0)
        version = definition.version_at(opset) if definition is not None else 0
        dtype = _dtype_of(model)
        if not (version and dtype):
            continue
        feeds, expected = {}, {}
        inputs, outputs = case.data_sets[0] if case.data_sets else ([], [])
        values = [*inputs, *outputs]
        if values and all(isinstance(v, (np.ndarray, np.generic, TensorProto)) for v in values):
            as_array = lambda v: numpy_helper.to_array(v) if isinstance(v, TensorProto) \
                else np.asarray(v)  # noqa: E731
            feeds = {vi.name: as_array(v) for vi, v in zip(model.graph.input, inputs)}
            expected = {vi.name: as_array(v) for vi, v in zip(model.graph.output, outputs)}
        out.append((key, version, dtype, case.name, model, feeds, expected,
                    float(case.rtol), float(case.atol)))
    return tuple(out)


#: Float types a float32 node test is also run at, where a table declares them and ONNX
#: records no test of that op version at that type, with the relative tolerance of the
#: comparison (a few units in the last place: these catch broken kernels, not rounding).
LOW_PRECISION = {"float16": 2.0 ** -7, "bfloat16": 2.0 ** -5}


def low_precision_cases(cases: tuple[tuple[Any, ...], ...],
                        table: Mapping[str, Mapping[str, list[str]]]
                        ) -> tuple[tuple[Any, ...], ...]:
    """The float32 node tests of ``cases`` again at float16 and bfloat16, for the op
    versions ``table`` declares at those types and ONNX has no recorded test of: the
    model retyped, the inputs rounded to the type, and ``expected`` a function giving the
    oracle's outputs (onnx.reference in float32 on the rounded inputs, rounded to the
    type). A runtime's low-precision kernel then meets a check too (OpenVINO's bfloat16
    ReduceMax returns NaN for a row of -inf and 1.875 for min(1, 2)); tolerance
    :data:`LOW_PRECISION`, and ``atol`` that times the largest expected magnitude."""
    import numpy as np
    from onnx import TensorProto


    recorded = {(c[0], c[1], c[2]) for c in cases}
    out = []
    for key, version, dtype, name, model, feeds, expected, _rtol, _atol in cases:
        if dtype != "float32" or not expected or not feeds or \
                model.graph.initializer or _has_tensor_attribute(model.graph.node[0]):
            continue
        for target, rtol in LOW_PRECISION.items():
            if target not in table.get(key, {}).get(str(version), ()) or \
                    (key, version, target) in recorded:
                continue
            elem = TensorProto.FLOAT16 if target == "float16" else TensorProto.BFLOAT16
            low = type(model)()
            low.CopyFrom(model)
            for vi in [*low.graph.input, *low.graph.output]:
                if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
                    vi.type.tensor_type.elem_type = elem
            np_type = numpy_dtype(target)
            rounded = {k: v.astype(np_type) if v.dtype == np.float32 else v
                       for k, v in feeds.items()}
            out.append((key, version, target, f"{name}@{target}", low, rounded,
                        functools.partial(_oracle_at, model, rounded, np_type), rtol, rtol))
    return tuple(out)


def _has_tensor_attribute(node: Any) -> bool:
    from onnx import AttributeProto

    return any(a.type in (AttributeProto.TENSOR, AttributeProto.GRAPH) for a in node.attribute)


def _oracle_at(model: Any, rounded: Mapping[str, Any], np_type: Any) -> dict[str, Any]:
    """onnx.reference's outputs of the float32 ``model`` on ``rounded`` inputs (read back
    as float32), float32 outputs rounded to ``np_type``."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    feeds = {k: v.astype(np.float32) if v.dtype == np_type else v for k, v in rounded.items()}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        got = ReferenceEvaluator(model).run(None, feeds)
    return {vi.name: (np.asarray(v).astype(np_type) if np.asarray(v).dtype == np.float32
                      else np.asarray(v)) for vi, v in zip(model.graph.output, got)}


def _collected(ops: tuple[str, ...] | None) -> list[Any]:
    """ONNX's node test cases: all of them, or those of the modules named after ``ops``."""
    import importlib
    import pkgutil

    import numpy as np
    import onnx.backend.test.case.node as node_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if ops is None:
            return list(node_tests.collect_testcases(None))
        modules = {m.name.replace("_", "").lower(): m.name
                   for m in pkgutil.iter_modules(node_tests.__path__)}
        names = [modules.get(op.lower()) for op in ops]
        if None in names:  # an op without a module of its own: every module
            return list(node_tests.collect_testcases(None))
        for name in names:
            importlib.import_module(f"{node_tests.__name__}.{name}")
        return list(node_tests._NodeTestCases)


def _node_tests() -> tuple[tuple[str, int, str, Any], ...]:
    """``(op key, version, dtype, model)`` of ONNX's one-node node tests."""
    return tuple(c[:3] + (c[4],) for c in node_test_cases())


def _dtype_of(model: Any) -> str:
    """The dtype of the one node's first input (first output when it has none)."""
    node = model.graph.node[0]
    name = next((n for n in node.input if n), None) or node.output[0]
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.HasField("tensor_type"):
            return DTYPE_NAMES.get(vi.type.tensor_type.elem_type, "")
    for t in model.graph.initializer:
        if t.name == name:
            return DTYPE_NAMES.get(t.data_type, "")
    return ""


#: ``com.microsoft`` ops surveyed with trial models of their own (ONNX has no tests of
#: them): the ones ONNX Runtime's optimizer and quantizer write into exported models.
CONTRIB_PROBES = ("FastGelu", "BiasGelu", "Gelu", "QuickGelu", "BiasAdd",
                  "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "FusedMatMul",
                  "Attention", "MatMulNBits", "EmbedLayerNormalization", "DynamicQuantizeLSTM")


def _contrib_probes() -> Iterator[tuple[str, str, Any]]:
    """``(op key, dtype, model)`` of a one-node float32 model per :data:`CONTRIB_PROBES` op."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    rng = np.random.default_rng(0)

    def model(op: str, fed: list[tuple[str, list[int]]], consts: dict[str, Any],
              outputs: list[str], **attrs: Any) -> Any:
        infos = [helper.make_tensor_value_info(n, f, shape) for n, shape in fed]
        inits = [numpy_helper.from_array(v, n) for n, v in consts.items()]
        node = helper.make_node(op, [n for n, _ in fed] + list(consts), outputs,
                                domain="com.microsoft", **attrs)
        rank = 2 if op == "MatMulNBits" else 3  # the checker wants output ranks
        outs = [helper.make_tensor_value_info(o, TensorProto.INT32 if o == "mask" else f,
                                              [None] * (1 if o == "mask" else rank))
                for o in outputs]
        graph = helper.make_graph([node], f"probe-{op}", infos, outs, initializer=inits)
        return helper.make_model(graph, ir_version=10, opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])

    def w(*shape: int) -> Any:
        return rng.standard_normal(shape).astype(np.float32)

    x = [("x", [2, 4, 8])]
    norm = {"gamma": w(8), "beta": w(8)}
    ids = np.zeros((2, 4), np.int32)
    models = {
        "FastGelu": model("FastGelu", x, {"b": w(8)}, ["y"]),
        "BiasGelu": model("BiasGelu", x, {"b": w(8)}, ["y"]),
        "Gelu": model("Gelu", x, {}, ["y"]),
        "QuickGelu": model("QuickGelu", x, {}, ["y"], alpha=1.702),
        "BiasAdd": model("BiasAdd", x, {"b": w(8), "s": w(2, 4, 8)}, ["y"]),
        "SkipLayerNormalization": model("SkipLayerNormalization", x + [("skip", [2, 4, 8])],
                                        norm, ["y"], epsilon=1e-5),
        "SkipSimplifiedLayerNormalization": model(
            "SkipSimplifiedLayerNormalization", x + [("skip", [2, 4, 8])], {"gamma": w(8)},
            ["y"], epsilon=1e-5),
        "FusedMatMul": model("FusedMatMul", x, {"b": w(8, 5)}, ["y"], alpha=1.0),
        "Attention": model("Attention", x, {"w": w(8, 24), "b": w(24)}, ["y"], num_heads=2),
        "MatMulNBits": model("MatMulNBits", [("a", [2, 32])],
                             {"q": np.arange(80, dtype=np.uint8).reshape(5, 1, 16),
                              "s": np.ones(5, np.float32)}, ["y"], K=32, N=5, bits=4,
                             block_size=32),
        "EmbedLayerNormalization": model(
            "EmbedLayerNormalization", [],
            {"ids": ids, "seg": ids, "we": w(16, 8), "pe": w(16, 8), "se": w(2, 8), **norm},
            ["y", "mask"], epsilon=1e-5),
        "DynamicQuantizeLSTM": _quantized_lstm(rng),
    }
    for op in CONTRIB_PROBES:
        yield f"com.microsoft::{op}", "float32", models[op]


def _quantized_lstm(rng: Any) -> Any:
    """A one-node ``com.microsoft::DynamicQuantizeLSTM`` (what ``quantize_dynamic`` writes
    for an LSTM): float X and bias, int8 W [1, input, 4 * hidden] and R [1, hidden,
    4 * hidden] with per-direction scales and zero points, optional inputs left out."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    hidden, size = 4, 8
    consts = {"W": rng.integers(-127, 128, (1, size, 4 * hidden), dtype=np.int8),
              "R": rng.integers(-127, 128, (1, hidden, 4 * hidden), dtype=np.int8),
              "B": rng.standard_normal((1, 8 * hidden)).astype(np.float32),
              "W_scale": np.full(1, 0.01, np.float32), "W_zp": np.zeros(1, np.int8),
              "R_scale": np.full(1, 0.01, np.float32), "R_zp": np.zeros(1, np.int8)}
    node = helper.make_node("DynamicQuantizeLSTM", ["X", "W", "R", "B", "", "", "", "",
                                                    "W_scale", "W_zp", "R_scale", "R_zp"],
                            ["Y", "Y_h"], domain="com.microsoft", hidden_size=hidden)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "probe-DynamicQuantizeLSTM", [helper.make_tensor_value_info("X", f, [3, 2, size])],
        [helper.make_tensor_value_info("Y", f, [None] * 4),
         helper.make_tensor_value_info("Y_h", f, [None] * 3)],
        initializer=[numpy_helper.from_array(v, n) for n, v in consts.items()])
    return helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
