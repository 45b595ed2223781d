"""Device selection by the scheduler, measured on the scheduler zoo (issue 6, point 10).

Everything is measured in one run, on this machine's backends:

a. selection regret: per zoo model (five families x small, large x batch 1, 32), the latency
   of the default plan (``Session(model)``: devices auto, policy latency) over the best
   single-backend latency, each loaded backend that has a device timed alone
   (``Session(model, devices=[name])``; one that cannot run every node is shown as such).
   Beside it, the same for the fixed-order policy (the first admitting backend in priority
   order, as ONNX Runtime assigns nodes to its execution providers) and for ``tune=True``
   (the winner of the candidate plans measured on the sample inputs, read back from the
   tuning cache by a fresh session). Goals for the default plan: geometric mean <= 1.05,
   worst <= 1.25.
b. planning time: ``backplane.engine.scheduler.plan_model`` on a loaded graph of 1,000 nodes
   (MatMul, Add, Relu, Softmax, LayerNormalization; branches, joins and long skips), no
   compile; median of 10 after one warm-up. Goal <= 50 ms. Then bounded time (issue 18,
   point 6): the wall seconds of ``Session(model)`` (plan and compile, no compiled-artefact
   cache) on chains of 1,000, 2,000 and 10,000 Relu/Neg nodes ([1, 16] float32), under
   devices auto and with each backend pinned, each in a fresh child after its registry
   has probed; and the same for 10,000 parallel Relu/Neg nodes summed by one Sum, and a
   chain of 10,000 nodes cycling through 37 kinds of op. Goal: the 10,000-node chain under
   auto in <= 10 s.
c. cost-model error: the default plan's ``predicted_s`` over its measured latency, per
   model, and the geometric mean of |log ratio| as a factor.

Latency is the median of timed ``session.run`` calls on the same inputs, after warm-up.
Plans are made with ``BACKPLANE_LOAD=off``: the sessions of a model are set up together,
and the load each would see is its siblings compiling, not the idle machine it is timed on.
Every session is created with the model's inputs as ``sample_inputs``, so that it plans
for the shapes it runs at. Each session lives in a child process of its own (started
with "spawn", the model sent as bytes): runtimes loaded into one process disturb each
other (worker threads of one slow another down, for good once Intel's OpenCL CPU runtime
has run), while an application that runs one plan has only its own runtimes loaded. The
sessions of one model are measured in rounds: each round asks every child, in a fresh
random order and one at a time, for one untimed call and a burst of about 25 ms of timed
calls, so that drift in the machine's speed hits them alike; a child answers only once
its threads have stopped using the CPU (ONNX Runtime's spin on a core for about 35 ms
after a call), so that it does not slow the next one. A child that raises, dies or does
not answer within REPLY_TIMEOUT_S is shown as a note on its model's row.
A single backend whose warm-up run took over 30x the fastest session's (and over 20 ms)
cannot be the best: it is not timed further, and its warm-up time is shown in brackets.
Every session's outputs are checked against the default plan's. Run it on an otherwise
idle machine: the load of other processes changes which backend is fastest.

Before measuring, the backends are calibrated once (fp32) into a fresh temporary data
folder (the compiled-artefact cache goes to a temporary folder too), so that no stored
calibration or correction learned in earlier runs steers the result, and nothing is left
behind. Calibration runs in this process before any child starts; it leaves every
runtime loaded here, which is harmless because this process does no timed work
afterwards: planning time (b) is measured in a fresh child too, and the CPU time this
process spends while the children run is checked (a note if over PARENT_LIMIT_CORES).
The cost model's learned corrections start empty and build up over the run from the
default plans' own runs (each default child saves them when it ends; the other children
do not), as in an application that runs them one after another.

    python benchmarks/bench_scheduler.py [--quick] [--json OUT] [--no-calibrate]
                                         [--keep-data-dir] [--planning-only]

``--planning-only`` measures b alone (no calibration, no zoo).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import wait
from typing import Any

import numpy as np

import backplane as bp
from machine import cpu_name, versions
from backplane.conformance.zoo import QDQ_ACTIVATION_SCALE, SchedulerModel, scheduler_zoo
from backplane.hardware.db import data_dir

REGRET_GEOMEAN_GOAL = 1.05
REGRET_WORST_GOAL = 1.25
PLANNING_GOAL_S = 0.050
PLANNING_NODES = 1000
#: Chain lengths of the bounded-time figures, and the goal for the longest under auto.
CHAIN_NODES = (1000, 2000, 10000)
CHAIN_GOAL_S = 10.0
#: Nodes of the wide and the mixed graph of the bounded-time figures.
SHAPE_NODES = 10000
#: Seconds one bounded-time session may take before its child is stopped.
CHAIN_TIMEOUT_S = 600.0
#: A single backend this many times slower than the fastest session, and slower than
#: SLOW_FLOOR_S, in warm-up is not timed further: it cannot be the best. (Wide, because
#: two warm-up calls on a busy machine can be several times off.)
SLOW_FACTOR, SLOW_FLOOR_S = 30.0, 0.020
#: Nor is one whose first call (which may compile for the input shapes) took over this.
SLOW_FIRST_S = 5.0
#: Timed calls in a row per session and round: about BURST_S of calls, at most BURST_MAX.
BURST_S, BURST_MAX = 0.025, 200
#: Other processes busier than this (cores, on average over the run) make the run suspect.
OTHERS_LIMIT_CORES = 0.2
#: Outputs of every session must agree with the default plan's within these.
CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-3
#: Seconds a child has to answer (setting up a session compiles the model; a first call
#: may compile for the input shapes) before it is given up and killed.
REPLY_TIMEOUT_S = 300.0
#: A child answers once its threads have used under QUIET_SHARE of a QUIET_WINDOW_S window
#: (waiting at most QUIET_MAX_S): worker threads that spin after a run (ONNX Runtime's for
#: about 35 ms, the reference backend's BLAS for about 100 ms) would slow the next child.
QUIET_WINDOW_S, QUIET_SHARE, QUIET_MAX_S = 0.005, 0.2, 0.5
#: This process busier than this (cores, on average while the children run) would disturb
#: their timings: runtimes left loaded here by calibration must sit still.
PARENT_LIMIT_CORES = 0.05


class Settings:
    """Repetitions: ``budget_s`` of timed rounds per model, within [min, max] rounds."""

    def __init__(self, quick: bool):
        self.sizes = ["small"] if quick else ["small", "large"]
        self.budget_s = 0.3 if quick else 3.0
        self.min_rounds = 3 if quick else 8
        self.max_rounds = 10 if quick else 60
        self.planning_runs = 5 if quick else 10


# -- sessions in child processes -------------------------------------------------------------


class ChildFailed(Exception):
    """A child process raised, died, or did not answer within REPLY_TIMEOUT_S."""


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def quiet() -> None:
    """Return once this process's threads have stopped using the CPU (see QUIET_SHARE)."""
    end = time.perf_counter() + QUIET_MAX_S
    while time.perf_counter() < end:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(QUIET_WINDOW_S)
        if time.process_time() - cpu < QUIET_SHARE * (time.perf_counter() - wall):
            return


