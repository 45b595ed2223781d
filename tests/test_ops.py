"""The operator registry: schemas as data, cost functions, fused ops and the fusion pass."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import backplane
from backplane import ops
from backplane.sdk.errors import UnsupportedError
from backplane.model.graph import Node, ValueInfo
from backplane.model.intake import load_model
from backplane.ops import Cost, costs, fused, fusion, schemas
from conftest import ROOT, run_python

RTOL, ATOL = 1e-5, 1e-6
F = TensorProto.FLOAT


@pytest.fixture
def seed() -> int:
    """A fresh seed per test, printed in every numerical assertion."""
    return int(np.random.SeedSequence().entropy % 2**32)


def assert_close(actual, expected, seed: int, what: str = "") -> None:
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL,
                               err_msg=f"{what} differs; seed={seed}")


def vi(name: str, shape, dtype: str = "float32") -> ValueInfo:
    return ValueInfo(name, dtype, None if shape is None else tuple(shape))


def node(op: str, inputs: list[ValueInfo | None], outputs: list[ValueInfo | None],
         domain: str = "", **attributes) -> Node:
    """A Node with the given typed inputs and outputs (None: absent/untyped)."""
    names = lambda vis, p: tuple(v.name if v else f"{p}{i}" for i, v in enumerate(vis))  # noqa: E731
    return Node(op.lower(), op, domain, names(inputs, "in"), names(outputs, "out"),
                attributes, tuple(inputs), tuple(outputs))


def model(nodes, inputs, outputs, inits=(), opset=17, functions=()) -> onnx.ModelProto:
    """A model of ``nodes``; inputs and outputs are (name, shape) pairs or value infos."""
    def info(x, dtype=F):
        return x if isinstance(x, onnx.ValueInfoProto) else helper.make_tensor_value_info(
            x[0], x[2] if len(x) > 2 else dtype, list(x[1]))
    opsets = [helper.make_opsetid("", opset)]
    if any(n.domain == "backplane" for n in nodes):
        opsets.append(helper.make_opsetid("backplane", 1))
    graph = helper.make_graph(nodes, "test", [info(i) for i in inputs],
                              [info(o) for o in outputs], initializer=list(inits))
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def run(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ReferenceEvaluator(m).run(None, feeds)


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def op_types(graph) -> list[str]:
    return [n.op_type for n in graph.nodes]


# --------------------------------------------------------------------------- models

def conv_model(rng, act="relu", opset=17, auto_pad=None, bias=True, extra_reader=False,
               conv_is_output=False, lo=0.0, hi=6.0):
    """x[1,3,7,7] -> Conv(4 filters 3x3) -> Relu | Clip(lo, hi) -> y."""
    inits = [const("w", rng.standard_normal((4, 3, 3, 3)))]
    inputs = ["x", "w"]
    if bias:
        inits.append(const("b", rng.standard_normal(4)))
        inputs.append("b")
    attrs = {"auto_pad": auto_pad, "strides": [2, 2]} if auto_pad else {"pads": [1, 1, 1, 1]}
    out = [4, 4] if auto_pad else [7, 7]
    nodes = [helper.make_node("Conv", inputs, ["c"], name="conv", **attrs)]
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="act"))
    else:
        bounds = []
        for name, value in (("lo", lo), ("hi", hi)):
            if value is not None:
                inits.append(const(name, value))
            bounds.append(name if value is not None else "")
        nodes.append(helper.make_node("Clip", ["c", *bounds], ["y"], name="act"))
    outputs = [("y", [1, 4, *out])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["c"], ["z"], name="other"))
        outputs.append(("z", [1, 4, *out]))
    if conv_is_output:
        outputs.append(("c", [1, 4, *out]))
    return model(nodes, [("x", [1, 3, 7, 7])], outputs, inits, opset)


def gelu_model(rng, form="op", mode="none", opset=21, extra_reader=False):
    """a[2,5,8] @ w[8,6] + bias[6] -> Gelu (op, or the erf formula in two orders) -> y."""
    inits = [const("w", rng.standard_normal((8, 6))), const("bias", rng.standard_normal(6))]
    n = helper.make_node
    nodes = [n("MatMul", ["a", "w"], ["mm"], name="mm"), n("Add", ["mm", "bias"], ["x"], name="add")]
    if form == "op":
        nodes.append(n("Gelu", ["x"], ["y"], name="gelu", approximate=mode))
    else:
        inits += [const("sqrt2", math.sqrt(2)), const("one", 1.0), const("half", 0.5)]
        nodes += [n("Div", ["x", "sqrt2"], ["t"]), n("Erf", ["t"], ["e"]),
                  n("Add", ["e", "one"], ["p"])]
        if form == "erf":  # x * (1 + erf) * 0.5, as torch exports it
            nodes += [n("Mul", ["x", "p"], ["xp"]), n("Mul", ["xp", "half"], ["y"])]
        else:  # (x * 0.5) * (1 + erf)
            nodes += [n("Mul", ["x", "half"], ["hx"]), n("Mul", ["hx", "p"], ["y"])]
    outputs = [("y", [2, 5, 6])]
    if extra_reader:
        nodes.append(n("Neg", ["mm"], ["z"], name="other"))
        outputs.append(("z", [2, 5, 6]))
    return model(nodes, [("a", [2, 5, 8])], outputs, inits, opset)


def attention_model(rng, mask=None, scale_op="Mul", transpose=True, opset=17,
                    extra_reader=False, probs_output=False):
    """Scaled dot-product attention on q, k, v [2,3,5,4]; mask additive [2,1,5,5] or bool."""
    n = helper.make_node
    scale = 1 / math.sqrt(4)
    inits = [const("scale", scale if scale_op == "Mul" else 1 / scale)]
    inputs = [("q", [2, 3, 5, 4]), ("v", [2, 3, 5, 4])]
    nodes = []
    if transpose:
        inputs.append(("k", [2, 3, 5, 4]))
        nodes.append(n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2], name="kt"))
    else:
        inputs.append(("kt", [2, 3, 4, 5]))
    nodes += [n("MatMul", ["q", "kt"], ["s"], name="qk"),
              n(scale_op, ["s", "scale"], ["ss"], name="scale")]
    scores = "ss"
    if mask == "additive":
        inputs.append(("mask", [2, 1, 5, 5]))
        nodes.append(n("Add", ["ss", "mask"], ["sm"], name="mask"))
        scores = "sm"
    elif mask == "bool":
        inputs.append(("mask", [2, 1, 5, 5], TensorProto.BOOL))
        inits.append(const("ninf", -np.inf))
        nodes.append(n("Where", ["mask", "ss", "ninf"], ["sm"], name="mask"))
        scores = "sm"
    nodes += [n("Softmax", [scores], ["p"], axis=-1, name="softmax"),
              n("MatMul", ["p", "v"], ["y"], name="pv")]
    outputs = [("y", [2, 3, 5, 4])]
    if extra_reader:
        nodes.append(n("Neg", ["s"], ["z"], name="other"))
        outputs.append(("z", [2, 3, 5, 5]))
    if probs_output:
        outputs.append(("p", [2, 3, 5, 5]))
    return model(nodes, inputs, outputs, inits, opset)


def feeds_for(m: onnx.ModelProto, rng) -> dict[str, np.ndarray]:
    """Random inputs (never zeros); a boolean mask keeps the diagonal so no row is empty."""
    feeds = {}
    for i in m.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == TensorProto.BOOL:
            keep = rng.random(shape) < 0.6
            keep |= np.eye(shape[-1], dtype=bool)
            feeds[i.name] = keep
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# --------------------------------------------------------------------------- the registry

def test_registry_holds_every_op_onnx_defines_in_the_default_and_ml_domains():
    from onnx import defs

    defined = {(s.domain, s.name) for s in defs.get_all_schemas_with_history()
               if s.domain in ("", "ai.onnx.ml")}
    registered = {(d.domain, d.name) for d in ops.all_ops() if d.tier in ("mandatory", "optional")}
    assert registered == defined


def test_every_version_from_opset_7_to_the_newest_is_recorded():
    from onnx import defs

    for s in defs.get_all_schemas_with_history():
        if s.domain != "":
            continue
        d = ops.get(s.name)
        if s.since_version >= schemas.MIN_OPSET:
            assert s.since_version in d.versions, (s.name, s.since_version)
        at7 = defs.get_schema(s.name, schemas.MIN_OPSET, "") if s.since_version <= 7 else None
        if at7 is not None:
            assert d.version_at(7) == at7.since_version, s.name
    assert ops.get("Squeeze").version_at(11) == 11 and ops.get("Squeeze").version_at(13) == 13
    assert ops.get("Squeeze").at(12).inputs == (("data", "T", False),)  # axes: an attribute
    assert ops.get("Squeeze").at(21).inputs[1] == ("axes", "tensor(int64)", True)


def test_versions_that_differ_in_types_only_share_a_signature():
    squeeze = ops.get("Squeeze")
    assert {13, 21, 23, 24, 25} <= squeeze.same_as({13}) and 11 not in squeeze.same_as({13})
    assert ops.get("Relu").same_as({13}) == {6, 13, 14}
    assert 13 not in ops.get("Softmax").same_as({11})  # the axis changed meaning at 13


def test_contrib_ops_of_onnx_runtime_are_registered_in_their_domain():
    for op in ("Attention", "SkipLayerNormalization", "FastGelu", "BiasGelu", "QLinearConv",
               "MatMulNBits", "GroupQueryAttention", "EmbedLayerNormalization"):
        d = ops.get(op, "com.microsoft")
        assert d.tier == "contrib" and d.key == f"com.microsoft::{op}" and d.inputs
    assert ops.get("QLinearConv", "com.microsoft").family == "contraction"


def test_every_op_has_a_family_and_a_cost_function():
    from backplane.ops.costs import FAMILY_NAMES

    for d in ops.all_ops():
        assert d.family in FAMILY_NAMES, d.key
        assert callable(d.cost)
    assert ops.get("LSTM").family == "contraction"
    assert ops.get("If").family == "control" and ops.get("SequenceAt").family == "sequence"
    assert ops.get("Constant").family == "metadata"


def test_an_op_not_listed_gets_a_family_from_its_schema():
    unary = {"inputs": [{"type": "T"}], "outputs": [{"type": "T"}]}
    assert costs.family_of("SomeFutureActivation", unary) == "elementwise"
    assert costs.family_of("SomeFutureOp", {"inputs": [{"type": "T"}],
                                            "outputs": [{"type": "I"}]}) == "movement"


def test_registry_holds_exactly_the_49_mandatory_ops_in_order_with_type_constraints():
    assert len(ops.MANDATORY) == 49 == len(set(ops.MANDATORY))
    mandatory = [d for d in ops.all_ops() if d.tier == "mandatory"]
    assert [d.name for d in mandatory] == list(ops.MANDATORY)
    for d in mandatory:
        assert d.domain == "" and d.key == d.name
        assert d.type_constraints and all(d.type_constraints.values()), d.name
        for name, constraint, _ in d.inputs:
            assert constraint in d.type_constraints, (d.name, name)
        assert d.reference_dtypes


def test_type_constraints_use_backplane_dtype_names():
    import re

    from backplane.model.graph import DTYPE_NAMES

    names = set(DTYPE_NAMES.values())
    for d in ops.all_ops():
        for dtypes in d.type_constraints.values():
            for t in dtypes:  # tensors by dtype name; seq(...), optional(...), map(...) wrap them
                assert set(re.findall(r"\w+", t)) - {"seq", "optional", "map", "sparse_tensor"} \
                    <= names, (d.key, t)
    assert ops.get("Conv").reference_dtypes == ("bfloat16", "float16", "float32", "float64")  # 22
    assert ops.get("Reshape").dtypes_of("shape") == {"int64"}
    assert "bool" in ops.get("Where").reference_dtypes


def test_since_records_the_first_opset_of_each_op():
    assert ops.get("Gelu").since == 20
    assert ops.get("LayerNormalization").since == 17
    assert ops.get("Add").since == 1
    assert 18 in ops.get("ReduceMean").versions  # axes moved from attribute to input


def test_attribute_defaults_and_required_attributes_come_from_the_schema():
    assert ops.get("LeakyRelu").attributes["alpha"] == pytest.approx(0.01)
    assert ops.get("Gelu").attributes["approximate"] == "none"
    assert ops.get("Cast").required_attributes == {"to"}
    assert ops.get("Conv").attributes["kernel_shape"] is None
    assert ops.get("Concat").variadic


def test_checked_in_schema_data_matches_the_installed_onnx():
    text = (ROOT / "core" / "ops" / schemas.DATA_FILE).read_text("utf-8")
    assert json.loads(text) == schemas.regenerate(), \
        "core/ops/schemas.json is stale: run python -m backplane.ops.schemas"
    assert text == schemas.dump(schemas.regenerate())


def test_checked_in_contrib_schemas_match_the_installed_onnx_runtime():
    ort = pytest.importorskip("onnxruntime")
    text = (ROOT / "core" / "ops" / schemas.CONTRIB_FILE).read_text("utf-8")
    recorded = json.loads(text)
    if recorded["onnxruntime"] != ort.__version__:
        pytest.skip(f"{schemas.CONTRIB_FILE} records ONNX Runtime {recorded['onnxruntime']}, "
                    f"this is {ort.__version__}: python -m backplane.ops.schemas rewrites it")
    assert recorded == schemas.regenerate_contrib(), \
        "core/ops/contrib_schemas.json is stale: run python -m backplane.ops.schemas"


def test_get_of_an_unknown_op_raises_unsupported_with_a_did_you_mean():
    with pytest.raises(UnsupportedError, match="Did you mean 'Conv'"):
        ops.get("Conv2d")
    with pytest.raises(UnsupportedError, match=r"get\('FusedConvRelu', 'backplane'\)"):
        ops.get("FusedConvRelu")


def test_fused_ops_are_registered_in_the_backplane_domain():
    fused_defs = [d for d in ops.all_ops() if d.tier == "fused"]
    assert [d.name for d in fused_defs] == list(ops.FUSED)
    assert all(d.domain == "backplane" and d.key == f"backplane::{d.name}" for d in fused_defs)
    assert ops.get("Attention", "backplane").inputs[3] == ("mask", "M", True)
    assert "bool" in ops.get("Attention", "backplane").type_constraints["M"]


def test_importing_backplane_ops_imports_neither_numpy_nor_onnx():
    code = ("import sys, backplane; assert 'backplane.ops' not in sys.modules; "
            "import backplane.ops as o; o.get('Conv'); o.all_ops(); "
            "print(sorted(m for m in ('numpy', 'onnx') if m in sys.modules))")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- costs

def test_matmul_cost_is_2mnk_and_bytes_in_plus_out():
    n = node("MatMul", [vi("a", [2, 3]), vi("b", [3, 4])], [vi("y", [2, 4])])
    assert ops.cost(n) == Cost(flops=48, bytes=(6 + 12 + 8) * 4)


def test_batched_matmul_cost_broadcasts_the_batch():
    n = node("MatMul", [vi("a", [5, 1, 2, 3]), vi("b", [7, 3, 4])], [vi("y", [5, 7, 2, 4])])
    assert ops.cost(n).flops == 5 * 7 * 2 * 2 * 3 * 4


def test_gemm_cost_counts_transposes_and_the_bias():
    n = node("Gemm", [vi("a", [3, 2]), vi("b", [4, 3]), vi("c", [4])], [vi("y", [2, 4])],
             transA=1, transB=1)
    assert ops.cost(n).flops == 2 * 2 * 4 * 3 + 2 * 4


def test_conv_cost_is_2_x_outputs_x_cin_per_group_x_kernel():
    x, w = vi("x", [1, 3, 32, 32]), vi("w", [16, 3, 3, 3])
    n = node("Conv", [x, w], [vi("y", [1, 16, 32, 32])], pads=[1, 1, 1, 1])
    assert ops.cost(n).flops == 2 * 16 * 32 * 32 * 3 * 9
    # Output shape unknown: derived from the attributes; a bias adds one per output.
    n = node("Conv", [x, w, vi("b", [16])], [vi("y", None)], strides=[2, 2])
    assert ops.cost(n).flops == 2 * 16 * 15 * 15 * 27 + 16 * 15 * 15
    depthwise = node("Conv", [vi("x", [1, 8, 10, 10]), vi("w", [8, 1, 3, 3])],
                     [vi("y", [1, 8, 8, 8])], group=8)
    assert ops.cost(depthwise).flops == 2 * 8 * 8 * 8 * 1 * 9


def test_conv_transpose_cost_counts_each_input_scattered_over_the_kernel():
    n = node("ConvTranspose", [vi("x", [1, 4, 5, 5]), vi("w", [4, 2, 3, 3])],
             [vi("y", [1, 2, 11, 11])], strides=[2, 2])
    assert ops.cost(n).flops == 2 * (4 * 5 * 5) * 2 * 9


def test_elementwise_cost_uses_the_broadcast_output():
    a, b = vi("a", [2, 3, 4]), vi("b", [4])
    n = node("Add", [a, b], [vi("y", [2, 3, 4])])
    assert ops.cost(n) == Cost(24, (24 + 4 + 24) * 4)
    untyped_output = node("Mul", [a, b], [None])
    assert ops.cost(untyped_output).flops == 24
    exp = node("Exp", [a], [vi("y", [2, 3, 4])])
    assert ops.cost(exp).flops == 24 * costs.TRANSCENDENTAL_FLOPS


def test_symbolic_and_unknown_dimensions_count_as_one_and_never_raise():
    n = node("MatMul", [vi("a", ["batch", 3]), vi("b", [3, None])], [vi("y", ["batch", None])])
    assert ops.cost(n).flops == 2 * 1 * 1 * 3
    for d in ops.all_ops():
        unknown = node(d.name, [vi("a", None), None], [vi("y", None)], d.domain)
        assert isinstance(d.cost(unknown), Cost), d.name
        bare = Node("n", d.name, d.domain, (), ())
        assert isinstance(d.cost(bare), Cost), d.name


def test_shape_costs_no_flops_and_almost_no_bytes():
    n = node("Shape", [vi("x", [64, 3, 224, 224])], [vi("s", [4], "int64")])
    assert ops.cost(n) == Cost(0, 32)


def test_data_movement_costs_bytes_only():
    n = node("Transpose", [vi("x", [2, 3, 4])], [vi("y", [4, 3, 2])], perm=[2, 1, 0])
    assert ops.cost(n) == Cost(0, 2 * 24 * 4)
    gather = node("Gather", [vi("x", [1000, 16]), vi("i", [2], "int64")], [vi("y", [2, 16])])
    assert ops.cost(gather) == Cost(0, 2 * 32 * 4 + 16)


def test_pooling_reductions_and_softmax_costs():
    pool = node("MaxPool", [vi("x", [1, 2, 8, 8])], [vi("y", [1, 2, 4, 4])],
                kernel_shape=[2, 2], strides=[2, 2])
    assert ops.cost(pool).flops == 32 * 4
    reduce = node("ReduceSum", [vi("x", [4, 5]), vi("axes", [1], "int64")], [vi("y", [4, 1])])
    assert ops.cost(reduce).flops == 20
    softmax = node("Softmax", [vi("x", [4, 5])], [vi("y", [4, 5])])
    assert ops.cost(softmax).flops == 20 * costs.NORMALISATION_FLOPS["Softmax"]


def test_quantisation_costs_count_int8_bytes():
    q = node("QuantizeLinear", [vi("x", [10]), vi("s", []), vi("z", [], "int8")],
             [vi("y", [10], "int8")])
    assert ops.cost(q) == Cost(10 * costs.QUANTIZE_FLOPS, 40 + 4 + 1 + 10)
    mmi = node("MatMulInteger", [vi("a", [2, 3], "uint8"), vi("b", [3, 4], "int8")],
               [vi("y", [2, 4], "int32")])
    assert ops.cost(mmi) == Cost(48, 6 + 12 + 32)


def test_an_op_of_an_unknown_domain_costs_the_bytes_it_moves():
    n = node("Frobnicate", [vi("x", [10])], [vi("v", [3]), vi("i", [3], "int64")], "my.domain")
    assert ops.cost(n) == Cost(0, 40 + 12 + 24)


def test_topk_costs_log2_k_per_element_a_heap():
    n = node("TopK", [vi("x", [1024]), vi("k", [1], "int64")],
             [vi("v", [8]), vi("i", [8], "int64")])
    assert ops.cost(n).flops == 1024  # k unknown here (one element): log2 of 2 per element


def test_a_recurrent_op_costs_its_gates_at_every_step():
    x, w, r = vi("x", [5, 2, 16]), vi("w", [1, 4 * 8, 16]), vi("r", [1, 4 * 8, 8])
    n = node("LSTM", [x, w, r], [vi("y", [5, 1, 2, 8])], hidden_size=8)
    per_step = 2 * 32 * (16 + 8) + 32 * costs.TRANSCENDENTAL_FLOPS
    assert ops.cost(n).flops == 5 * 2 * per_step


def test_fused_op_costs_add_up_their_parts():
    conv = node("FusedConvRelu", [vi("x", [1, 3, 32, 32]), vi("w", [16, 3, 3, 3])],
                [vi("y", [1, 16, 32, 32])], "backplane", pads=[1, 1, 1, 1])
    assert ops.cost(conv).flops == 2 * 16384 * 27 + 16384
    att = node("Attention", [vi("q", [1, 2, 8, 4]), vi("k", [1, 2, 8, 4]), vi("v", [1, 2, 8, 4])],
               [vi("y", [1, 2, 8, 4])], "backplane")
    scores = 2 * 8 * 8  # heads x seq_q x seq_k
    softmax = costs.NORMALISATION_FLOPS["Softmax"]
    assert ops.cost(att).flops == 2 * scores * 4 + 2 * scores * 4 + scores * (1 + softmax)


# --------------------------------------------------------------------------- decompositions

def _fused_node(op, inputs, **attrs):
    return helper.make_node(op, inputs, ["y"], name="fused", domain="backplane", **attrs)


@pytest.mark.parametrize("act", ["relu", "clip"])
def test_fused_conv_relu_decomposition_equals_conv_then_activation(act, seed):
    rng = np.random.default_rng(seed)
    original = conv_model(rng, act)
    extra = {"clip_min": 0.0, "clip_max": 6.0} if act == "clip" else {}
    fused_model = model([_fused_node("FusedConvRelu", ["x", "w", "b"], pads=[1, 1, 1, 1], **extra)],
                        [("x", [1, 3, 7, 7])], [("y", [1, 4, 7, 7])],
                        original.graph.initializer, 17)
    feeds = feeds_for(original, rng)
    got = run(fused.add_decompositions(fused_model), feeds)[0]
    assert_close(got, run(original, feeds)[0], seed, f"FusedConvRelu ({act})")


@pytest.mark.parametrize(("mode", "opset", "form"), [
    ("none", 17, "erf"), ("none", 21, "op"), ("tanh", 20, "op")])
def test_fused_matmul_bias_gelu_decomposition_equals_matmul_add_gelu(mode, opset, form, seed):
    rng = np.random.default_rng(seed)
    original = gelu_model(rng, form, mode, opset)
    fused_model = model([_fused_node("FusedMatMulBiasGelu", ["a", "w", "bias"], approximate=mode)],
                        [("a", [2, 5, 8])], [("y", [2, 5, 6])], original.graph.initializer[:2],
                        opset)
    feeds = feeds_for(original, rng)
    got = run(fused.add_decompositions(fused_model), feeds)[0]
    assert_close(got, run(original, feeds)[0], seed, f"FusedMatMulBiasGelu ({mode}, opset {opset})")


@pytest.mark.parametrize("mask", [None, "additive", "bool"])
def test_attention_decomposition_equals_scaled_dot_product_attention(mask, seed):
    rng = np.random.default_rng(seed)
    original = attention_model(rng, mask)
    inputs = [("q", [2, 3, 5, 4]), ("k", [2, 3, 5, 4]), ("v", [2, 3, 5, 4])]
    if mask:
        inputs.append(("mask", [2, 1, 5, 5], TensorProto.BOOL if mask == "bool" else F))
    att = _fused_node("Attention", ["q", "k", "v", "mask"][:len(inputs)])  # scale by default
    fused_model = model([att], inputs, [("y", [2, 3, 5, 4])], opset=17)
    feeds = feeds_for(original, rng)
    got = run(fused.add_decompositions(fused_model), feeds)[0]
    assert_close(got, run(original, feeds)[0], seed, f"Attention (mask={mask})")


def test_add_decompositions_refuses_two_gelu_modes_in_one_model():
    nodes = [helper.make_node("FusedMatMulBiasGelu", ["a", "w", "b"], [y], domain="backplane",
                              approximate=mode) for y, mode in (("y1", "none"), ("y2", "tanh"))]
    m = model(nodes, [("a", [2, 3]), ("w", [3, 3]), ("b", [3])], [("y1", [2, 3]), ("y2", [2, 3])])
    with pytest.raises(UnsupportedError, match="different decompositions"):
        fused.add_decompositions(m)


def test_function_protos_pass_the_checker_at_every_opset_from_17_to_21():
    for opset in range(17, 22):
        for name, variants in fused.VARIANTS.items():
            for variant in variants:
                f = fused.function_proto(name, opset=opset, variant=variant)
                assert (f.domain, f.name) == ("backplane", name)
                onnx.checker.check_function(f)
    with pytest.raises(UnsupportedError, match="opset 17"):
        fused.function_proto("Attention", opset=13)


# --------------------------------------------------------------------------- the pass

PATTERNS = {
    "conv-relu": (lambda rng, **kw: conv_model(rng, "relu", **kw), "FusedConvRelu"),
    "conv-clip": (lambda rng, **kw: conv_model(rng, "clip", **kw), "FusedConvRelu"),
    "matmul-gelu": (lambda rng, **kw: gelu_model(rng, **kw), "FusedMatMulBiasGelu"),
    "matmul-erf-gelu": (lambda rng, **kw: gelu_model(rng, "erf", opset=17, **kw),
                        "FusedMatMulBiasGelu"),
    "attention": (lambda rng, **kw: attention_model(rng, **kw), "Attention"),
}


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_fuse_rewrites_each_pattern_when_a_kernel_exists(pattern, seed):
    build, op = PATTERNS[pattern]
    rng = np.random.default_rng(seed)
    original = build(rng)
    graph = load_model(original)
    asked = []
    result = fusion.fuse(graph, lambda key: asked.append(key) or True)
    assert f"backplane::{op}" in asked
    assert op_types(result) == [op]
    assert result.nodes[0].name == graph.nodes[1 if pattern == "attention" else 0].name
    assert result.opsets["backplane"] == 1
    assert {(f.domain, f.name) for f in result.model.functions} == {("backplane", op)}
    assert any("fused" in note for note in result.notes)
    feeds = feeds_for(original, rng)
    assert_close(run(result.model, feeds)[0], run(original, feeds)[0], seed, pattern)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_fuse_leaves_a_pattern_alone_without_a_kernel(pattern, seed):
    graph = load_model(PATTERNS[pattern][0](np.random.default_rng(seed)))
    assert fusion.fuse(graph, lambda key: False) is graph


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_fuse_leaves_a_pattern_alone_when_an_intermediate_has_another_reader(pattern, seed):
    graph = load_model(PATTERNS[pattern][0](np.random.default_rng(seed), extra_reader=True))
    assert op_types(fusion.fuse(graph, lambda key: True)) == op_types(graph)


@pytest.mark.parametrize(("build", "intermediate"), [
    (lambda rng: conv_model(rng, conv_is_output=True), "c"),
    (lambda rng: attention_model(rng, probs_output=True), "p")])
def test_fuse_leaves_a_pattern_alone_when_an_intermediate_is_a_graph_output(build, intermediate,
                                                                             seed):
    graph = load_model(build(np.random.default_rng(seed)))
    assert intermediate in {o.name for o in graph.outputs}
    assert op_types(fusion.fuse(graph, lambda key: True)) == op_types(graph)


def test_fuse_only_rewrites_the_ops_that_have_kernels(seed):
    rng = np.random.default_rng(seed)
    conv = conv_model(rng)
    graph = load_model(conv)
    assert fusion.fuse(graph, lambda key: key == "backplane::Attention") is graph
    assert op_types(fusion.fuse(graph, lambda key: key == "backplane::FusedConvRelu")) == [
        "FusedConvRelu"]


def test_fuse_resolves_same_padding_into_explicit_pads(seed):
    rng = np.random.default_rng(seed)
    original = conv_model(rng, "clip", auto_pad="SAME_UPPER")
    result = fusion.fuse(load_model(original), lambda key: True)
    (n,) = result.nodes
    assert "auto_pad" not in n.attributes and n.attributes["pads"] == [1, 1, 1, 1]
    feeds = feeds_for(original, rng)
    assert_close(run(result.model, feeds)[0], run(original, feeds)[0], seed, "SAME conv")


def test_fuse_maps_an_unbounded_clip_to_infinite_bounds(seed):
    rng = np.random.default_rng(seed)
    original = conv_model(rng, "clip", lo=None, hi=1.5)
    (n,) = fusion.fuse(load_model(original), lambda key: True).nodes
    assert n.attributes["clip_min"] == -math.inf and n.attributes["clip_max"] == 1.5


@pytest.mark.parametrize(("mask", "scale_op", "transpose"), [
    ("additive", "Div", True), (None, "Mul", False), ("additive", "Mul", False)])
def test_fuse_rewrites_attention_variants(mask, scale_op, transpose, seed):
    rng = np.random.default_rng(seed)
    original = attention_model(rng, mask, scale_op, transpose)
    result = fusion.fuse(load_model(original), lambda key: True)
    assert op_types(result)[-1] == "Attention"
    assert op_types(result) == (["Attention"] if transpose else ["Transpose", "Attention"])
    att = result.nodes[-1]
    assert att.attributes["scale"] == pytest.approx(0.5)
    assert len(att.inputs) == 4  # no mask: a zero additive mask is passed
    feeds = feeds_for(original, rng)
    assert_close(run(result.model, feeds)[0], run(original, feeds)[0], seed, "attention")


def test_fuse_leaves_a_model_older_than_opset_17_alone(seed):
    graph = load_model(conv_model(np.random.default_rng(seed), opset=13))
    assert fusion.fuse(graph, lambda key: True) is graph


# --------------------------------------------------------------------------- backends

def _fused_pairs(seed):
    rng = np.random.default_rng(seed)
    for pattern, (build, _) in sorted(PATTERNS.items()):
        original = build(rng)
        yield pattern, original, fusion.fuse(load_model(original), lambda key: True), \
            feeds_for(original, rng)


def test_reference_backend_runs_fused_graphs_like_the_unfused_model(seed):
    from backplane.plugins.reference import ReferenceBackend

    backend = ReferenceBackend()
    (device,) = backend.probe()
    for pattern, original, result, feeds in _fused_pairs(seed):
        got = backend.compile(result, device, backplane.CompileOptions()).run(feeds)
        assert_close(got["y"], run(original, feeds)[0], seed, pattern)


def test_session_on_the_reference_device_runs_fused_graphs_like_the_unfused_model(seed):
    for pattern, original, result, feeds in _fused_pairs(seed):
        got = backplane.Session(result.model, devices=["reference"]).run(feeds)
        want = backplane.Session(original, devices=["reference"]).run(feeds)
        assert_close(got["y"], want["y"], seed, pattern)


def test_session_fuses_patterns_for_a_backend_that_declares_the_fused_op(seed):
    """The executor runs the pass per partition: the reference backend declares all three
    fused ops, so an unfused model is rewritten, and says so in its plan."""
    for pattern, original, _, feeds in _fused_pairs(seed):
        session = backplane.Session(original, devices=["reference"])
        [part] = session.plan.partitions
        assert part.fused.startswith("1 x "), (pattern, part)
        assert f"fused for reference: {part.fused}" in session.plan.explain()
        assert_close(session.run(feeds)["y"], run(original, feeds)[0], seed, pattern)


def test_session_leaves_patterns_alone_for_a_backend_without_fused_ops(seed):
    from backplane.engine.executor import _fused
    from backplane.engine.plan import Partition

    class Unfused:
        capabilities = backplane.Capabilities(ops={"Conv": backplane.OpSupport(),
                                                   "Relu": backplane.OpSupport()})

    graph = load_model(conv_model(np.random.default_rng(seed)))
    part = Partition(0, "x:0", "x", [n.name for n in graph.nodes],
                     list(range(len(graph.nodes))), [], [])
    assert _fused(graph, Unfused(), part) is graph and part.fused == ""


# ---------------------------------------------------------------------- probe models

def _checked_probe(model: onnx.ModelProto) -> None:
    """onnx's full check of a probe model. Probe outputs declare their dtype but no shape
    (the runtime infers it), which the checker alone refuses; strict shape inference fills
    the shapes in and fails on any type the schema does not admit for the declared one."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    for declared, got in zip(model.graph.output, inferred.graph.output):
        assert got.type.tensor_type.elem_type == declared.type.tensor_type.elem_type


