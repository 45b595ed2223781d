"""The executor: partition-level liveness and memory accounting, buffer reuse in the kernel
runner, DLPack hand-over between partitions, load accounting, and runs from many threads.

Plans are built here from explicit partitions (which nodes run on which backend), so each
test describes exactly the split it is about; test backends are plain Backend objects that
record what their executables were handed.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

import backplane as bp
from backplane.hardware import liveload as load
from backplane.engine.executor import CompiledPlan, MemoryStats
from backplane.sdk.kerneltable import takes_out
from backplane.engine.plan import Partition
from models import relu_conv_relu, relu_conv_relu_numpy

SEED = 20261123


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


# ---------------------------------------------------------------------- models and plans

def model(nodes: list[tuple[str, list[str], str]], inputs: dict[str, list], outputs: list[str],
          shapes: dict[str, list] | None = None, consts: dict[str, np.ndarray] | None = None):
    """A float32 model from (op, inputs, output) triples; every value has ``shapes`` or
    the shape of the first input."""
    from onnx import TensorProto, helper, numpy_helper

    first = next(iter(inputs.values()))
    shape = lambda name: (shapes or {}).get(name, first)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node(op, ins, [out], name=f"n{i}-{op.lower()}")
         for i, (op, ins, out) in enumerate(nodes)], "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape(n)) for n in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in (consts or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def plan_of(graph, groups: list[tuple[str, list[int]]]) -> SimpleNamespace:
    """A plan with one partition per (device id, node indices) group."""
    producer = {o: dev for dev, idx in groups for i in idx for o in graph.nodes[i].outputs}
    parts = []
    for k, (dev, idx) in enumerate(groups):
        inputs, outputs = graph.boundary(idx)
        parts.append(Partition(
            index=k, device=dev, backend=dev.split(":")[0],
            nodes=[graph.nodes[i].name for i in idx], node_indices=idx, inputs=inputs,
            outputs=outputs,
            transfers_in=[v for v in inputs if v in producer and producer[v] != dev]))
    return SimpleNamespace(partitions=parts)


def compiled(onnx_model, groups: list[tuple[str, list[int]]], *backends: bp.Backend,
             options: bp.CompileOptions | None = None, **kwargs) -> CompiledPlan:
    """A CompiledPlan of ``groups`` over the test ``backends`` and the installed ones."""
    graph = bp.load_model(onnx_model)
    reg = bp.registry()
    test = {b.name: b for b in backends}
    devices = {}
    for dev, _ in groups:
        name = dev.split(":")[0]
        devices[dev] = (bp.Device(name, backend=name, index=0) if name in test
                        else reg.resolve(dev)[0])
    return CompiledPlan(graph, plan_of(graph, groups),
                        SimpleNamespace(backends={**reg.backends, **test}),
                        options or bp.CompileOptions(), devices, **kwargs)


# ---------------------------------------------------------------------- test backends

NUMPY_OPS = {"Relu": lambda x: np.maximum(x, 0), "Neg": np.negative, "Add": np.add,
             "Mul": np.multiply}


class Recording(bp.Backend):
    """Runs Relu, Neg, Add and Mul with numpy (or torch) and records what it was handed.

    Args:
        name: the backend's name.
        torch: compute with torch and return torch tensors.
        dlpack: the executables' ``dlpack`` flag.
    """

    api_version = bp.API_VERSION

    def __init__(self, name: str, *, torch: bool = False, dlpack: bool = False):
        self.name = name
        self.torch, self.dlpack = torch, dlpack
        self.precisions: list[str] = []
        self.exes: list[RecordingExecutable] = []

    def probe(self) -> list[bp.Device]:
        return [bp.Device(self.name)]

    def compile(self, graph, device, options):
        self.precisions.append(options.precision)
        exe = RecordingExecutable(graph, device, self.torch)
        exe.dlpack = self.dlpack
        self.exes.append(exe)
        return exe


class RecordingExecutable(bp.Executable):
    """One partition, node by node; remembers each run's inputs, outputs and load."""

    thread_safe = True

    def __init__(self, graph, device, torch: bool):
        self.nodes, self.device, self.torch = graph.nodes, device, torch
        self.outputs = [o.name for o in graph.outputs]
        self.received: list[dict] = []
        self.returned: list[dict] = []
        self.inflight: list[int] = []

    def run(self, inputs):
        self.inflight.append(load.inflight(self.device.id))
        self.received.append(dict(inputs))
        if self.torch:
            import torch

            ops = {"Relu": torch.relu, "Neg": torch.neg, "Add": torch.add, "Mul": torch.mul}
            values = {k: torch.from_numpy(v.copy()) if isinstance(v, np.ndarray)
                      else torch.from_dlpack(v) for k, v in inputs.items()}
        else:
            assert all(isinstance(v, np.ndarray) for v in inputs.values()), inputs
            ops, values = NUMPY_OPS, dict(inputs)
        for node in self.nodes:
            values[node.outputs[0]] = ops[node.op_type](*(values[i] for i in node.inputs))
        out = {o: values[o] for o in self.outputs}
        self.returned.append(out)
        return out