def session_child(conn: Any, model: bytes, kwargs: dict[str, Any],
                  feeds: dict[str, np.ndarray], keep_learning: bool) -> None:
    """Entry point of a session's child process: ``Session(model, sample_inputs=feeds,
    **kwargs)``, then answer the parent's commands on ``conn`` until ``stop``.

    The first message says ``ready`` (with the plan's prediction, devices and partitions),
    ``cannot_run`` (the session refused the model) or ``error``. Commands: ``first`` (one
    call: its seconds and outputs), ``calls n`` (n timed calls), ``burst n`` (one untimed
    call, then n timed), ``stop`` (whether the plan changed since it was made, and its
    events). Every answer is ``("ok", value)``, or ``("error", why)`` and the child ends;
    each waits until the child's threads are quiet, so that none spins into the next
    child's timed calls. Without ``keep_learning`` the child leaves the learned corrections
    it gathered unsaved.
    """
    from backplane.engine import costmodel

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    try:
        try:
            session = bp.Session(model, sample_inputs=feeds, **kwargs)
        except bp.UnsupportedError as exc:
            return conn.send(("cannot_run", str(exc).splitlines()[0]))
        except Exception as exc:  # noqa: BLE001 - reported to the parent as a row note
            return conn.send(("error", f"setting up the session: {_why(exc)}"))
        plan = session.plan
        quiet()
        conn.send(("ready", {"predicted_s": plan.predicted_s,
                             "devices": sorted({p.device for p in plan.partitions}),
                             "partitions": len(plan.partitions)}))
        while True:
            try:
                command, *args = conn.recv()
            except EOFError:  # the parent is gone
                return
            try:
                if command == "first":
                    t0 = time.perf_counter()
                    outputs = session.run(feeds)
                    reply: Any = (time.perf_counter() - t0, outputs)
                elif command in ("calls", "burst"):
                    if command == "burst":
                        session.run(feeds)
                    reply = []
                    for _ in range(args[0]):
                        t0 = time.perf_counter()
                        session.run(feeds)
                        reply.append(time.perf_counter() - t0)
                elif command == "stop":
                    reply = {"plan_changed": session.plan is not plan,
                             "events": list(session.plan.events)}
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:  # noqa: BLE001 - reported to the parent as a row note
                return conn.send(("error", f"{command}: {_why(exc)}"))
            quiet()
            conn.send(("ok", reply))
            if command == "stop":
                return
    finally:
        if not keep_learning:
            atexit.unregister(costmodel.save)