def test_every_core_op_has_probe_models_that_pass_the_full_onnx_check():
    """backplane.ops.trials builds, for every core op in every dtype its schema admits (and
    every fused op in the float types it admits), valid one-node models with their feeds."""
    from backplane.ops import trials

    built = 0
    for op in ops.MANDATORY:
        definition = ops.get(op).at(trials.OPSET)
        main = definition.inputs[1 if op == "Where" else 0][0]
        dtypes = [d for d in trials.DTYPES if d in definition.dtypes_of(main)]
        assert dtypes, op
        if op not in ("DequantizeLinear", "MatMulInteger"):  # their inputs are integers
            assert "float32" in dtypes, op
        for dt in dtypes:
            pairs = list(trials.models(op, dt))
            assert pairs, (op, dt)
            for model, feeds in pairs:
                _checked_probe(model)
                [node] = model.graph.node
                assert node.op_type == op and model.opset_import[0].version == trials.OPSET
                fed = {i.name for i in model.graph.input}
                assert fed and set(feeds) == fed, (op, dt, "data inputs must be fed")
                assert {i.name for i in model.graph.initializer}.isdisjoint(fed)
                built += 1
    for op in ops.FUSED:
        definition = ops.get(op, ops.DOMAIN)
        admitted = definition.dtypes_of(definition.inputs[0][0])
        for dt in [d for d in trials.FUSED_DTYPES if d in admitted]:
            for model, _ in trials.models(op, dt, ops.DOMAIN):
                _checked_probe(model)
                assert [f.name for f in model.functions] == [op]
                built += 1
    assert built > 400
    with pytest.raises(ValueError, match="no probe model"):
        list(trials.models("NotAnOp", "float32"))


