"""Measured selection (issue 20): candidates timed when the cost model cannot separate them,
the winner kept in a database that survives a restart, a fast start that switches to the
winner under concurrent requests, and the throughput spread over two plans."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp
from backplane.engine import selection, tuning
from backplane.sdk.errors import UnsupportedError
from conftest import run_python

#: Backends whose devices the measured candidates may use: the two fast CPU runtimes (the
#: others would only make each test slower).
EXCLUDED = ["opencl", "example-numpy"]


def conv_model(batch: int | str = 1) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> global pool: both CPU runtimes run it, at similar cost."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         helper.make_node("GlobalAveragePool", ["c2"], ["y"], name="pool")],
        "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 1, 1])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return {"x": x}


@pytest.fixture
def measured(tmp_path, monkeypatch):
    """Measured selection on, into a database of the test's own, every pair of candidates
    too close to separate (so that they are measured whatever the cost model predicts)."""
    needs = {"onnxruntime", "openvino-cpu"} - set(bp.registry().backends)
    if needs:
        pytest.skip(f"needs both CPU runtimes; missing: {', '.join(sorted(needs))}")
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BACKPLANE_TUNE", "auto")
    monkeypatch.setattr(tuning, "separation", lambda planner: 1e9)
    return tmp_path / "cache" / "tune"


def reference(model: onnx.ModelProto, x: dict[str, np.ndarray]) -> np.ndarray:
    return bp.Session(model, devices=["reference"], tune="off").run(x)["y"]


def test_close_candidates_are_measured_and_the_fastest_kept(measured):
    s = bp.Session(conv_model(), exclude=EXCLUDED, sample_inputs=feeds(), fast_start=False)
    sel = s.plan.selection
    assert sel["how"] == "measured"
    timed = [a for a in sel["alternatives"] if a["median_s"] is not None]
    assert len(timed) >= 2, sel
    fastest = min(timed, key=lambda a: a["median_s"])
    assert sel["winner"] == fastest["plan"] == tuning.describe(s.plan)
    text = s.plan.explain()
    assert "selection: measured" in text and "<- kept" in text
    assert len(list(measured.glob("*.json"))) == 1


def test_separated_candidates_are_not_measured(measured, monkeypatch):
    monkeypatch.setattr(tuning, "separation", lambda planner: 1.0)
    s = bp.Session(conv_model(), exclude=EXCLUDED, sample_inputs=feeds())
    assert s.wait_selected(0)  # nothing runs in the background
    assert s.plan.selection["how"] == "predicted"
    assert "separates the candidates" in s.plan.selection["why"]
    assert all(a["median_s"] is None for a in s.plan.selection["alternatives"])
    off = bp.Session(conv_model(), exclude=EXCLUDED, sample_inputs=feeds(), tune="off")
    assert off.plan.selection == {}
    assert not list(measured.glob("*.json"))


def test_tune_modes_are_checked():
    with pytest.raises(UnsupportedError, match="unknown tune mode 'fast'"):
        bp.Session(conv_model(), tune="fast")
    with pytest.raises(UnsupportedError, match="tune_budget_s"):
        bp.Session(conv_model(), tune_budget_s=0)


SNIPPET = """
import json, numpy as np, onnx, backplane as bp
x = np.load({x!r})
s = bp.Session(onnx.load({model!r}), exclude={only!r}, sample_inputs={{"x": x}},
               fast_start=False)