def planning_child(conn: Any, runs: int) -> None:
    """Entry point of the child that measures planning time (b): ``("ok", row)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(("ok", planning_row(runs)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", _why(exc)))


class Child:
    """A child process started with "spawn" running ``target(conn, *args)``, driven over a
    pipe; every wait for it is bounded by REPLY_TIMEOUT_S."""

    def __init__(self, target: Any, *args: Any):
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        self._process = ctx.Process(target=target, args=(theirs, *args))
        self._process.start()
        theirs.close()  # so that the child's end closing reads as EOF here

    def receive(self, timeout: float | None = None) -> tuple[str, Any]:
        """The child's next message, as (kind, value); raises ChildFailed on an ``error``
        message, the child's death, or no message within ``timeout`` (REPLY_TIMEOUT_S)."""
        timeout = REPLY_TIMEOUT_S if timeout is None else timeout
        ready = wait([self._conn, self._process.sentinel], timeout)
        if self._conn in ready:
            try:
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                pass  # died: the pipe closed
            else:
                if kind == "error":
                    raise ChildFailed(value)
                return kind, value
        elif not ready:
            self.kill()
            raise ChildFailed(f"no answer within {timeout:g} s; the child was killed")
        self._process.join(5.0)
        code = self._process.exitcode
        if code is not None and code < 0:
            raise ChildFailed(f"the child died of {signal.Signals(-code).name}")
        raise ChildFailed(f"the child ended (exit code {code}) without answering")

    def ask(self, *command: Any) -> Any:
        """Send ``command`` and return the child's answer."""
        try:
            self._conn.send(command)
        except OSError as exc:  # BrokenPipeError: the child is gone
            raise ChildFailed(f"the child is gone ({_why(exc)})") from exc
        return self.receive()[1]

    def close(self) -> None:
        """Wait briefly for the child to end (after ``stop``, it saves and exits), then kill
        it."""
        self._conn.close()
        self._process.join(30.0)
        self.kill()

    def kill(self) -> None:
        """End the child now, if it is still running, and reap it."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()


# -- timing ----------------------------------------------------------------------------------


def round_robin(children: dict[str, Child], settings: Settings, always: tuple[str, ...],
                first_s: dict[str, float], failed: dict[str, str]
                ) -> dict[str, dict[str, Any]]:
    """Per session: median seconds over calls made in rounds, after warm-up calls (the
    first, already made, took ``first_s``; two more follow).

    Each round asks every session's child once, in a fresh random order, for one untimed
    call and then a burst of timed calls (about BURST_S of them); only that child computes
    meanwhile. The untimed call absorbs the switch (worker threads gone to sleep, a cold
    cache), the burst measures the session as an application running one model would see
    it, and the rounds spread drift in the machine's speed over every session alike. Rounds
    go on until the budget is spent (at least ``min_rounds``). A session not in ``always``
    whose best warm-up call is over SLOW_FACTOR x the fastest (and over SLOW_FLOOR_S), or
    whose first call took over SLOW_FIRST_S, is left out of the rounds; its entry holds
    ``warmup_s`` only. A child that fails is recorded in ``failed`` and has no entry.
    """
    warm: dict[str, float] = {}
    for name in first_s:
        warm[name] = first_s[name]
        if warm[name] > SLOW_FIRST_S and name not in always:  # too slow to call again
            continue
        try:
            warm[name] = min(children[name].ask("calls", 2))
        except ChildFailed as exc:
            failed[name] = str(exc)
            del warm[name]
    if not warm:
        return {}
    fastest = min(warm.values())
    timed = [n for n in warm if n in always or
             not (warm[n] > SLOW_FACTOR * fastest and warm[n] > SLOW_FLOOR_S)]
    burst = {n: int(min(BURST_MAX, max(1, BURST_S / max(warm[n], 1e-6)))) for n in timed}
    order = np.random.default_rng(0)
    times: dict[str, list[float]] = {n: [] for n in timed}
    rounds, start = 0, time.perf_counter()
    while rounds < settings.min_rounds or (rounds < settings.max_rounds and
                                           time.perf_counter() - start < settings.budget_s):
        for i in order.permutation(len(timed)):
            name = timed[i]
            if name in failed:
                continue
            try:
                times[name] += children[name].ask("burst", burst[name])
            except ChildFailed as exc:
                failed[name] = str(exc)
        rounds += 1
    out = {n: {"warmup_s": warm[n]} for n in warm if n not in failed}
    for n, ts in times.items():
        if n not in failed:
            out[n].update(median_s=statistics.median(ts), runs=len(ts), rounds=rounds)
    return out


# -- a and c: regret and cost-model error ----------------------------------------------------


def backends_with_devices() -> tuple[list[str], dict[str, str]]:
    """Loaded backend names that have a device, in registry order; and those without."""
    have = {d.backend for d in bp.devices()}
    names = list(bp.registry().backends)
    return ([n for n in names if n in have],
            {n: "no device" for n in names if n not in have})


def feeds_for(entry: SchedulerModel, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([0, index])
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in entry.input_shapes.items()}


def model_row(entry: SchedulerModel, index: int, backends: list[str],
              settings: Settings) -> dict[str, Any]:
    """Sessions for one model (default, fixed-order, each backend alone), each in a child
    process of its own, timed together."""
    feeds = feeds_for(entry, index)
    row: dict[str, Any] = {"model": entry.name, "input_shapes": entry.input_shapes,
                           "backends": {}, "notes": [],
                           "default_devices": [], "default_partitions": None,
                           "predicted_s": None, "fixed_devices": []}
    model = entry.model.SerializeToString()
    kwargs: dict[str, dict[str, Any]] = {"default": {}, "fixed-order": {"policy": "fixed-order"},
                                         "tuned": {"tune": True},
                                         **{name: {"devices": [name]} for name in backends}}
    children: dict[str, Child] = {}
    failed: dict[str, str] = {}
    # tune=True as an application uses it: one session measures the candidate plans and
    # caches the winner (with every candidate's runtime loaded, so it is not the one timed);
    # the timed "tuned" session, like every later one, finds the winner in the cache.
    tuner = Child(session_child, model, {"tune": True}, feeds, False)
    try:
        tuner.receive()
    except ChildFailed as exc:
        failed["tuned"] = f"tuning failed: {exc}"
        kwargs.pop("tuned")
    finally:
        tuner.close()
    try:
        # All set up at once (untimed); every call below is made with the others idle.
        for name, kw in kwargs.items():
            children[name] = Child(session_child, model, kw, feeds, name == "default")
        plans = {}
        for name, child in children.items():
            try:
                kind, plans[name] = child.receive()
            except ChildFailed as exc:
                failed[name] = str(exc)
                continue
            if kind == "cannot_run":
                if name in backends:
                    row["backends"][name] = {"cannot_run": plans.pop(name)}
                else:
                    failed[name] = f"cannot run: {plans.pop(name)}"
        if "default" in plans:
            row["default_devices"] = plans["default"]["devices"]
            row["default_partitions"] = plans["default"]["partitions"]
            row["predicted_s"] = plans["default"]["predicted_s"]
        if "fixed-order" in plans:
            row["fixed_devices"] = plans["fixed-order"]["devices"]
        atol = QDQ_ACTIVATION_SCALE if entry.name.startswith("qdq-") else CHECK_ATOL
        first_s: dict[str, float] = {}
        reference = want = None
        for name in plans:  # the first call (it may compile for the shapes)
            try:
                first_s[name], got = children[name].ask("first")
            except ChildFailed as exc:
                failed[name] = str(exc)
                continue
            if want is None:
                reference, want = name, got
            for out, ref in want.items():
                if not np.allclose(got[out], ref, rtol=CHECK_RTOL, atol=atol):
                    err = float(np.max(np.abs(got[out] - ref)))
                    whose = "the default plan's" if reference == "default" else f"{reference}'s"
                    row["notes"].append(f"{name}: output {out} differs from {whose} "
                                        f"(max abs {err:.3g})")
        timing = round_robin(children, settings, ("default", "fixed-order", "tuned"), first_s,
                             failed)
        if "default" in timing:
            try:
                end = children["default"].ask("stop")
            except ChildFailed as exc:
                failed["default"] = str(exc)
                timing.pop("default")
            else:
                if end["plan_changed"]:
                    row["notes"].append("the default plan changed while it was measured: "
                                        + "; ".join(end["events"]))
    finally:
        for child in children.values():
            child.close()
    for name, why in failed.items():
        row["notes"].append(f"{name} failed: {why}")
        if name in backends:
            row["backends"][name] = {"failed": why}
    row["default_s"] = timing.pop("default", {}).get("median_s")
    row["fixed_s"] = timing.pop("fixed-order", {}).get("median_s")
    row["tuned_s"] = timing.pop("tuned", {}).get("median_s")
    row["backends"].update(timing)
    row["predicted_over_measured"] = (row["predicted_s"] / row["default_s"]
                                      if row["default_s"] is not None else None)
    alone = {n: t["median_s"] for n, t in timing.items() if "median_s" in t}
    row["best_backend"] = row["best_s"] = row["regret"] = row["fixed_regret"] = None
    row["tuned_regret"] = None
    if not alone:  # only a plan across backends runs this model: no regret to state
        row["notes"].append("no single backend runs this model")
        return row
    best = min(alone, key=alone.get)
    row["best_backend"], row["best_s"] = best, alone[best]
    if row["default_s"] is not None:
        row["regret"] = row["default_s"] / row["best_s"]
    if row["fixed_s"] is not None:
        row["fixed_regret"] = row["fixed_s"] / row["best_s"]
    if row["tuned_s"] is not None:
        row["tuned_regret"] = row["tuned_s"] / row["best_s"]
    return row


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric mean and worst regret of both policies; the cost model's error factor
    (each None when no model has the figure)."""
    out: dict[str, Any] = {}
    for key in ("regret", "fixed_regret", "tuned_regret"):
        with_regret = [r for r in rows if r.get(key) is not None]
        if not with_regret:
            out[key] = None
            continue
        worst = max(with_regret, key=lambda r: r[key])
        out[key] = {"geomean": geomean([r[key] for r in with_regret]), "worst": worst[key],
                    "worst_model": worst["model"], "models": len(with_regret)}
    r = out["regret"]
    if r is not None:
        r["geomean_met"] = r["geomean"] <= REGRET_GEOMEAN_GOAL
        r["worst_met"] = r["worst"] <= REGRET_WORST_GOAL
    logs = [abs(math.log(row["predicted_over_measured"])) for row in rows
            if row["predicted_over_measured"] is not None]
    out["cost_model_error_factor"] = math.exp(sum(logs) / len(logs)) if logs else None
    return out


