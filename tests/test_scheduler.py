"""The scheduler's choices, on backends declared here (their capabilities, cost hints and
device kinds are what the scheduler reads; nothing is compiled), and the precision
contract on the real OpenVINO backend."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp
from backplane.engine import costmodel
from backplane.hardware import liveload as load
from backplane.model.intake import load_model
from backplane.engine.scheduler import Constraints, schedule

REAL_SLOWDOWN = load.slowdown


@pytest.fixture(autouse=True)
def fresh_data(tmp_path, monkeypatch):
    """No stored calibration, conformance results or learned corrections, and an idle
    machine (the tests compare plans made moments apart)."""
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(load, "slowdown", lambda device: (1.0, "idle"))
    costmodel.refresh()
    yield
    costmodel.refresh()


def backend(name: str, ops: str | list[str] = "*", *, hints: dict | None = None,
            precisions: tuple[str, ...] = ("fp32",), priority: int = 0) -> bp.Backend:
    caps = bp.Capabilities(ops={o: bp.OpSupport() for o in ops} if ops != "*" else {},
                           any_op=ops == "*", precisions=frozenset(precisions))
    cls = type(name.title().replace("-", ""), (bp.Backend,), {
        "name": name, "api_version": bp.API_VERSION, "priority": priority,
        "capabilities": caps, "cost_hints": hints or {}, "version": "1"})
    return cls()


def device(backend_name: str, kind: str, **props) -> bp.Device:
    memory = props.pop("memory_bytes", None)
    return bp.Device(name=f"{backend_name} device", kind=kind, backend=backend_name, index=0,
                     memory_bytes=memory, properties=props)


FAST = {"compute_efficiency": 1.0, "memory_efficiency": 1.0, "launch_us": 1.0,
        "node_us": 0.1}


def model(nodes, inputs, outputs, inits=()) -> bp.Graph:
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(name, shape, seed=0):
    return numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.05, name)


def relu_matmul_relu(rows: int, width: int) -> bp.Graph:
    return model([helper.make_node("Relu", ["x"], ["a"], name="relu1"),
                  helper.make_node("MatMul", ["a", "w"], ["b"], name="matmul"),
                  helper.make_node("Relu", ["b"], ["y"], name="relu2")],
                 [f32("x", [rows, width])], [f32("y", [rows, width])],
                 [weight("w", [width, width])])


def place(graph, devices, backends, **kw):
    plan = schedule(graph, devices, {b.name: b for b in backends}, **kw)
    return plan, {p.node: p for p in plan.placements}


def test_copies_are_priced_so_a_node_stays_where_its_data_is():
    host, accel = backend("host"), backend("accel", ["MatMul"], hints=FAST)
    devices = [device("accel", "gpu", host_link_gb_s=1.0), device("host", "cpu")]
    # Little arithmetic on a lot of data: the accelerator computes the node faster, but
    # copying 16 MiB each way over a 1 GB/s link costs far more.
    plan, placed = place(relu_matmul_relu(2**20, 4), devices, [host, accel])
    assert placed["matmul"].device == "host:0"
    rejected = {r.device: r for r in placed["matmul"].rejected}
    assert rejected["accel:0"].code == "not-chosen:cost"  # a candidate, priced, turned down
    assert len(plan.partitions) == 1
    # A lot of arithmetic on little data: worth the two copies.
    plan, placed = place(relu_matmul_relu(64, 2048), devices, [host, accel])
    assert placed["matmul"].device == "accel:0"
    assert [p.device for p in plan.partitions] == ["host:0", "accel:0", "host:0"]
    assert plan.partitions[1].transfer_s > 0 and plan.partitions[1].transfers_in == ["a"]
    assert plan.predicted_s == pytest.approx(sum(p.predicted_s for p in plan.partitions),
                                             rel=0.05)


def test_node_level_greedy_choice_would_be_worse_than_the_plan():
    host, accel = backend("host"), backend("accel", ["MatMul"], hints=FAST)
    devices = [device("accel", "gpu", host_link_gb_s=1.0), device("host", "cpu")]
    graph = relu_matmul_relu(2**20, 4)
    plan, placed = place(graph, devices, [host, accel])
    greedy, _ = place(graph, devices, [host, accel],
                      delegate=lambda node, cands: min(cands, key=lambda c: c.predicted_s))
    assert greedy.placements[1].device == "accel:0"
    assert greedy.predicted_s > 1.5 * plan.predicted_s


def test_independent_branches_on_one_device_form_one_partition():
    host, accel = backend("host"), backend("accel", ["MatMul"], hints=FAST)
    devices = [device("accel", "gpu"), device("host", "cpu")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a1"], name="a1"),
             helper.make_node("Relu", ["x"], ["b1"], name="b1"),
             helper.make_node("MatMul", ["a1", "w2"], ["a2"], name="a2"),
             helper.make_node("Relu", ["b1"], ["b2"], name="b2")]
    graph = model(nodes, [f32("x", [256, 1024])],
                  [f32("a2", [256, 1024]), f32("b2", [256, 1024])],
                  [weight("w1", [1024, 1024]), weight("w2", [1024, 1024], 1)])
    plan, placed = place(graph, devices, [host, accel])
    assert placed["a1"].device == placed["a2"].device == "accel:0"
    assert sorted((p.device, p.nodes) for p in plan.partitions) == [
        ("accel:0", ["a1", "a2"]), ("host:0", ["b1", "b2"])]


def big_matmuls(count: int = 6, width: int = 1024, rows: int = 64) -> bp.Graph:
    names = ["x"] + [f"t{i}" for i in range(1, count)] + ["y"]
    return model([helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]],
                                   name=f"mm{i}") for i in range(count)],
                 [f32("x", [rows, width])], [f32("y", [rows, width])],
                 [weight(f"w{i}", [width, width], i) for i in range(count)])


def test_efficiency_policy_trades_time_for_energy():
    gpu, npu = backend("gpu-backend", hints=FAST), backend("npu-backend", hints=FAST)
    devices = [device("gpu-backend", "gpu"), device("npu-backend", "npu")]
    fast, _ = place(big_matmuls(), devices, [gpu, npu], policy="latency")
    frugal, _ = place(big_matmuls(), devices, [gpu, npu], policy="efficiency")
    assert {p.device for p in fast.placements} == {"gpu-backend:0"}
    assert {p.device for p in frugal.placements} == {"npu-backend:0"}
    assert frugal.predicted_energy_j < fast.predicted_energy_j
    assert frugal.predicted_s > fast.predicted_s


def test_throughput_policy_pipelines_across_two_devices():
    a, b = backend("gpu-a", hints=FAST), backend("gpu-b", hints=FAST)
    devices = [device("gpu-a", "gpu", pci_bus_id="0000:01:00.0"),
               device("gpu-b", "gpu", pci_bus_id="0000:02:00.0")]
    latency, _ = place(big_matmuls(8), devices, [a, b], policy="latency")
    throughput, _ = place(big_matmuls(8), devices, [a, b], policy="throughput")
    assert len(latency.partitions) == 1
    assert [len(p.nodes) for p in throughput.partitions] == [4, 4]
    assert {p.device for p in throughput.partitions} == {"gpu-a:0", "gpu-b:0"}


def test_device_class_is_preferred_and_strict_names_the_nodes_that_would_leave_it():
    gpu, npu = backend("gpu-backend", hints=FAST), backend("npu-backend", ["MatMul"])
    devices = [device("gpu-backend", "gpu"), device("npu-backend", "npu")]
    graph = relu_matmul_relu(64, 256)
    plan, placed = place(graph, devices, [gpu, npu], constraints=Constraints("npu"))
    assert placed["matmul"].device == "npu-backend:0"
    assert placed["relu1"].device == "gpu-backend:0"
    assert "no npu device admits it" in placed["relu1"].reason
    assert any(r.code == "constraint:device-class" for r in placed["matmul"].rejected)
    with pytest.raises(bp.UnsupportedError) as err:
        place(graph, devices, [gpu, npu], constraints=Constraints("npu"), strict=True)
    assert "'relu1' (Relu)" in str(err.value) and "'relu2' (Relu)" in str(err.value)
    assert "matmul" not in str(err.value)
    host = backend("host")
    plan, placed = place(graph, devices + [device("host", "cpu")], [gpu, npu, host],
                         constraints=Constraints(exclude=frozenset({"gpu"})))
    assert "gpu-backend:0" not in {p.device for p in plan.placements}
    assert {r.code for r in placed["relu1"].rejected if r.device == "gpu-backend:0"} == {
        "constraint:excluded"}


def test_memory_limits_reject_nodes_and_move_weights_that_do_not_fit():
    host, accel = backend("host"), backend("accel", hints=FAST)
    small = device("accel", "gpu", memory_bytes=2 * 2**20)
    # One node's own tensors exceed the device: rejected with the sizes.
    plan, placed = place(relu_matmul_relu(2**16, 64), [small, device("host", "cpu")],
                         [host, accel])
    memory = [r for r in placed["relu1"].rejected if r.code == "memory"]
    assert memory and "MiB" in memory[0].detail
    # Each weight fits, all six (4 MiB each) do not: the heaviest move off, and say so.
    roomy = device("accel", "gpu", memory_bytes=10 * 2**20)
    plan, placed = place(big_matmuls(6), [roomy, device("host", "cpu")], [host, accel])
    on_accel = [p for p in plan.placements if p.device == "accel:0"]
    assert 0 < len(on_accel) <= 2
    assert any("moved off accel:0" in e for e in plan.events)


def test_delegate_sees_every_candidate_with_its_costs_and_can_pin_one():
    host, accel = backend("host"), backend("accel", ["MatMul"], hints=FAST)
    devices = [device("accel", "gpu"), device("host", "cpu")]
    seen = {}

    def delegate(node, candidates):
        seen[node.name] = candidates
        if node.op_type == "MatMul":
            return next(c for c in candidates if c.device.backend == "host")
        return None

    plan, placed = place(relu_matmul_relu(64, 2048), devices, [host, accel],
                         delegate=delegate)
    mm = seen["matmul"]
    assert mm[0].default and mm[0].device.id == "accel:0"
    assert all(c.predicted_s > 0 and c.energy_j > 0 for c in mm)
    assert placed["matmul"].device == "host:0"
    assert placed["matmul"].reason == "chosen by the selection delegate"

    def broken(node, candidates):
        raise KeyError("delegate bug")

    plan, placed = place(relu_matmul_relu(64, 2048), devices, [host, accel], delegate=broken)
    assert placed["matmul"].device == "accel:0"
    assert any("delegate raised KeyError" in e for e in plan.events)


def test_failed_conformance_variant_is_not_planned_on_that_device():
    from backplane.conformance import store

    fast, slow = backend("fast-cpu", hints=FAST), backend("slow-cpu")
    devices = [device("fast-cpu", "cpu"), device("slow-cpu", "cpu")]
    fingerprint = costmodel.profile(devices[0]).fingerprint
    assert fingerprint, "the host CPU has a hardware fingerprint"
    path = store._path("fast-cpu", store.store_key("fast-cpu:0", fingerprint))  # as saved
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backend": "fast-cpu", "version": "1",
                                "variants": {"Relu|float32": "failed",
                                             "MatMul|float32": "passed"}}))
    plan, placed = place(relu_matmul_relu(64, 256), devices, [fast, slow])
    assert placed["relu1"].device == "slow-cpu:0"
    codes = {r.device: r.code for r in placed["relu1"].rejected}
    assert codes["fast-cpu:0"] == "conformance:failed"
    # A stored run of another plugin version says nothing about this one.
    path.write_text(json.dumps({"backend": "fast-cpu", "version": "0",
                                "variants": {"Relu|float32": "failed"}}))
    plan, placed = place(relu_matmul_relu(64, 256), devices, [fast, slow])
    assert placed["relu1"].device == "fast-cpu:0"


def test_explain_and_json_carry_costs_codes_and_partitions():
    host, accel = backend("host"), backend("accel", ["MatMul"], hints=FAST)
    plan, _ = place(relu_matmul_relu(64, 2048), [device("accel", "gpu"), device("host", "cpu")],
                    [host, accel])
    text = plan.explain()
    assert "predicted" in text and "partition 1 on accel:0 at fp32" in text
    assert "capability:op" not in text  # rejections are per node: verbose only
    assert "capability:op" in plan.explain(verbose=True)  # Relu: no kernel on the accelerator
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["predicted_s"] > 0
    assert data["partitions"][1]["precision"] == "fp32"
    assert data["placements"][1]["predicted_s"] > 0


def mlp_model(width: int = 256, rows: int | str = 64) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        "mlp", [f32("x", [rows, width])], [f32("y", [rows, width])],
        [weight("w1", [width, width], 1), weight("w2", [width, width], 2)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_auto_precision_keeps_a_lower_precision_plan_only_within_the_budget():
    from backplane.plugins.openvino_cpu import host_precisions

    if "bf16" not in host_precisions() and "fp16" not in host_precisions():
        pytest.skip("this CPU gives OpenVINO no lower precision to choose")

    def lower_first(node, candidates):
        """Whether a lower precision pays is the cost model's call, which depends on the
        CPU (an AMX Xeon's generic hwdb entry gives bf16 no advantage): this test is about
        the accuracy check, so it takes the lower-precision path wherever one is offered."""
        return next((c for c in candidates if c.precision != "fp32"), None)

    x = np.random.default_rng(5).standard_normal((512, 512)).astype(np.float32)
    loose = bp.Session(mlp_model(512, 512), precision="auto", max_rel_error=0.05,
                       sample_inputs={"x": x}, delegate=lower_first)
    lower = [p for p in loose.plan.partitions if p.precision != "fp32"]
    assert lower, loose.plan.explain()
    check = loose.plan.precision_checks[-1]
    assert check["kept"] and 0 < check["max_rel_error"] <= 0.05
    exact = bp.Session(mlp_model(512, 512), devices=["reference"]).run({"x": x})["y"]
    got = loose.run({"x": x})["y"]
    assert np.abs(got - exact).max() / np.abs(exact).max() <= 0.05
    tight = bp.Session(mlp_model(512, 512), precision="auto", max_rel_error=1e-7,
                       sample_inputs={"x": x}, delegate=lower_first)
    assert {p.precision for p in tight.plan.partitions} == {"fp32"}
    rejected = tight.plan.precision_checks[0]
    assert not rejected["kept"] and rejected["max_rel_error"] > 1e-7
    budget = [r for p in tight.plan.placements for r in p.rejected
              if r.code == "precision:budget"]
    assert budget and "measured max relative error" in budget[0].detail
    assert "precision check" in tight.plan.explain()


def test_tuning_measures_then_reuses_and_any_key_change_measures_again(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path / "cache"))
    model_proto = mlp_model(64, rows="batch")
    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    first = bp.Session(model_proto, tune=True, sample_inputs={"x": x})
    assert first.plan.selection["how"] == "measured"
    assert len(list((tmp_path / "cache" / "tune").glob("*.json"))) == 1
    again = bp.Session(model_proto, tune=True, sample_inputs={"x": x})
    assert again.plan.selection["how"] == "database"
    assert [p.device for p in again.plan.placements] == [p.device for p in first.plan.placements]
    np.testing.assert_allclose(again.run({"x": x})["y"], first.run({"x": x})["y"], rtol=1e-5)
    # Other input sizes are another key.
    x8 = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    assert bp.Session(model_proto, tune=True,
                      sample_inputs={"x": x8}).plan.selection["how"] == "measured"
    assert len(list((tmp_path / "cache" / "tune").glob("*.json"))) == 2
    # Another plugin version is another key: measured anew, the old entry left alone.
    backend = bp.registry().backends["onnxruntime"]
    monkeypatch.setattr(type(backend), "version", "tuning-test")
    changed = bp.Session(model_proto, tune=True, sample_inputs={"x": x})
    assert changed.plan.selection["how"] == "measured"
    assert len(list((tmp_path / "cache" / "tune").glob("*.json"))) == 3


def test_cli_plan_prints_json_with_the_policy_precision_and_costs(tmp_path):
    from conftest import run_cli

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(64), path)
    result = run_cli("plan", str(path), "--policy", "efficiency", "--json",
                     BACKPLANE_DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["policy"] == "efficiency" and data["predicted_energy_j"] > 0
    assert all(p["precision"] == "fp32" and p["predicted_s"] > 0 for p in data["partitions"])
    result = run_cli("plan", str(path), "--precision", "auto", "--max-rel-error", "0.05",
                     BACKPLANE_DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert "precision=auto" in result.stdout


def test_live_load_on_a_device_moves_work_to_an_idle_one(monkeypatch):
    monkeypatch.setattr(load, "slowdown", REAL_SLOWDOWN)
    a, b = backend("gpu-a", hints=FAST, priority=1), backend("gpu-b", hints=FAST)
    devices = [device("gpu-a", "gpu", pci_bus_id="0000:01:00.0"),
               device("gpu-b", "gpu", pci_bus_id="0000:02:00.0")]
    idle, _ = place(big_matmuls(2), devices, [a, b])
    assert {p.device for p in idle.placements} == {"gpu-a:0"}  # equal: priority decides
    with load.busy("gpu-a:0"), load.busy("gpu-a:0"):
        busy, _ = place(big_matmuls(2), devices, [a, b])
        assert "2 partition(s) of this process in flight" in busy.load["gpu-a:0"]
    assert {p.device for p in busy.placements} == {"gpu-b:0"}


def test_runs_record_measured_times_beside_predictions_and_teach_the_cost_model():
    s = bp.Session(mlp_model(64), devices=["onnxruntime"])
    x = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
    assert s.plan.measured_s is None
    for _ in range(costmodel.MIN_OBSERVATIONS * 8):
        s.run({"x": x})
    part = s.plan.partitions[0]
    assert part.measured_s is not None and part.measured_s > 0 and part.predicted_s > 0
    assert "measured" in s.plan.explain()
    assert s.memory.runs == costmodel.MIN_OBSERVATIONS * 8
    assert s.memory.max_peak_bytes == s.memory.predicted_peak_bytes > 0
    learned = costmodel.correction("onnxruntime", s.plan.versions["onnxruntime"],
                                   s.plan.fingerprints["onnxruntime:0"], s.plan.model_key)
    ratio = part.measured_s / (part.predicted_s / s.plan.corrections["onnxruntime:0"])
    assert learned == pytest.approx(ratio, rel=0.5)
    again = bp.Session(mlp_model(64), devices=["onnxruntime"])
    assert again.plan.corrections["onnxruntime:0"] == pytest.approx(learned)
    # What one model taught says nothing about another.
    other = bp.Session(mlp_model(128), devices=["onnxruntime"])
    assert other.plan.corrections["onnxruntime:0"] == 1.0


def test_mixing_runtimes_on_one_device_must_pay_for_their_interference():
    from backplane.engine.assignment import RUNTIME_INTERFERENCE

    # Two runtimes on the host CPU, each better at one op: a mixed plan would save a
    # little per node, and lose more to the runtimes contending for the same cores.
    mm_fast = backend("mm-fast", ["MatMul", "Relu"], hints={**FAST, "memory_efficiency": 0.2})
    ew_fast = backend("ew-fast", ["MatMul", "Relu"], hints={**FAST, "compute_efficiency": 0.7})
    devices = [device("mm-fast", "cpu"), device("ew-fast", "cpu")]
    plan, _ = place(relu_matmul_relu(512, 512), devices, [mm_fast, ew_fast])
    assert RUNTIME_INTERFERENCE > 0
    assert len({p.device for p in plan.placements}) == 1
    # Where one runtime lacks an op, the plan mixes, and prices the interference.
    mm_only, relu_only = backend("mm-only", ["MatMul"]), backend("relu-only", ["Relu"])
    plan, placed = place(relu_matmul_relu(512, 512),
                         [device("mm-only", "cpu"), device("relu-only", "cpu")],
                         [mm_only, relu_only])
    assert placed["matmul"].device == "mm-only:0" and placed["relu1"].device == "relu-only:0"
    alone = sum(p.predicted_s for p in plan.placements)  # each node priced on its own
    assert plan.predicted_s > (1 + RUNTIME_INTERFERENCE) * alone


def test_a_plan_is_priced_for_the_sizes_it_will_run_at():
    model_proto = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "batched",
        [f32("x", ["batch", 256])], [f32("y", ["batch", 256])], [weight("w", [256, 256])]),
        opset_imports=[helper.make_opsetid("", 17)])
    one = bp.Session(model_proto, devices=["reference"])
    many = bp.Session(model_proto, devices=["reference"], dims={"batch": 64})
    x = np.ones((64, 256), np.float32)
    sampled = bp.Session(model_proto, devices=["reference"], sample_inputs={"x": x})
    assert many.plan.predicted_s > 3 * one.plan.predicted_s
    assert sampled.plan.predicted_s == pytest.approx(many.plan.predicted_s, rel=0.01)
    assert "priced for batch=64" in many.plan.notes
    # The compiled model still takes any batch.
    assert many.run({"x": np.ones((3, 256), np.float32)})["y"].shape == (3, 256)
    with pytest.raises(bp.InputError, match="positive"):
        bp.Session(model_proto, devices=["reference"], dims={"batch": 0})


def test_a_model_with_an_op_one_backend_lacks_runs_correctly_as_a_multi_partition_plan():
    # opencl has no ConvTranspose: with the graph compilers excluded, the automatic plan
    # runs it on the reference backend (flagged) between two opencl partitions.
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu_in"),
             helper.make_node("ConvTranspose", ["a", "w"], ["b"], name="deconv"),
             helper.make_node("Sigmoid", ["b"], ["y"], name="sigmoid")]
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    model_proto = helper.make_model(helper.make_graph(
        nodes, "deconv", [f32("x", [1, 4, 8, 8])], [f32("y", [1, 2, 10, 10])], [w]),
        opset_imports=[helper.make_opsetid("", 17)])
    s = bp.Session(model_proto, exclude=["openvino-cpu", "onnxruntime"])
    assert [p.backend for p in s.plan.partitions] == ["opencl", "reference", "opencl"]
    placed = {p.node: p for p in s.plan.placements}
    assert placed["deconv"].fallback and s.plan.uses_fallback
    assert {r.code for r in placed["deconv"].rejected if r.device == "opencl:0"} == {
        "capability:op"}
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    want = bp.Session(model_proto, devices=["reference"]).run({"x": x})["y"]
    np.testing.assert_allclose(s.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
