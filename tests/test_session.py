"""Session, plan and executor: what runs where, why, and that the numbers are right.

These run in this process, where the example plugin (numpy kernels, no Conv) is installed
beside the reference backend, so plans split a model between two backends. The real CPU
backends are left out (``without_cpu_backends``): they would take every node.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import backplane as bp
from conftest import CPU_BACKENDS, run_python
from models import gemm, relu_conv_relu, relu_conv_relu_numpy, single

SEED = 20261122
pytestmark = pytest.mark.usefixtures("without_cpu_backends")


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


def test_auto_plan_splits_the_model_where_a_backend_lacks_an_op():
    session = bp.Session(relu_conv_relu())
    plan = session.plan
    assert [(p.device, p.nodes) for p in plan.partitions] == [
        ("example-numpy:0", ["relu_in"]), ("reference:0", ["conv"]),
        ("example-numpy:0", ["relu_out"])]
    conv = next(p for p in plan.placements if p.node == "conv")
    assert conv.fallback is True
    assert any(r.device == "example-numpy:0" and r.code == "capability:op" for r in conv.rejected)
    assert plan.partitions[1].transfers_in == ["a"]
    assert plan.partitions[2].transfers_in == ["b"]


def test_split_plan_matches_an_independent_numpy_computation():
    session = bp.Session(relu_conv_relu())
    for trial in range(3):
        x = rng(trial).standard_normal((1, 2, 6, 6)).astype(np.float32)
        y = session.run({"x": x})["y"]
        np.testing.assert_allclose(y, relu_conv_relu_numpy(x), rtol=1e-5, atol=1e-5,
                                   err_msg=f"seed {SEED + trial}")


def test_verbose_explain_names_every_node_its_device_and_the_rejections():
    text = bp.Session(relu_conv_relu()).plan.explain(verbose=True)
    for expected in ("partition 0 on example-numpy:0", "relu_in (Relu) -> example-numpy:0",
                     "conv (Conv) -> reference:0", "[reference fallback]",
                     "not example-numpy:0: capability:op: op Conv is not implemented",
                     "data in from other devices: a"):
        assert expected in text, text


def test_plan_is_plain_data():
    data = bp.Session(relu_conv_relu()).plan.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["placements"][1]["rejected"][0]["code"] == "capability:op"


def test_attribute_limit_sends_the_node_elsewhere_with_its_reason():
    plan = bp.Session(gemm(trans_a=1)).plan
    placement = plan.placements[0]
    assert placement.device == "reference:0"
    rejection = next(r for r in placement.rejected if r.device == "example-numpy:0")
    assert rejection.code == "capability:attribute" and "transA=1" in rejection.detail
    assert bp.Session(gemm(trans_a=0)).plan.placements[0].device == "example-numpy:0"


def test_gemm_on_the_example_backend_matches_numpy():
    from onnx import numpy_helper

    model = gemm(trans_a=0, seed=5)
    w, c = (numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer)
    a = rng(1).standard_normal((3, 4)).astype(np.float32)
    y = bp.Session(model, devices=["example-numpy"]).run({"a": a})["y"]
    np.testing.assert_allclose(y, a.astype(np.float64) @ w + c, rtol=1e-5, atol=1e-5)


def test_dtype_outside_a_backends_capabilities_goes_to_the_next_device():
    from onnx import TensorProto

    plan = bp.Session(single("Relu", TensorProto.INT32)).plan
    rejection = next(r for r in plan.placements[0].rejected if r.device == "example-numpy:0")
    assert plan.placements[0].device == "reference:0"
    assert rejection.code == "capability:dtype" and "int32" in rejection.detail


def test_explicit_devices_never_fall_back_silently():
    with pytest.raises(bp.UnsupportedError) as err:
        bp.Session(relu_conv_relu(), devices=["example-numpy"])
    message = str(err.value)
    assert "no allowed device can run node 'conv' (Conv)" in message
    assert "include 'reference' as a last resort" in message


def test_explicit_device_list_order_is_the_ranking():
    plan = bp.Session(relu_conv_relu(), devices=["reference:0", "example-numpy:0"]).plan
    assert plan.explicit and plan.devices == ["reference:0", "example-numpy:0"]
    assert {p.device for p in plan.placements} == {"reference:0"}
    assert not plan.uses_fallback  # asked for by name, so not a fallback


@pytest.mark.parametrize("kwargs, phrase", [
    ({"precision": "fp16"}, "computes at"),
    ({"precision": "fp32", "max_rel_error": 0.1}, "precision='auto'"),
    ({"precision": "auto", "max_rel_error": -1}, "positive number"),
    ({"device_class": "tpu"}, "unknown device class 'tpu'"),
    ({"precision": "fp99"}, "unknown precision 'fp99'"),
    ({"policy": "fastest"}, "unknown policy 'fastest'"),
])
def test_unsupported_precision_or_policy_is_refused_with_the_choices(kwargs, phrase):
    with pytest.raises(bp.UnsupportedError) as err:
        bp.Session(relu_conv_relu(), **kwargs)
    assert phrase in str(err.value)


def test_run_is_safe_from_many_threads_at_once():
    session = bp.Session(relu_conv_relu())
    inputs = [rng(100 + i).standard_normal((1, 2, 6, 6)).astype(np.float32) for i in range(16)]
    expected = [relu_conv_relu_numpy(x) for x in inputs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for round_ in range(5):
            i = (k + round_) % len(inputs)
            y = session.run({"x": inputs[i]})["y"]
            if not np.allclose(y, expected[i], rtol=1e-5, atol=1e-5):
                errors.append(f"thread {k} input {i} (seed {SEED + 100 + i})")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_compile_failure_replans_without_the_device_and_says_so(broken_site):
    code = """