# -- b: planning time ------------------------------------------------------------------------


def synthetic_graph(blocks: int = PLANNING_NODES // 8, width: int = 64, rows: int = 8
                    ) -> Any:
    """A DAG of 8 nodes per block, every shape static ([rows, width]): LayerNormalization,
    then a MatMul + Add + Relu branch and a MatMul + Softmax branch, joined by Add, then a
    residual Add from the input of the block before (a skip over two blocks)."""
    from onnx import TensorProto, helper, numpy_helper

    from backplane.conformance.cases import OPSET

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.ones(width, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(width, np.float32), "ln_bias")]
    nodes = []

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def weight(name: str, shape: tuple[int, ...]) -> str:
        w = rng.standard_normal(shape) / math.sqrt(shape[0])
        inits.append(numpy_helper.from_array(w.astype(np.float32), name))
        return name

    before, x = "x", "x"
    for b in range(blocks):
        h = node("LayerNormalization", [x, "ln_scale", "ln_bias"], f"ln{b}", axis=-1)
        a = node("MatMul", [h, weight(f"w{b}a", (width, width))], f"mm{b}a")
        a = node("Add", [a, weight(f"b{b}", (width,))], f"bias{b}")
        a = node("Relu", [a], f"relu{b}")
        c = node("MatMul", [h, weight(f"w{b}c", (width, width))], f"mm{b}c")
        c = node("Softmax", [c], f"softmax{b}", axis=-1)
        j = node("Add", [a, c], f"join{b}")
        before, x = x, node("Add", [j, before], f"res{b}")
    nodes[-1].output[0] = "y"
    spec = [rows, width]
    graph = helper.make_graph(nodes, f"synthetic-{len(nodes)}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, spec)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, spec)],
                              initializer=inits)
    opset = [helper.make_opsetid("", OPSET)]
    return helper.make_model(graph, opset_imports=opset,
                             ir_version=helper.find_min_ir_version_for(opset))