print(json.dumps({{"how": s.plan.selection["how"], "winner": s.plan.selection["winner"]}}))
"""


def test_the_database_survives_a_restart_and_a_changed_key_is_measured_again(
        measured, tmp_path, monkeypatch, example_site):
    path, x = tmp_path / "convnet.onnx", feeds()["x"]
    onnx.save(conv_model("batch"), path)
    np.save(tmp_path / "x.npy", x)
    code = SNIPPET.format(x=str(tmp_path / "x.npy"), model=str(path), only=EXCLUDED)
    env = {"BACKPLANE_CACHE_DIR": str(tmp_path / "cache"), "BACKPLANE_TUNE": "on"}
    import json

    runs = []
    for _ in range(2):  # two processes: the second reads what the first stored
        result = run_python(code, site=example_site, **env)  # the plugins seen here
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert runs[0]["how"] == "measured" and runs[1] == {"how": "database",
                                                         "winner": runs[0]["winner"]}
    assert len(list(measured.glob("*.json"))) == 1
    # In this process too: the database's winner, no measuring.
    again = bp.Session(onnx.load(path), exclude=EXCLUDED, sample_inputs={"x": x})
    assert again.plan.selection["how"] == "database", again.plan.selection
    np.testing.assert_allclose(again.run({"x": x})["y"], reference(conv_model(), {"x": x}),
                               rtol=1e-4, atol=1e-4)
    # Other input sizes: another key, measured.
    x4 = feeds(4)["x"]
    bigger = bp.Session(onnx.load(path), exclude=EXCLUDED, sample_inputs={"x": x4},
                        fast_start=False)
    assert bigger.plan.selection["how"] == "measured"
    assert len(list(measured.glob("*.json"))) == 2
    # A runtime of another version: another key, measured; the old entry stays.
    backend = bp.registry().backends["onnxruntime"]
    monkeypatch.setattr(type(backend), "version", "selection-test")
    changed = bp.Session(onnx.load(path), exclude=EXCLUDED, sample_inputs={"x": x},
                         fast_start=False)
    assert changed.plan.selection["how"] == "measured"
    assert len(list(measured.glob("*.json"))) == 3


def test_a_damaged_database_entry_is_measured_again(measured):
    first = bp.Session(conv_model(), exclude=EXCLUDED, sample_inputs=feeds(), fast_start=False)
    assert first.plan.selection["how"] == "measured"
    (entry,) = measured.glob("*.json")
    entry.write_bytes(entry.read_bytes().replace(b'"pins"', b'"pinz"'))
    again = bp.Session(conv_model(), exclude=EXCLUDED, sample_inputs=feeds(), fast_start=False)
    assert again.plan.selection["how"] == "measured"


def test_weights_do_not_change_the_structure_key():
    a, b = conv_model(), conv_model()
    b.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        np.ones((8, 3, 3, 3), np.float32), "w1"))
    assert tuning.structure_key(a) == tuning.structure_key(b)
    c = conv_model()
    c.graph.node[0].attribute[0].ints[:] = [0, 0, 0, 0]  # pads: another computation
    assert tuning.structure_key(a) != tuning.structure_key(c)


def test_fast_start_switches_under_eight_threads_with_every_request_answered(
        measured, monkeypatch):
    """The first plan answers at once; the measured winner (forced to be another plan
    here, by making the first look slow) takes over mid-stream; every request of 8
    threads is answered once, within fp32 agreement of the reference, before and after."""
    real = tuning.measure

    def first_looks_slow(compiled, *args, **kwargs):
        found = real(compiled, *args, **kwargs)
        found.rounds[0] = [t * 100 for t in found.rounds[0]]
        return found

    monkeypatch.setattr(tuning, "measure", first_looks_slow)
    x = feeds(2, seed=5)
    want = reference(conv_model(2), x)
    s = bp.Session(conv_model(2), exclude=EXCLUDED, sample_inputs=x, tune_budget_s=0.5)
    first = s.plan
    stop, answered, errors, plans = threading.Event(), [0] * 8, [], set()

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                out = s.run(x)["y"]
                np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
                answered[i] += 1
                plans.add(id(s.plan))
            except Exception as exc:  # noqa: BLE001 - any failure fails the test
                errors.append(exc)
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    assert s.wait_selected(120)
    after = sum(answered)
    while sum(answered) < after + 40 and not errors:  # requests on the new plan too
        threading.Event().wait(0.01)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    assert s.plan is not first and len(plans) >= 2
    switched = [e for e in s.plan.events if e.startswith("switched from")]
    assert len(switched) == 1, s.plan.events
    assert s.plan.selection["how"] == "measured"
    assert tuning.describe(first) in switched[0] and tuning.describe(s.plan) in switched[0]
    assert sum(answered) >= after + 40


def test_a_candidate_outside_the_precision_contract_is_left_out(measured, monkeypatch):
    monkeypatch.setattr(selection, "FP32_AGREEMENT", -1.0)  # every other plan "disagrees"
    s = bp.Session(conv_model(), exclude=EXCLUDED, sample_inputs=feeds(), fast_start=False)
    notes = [a.get("note", "") for a in s.plan.selection["alternatives"]]
    assert any(n.startswith("left out: its outputs are") for n in notes), notes
    assert [a for a in s.plan.selection["alternatives"] if a["median_s"] is not None] == [
        a for a in s.plan.selection["alternatives"] if a["plan"] == s.plan.selection["winner"]]


@pytest.mark.parametrize("gain,spread", [(0.0, True), (1e9, False)])
def test_throughput_spreads_requests_only_where_measured_faster(measured, monkeypatch, gain,
                                                                spread):
    monkeypatch.setattr(selection, "SPREAD_GAIN", gain)
    monkeypatch.setattr(selection, "SPREAD_S", 0.1)
    x = feeds(2)
    s = bp.Session(conv_model(2), exclude=EXCLUDED, sample_inputs=x, policy="throughput",
                   fast_start=False)
    kept = s.plan.selection["spread"]
    assert kept["kept"] is spread and kept["alone_per_s"] > 0 and kept["spread_per_s"] > 0
    assert any(n.startswith("throughput:") for n in s.plan.notes)
    assert isinstance(s._compiled, selection.Spread) is spread
    want = reference(conv_model(2), x)
    outs: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: outs.extend(s.run(x)["y"] for _ in range(10)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outs) == 40
    for out in outs:
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


class _Runner:
    """A compiled plan's stand-in for the timing loop alone: ``run`` sleeps ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def run(self, feeds):
        threading.Event().wait(self.seconds)
        return {}