class Tracking(bp.Backend):
    """A numpy backend whose executables keep weak references to what they return."""

    api_version = bp.API_VERSION

    def __init__(self, name: str, produced: list):
        self.name, self.produced = name, produced
        self.alive_at_run: list[int] = []

    def probe(self) -> list[bp.Device]:
        return [bp.Device(self.name)]

    def compile(self, graph, device, options):
        import weakref

        backend, nodes = self, graph.nodes

        class Exe(bp.Executable):
            def run(self, inputs):
                backend.alive_at_run.append(sum(r() is not None for r in backend.produced))
                values = dict(inputs)
                for node in nodes:
                    values[node.outputs[0]] = NUMPY_OPS[node.op_type](
                        *(values[i] for i in node.inputs))
                out = {o.name: values[o.name] for o in graph.outputs}
                backend.produced.extend(weakref.ref(v) for v in out.values())
                return out

        return Exe()


# ---------------------------------------------------------------------- partition liveness

def test_each_value_is_dropped_after_the_last_partition_that_reads_it():
    produced: list = []
    a, b = Tracking("track-a", produced), Tracking("track-b", produced)
    names = ["x"] + [f"v{i}" for i in range(1, 6)] + ["y"]
    chain = model([("Neg", [names[i]], names[i + 1]) for i in range(6)], {"x": [64]}, ["y"])
    plan = compiled(chain, [(("track-a:0", "track-b:0")[i % 2], [i]) for i in range(6)], a, b)
    x = rng().standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(plan.run({"x": x})["y"], x)  # six negations
    # Each partition starts with only its own input alive: the chain never piles up.
    alive = [n for pair in zip(a.alive_at_run, b.alive_at_run) for n in pair]
    assert alive == [0, 1, 1, 1, 1, 1], alive


def skip_model():
    """x -> a = Relu(x) -> b = Neg(a) -> y = Add(a, b): ``a`` lives across two partitions."""
    return model([("Relu", ["x"], "a"), ("Neg", ["a"], "b"), ("Add", ["a", "b"], "y")],
                 {"x": ["batch", 8]}, ["y"])


def test_measured_peak_matches_the_peak_predicted_from_static_shapes():
    backend = Recording("rec")
    plan = compiled(model([("Relu", ["x"], "a"), ("Neg", ["a"], "b"), ("Add", ["a", "b"], "y")],
                          {"x": [4, 8]}, ["y"]),
                    [("rec:0", [0]), ("rec:0", [1]), ("rec:0", [2])], backend)
    assert plan.memory == MemoryStats(384, 0, 0, 0)  # a, b and y: 3 x 128 bytes
    for trial in range(3):
        plan.run({"x": rng(trial).standard_normal((4, 8)).astype(np.float32)})
    assert plan.memory == MemoryStats(384, 384, 384, 3)