def planning_row(runs: int) -> dict[str, Any]:
    """Median seconds of ``plan_model`` on the loaded synthetic graph, over ``runs``."""
    from backplane.model.intake import load_model
    from backplane.engine.scheduler import plan_model

    graph = load_model(synthetic_graph())
    assert len(graph.nodes) == PLANNING_NODES, len(graph.nodes)
    plan = plan_model(graph)  # warm-up: device profiles, capability caches
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        plan_model(graph)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"nodes": len(graph.nodes), "median_s": median, "runs": len(times),
            "partitions": len(plan.partitions),
            "devices": sorted({p.device for p in plan.partitions}),
            "goal_s": PLANNING_GOAL_S, "met": median <= PLANNING_GOAL_S}


def stress_graph(kind: str, n: int, width: int = 16) -> Any:
    """``chain``: x -> Relu -> Neg -> Relu ... (n nodes) -> y; ``wide``: n Relu/Neg nodes
    on x, summed by one Sum; ``mixed``: a chain of n nodes cycling through 37 kinds of
    op (element-wise, activations, reductions, normalisations, MatMul, data movement)."""
    from onnx import TensorProto, helper, numpy_helper

    def value(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, width])

    inits: list[Any] = []
    if kind == "wide":
        nodes = [helper.make_node("Relu" if i % 2 == 0 else "Neg", ["x"], [f"v{i}"])
                 for i in range(n)]
        nodes.append(helper.make_node("Sum", [f"v{i}" for i in range(n)], ["y"]))
    else:
        ops = ["Relu", "Neg"] if kind == "chain" else MIXED_OPS
        nodes, prev = [], "x"
        for i in range(n):
            op, out = ops[i % len(ops)], f"v{i}"
            inputs = [prev]
            if op in ("MatMul", "Add", "Mul", "Max", "Pow", "Reshape", "ReduceMean",
                      "Unsqueeze", "Squeeze"):
                const = {"MatMul": np.eye(width, dtype=np.float32),
                         "Reshape": np.array([1, width], np.int64),
                         "ReduceMean": np.array([-1], np.int64),
                         "Unsqueeze": np.array([0], np.int64),
                         "Squeeze": np.array([0], np.int64)}.get(
                             op, np.full(width, 1.0, np.float32))
                inits.append(numpy_helper.from_array(const, f"c{i}"))
                inputs.append(f"c{i}")
            attrs = ({"axis": -1} if op in ("Softmax", "LogSoftmax", "Flatten") else
                     {"perm": [1, 0]} if op == "Transpose" else {})
            nodes.append(helper.make_node(op, inputs, [out], **attrs))
            prev = out
        nodes[-1].output[0] = "y"
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])
    graph = helper.make_graph(nodes, f"{kind}-{n}", [value("x")], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


#: The ops the mixed graph cycles through, each leaving a shape the next accepts
#: (Transpose twice in a row, ReduceMean's [1, 1] broadcast back by Add, Unsqueeze then
#: Squeeze).
MIXED_OPS = ("Relu Neg Sigmoid Tanh Abs Exp Softmax Sqrt Erf Softsign Softplus HardSigmoid "
             "Elu Selu LeakyRelu HardSwish Mish Sin Cos Floor Ceil Round Sign Identity "
             "Transpose Transpose Flatten LogSoftmax MatMul ReduceMean Add Mul Max Pow Reshape "
             "Unsqueeze Squeeze").split()


def stress_child(conn: Any, model: bytes, devices: str) -> None:
    """Entry point of a bounded-time child: ``("ok", row)`` after one ``Session``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        bp.registry().devices()  # discovery and probes are not what is timed
        t0 = time.perf_counter()
        session = bp.Session(model, devices=devices if devices == "auto" else [devices])
        conn.send(("ok", {"seconds": time.perf_counter() - t0,
                          "partitions": len(session.plan.partitions),
                          "backends": sorted({p.backend for p in session.plan.partitions})}))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", _why(exc)))


def stress_rows(backends: list[str]) -> list[dict[str, Any]]:
    """The bounded-time sessions: every chain length, then the wide and the mixed graph,
    under auto and each backend pinned; each in a child of its own."""
    runs = [(kind, n, d) for kind, sizes in (("chain", CHAIN_NODES), ("wide", [SHAPE_NODES]),
                                            ("mixed", [SHAPE_NODES]))
            for n in sizes for d in ["auto", *backends]]
    rows = []
    for kind, n, devices in runs:
        child = Child(stress_child, stress_graph(kind, n).SerializeToString(), devices)
        try:
            row = child.receive(CHAIN_TIMEOUT_S)[1]
        except ChildFailed as exc:
            row = {"failed": str(exc)}
        finally:
            child.close()
        rows.append({"graph": kind, "nodes": n, "devices": devices, **row})
        print(f"measured {kind}-{n} on {devices}", file=sys.stderr, flush=True)
    return rows


# -- d: calibration --------------------------------------------------------------------------


def calibration() -> dict[str, Any]:
    from backplane.engine.calibration import calibrate

    t0 = time.perf_counter()
    results = calibrate(dtypes=["fp32"])
    return {"seconds": time.perf_counter() - t0,
            "devices": [{"device": r.device,
                         "measured": {m.key: m.value for m in r.measurements},
                         "skipped": [s.splitlines()[0] for s in r.skipped]}
                        for r in results]}


# -- report ----------------------------------------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds spent so far by the whole machine, and by this process and its ended
    children."""
    import psutil

    t = psutil.cpu_times()
    machine = t.user + t.system + sum(getattr(t, k, 0.0) for k in ("nice", "irq", "softirq"))
    own = psutil.Process().cpu_times()
    return machine, own.user + own.system + own.children_user + own.children_system


def parent_cpu_seconds() -> float:
    """CPU seconds spent so far by this process alone (its threads included)."""
    import psutil

    own = psutil.Process().cpu_times()
    return own.user + own.system


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _cell(entry: dict[str, Any]) -> str:
    if "cannot_run" in entry:
        return "cannot"
    if "failed" in entry:
        return "failed"
    if "median_s" in entry:
        return _ms(entry["median_s"])
    if "warmup_s" in entry:
        return f"[{_ms(entry['warmup_s'])}]"
    return entry.get("reason", "-")


def print_regret(report: dict[str, Any]) -> None:
    """Section a: the regret table, its notes, and the summary against the goals."""
    rows, backends = report["regret"], report["meta"]["backends"]
    print("\na. selection regret: latency / best single-backend latency (median ms per run)")
    head = (f"{'model':30} {'default':>9} {'regret':>7} {'fixed':>9} {'regret':>7} "
            f"{'tuned':>9} {'regret':>7} {'best':>13}" + "".join(f" {b[:12]:>12}" for b in backends))
    print(head)
    for r in rows:
        regret, fixed_regret, tuned_regret = (
            f"{r[k]:7.3f}" if r.get(k) is not None else "-"
            for k in ("regret", "fixed_regret", "tuned_regret"))
        best = (r["best_backend"] or "-")[:13]
        print(f"{r['model']:30} {_ms(r['default_s']):>9} {regret:>7} {_ms(r['fixed_s']):>9} "
              f"{fixed_regret:>7} {_ms(r.get('tuned_s')):>9} {tuned_regret:>7} {best:>13}"
              + "".join(f" {_cell(r['backends'].get(b, {})):>12}" for b in backends))
    for r in rows:
        for note in r["notes"]:
            print(f"  {r['model']}: {note}")
    cannot = {b: e["cannot_run"] for r in rows for b, e in r["backends"].items()
              if "cannot_run" in e}
    for b, why in cannot.items():
        print(f"  cannot: {b} refused at least one model, e.g. {why[:150]}")
    print(f"  [x]: warm-up ms of a backend over {SLOW_FACTOR:g}x the fastest session, "
          "not timed further")
    for policy, key in (("default plan", "default_devices"), ("fixed-order", "fixed_devices")):
        groups: dict[str, list[str]] = {}
        for r in rows:
            groups.setdefault(" + ".join(r[key]) or "no plan", []).append(r["model"])
        print(f"  {policy} ran on " + "; ".join(f"{devices}: {', '.join(models)}"
                                              for devices, models in groups.items()))
    s = report["summary"]
    reg, fixed = s["regret"], s["fixed_regret"]
    if reg is None:
        print("  default plan: no regret measured (see the notes)")
    else:
        print(f"  default plan: geomean regret {reg['geomean']:.3f} (goal <= "
              f"{REGRET_GEOMEAN_GOAL}) {'PASS' if reg['geomean_met'] else 'MISS'}; worst "
              f"{reg['worst']:.3f} on {reg['worst_model']} (goal <= {REGRET_WORST_GOAL}) "
              f"{'PASS' if reg['worst_met'] else 'MISS'}")
    if fixed is not None:
        print(f"  fixed-order:  geomean regret {fixed['geomean']:.3f}; worst "
              f"{fixed['worst']:.3f} on {fixed['worst_model']}")
    tuned = s.get("tuned_regret")
    if tuned is not None:
        print(f"  tune=True:    geomean regret {tuned['geomean']:.3f}; worst "
              f"{tuned['worst']:.3f} on {tuned['worst_model']}")


def print_report(report: dict[str, Any]) -> None:
    meta, rows = report["meta"], report["regret"]
    print(f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores; "
          + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(f"data folder: {meta['data_dir']}; wall time {meta['wall_s']:.0f} s; other "
          f"processes used {meta['others_cores']:.2f} cores on average meanwhile"
          + ("; --quick (small models, fewer runs)" if meta["quick"] else ""))
    for note in meta["notes"]:
        print(f"note: {note}")
    cal = report.get("calibration")
    if cal is None:
        print("calibration: skipped (--no-calibrate or --planning-only)")
    else:
        print(f"calibration (fp32), {cal['seconds']:.1f} s:")
        for d in cal["devices"]:
            figures = ", ".join(f"{k} {v:g}" for k, v in d["measured"].items())
            skipped = d["skipped"]
            print(f"  {d['device']:16} {figures or 'nothing measured'}"
                  + (f"; skipped {len(skipped)}, e.g. {skipped[0][:100]}" if skipped else ""))

    if rows:
        print_regret(report)

    p = report["planning"]
    if "failed" in p:
        print(f"\nb. planning a {PLANNING_NODES}-node graph: failed: {p['failed']}")
    else:
        print(f"\nb. planning a {p['nodes']}-node graph (plan_model, no compile): median "
              f"{p['median_s'] * 1e3:.1f} ms of {p['runs']} (goal <= "
              f"{p['goal_s'] * 1e3:.0f} ms) {'PASS' if p['met'] else 'MISS'}; "
              f"{p['partitions']} partition(s) on {', '.join(p['devices'])}")

    print_stress(report.get("stress", []))
    if not rows:
        return
    print("\nc. cost model: predicted / measured seconds per run of the default plan")
    print(f"{'model':30} {'predicted':>10} {'measured':>10} {'ratio':>8}")
    for r in rows:
        ratio = r["predicted_over_measured"]
        print(f"{r['model']:30} {_ms(r['predicted_s']):>10} {_ms(r['default_s']):>10} "
              + (f"{ratio:8.3f}" if ratio is not None else f"{'-':>8}"))
    error = report["summary"]["cost_model_error_factor"]
    if error is not None:
        print(f"  geomean |log(predicted / measured)| as a factor: x{error:.2f}")


def print_stress(rows: list[dict[str, Any]]) -> None:
    """The bounded-time table: seconds of Session() per graph and devices."""
    if not rows:
        return
    print("\nb. bounded time: Session() wall seconds (plan + compile, fresh process, no "
          "compiled-artefact cache)")
    columns = list(dict.fromkeys(r["devices"] for r in rows))
    print(f"{'graph':14}" + "".join(f"{c:>16}" for c in columns))
    for key in dict.fromkeys((r["graph"], r["nodes"]) for r in rows):
        cells = {r["devices"]: r for r in rows if (r["graph"], r["nodes"]) == key}
        line = f"{key[0] + '-' + str(key[1]):14}"
        for c in columns:
            r = cells.get(c)
            text = ("" if r is None else "failed" if "failed" in r else
                    f"{r['seconds']:.2f} ({r['partitions']}p)")
            line += f"{text:>16}"
        print(line)
    for r in rows:
        if "failed" in r:
            print(f"  {r['graph']}-{r['nodes']} on {r['devices']}: {r['failed'][:200]}")
    goal = next((r for r in rows if (r["graph"], r["nodes"], r["devices"])
                 == ("chain", CHAIN_NODES[-1], "auto")), None)
    if goal is not None:
        ok = "failed" not in goal and goal["seconds"] <= CHAIN_GOAL_S
        print(f"  {CHAIN_NODES[-1]}-node chain under auto: goal <= {CHAIN_GOAL_S:g} s "
              f"{'PASS' if ok else 'MISS'}" + ("" if "failed" in goal else
                                               f" (on {', '.join(goal['backends'])})"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small models only, fewer runs (a smoke test)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="use the stored calibration instead of measuring the backends")
    parser.add_argument("--keep-data-dir", action="store_true",
                        help="use BACKPLANE_DATA_DIR and BACKPLANE_CACHE_DIR (or the user's "
                             "folders) as they are")
    parser.add_argument("--planning-only", action="store_true",
                        help="measure planning time and bounded time (b) alone")
    args = parser.parse_args()
    started, cpu_before = time.perf_counter(), cpu_seconds()
    notes = []
    if not args.keep_data_dir:
        # Registered before backplane registers its own exit hooks (which save learned
        # corrections into this folder), so it runs after them: nothing is left behind.
        folder = tempfile.mkdtemp(prefix="bench-scheduler-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["BACKPLANE_DATA_DIR"] = os.path.join(folder, "data")
        # Compiled artefacts of the zoo (up to 100 MB a model) stay out of the user's cache.
        os.environ["BACKPLANE_CACHE_DIR"] = os.path.join(folder, "cache")
    # The children of a model are set up together, so live load at planning time would be
    # their siblings compiling, not the idle machine each is then timed on: plan without it.
    os.environ["BACKPLANE_LOAD"] = "off"
    if os.environ.pop("BACKPLANE_DEVICES", None) is not None:
        notes.append("BACKPLANE_DEVICES was set; unset here so the default plan sees every "
                     "device")
    settings = Settings(args.quick)
    backends, absent = backends_with_devices()
    notes += [f"backend {b}: {why}, not measured" for b, why in absent.items()]
    report: dict[str, Any] = {
        "calibration": None if args.no_calibrate or args.planning_only else calibration()}
    zoo = [] if args.planning_only else scheduler_zoo(sizes=settings.sizes)
    rows = []
    measuring, parent_before = time.perf_counter(), parent_cpu_seconds()
    for index, entry in enumerate(zoo):
        rows.append(model_row(entry, index, backends, settings))
        print(f"measured {entry.name}", file=sys.stderr, flush=True)
    parent = (parent_cpu_seconds() - parent_before) / (time.perf_counter() - measuring)
    if parent > PARENT_LIMIT_CORES:
        notes.append(f"this process kept {parent:.2f} cores busy on average while the "
                     "sessions' children ran (runtimes left loaded by calibration?): "
                     "latencies may be off")
    report["regret"] = rows
    report["summary"] = summary(rows)
    planner = Child(planning_child, settings.planning_runs)
    try:
        report["planning"] = planner.receive()[1]
    except ChildFailed as exc:
        report["planning"] = {"failed": str(exc)}
    finally:
        planner.close()
    report["stress"] = stress_rows(backends)
    report["meta"] = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
                      "cores": os.cpu_count(), "versions": versions(), "backends": backends,
                      "data_dir": ("temporary" if not args.keep_data_dir else str(data_dir())),
                      "quick": args.quick, "notes": notes, "parent_cores": parent,
                      "wall_s": time.perf_counter() - started}
    machine, own = (after - before for after, before in zip(cpu_seconds(), cpu_before))
    others = report["meta"]["others_cores"] = max(0.0, machine - own) / report["meta"]["wall_s"]
    if others > OTHERS_LIMIT_CORES:
        notes.append(f"other processes kept {others:.2f} cores busy on average during the "
                     "run: latencies, and which backend is fastest, may be off; rerun on an "
                     "idle machine")
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
