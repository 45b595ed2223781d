"""What measured runs teach the cost model: a factor per op family for a backend on a
device, learned from every model run there and applied to a model never run; a model's own
factor on top, never counting twice what its families explain; the store they live in.

Runs are synthetic: each partition's "measured" time is its prediction per family times a
known true factor, so what the cost model should learn is known exactly. Plans are made by
the real scheduler on backends declared here (nothing is compiled).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp
from backplane.engine import costmodel, learning
from backplane.engine.scheduler import schedule
from backplane.engine.timing import Timing
from backplane.hardware import liveload as load
from backplane.hardware.db import private_data_dir
from backplane.model.intake import load_model

#: What the device really does, against the uncalibrated prediction: MatMuls run 3x slower
#: than predicted, element-wise work twice as fast, the fixed costs as predicted.
TRUTH = {"matmul": 3.0, "other": 0.5}
FAST = {"compute_efficiency": 1.0, "memory_efficiency": 1.0, "launch_us": 1.0,
        "node_us": 0.1}


@pytest.fixture(autouse=True)
def fresh_data(tmp_path, monkeypatch):
    """Nothing learned before, an idle machine (plans made moments apart compare)."""
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(load, "slowdown", lambda device: (1.0, "idle"))
    costmodel.refresh()
    yield
    costmodel.refresh()


ACCEL = type("Accel", (bp.Backend,), {
    "name": "accel", "api_version": bp.API_VERSION, "version": "1", "cost_hints": FAST,
    "capabilities": bp.Capabilities(any_op=True, precisions=frozenset({"fp32"}))})()
#: A device with no hwdb entry: its figures are the defaults for its kind, whatever the
#: machine running the tests.
DEVICES = [bp.Device(name="accel device", kind="gpu", backend="accel", index=0,
                     properties={"pci_bus_id": "0000:01:00.0"})]


def plan_of(graph: bp.Graph) -> bp.Plan:
    return schedule(graph, DEVICES, {"accel": ACCEL})


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mixed(rows: int, width: int, shuffles: int) -> bp.Graph:
    """A Relu, a MatMul and ``shuffles`` Transposes: MatMul and element-wise time in a mix
    set by the sizes and the count (and a key of its own per model)."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((width, width)).astype(np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w"], ["t0"], name="mm")]
    for i in range(shuffles):
        nodes.append(helper.make_node("Transpose", [f"t{i}"], [f"t{i + 1}"], name=f"tr{i}",
                                      perm=[1, 0]))
    shape = [rows, width] if shuffles % 2 == 0 else [width, rows]
    graph = helper.make_graph(nodes, f"m{rows}x{width}x{shuffles}", [f32("x", [rows, width])],
                              [f32(f"t{shuffles}", shape)], [w])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


#: Models with different mixes of MatMul and element-wise time.
TRAINING = [(256, 1024, 10), (128, 2048, 4), (512, 512, 20), (1024, 256, 30)]
NEW = (384, 768, 12)


def truth(part, extra: float = 1.0) -> float:
    """What a run of ``part`` "measures": each family at its true factor, and ``extra``
    on all of it but the copies from the host."""
    split = part.predicted_by_family
    work = sum(s * TRUTH.get(f, 1.0) for f, s in split.items() if f != "transfer")
    return extra * work + split.get("transfer", 0.0)


def run(plan: bp.Plan, times: int = 1, extra: float = 1.0) -> None:
    for _ in range(times):
        for part in plan.partitions:
            costmodel.observe_partition(plan, part, truth(part, extra))


def factors(plan: bp.Plan) -> dict[str, float]:
    return learning.family_factors("accel", "1", plan.fingerprints["accel:0"])