def test_measure_stops_on_a_clear_winner_and_keeps_the_faster():
    found = tuning.measure([_Runner(0.004), _Runner(0.001)], {}, budget=10.0)
    assert found.best() == 1
    assert found.stopped in ("the winner was clear", "every median was stable")
    assert found.seconds < 5


def test_measure_waits_for_a_quiet_session_then_gives_up_waiting_at_half_the_budget():
    found = tuning.measure([_Runner(0.001), _Runner(0.002)], {}, budget=0.4,
                           quiet=lambda: None)  # a session that never rests
    assert found.best() == 0  # measured anyway, in the second half of the budget
    assert 0.2 <= found.seconds < 2


def test_a_dynamic_model_is_priced_again_at_the_sizes_its_first_request_runs_with(measured):
    s = bp.Session(conv_model("batch"), exclude=EXCLUDED, tune="off")
    assert s.planner.dims == {"batch": 1}  # what random inputs take, not a worst case
    assert "priced for batch=1" in s.plan.notes
    s.run(feeds(16))
    assert s.wait_selected(60)
    assert s.planner.dims == {"batch": 16}
    assert "priced for batch=16" in s.plan.notes and "priced for batch=1" not in s.plan.notes
    at_16 = bp.Session(conv_model("batch"), exclude=EXCLUDED, tune="off", dims={"batch": 16})
    assert s.plan.predicted_s == pytest.approx(at_16.plan.predicted_s, rel=0.2)


EXITING = """
import atexit, threading, numpy as np, onnx, backplane as bp
from backplane.engine import tuning

def after_backplane_stopped():  # registered first: runs after backplane's exit handler
    alive = [t.name for t in threading.enumerate() if t.name.startswith("backplane-")]
    print("still running at exit:", alive)

atexit.register(after_backplane_stopped)
tuning.separation = lambda planner: 1e9  # measure, in the background
s = bp.Session(onnx.load({model!r}), exclude={excluded!r}, tune_budget_s=30)
s.run({{"x": np.zeros((1, 3, 32, 32), np.float32)}})
print("answered")
"""


def test_a_process_that_exits_while_selecting_in_the_background_exits_cleanly(
        measured, tmp_path, example_site):
    path = tmp_path / "convnet.onnx"
    onnx.save(conv_model(), path)
    result = run_python(EXITING.format(model=str(path), excluded=EXCLUDED), site=example_site,
                        BACKPLANE_CACHE_DIR=str(tmp_path / "cache"), BACKPLANE_TUNE="auto")
    assert result.returncode == 0, result.stderr
    assert "answered" in result.stdout and "terminate" not in result.stderr
    # A runtime's thread killed inside native code at exit aborts the process: the
    # selection was stopped and waited for before the interpreter went down.
    assert "still running at exit: []" in result.stdout, result.stdout