def test_an_unknown_dimension_counts_as_one_in_the_prediction_and_runs_are_measured():
    plan = compiled(skip_model(), [("rec:0", [0]), ("rec:0", [1]), ("rec:0", [2])],
                    Recording("rec"))
    assert plan.memory.predicted_peak_bytes == 3 * 8 * 4
    plan.run({"x": rng().standard_normal((5, 8)).astype(np.float32)})
    plan.run({"x": rng(1).standard_normal((2, 8)).astype(np.float32)})
    memory = plan.memory
    assert (memory.peak_bytes, memory.max_peak_bytes, memory.runs) == (3 * 64, 3 * 160, 2)


# ---------------------------------------------------------------------- DLPack hand-over

def test_device_tensors_go_as_they_are_where_both_sides_take_dlpack_and_else_by_host():
    import torch
    first = Recording("torch-a", torch=True, dlpack=True)
    second = Recording("torch-b", torch=True, dlpack=True)
    host = Recording("numpy-host")
    # a = Relu(x) on torch-a; b = Neg(a) on torch-b; y = Mul(b, a) on the host backend.
    plan = compiled(model([("Relu", ["x"], "a"), ("Neg", ["a"], "b"), ("Mul", ["b", "a"], "y")],
                          {"x": [4, 8]}, ["y"]),
                    [("torch-a:0", [0]), ("torch-b:0", [1]), ("numpy-host:0", [2])],
                    first, second, host)
    for trial in range(3):
        x = rng(trial).standard_normal((4, 8)).astype(np.float32)
        y = plan.run({"x": x})["y"]
        a = np.maximum(x, 0)
        np.testing.assert_array_equal(y, -a * a, err_msg=f"seed {SEED + trial}")
    assert plan.transfers == {"dlpack": 3, "host": 6}  # per run: a by DLPack; a, b by host
    [exe_b], [exe_host] = second.exes, host.exes
    assert isinstance(exe_b.received[-1]["a"], torch.Tensor)
    received, returned = exe_host.received[-1], exe_b.returned[-1]
    assert all(type(v) is np.ndarray and not v.flags.writeable for v in received.values())
    # CPU tensors reach the host without a copy.
    assert np.shares_memory(received["b"], returned["b"].numpy())


def test_a_consumer_without_dlpack_gets_host_arrays():
    import torch
    producer = Recording("torch-a", torch=True, dlpack=True)
    consumer = Recording("torch-host", torch=True, dlpack=False)
    plan = compiled(model([("Relu", ["x"], "a"), ("Neg", ["a"], "y")], {"x": [3, 5]}, ["y"]),
                    [("torch-a:0", [0]), ("torch-host:0", [1])], producer, consumer)
    x = rng().standard_normal((3, 5)).astype(np.float32)
    y = plan.run({"x": x})["y"]
    np.testing.assert_array_equal(y, -np.maximum(x, 0))
    assert plan.transfers == {"dlpack": 0, "host": 1}
    assert type(consumer.exes[0].received[-1]["a"]) is np.ndarray
    assert isinstance(consumer.exes[0].returned[-1]["y"], torch.Tensor)


def test_graph_outputs_are_writeable_host_arrays_even_from_a_dlpack_partition():
    plan = compiled(model([("Neg", ["x"], "y")], {"x": [2, 3]}, ["y"]),
                    [("torch-a:0", [0])], Recording("torch-a", torch=True, dlpack=True))
    x = rng().standard_normal((2, 3)).astype(np.float32)
    y = plan.run({"x": x})["y"]
    assert type(y) is np.ndarray and y.flags.writeable
    np.testing.assert_array_equal(y, -x)
    assert plan.memory.peak_bytes == y.nbytes  # a tensor's nbytes is counted like an array's


# ---------------------------------------------------------------------- load, timing, precision

def test_each_partition_runs_counted_as_busy_on_its_device_and_is_timed():
    a, b = Recording("rec-a"), Recording("rec-b")
    timed: list = []
    plan = compiled(skip_model(), [("rec-a:0", [0]), ("rec-b:0", [1]), ("rec-a:0", [2])],
                    a, b, on_partition_run=lambda part, seconds: timed.append((part, seconds)))
    plan.run({"x": rng().standard_normal((2, 8)).astype(np.float32)})
    assert [exe.inflight for exe in a.exes + b.exes] == [[1], [1], [1]]
    assert load.inflight("rec-a:0") == load.inflight("rec-b:0") == 0
    assert [part.index for part, _ in timed] == [0, 1, 2]
    assert all(isinstance(s, float) and s >= 0 for _, s in timed)