def test_a_partitions_prediction_is_split_by_family_before_anything_learned():
    plan = plan_of(mixed(*NEW))
    (part,) = plan.partitions
    assert {"matmul", "other", "fixed"} <= set(part.predicted_by_family)
    assert sum(part.predicted_by_family.values()) == pytest.approx(part.predicted_s)
    assert json.loads(json.dumps(plan.to_dict()))["partitions"][0]["predicted_by_family"] == \
        pytest.approx(part.predicted_by_family)


def test_families_learned_from_several_models_price_a_model_never_run():
    unlearned = plan_of(mixed(*NEW))
    target = truth(unlearned.partitions[0])
    assert unlearned.partitions[0].predicted_s < target / 1.2  # the default figures are off
    for shape in TRAINING:
        run(plan_of(mixed(*shape)))
    learned = plan_of(mixed(*NEW))
    assert factors(learned)["matmul"] == pytest.approx(3.0, rel=0.1)
    assert factors(learned)["other"] == pytest.approx(0.5, rel=0.1)
    assert learned.corrections["accel:0"] == 1.0  # nothing of its own: it never ran
    assert learned.partitions[0].predicted_s == pytest.approx(target, rel=0.1)
    # the split stays the prediction before anything learned: what runs are compared with
    split = learned.partitions[0].predicted_by_family
    assert split == pytest.approx(unlearned.partitions[0].predicted_by_family)
    # and priced node by node, the factors come to the same as on the split (what
    # benchmarks/bench_costmodel.py predicts a held-out model with)
    assert learned.partitions[0].predicted_s == pytest.approx(
        learning.predicted(split, factors(learned)), rel=1e-9)


def test_fewer_models_than_the_minimum_teach_no_family():
    before = plan_of(mixed(*NEW)).partitions[0].predicted_s
    for shape in TRAINING[:learning.MIN_MODELS - 1]:
        run(plan_of(mixed(*shape)), times=5)
    after = plan_of(mixed(*NEW))
    assert set(factors(after).values()) == {1.0}
    assert after.partitions[0].predicted_s == pytest.approx(before)


def test_a_models_own_correction_is_not_counted_twice_with_its_families():
    first = mixed(*TRAINING[0])
    target = truth(plan_of(first).partitions[0])
    # Alone, the model's own runs teach all its error: no family is learned yet.
    run(plan_of(first), times=learning.MIN_OBSERVATIONS)
    alone = plan_of(first)
    assert alone.corrections["accel:0"] > 1.2
    assert alone.partitions[0].predicted_s == pytest.approx(target, rel=0.05)
    # Other models teach the families the same error: the model's own factor is what is
    # left beyond them, so the prediction stays right instead of paying the error twice.
    for shape in TRAINING[1:]:
        run(plan_of(mixed(*shape)), times=learning.MIN_OBSERVATIONS)
    both = plan_of(first)
    assert factors(both)["matmul"] == pytest.approx(3.0, rel=0.1)
    assert both.corrections["accel:0"] == pytest.approx(1.0, abs=0.1)
    assert both.partitions[0].predicted_s == pytest.approx(target, rel=0.05)


def test_a_model_slower_than_its_families_keeps_its_own_factor_on_top():
    for shape in TRAINING[1:]:
        run(plan_of(mixed(*shape)), times=learning.MIN_OBSERVATIONS)
    odd = mixed(*TRAINING[0])
    run(plan_of(odd), times=learning.MIN_OBSERVATIONS, extra=2.0)
    plan = plan_of(odd)
    # It weighs in the family fit as one model of four (and, disagreeing with the others,
    # pulls the family factors towards 1.0); its own factor holds the rest.
    assert 1.3 < plan.corrections["accel:0"] < 3.0
    assert plan.partitions[0].predicted_s == pytest.approx(truth(plan.partitions[0], 2.0),
                                                           rel=0.05)


