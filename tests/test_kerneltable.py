"""The kernel interface: kernels with constraints become capabilities, and the default
compile runs a graph node by node, dropping each value after its last reader."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from onnx import TensorProto, helper

import backplane as bp
from backplane.model.intake import load_model
from models import single


def chain_model(length: int):
    from onnx import TensorProto, helper

    names = ["x"] + [f"v{i}" for i in range(1, length)] + ["y"]
    nodes = [helper.make_node("Neg", [names[i]], [names[i + 1]], name=f"neg{i}")
             for i in range(length)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_registered_kernels_are_the_backends_capabilities():
    table = bp.KernelTable()

    @table.register("Neg", dtypes=["float32"], max_rank=2, dynamic_shapes=False)
    def neg(x):
        return -x

    caps = table.capabilities().to_dict()
    assert caps["ops"]["Neg"] == {"dtypes": ["float32"], "dynamic_shapes": False,
                                  "max_rank": 2, "min_rank": 0, "layout": "strided",
                                  "attributes": {}, "versions": {"6": None, "13": None},
                                  "constant_inputs": [], "input_dtypes": None,
                                  "absent_outputs": [], "absent_inputs": [],
                                  "scalar_inputs": []}
    assert "Neg" in table and len(table) == 1


def test_a_kernel_runs_the_version_of_opset_21_and_those_of_the_same_signature():
    table = bp.KernelTable()
    table.register("Squeeze")(lambda x, axes=None: x)
    table.register("ReduceMean")(lambda x, axes=None: x)
    table.register("Softmax", versions=[1, 11])(lambda x, axis=1: x)
    ops = table.capabilities().ops
    assert set(ops["Squeeze"].versions) == {13, 21, 23, 24, 25}  # not 1 or 11: axes attribute
    assert set(ops["ReduceMean"].versions) == {18}  # 13 took axes as an attribute
    assert set(ops["Softmax"].versions) == {1, 11}  # what it names, and no more


def test_every_table_runs_identity_and_constant_without_registering_them():
    table = bp.KernelTable()

    @table.register("Neg", dtypes=["float32"])
    def neg(x):
        return -x

    c = helper.make_node("Constant", [], ["c"], value=helper.make_tensor(
        "c", TensorProto.FLOAT, [2], [1.5, -2.0]))
    nodes = [c, helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Neg", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("i", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    exe = table.compile(load_model(model), bp.Device("cpu", backend="t", index=0),
                        bp.CompileOptions())
    x = np.array([3.0, 4.0], np.float32)
    out = exe.run({"x": x})
    np.testing.assert_array_equal(out["i"], x)
    np.testing.assert_array_equal(out["y"], [-1.5, 2.0])


def test_default_compile_frees_each_value_after_its_last_reader():
    table = bp.KernelTable()
    produced: list[weakref.ref] = []
    alive_counts: list[int] = []

    @table.register("Neg")
    def neg(x):
        alive_counts.append(sum(r() is not None for r in produced))
        out = -x
        produced.append(weakref.ref(out))
        return out

    graph = bp.load_model(chain_model(12))
    exe = table.compile(graph, bp.Device("test", backend="t", index=0), bp.CompileOptions())
    x = np.random.default_rng(11).standard_normal(8).astype(np.float32)
    y = exe.run({"x": x})["y"]
    np.testing.assert_array_equal(y, x)  # twelve negations
    # At each step only the value being read is alive: the chain never piles up.
    assert max(alive_counts) <= 1, alive_counts


def test_default_compile_refuses_a_node_outside_the_constraints():
    from onnx import TensorProto

    table = bp.KernelTable()
    table.register("Relu", dtypes=["float64"])(lambda x: np.maximum(x, 0))
    graph = bp.load_model(single("Relu", TensorProto.FLOAT))
    with pytest.raises(bp.CompileError) as err:
        table.compile(graph, bp.Device("test", backend="t", index=0), bp.CompileOptions())
    assert "cannot compile node 'relu'" in str(err.value) and "float32" in str(err.value)
    assert err.value.op == "Relu"


def test_a_kernel_that_raises_becomes_an_execution_error_naming_the_op():
    table = bp.KernelTable()

    @table.register("Relu")
    def relu(x):
        raise FloatingPointError("denormal trap")

    graph = bp.load_model(single("Relu"))
    exe = table.compile(graph, bp.Device("test", backend="t", index=0), bp.CompileOptions())
    with pytest.raises(bp.ExecutionError) as err:
        exe.run({"x": np.ones((2, 4), np.float32)})
    assert err.value.op == "Relu" and "denormal trap" in str(err.value)


@pytest.mark.parametrize("attrs, code", [
    ({"dtypes": ["float64"]}, "capability:dtype"),
    ({"max_rank": 1}, "capability:rank"),
    ({"min_rank": 3}, "capability:rank"),
    ({"dynamic_shapes": False}, "capability:dynamic-shape"),
])
def test_capability_check_answers_with_a_reason_code(attrs, code):
    table = bp.KernelTable()
    table.register("Relu", **attrs)(lambda x: x)
    node = bp.load_model(single("Relu")).nodes[0]  # float32[batch,4]
    verdict = table.capabilities().check(node)
    assert not verdict and verdict.code == code
    assert bp.Capabilities().check(node).code == "capability:op"


def test_outputs_never_alias_a_constant_across_requests():
    from onnx import TensorProto, helper, numpy_helper

    const = numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["y"], name="id"),
         helper.make_node("Relu", ["x"], ["z"], name="relu")], "const-out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])], initializer=[const])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    table = bp.KernelTable()
    table.register("Identity")(lambda x: x)  # returns the constant itself
    table.register("Relu")(lambda x: np.maximum(x, 0))
    exe = table.compile(bp.load_model(model), bp.Device("test", backend="t", index=0),
                        bp.CompileOptions())
    x = np.ones(4, np.float32)
    first = exe.run({"x": x})["y"]
    first[:] = -1  # the caller scribbles on its result
    np.testing.assert_array_equal(exe.run({"x": x})["y"], np.arange(4, dtype=np.float32))


def test_a_contiguous_kernel_gets_dense_buffers_and_a_strided_one_gets_views():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=[1, 0]),
         helper.make_node("Neg", ["t"], ["n"], name="neg"),
         helper.make_node("Relu", ["t"], ["r"], name="relu")], "layouts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("n", TensorProto.FLOAT, [5, 3]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [5, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    seen: dict[str, bool] = {}
    table = bp.KernelTable()
    table.register("Transpose")(lambda x, perm: x.transpose(perm))  # a view, not a copy

    @table.register("Neg", layout="contiguous")
    def neg(x):
        seen["Neg"] = x.flags.c_contiguous
        return -x

    @table.register("Relu")
    def relu(x):
        seen["Relu"] = x.flags.c_contiguous
        return np.maximum(x, 0)

    assert table.capabilities().ops["Neg"].layout == "contiguous"
    exe = table.compile(bp.load_model(model), bp.Device("test", backend="t", index=0),
                        bp.CompileOptions())
    x = np.random.default_rng(5).standard_normal((3, 5)).astype(np.float32)
    out = exe.run({"x": x})
    assert seen == {"Neg": True, "Relu": False}
    np.testing.assert_array_equal(out["n"], -x.T)
    np.testing.assert_array_equal(out["r"], np.maximum(x.T, 0))


def test_an_unknown_layout_is_refused_when_the_kernel_is_registered():
    with pytest.raises(ValueError, match="layout must be one of"):
        bp.KernelTable().register("Neg", layout="nhwc")


# ---------------------------------------------------------------------- LazyOps

def test_lazy_ops_computes_on_first_read_only_once_across_threads():
    import threading
    import time

    calls = []

    def compute():
        calls.append(threading.get_ident())
        time.sleep(0.05)  # readers arriving meanwhile must wait, not compute again
        return {"Relu": bp.OpSupport(dtypes=frozenset({"float32"}))}

    ops = bp.LazyOps(compute)
    caps = bp.Capabilities(ops=ops)
    assert not ops.computed and calls == [], "building Capabilities must not compute"
    barrier = threading.Barrier(8)
    seen = []

    def read():
        barrier.wait()
        seen.append(dict(caps.ops))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and ops.computed
    assert all(s == {"Relu": bp.OpSupport(dtypes=frozenset({"float32"}))} for s in seen)
    assert "Relu" in ops and len(ops) == 1 and list(ops) == ["Relu"] and len(calls) == 1
    [node] = bp.load_model(single("Relu")).nodes
    assert caps.check(node) and len(calls) == 1


def test_lazy_ops_retries_after_a_failed_computation():
    outcomes = [RuntimeError("runtime not ready"), {"Add": bp.OpSupport()}]

    def compute():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    ops = bp.LazyOps(compute)
    with pytest.raises(RuntimeError, match="not ready"):
        len(ops)
    assert not ops.computed
    assert set(ops) == {"Add"} and ops.computed