def test_each_partition_is_compiled_at_its_own_precision():
    backend = Recording("rec")
    graph = bp.load_model(skip_model())
    plan = plan_of(graph, [("rec:0", [0]), ("rec:0", [1, 2])])
    plan.partitions[1].precision = "fp16"
    CompiledPlan(graph, plan, SimpleNamespace(backends={"rec": backend}),
                 bp.CompileOptions(precision="fp32"),
                 {"rec:0": bp.Device("rec", backend="rec", index=0)})
    assert backend.precisions == ["fp32", "fp16"]


# ---------------------------------------------------------------------- kernel runner

def chain(length: int, shape: list) -> object:
    names = ["x"] + [f"v{i}" for i in range(1, length)] + ["y"]
    return model([("Neg", [names[i]], names[i + 1]) for i in range(length)], {"x": shape}, ["y"])


def out_table(handed: list, results: list) -> bp.KernelTable:
    """Neg, Relu, Add and Mul that take ``out=`` (recording it), a Transpose that returns a
    view and an Identity that returns its input itself."""
    table = bp.KernelTable()

    def record(result, out):
        handed.append(out)
        results.append(result)
        return result

    table.register("Neg")(lambda x, out=None: record(np.negative(x, out=out), out))
    table.register("Relu")(lambda x, out=None: record(np.maximum(x, 0, out=out), out))
    table.register("Add")(lambda a, b, out=None: record(np.add(a, b, out=out), out))
    table.register("Mul")(lambda a, b, out=None: record(np.multiply(a, b, out=out), out))
    table.register("Transpose")(lambda x, perm=None: x.transpose(perm))
    table.register("Identity")(lambda x: x)
    return table


def kernel_exe(table: bp.KernelTable, onnx_model):
    return table.compile(bp.load_model(onnx_model), bp.Device("test", backend="t", index=0),
                         bp.CompileOptions())


def test_the_kernel_runner_reports_its_peak_live_bytes():
    exe = kernel_exe(out_table([], []), chain(12, [8]))
    assert exe.peak_bytes == 0 and exe.memory.predicted_peak_bytes == 64
    exe.run({"x": rng().standard_normal(8).astype(np.float32)})
    assert exe.peak_bytes == 64 and exe.memory.max_peak_bytes == 64  # an input and an output


@pytest.mark.parametrize("shape, fed", [([6, 8], (6, 8)), (["batch", 8], (3, 8))])
def test_a_kernel_taking_out_gets_the_buffer_of_a_dead_value(shape, fed):
    handed: list = []
    results: list = []
    exe = kernel_exe(out_table(handed, results), chain(6, shape))
    x = rng().standard_normal(fed).astype(np.float32)
    np.testing.assert_array_equal(exe.run({"x": x})["y"], x)
    # v1 dies after the second Neg; from the third on, each Neg writes into the buffer
    # of the value read two steps before.
    assert handed[:2] == [None, None]
    assert all(handed[k] is results[k - 2] for k in range(2, 6)), handed


def test_a_buffer_still_seen_through_a_view_is_not_reused():
    handed: list = []
    # t = Relu(x); v = Transpose(t), a view of t; w = Neg(v); y = Mul(w, v). If t's buffer
    # were handed to Neg, writing w would change v, and y with it.
    exe = kernel_exe(out_table(handed, []), model(
        [("Relu", ["x"], "t"), ("Transpose", ["t"], "v"), ("Neg", ["v"], "w"),
         ("Mul", ["w", "v"], "y")], {"x": [5, 5]}, ["y"]))
    x = rng().standard_normal((5, 5)).astype(np.float32)
    v = np.maximum(x, 0).T
    np.testing.assert_array_equal(exe.run({"x": x})["y"], -v * v)
    assert handed == [None, None, None]