def test_a_learned_factor_is_clamped():
    # MatMuls 15x slower than predicted, element-wise work 20x faster: no run is off by
    # more than 10x, but the MatMul factor would be.
    for shape in TRAINING:
        plan = plan_of(mixed(*shape))
        for part in plan.partitions:
            split = part.predicted_by_family
            costmodel.observe_partition(plan, part, 15 * split["matmul"] + split["other"] / 20
                                        + split["fixed"] + split["transfer"])
    learned = factors(plan_of(mixed(*NEW)))
    assert learned["matmul"] == pytest.approx(learning.MAX_CORRECTION)
    assert all(1 / learning.MAX_CORRECTION <= f <= learning.MAX_CORRECTION
               for f in learned.values())


def test_a_model_misjudged_beyond_the_clamp_teaches_no_family():
    for shape in TRAINING:
        run(plan_of(mixed(*shape)))
    sound = factors(plan_of(mixed(*NEW)))
    odd = plan_of(mixed(*NEW))
    for _ in range(learning.MIN_OBSERVATIONS):
        costmodel.observe_partition(odd, odd.partitions[0], 100 * odd.partitions[0].predicted_s)
    again = plan_of(mixed(*NEW))
    assert factors(again) == pytest.approx(sound)
    assert again.corrections["accel:0"] == pytest.approx(learning.MAX_CORRECTION)  # its own


def test_the_cost_models_error_is_measured_once_enough_models_ran():
    fingerprint = plan_of(mixed(*NEW)).fingerprints["accel:0"]
    for shape in TRAINING[:2]:
        run(plan_of(mixed(*shape)))
    assert costmodel.error_sigma({fingerprint}, 3) is None
    for shape in TRAINING[2:]:
        run(plan_of(mixed(*shape)))
    # the families explain these runs: what is left is small
    assert costmodel.error_sigma({fingerprint}, 3) < 0.05
    assert costmodel.error_sigma({"another device"}, 3) is None


def test_factors_are_fitted_once_per_change_not_per_node(monkeypatch):
    for shape in TRAINING:
        run(plan_of(mixed(*shape)))
    calls = []
    real_fit = learning.fit
    monkeypatch.setattr(learning, "fit", lambda rows: calls.append(1) or real_fit(rows))
    plan_of(mixed(*NEW))
    plan_of(mixed(*NEW))
    assert len(calls) == 1
    run(plan_of(mixed(*TRAINING[0])))
    plan_of(mixed(*NEW))
    assert len(calls) == 2


def test_what_was_learned_survives_a_restart():
    for shape in TRAINING:
        run(plan_of(mixed(*shape)), times=learning.MIN_OBSERVATIONS)
    before = plan_of(mixed(*TRAINING[0]))
    costmodel.save()
    stored = json.loads((store_path()).read_text())
    assert stored["schema"] == learning.SCHEMA and stored["samples"]
    costmodel.refresh()
    after = plan_of(mixed(*TRAINING[0]))
    assert after.predicted_s == pytest.approx(before.predicted_s, rel=1e-3)
    assert after.corrections == pytest.approx(before.corrections, rel=1e-3)


def store_path():
    return private_data_dir(create=True) / "costmodel.json"


def legacy_key(plan: bp.Plan) -> str:
    return f"accel|1|{plan.fingerprints['accel:0'] or 'unknown'}|{plan.model_key}"


def test_a_schema_1_store_is_read():
    plan = plan_of(mixed(*NEW))
    store_path().write_text(json.dumps(
        {"schema": 1, "observations": {legacy_key(plan): [10 * math.log(2.0), 10]}}))
    costmodel.refresh()
    again = plan_of(mixed(*NEW))
    assert again.corrections["accel:0"] == pytest.approx(2.0)
    split = plan.partitions[0].predicted_by_family
    assert again.partitions[0].predicted_s == pytest.approx(
        2 * (sum(split.values()) - split["transfer"]) + split["transfer"])
    run(again)
    costmodel.save()  # kept beside what is learned now
    stored = json.loads(store_path().read_text())
    assert stored["schema"] == learning.SCHEMA and stored["samples"]
    assert stored["observations"] == {legacy_key(plan): [round(10 * math.log(2.0), 6), 10]}