import numpy as np, backplane as bp, sys
sys.path.insert(0, 'tests')
from models import single
x = np.random.default_rng(7).standard_normal((2, 4)).astype(np.float32)
s = bp.Session(single('Relu'), devices=['failing-compile', 'example-numpy'])
np.testing.assert_array_equal(s.run({'x': x})['y'], np.maximum(x, 0))
print(s.plan.placements[0].device)
print(s.plan.events)
print({r.device: r.code for r in s.plan.placements[0].rejected})
try:
    bp.Session(single('Relu'), devices=['failing-compile', 'example-numpy'], strict=True)
except bp.CompileError as e:
    print('strict:', e.backend, e.device, e.op, '|', e.vendor_message)
"""
    result = run_python(code, site=broken_site)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "example-numpy:0"
    assert "re-planned without failing-compile:0" in lines[1] and "vendor compiler crashed" in lines[1]
    assert lines[2] == "{'failing-compile:0': 'excluded'}"  # explain() keeps the reason
    assert lines[3] == ("strict: failing-compile failing-compile:0 Relu | "
                        "RuntimeError: vendor compiler crashed: internal error 0xdead")
    assert "re-planning without it" in result.stderr  # a fallback is never silent


def test_run_failure_replans_and_the_request_still_succeeds(broken_site):
    code = """
import numpy as np, backplane as bp, sys
sys.path.insert(0, 'tests')
from models import single
x = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
s = bp.Session(single('Relu'))
print(s.plan.placements[0].device)
np.testing.assert_array_equal(s.run({'x': x})['y'], np.maximum(x, 0))
print(s.plan.placements[0].device)
print(s.plan.events)
strict = bp.Session(single('Relu'), devices=['failing-run'], strict=True)
try:
    strict.run({'x': x})
except bp.ExecutionError as e:
    print('strict:', e.device, e.op, '|', e.vendor_message)