def test_inputs_constants_and_graph_outputs_are_never_reused():
    handed: list = []
    c = rng(1).standard_normal(8).astype(np.float32)
    # a = Identity(x) and k = Identity(c) are the input and the constant themselves;
    # o is a graph output that later nodes read.
    exe = kernel_exe(out_table(handed, []), model(
        [("Identity", ["x"], "a"), ("Neg", ["a"], "o"), ("Identity", ["c"], "k"),
         ("Add", ["o", "k"], "m"), ("Neg", ["m"], "n"), ("Relu", ["n"], "p"),
         ("Neg", ["p"], "y")], {"x": [8]}, ["o", "y"], consts={"c": c}))
    x = rng().standard_normal(8).astype(np.float32)
    before = x.copy()
    for _ in range(2):
        out = exe.run({"x": x})
        np.testing.assert_array_equal(out["o"], -before)
        np.testing.assert_array_equal(out["y"], -np.maximum(-(-before + c), 0))
        np.testing.assert_array_equal(x, before)
        given = [h for h in handed if h is not None]
        assert given, "m's and n's buffers should have been handed on"
        assert not any(np.shares_memory(h, arr) for h in given for arr in (x, out["o"]))
        handed.clear()


def test_out_is_found_only_where_a_kernel_names_it():
    def named(x, out=None):
        return x

    def keyword_only(x, *, out=None):
        return x

    def any_keywords(x, **attributes):
        return x

    assert takes_out(named) and takes_out(keyword_only)
    assert not takes_out(any_keywords) and not takes_out(lambda x: x)


# ---------------------------------------------------------------------- many threads

def hammer(plan: CompiledPlan, make_input, threads: int = 16, runs: int = 50) -> None:
    """Run ``plan`` from ``threads`` threads, ``runs`` times each, on distinct inputs, and
    check every output against a single-threaded run of the same input."""
    inputs = [[make_input(rng(1000 + t * runs + r)) for r in range(runs)]
              for t in range(threads)]
    expected = [[plan.run(feeds) for feeds in row] for row in inputs]
    errors: list[str] = []
    start = threading.Barrier(threads)

    def worker(t: int) -> None:
        start.wait()
        for r, feeds in enumerate(inputs[t]):
            got = plan.run(feeds)
            for name, want in expected[t][r].items():
                if not np.allclose(got[name], want, rtol=1e-6, atol=1e-6):
                    errors.append(f"thread {t} run {r} output {name} "
                                  f"(seed {SEED + 1000 + t * runs + r})")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in pool)
    assert errors == []


def conv_input(generator: np.random.Generator) -> dict:
    return {"x": generator.standard_normal((1, 2, 6, 6)).astype(np.float32)}


def test_a_kernel_backend_and_the_reference_run_from_many_threads():
    plan = compiled(relu_conv_relu(), [("example-numpy:0", [0]), ("reference:0", [1]),
                                       ("example-numpy:0", [2])])
    feeds = conv_input(rng())
    np.testing.assert_allclose(plan.run(feeds)["y"], relu_conv_relu_numpy(feeds["x"]),
                               rtol=1e-5, atol=1e-5)
    hammer(plan, conv_input)
    runs = 1 + 2 * 16 * 50  # the checks above, the single-threaded runs, the threads
    assert plan.transfers == {"dlpack": 0, "host": 2 * runs}
    memory = plan.memory
    assert memory.runs == runs
    assert memory.max_peak_bytes == memory.peak_bytes == memory.predicted_peak_bytes


@pytest.mark.parametrize("backend, policy", [("onnxruntime", "latency"),
                                             ("onnxruntime", "throughput"),
                                             ("openvino-cpu", "latency")])
def test_a_graph_compiler_runs_from_many_threads(backend, policy):
    plan = compiled(relu_conv_relu(), [("example-numpy:0", [0]), (f"{backend}:0", [1, 2])],
                    options=bp.CompileOptions(policy=policy))
    feeds = conv_input(rng())
    np.testing.assert_allclose(plan.run(feeds)["y"], relu_conv_relu_numpy(feeds["x"]),
                               rtol=1e-4, atol=1e-4)
    hammer(plan, conv_input)
    runs = 1 + 2 * 16 * 50
    assert plan.transfers == {"dlpack": 0, "host": runs}
    assert plan.memory.runs == runs