def test_probe_models_cover_the_variants_whose_kernels_differ():
    from backplane.ops import trials

    def attrs(op, dt="float32"):
        return [{a.name: helper.get_attribute_value(a) for a in m.graph.node[0].attribute}
                for m, _ in trials.models(op, dt)]

    assert [a.get("approximate") for a in attrs("Gelu")] == [b"none", b"tanh"]
    assert sorted(a["mode"] for a in attrs("Pad")) == [b"constant", b"edge", b"reflect"]
    assert len(list(trials.models("Clip", "float32"))) == 3  # constant, fed, no bounds
    assert len(list(trials.models("Flatten", "float32"))) == 2  # rank 2 and rank 3, axis 1
    index_types = {m.graph.initializer[0].data_type for m, _ in trials.models("Gather", "int8")}
    assert index_types == {TensorProto.INT64, TensorProto.INT32}


def test_discover_tries_each_admitted_dtype_and_declares_where_by_its_condition():
    from backplane.ops import trials

    tried = []

    def try_op(op, dt, domain):
        tried.append((domain, op, dt))
        return "no kernel" if dt == "bfloat16" else ""

    found, refused = trials.discover(try_op)
    assert not any(domain for domain, _, _ in tried), "fused ops are tried only when asked"
    assert set(found) == set(ops.MANDATORY) and found["Where"] == ["bool"]
    assert "bool" not in found["Add"] and refused["Add"] == {"bfloat16": "no kernel"}
    found, refused = trials.discover(try_op, dtypes=("float32",),
                                     fused_dtypes=trials.FUSED_DTYPES)
    assert found["backplane::Attention"] == ["float32", "float16"]
    assert refused["backplane::FusedConvRelu"] == {"bfloat16": "no kernel"}