"""
    result = run_python(code, site=broken_site,
                        BACKPLANE_DISABLE_PLUGINS=CPU_BACKENDS + ",injected-faults")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "failing-run:0"  # highest priority that compiles
    assert lines[1] == "example-numpy:0"
    assert "re-planned without failing-run:0" in lines[2] and "out of memory" in lines[2]
    assert lines[3] == "strict: failing-run:0 Relu | MemoryError: device out of memory while running"


class _Observer:
    def __init__(self) -> None:
        self.plans: list[bp.Plan] = []

    @bp.hookimpl
    def backplane_plan_ready(self, plan):
        self.plans.append(plan)


class _PreferReference:
    @bp.hookimpl
    def backplane_select_device(self, node, candidates):
        return next((c for c in candidates if c.device.backend == "reference"), None)


class _Raising:
    @bp.hookimpl
    def backplane_plan_ready(self, plan, graph):
        raise RuntimeError("observer bug")


@pytest.fixture
def hooks():
    pm = bp.plugin_manager()
    added: list[object] = []

    def register(obj):
        pm.register(obj)
        added.append(obj)
        return obj

    yield register
    for obj in added:
        pm.unregister(obj)


def test_plan_observers_see_every_plan_and_a_raising_hook_breaks_nothing(hooks):
    hooks(_Raising())
    observer = hooks(_Observer())
    session = bp.Session(relu_conv_relu())
    assert observer.plans == [session.plan]


def test_selection_delegate_can_choose_among_the_candidates(hooks):
    hooks(_PreferReference())
    plan = bp.Session(single("Relu"), devices=["example-numpy", "reference"]).plan
    assert plan.placements[0].device == "reference:0"
    assert plan.placements[0].reason == "chosen by the selection delegate"
    rejected = {r.device: r.code for r in plan.placements[0].rejected}
    assert rejected["example-numpy:0"] == "not-chosen:delegate"


def test_selection_delegate_returning_a_non_candidate_is_ignored_and_recorded(hooks):
    class Wrong:
        @bp.hookimpl
        def backplane_select_device(self, node, candidates):
            return "cuda:0"

    hooks(Wrong())
    plan = bp.Session(single("Relu")).plan
    assert plan.placements[0].device == "example-numpy:0"
    assert any("not one of its candidates" in e for e in plan.events)


def test_random_inputs_match_the_model_and_symbolic_dims_can_be_set():
    session = bp.Session(single("Relu"))
    feeds = session.random_inputs(seed=1, dims={"batch": 5})
    assert feeds["x"].shape == (5, 4) and feeds["x"].dtype == np.float32
    assert np.any(feeds["x"] != 0)


def test_repeated_node_names_are_made_unique_so_every_node_is_placed():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="n"),
             helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "dup", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    session = bp.Session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [p.node for p in session.plan.placements] == ["n", "n#2", "Relu_2"]
    x = np.random.default_rng(12).standard_normal((2, 3)).astype(np.float32)
    expected = np.maximum(1 / (1 + np.exp(-np.maximum(x, 0))), 0)
    np.testing.assert_allclose(session.run({"x": x})["y"], expected, rtol=1e-6, atol=1e-6)


def test_a_static_shape_kernel_refuses_an_input_of_unknown_rank():
    from onnx import TensorProto, helper

    table = bp.KernelTable()
    table.register("Relu", dynamic_shapes=False)(lambda x: np.maximum(x, 0))
    # Reshape to a shape given at run time: the rank of 'a' is unknown until then.
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["a"], name="reshape"),
             helper.make_node("Relu", ["a"], ["y"], name="r")]
    graph = helper.make_graph(nodes, "unranked", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
        helper.make_tensor_value_info("shape", TensorProto.INT64, ["k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    loaded = bp.load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert loaded.nodes[1].input_shapes == [None]
    verdict = table.capabilities().check(loaded.nodes[1])
    assert not verdict and verdict.code == "capability:dynamic-shape"
    assert "unknown rank" in verdict.detail


# ---------------------------------------------------------------- random inputs


def conv_and_lookup_model():
    """img: float32[N,C,H,W] -> Conv (3x3, 3 channels in); ids: int64[batch,seq] ->
    Gather into a table of 100 rows."""
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(SEED)
    w = numpy_helper.from_array(r.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    table = numpy_helper.from_array(r.standard_normal((100, 8)).astype(np.float32), "table")
    f, i = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        [helper.make_node("Conv", ["img", "w"], ["c"]),
         helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
         helper.make_node("Gather", ["table", "ids32"], ["e"])], "conv-lookup",
        [helper.make_tensor_value_info("img", f, ["N", "C", "H", "W"]),
         helper.make_tensor_value_info("ids", i, ["batch", "seq"])],
        [helper.make_tensor_value_info("c", f, ["N", 4, "h", "w"]),
         helper.make_tensor_value_info("e", f, ["batch", "seq", 8])], initializer=[w, table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_random_inputs_give_an_image_with_dynamic_sides_a_realistic_size():
    session = bp.Session(conv_and_lookup_model(), devices=["reference"])
    img = session.random_inputs(seed=3)["img"]
    assert img.shape == (1, 3, 224, 224) and img.dtype == np.float32


def test_random_integers_that_index_a_table_are_drawn_inside_it_and_the_model_runs():
    session = bp.Session(conv_and_lookup_model(), devices=["reference"])
    feeds = session.random_inputs(seed=3)
    assert feeds["ids"].shape == (1, 16) and 0 <= feeds["ids"].min() <= feeds["ids"].max() < 100
    out = session.run(feeds)
    assert out["c"].shape == (1, 4, 222, 222) and out["e"].shape == (1, 16, 8)


def test_random_input_specs_say_the_sizes_and_value_ranges_used():
    specs = {s.name: s for s in
             bp.Session(conv_and_lookup_model(), devices=["reference"]).random_input_specs()}
    assert specs["img"].describe().startswith("img: float32[1,3,224,224], standard normal")
    assert "C=3: the channels of the Conv" in specs["img"].why
    assert (specs["ids"].low, specs["ids"].high, specs["ids"].sure) == (0, 100, True)
    assert "into a table of 100" in specs["ids"].describe()


def offset_lookup_model():
    """y = Gather(table[10,2], k + 8): the range of k is not what the graph tells."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")
    eight = numpy_helper.from_array(np.array(8, np.int64), "eight")
    graph = helper.make_graph(
        [helper.make_node("Add", ["k", "eight"], ["k8"]),
         helper.make_node("Gather", ["table", "k8"], ["y"])], "offset-lookup",
        [helper.make_tensor_value_info("k", TensorProto.INT64, [6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 2])],
        initializer=[table, eight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_run_failing_on_guessed_random_integers_blames_them_not_the_device():
    session = bp.Session(offset_lookup_model(), devices=["reference"])
    [spec] = session.random_input_specs()
    assert not spec.sure and "a guess" in spec.why
    with pytest.raises(bp.ExecutionError) as err:
        session.run(session.random_inputs(seed=0))
    assert "inputs were random" in str(err.value) and "--input NAME=FILE.npy" in str(err.value)
    assert session.plan.events == []  # no device excluded
    k = np.arange(6) % 2
    np.testing.assert_array_equal(session.run({"k": k})["y"],
                                  np.arange(20, dtype=np.float32).reshape(10, 2)[8 + k])