def test_a_schema_1_factor_applies_alone_not_on_top_of_family_factors():
    for shape in TRAINING:
        run(plan_of(mixed(*shape)))  # the families are learned from other models
    old = plan_of(mixed(*NEW))
    split = old.partitions[0].predicted_by_family
    costmodel.save()
    stored = json.loads(store_path().read_text())
    stored["observations"] = {legacy_key(old): [10 * math.log(2.0), 10]}
    store_path().write_text(json.dumps(stored))
    costmodel.refresh()
    plan = plan_of(mixed(*NEW))
    assert factors(plan)["matmul"] == pytest.approx(3.0, rel=0.1)
    # Learned against predictions without family factors, the old factor covers them.
    assert plan.corrections["accel:0"] == pytest.approx(2.0)
    assert plan.partitions[0].predicted_s == pytest.approx(
        2 * (sum(split.values()) - split["transfer"]) + split["transfer"])


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2, 3]",
    '"a string"',
    "[" * 100000,
    json.dumps({"schema": 2, "observations": [1, 2], "samples": "x"}),
    json.dumps({"schema": 2, "observations": {"a|b|c|d": ["x", 10], "e": [1.0, True]},
                "samples": {"accel|1|unknown": [1, 2]}}),
    json.dumps({"schema": 2, "samples": {"g": {"m": [[1.0], ["x", {}], [-1, {"matmul": 1}],
                                                     [1.0, {"warp": 1.0}],
                                                     [1.0, {"matmul": "1"}],
                                                     [1.0, {"matmul": -1.0}],
                                                     [1.0, {"matmul": 0.0}], 7]}}}),
    '{"schema": 2, "samples": {"g": {"m": [[NaN, {"matmul": 1.0}], '
    '[1.0, {"matmul": Infinity}]]}}}',
    '{"schema": 2, "observations": {"k": [1' + "0" * 400 + ', 10]}, "samples": {"g": '
    '{"m": [[1' + "0" * 400 + ', {"matmul": 1.0}], [1.0, {"matmul": 1e308, "other": 1e308}]]}}}',
])
def test_a_corrupt_store_is_ignored(content):
    path = store_path()
    path.write_text(content)
    costmodel.refresh()
    plan = plan_of(mixed(*NEW))
    assert plan.corrections["accel:0"] == 1.0
    assert set(factors(plan).values()) == {1.0}
    run(plan, times=2)  # learning goes on, and the next save writes a good file
    costmodel.save()
    assert json.loads(path.read_text())["schema"] == learning.SCHEMA


def test_a_corrupt_entry_is_skipped_and_the_good_ones_kept():
    plan = plan_of(mixed(*NEW))
    group = f"accel|1|{plan.fingerprints['accel:0'] or 'unknown'}"
    split = plan.partitions[0].predicted_by_family
    good = [[2 * sum(split.values()) - split["transfer"], split]] * learning.MIN_OBSERVATIONS
    store_path().write_text(json.dumps({"schema": 2, "samples": {group: {
        plan.model_key: good + [["bad", {}], [1.0, {"matmul": None}]],
        "other-model": {"not": "a list"}}}}))
    costmodel.refresh()
    assert plan_of(mixed(*NEW)).corrections["accel:0"] == pytest.approx(2.0)


def test_sessions_report_partition_runs_with_their_family_split(monkeypatch):
    seen = []
    monkeypatch.setattr(costmodel, "observe_partition",
                        lambda plan, part, seconds: seen.append((plan, part, seconds)))
    plan = plan_of(mixed(*NEW))
    timing = Timing()
    timing.reset(plan)
    for _ in range(Timing.EVERY):
        timing.record(plan.partitions[0], 0.002)
    assert [(p, s) for _, p, s in seen] == [(plan.partitions[0], 0.002)] * 2
    assert seen[0][0] is plan