def test_importing_the_probe_module_imports_neither_numpy_nor_onnx():
    result = run_python("import sys; from backplane.ops import trials; "
                        "print('numpy' in sys.modules, 'onnx' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- registrations

def test_a_backend_with_graph_paths_declares_what_any_of_its_paths_runs():
    from backplane import AttributeRule, OpSupport
    from backplane.ops.registrations import merged_paths

    f32, f16 = frozenset({"float32"}), frozenset({"float16"})
    kernel = {"Relu": OpSupport(dtypes=f32),
              "Conv": OpSupport(dtypes=f32, attributes={"group": AttributeRule(allowed=(1,))})}
    first = {"LSTM": OpSupport(dtypes=f32, versions={14: f32}), "Relu": OpSupport(dtypes=f16)}
    second = {"LSTM": OpSupport(dtypes=f16, versions={14: f16, 22: f16})}
    table = merged_paths(kernel, first, second)
    assert table["LSTM"].versions == {14: f32 | f16, 22: f16}
    assert table["Relu"].dtypes == f16  # a graph path takes it: the kernel's limits do not apply
    assert table["Conv"] is kernel["Conv"]  # only the kernel path runs it


def test_a_provider_the_installed_onnx_runtime_lacks_registers_nothing():
    ort = pytest.importorskip("onnxruntime")
    from backplane.ops.registrations import ort_op_table

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has the CUDA provider")
    assert ort_op_table("CUDAExecutionProvider") == {}
    assert ort_op_table("MIGraphXExecutionProvider") == {}
    assert "LSTM" in ort_op_table("CPUExecutionProvider")
