"""Device and plan selection by the scheduler, on the real-model corpus and the zoo.

Issue 6, point 10. Everything is measured in one run, on this machine's backends:

a. selection, cold and warm (benchmarks/bench_selection.py): per model (the corpus's 36,
   conformance/corpus.toml, and the zoo's: five families x small, large x batch 1, 32),
   ONNX Runtime and OpenVINO called directly (the corpus check's settings: ORT's CPU
   provider defaults; OpenVINO on "CPU" at f32 with the LATENCY hint), and backplane's
   default ``Session(path, sample_inputs=feeds)`` twice: cold (in a cache folder and a data
   folder of the model's own: no selection database, no compiled artefacts; the data a copy
   of the calibrated template) and warm (a new process on the folders the cold one left,
   the selection database holding its winner). Per path: time to first result (inside its
   child, from just before the runtime's import and load, or ``Session(...)``, to the first
   run's return; the model file already on disk) and steady-state latency (the cold session
   timed after ``wait_selected()``); per session how the plan was selected
   (``plan.selection``: measured, predicted, database, single) and the winner. Regret: a
   session's latency over the faster direct runtime's. Goals: warm geomean <= 1.03 and
   worst <= 1.10; cold geomean <= 1.10.
b. planning time: ``backplane.engine.scheduler.plan_model`` on a loaded graph of 1,000 nodes
   (MatMul, Add, Relu, Softmax, LayerNormalization; branches, joins and long skips), no
   compile; median of 10 after one warm-up. Goal <= 50 ms. Then bounded time (issue 18,
   point 6): the wall seconds of ``Session(model)`` (plan and compile, no compiled-artefact
   cache; with the default ``fast_start`` that is until the first candidate plan is
   compiled) on chains of 1,000, 2,000 and 10,000 Relu/Neg nodes ([1, 16] float32), under
   devices auto and with each backend pinned, each in a fresh child after its registry
   has probed (and killed once it answers, so that no background selection overlaps the
   next); and the same for 10,000 parallel Relu/Neg nodes summed by one Sum, and a chain
   of 10,000 nodes cycling through 37 kinds of op. Goal: the 10,000-node chain under auto
   in <= 10 s.
c. cost-model error: the cold session's plan's ``predicted_s`` (its plan after selection)
   over its measured latency, per model of a, and the geometric mean of |log ratio| as a
   factor.
d. per-backend regret (``--per-backend``, zoo models only): the latency of the default
   plan (after ``wait_selected()``) over the best single-backend latency, each loaded
   backend that has a device timed alone (``Session(model, devices=[name])``; one that
   cannot run every node is shown as such). Beside it the cost model's plan unmeasured
   (``tune="off"``) and the fixed-order policy (``tune="off"``: the first admitting backend
   in priority order, as ONNX Runtime assigns nodes to its execution providers). Goals for
   the default plan: geometric mean <= 1.05, worst <= 1.25.

Latency is the median of timed calls on the same inputs, after warm-up. Every session is
created with the model's inputs as ``sample_inputs``, so that it plans (and measures its
candidates) for the shapes it runs at. Plans are made with ``BACKPLANE_LOAD=off``: in d the
sessions of a model are set up together, and the load each would see is its siblings
compiling, not the idle machine it is timed on. Each session or direct runtime lives in a
child process of its own (started with "spawn"): runtimes loaded into one process disturb
each other (worker threads of one slow another down, for good once Intel's OpenCL CPU
runtime has run), while an application has only its own runtimes loaded. In a, the
children of a model are set up one after another, each while the others sit idle, so that
time to first result is that of an otherwise idle machine. The paths of one model are then
measured in rounds: each round asks every child, in a fresh random order and one at a
time, for one untimed call and a burst of about 25 ms of timed calls, so that drift in the
machine's speed hits them alike; a child answers only once its threads have stopped using
the CPU (ONNX Runtime's spin on a core for about 35 ms after a call), so that it does not
slow the next one. A child that raises, dies or does not answer in time is shown as a note
on its model's row. In d, a single backend whose warm-up run took over 30x the fastest
session's (and over 20 ms) cannot be the best: it is not timed further, and its warm-up
time is shown in brackets. Outputs are checked: in a against ORT direct's (relative to
each output's largest magnitude, within the corpus entry's rtol), in d against the default
plan's. Run it on an otherwise idle machine: the load of other processes changes which
backend is fastest.

Before measuring, the backends are calibrated once (fp32) into a fresh temporary data
folder (the compiled-artefact cache goes to a temporary folder too), so that no stored
calibration, correction learned or conformance run stored in earlier runs steers the
result, and nothing is left behind; in a, each model's data folder starts as a copy of
that calibrated folder (with ``--keep-data-dir``, a copy of the user's data folder), so
the learned corrections start empty per model, and first runs of backends with no stored
conformance run are checked against the reference backend (``verify="unqualified"``), as
on a machine where ``backplane conformance run`` was never run: that check is part of
time to first result (``--qualified`` copies the user's stored conformance runs in too,
as on a machine where it was run). Calibration runs in this process before any child
starts; it leaves every runtime loaded here, which is harmless because this process does
no timed work afterwards: planning time (b) is measured in a fresh child too, and the CPU
time this process spends while the children run is checked (a note if over
PARENT_LIMIT_CORES).
Corpus models are materialized (from the user's cache, where they are kept) before the
cache folder is moved; zoo models are written to the temporary folder.

    python benchmarks/bench_scheduler.py [--quick] [--json OUT] [--no-calibrate]
        [--keep-data-dir] [--corpus-only | --zoo-only] [NAME ...]
        [--selection-only | --planning-only] [--per-backend] [--qualified]

``--quick``: the corpus's CI subset and the small zoo models, fewer rounds (a smoke test).
NAMEs (corpus or zoo models) limit a and d to those. ``--selection-only`` measures a and c
(no b); ``--planning-only`` measures b alone (no calibration, no models); ``--per-backend``
adds d.
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
from pathlib import Path
from typing import Any

import numpy as np

import backplane as bp
from machine import cpu_name, versions
from backplane.conformance.zoo import QDQ_ACTIVATION_SCALE, SchedulerModel, scheduler_zoo
from backplane.hardware.db import data_dir

# Run as a script, this module is __main__ (or __mp_main__ in a "spawn" child); registered
# under its own name too, so that bench_selection's ``from bench_scheduler import ...``
# finds this copy, not a second one with classes of its own.
sys.modules.setdefault("bench_scheduler", sys.modules[__name__])

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


def serve(conn: Any, call: Any, stop: Any, first: Any = None) -> None:
    """Answer the parent's commands on ``conn`` until ``stop`` or the parent is gone:
    ``first`` (``first()``'s value, where given), ``calls n`` (n timed calls of ``call()``),
    ``burst n`` (one untimed call, then n timed), ``stop`` (``stop()``'s value; the child
    then ends). Every answer is ``("ok", value)``, or ``("error", why)`` and the child
    ends; each waits until this process's threads are quiet (:func:`quiet`)."""
    while True:
        try:
            command, *args = conn.recv()
        except EOFError:  # the parent is gone
            return
        try:
            if command == "first" and first is not None:
                reply = first()
            elif command in ("calls", "burst"):
                if command == "burst":
                    call()
                reply = []
                for _ in range(args[0]):
                    t0 = time.perf_counter()
                    call()
                    reply.append(time.perf_counter() - t0)
            elif command == "stop":
                reply = stop()
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as exc:  # noqa: BLE001 - reported to the parent as a row note
            return conn.send(("error", f"{command}: {_why(exc)}"))
        quiet()
        conn.send(("ok", reply))
        if command == "stop":
            return


def session_child(conn: Any, model: bytes, kwargs: dict[str, Any],
                  feeds: dict[str, np.ndarray], keep_learning: bool) -> None:
    """Entry point of a session's child process: ``Session(model, sample_inputs=feeds,
    **kwargs)``, then answer the parent's commands on ``conn`` until ``stop``.

    The first message says ``ready`` once the session's selection is over (with the plan's
    prediction, devices and partitions), ``cannot_run`` (the session refused the model) or
    ``error``. Commands: ``first`` (one call: its seconds and outputs), ``calls n`` (n timed
    calls), ``burst n`` (one untimed call, then n timed), ``stop`` (whether the plan changed
    since it was made, and its events). Every answer is ``("ok", value)``, or ``("error",
    why)`` and the child ends; each waits until the child's threads are quiet, so that none
    spins into the next child's timed calls. Without ``keep_learning`` the child leaves the
    learned corrections it gathered unsaved.
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
        # The default plan as an application keeps running it: after measured selection.
        if not session.wait_selected(REPLY_TIMEOUT_S):
            return conn.send(("error", f"selection not over after {REPLY_TIMEOUT_S:g} s"))
        plan = session.plan
        quiet()
        conn.send(("ready", {"predicted_s": plan.predicted_s,
                             "devices": sorted({p.device for p in plan.partitions}),
                             "partitions": len(plan.partitions)}))

        def first() -> tuple[float, Any]:
            t0 = time.perf_counter()
            outputs = session.run(feeds)
            return time.perf_counter() - t0, outputs

        serve(conn, lambda: session.run(feeds),
              lambda: {"plan_changed": session.plan is not plan,
                       "events": list(session.plan.events)}, first)
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


# -- d: regret per backend on the zoo -------------------------------------------------------


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
    """Sessions for one model (default, the cost model's plan unmeasured, fixed-order, each
    backend alone), each in a child process of its own, timed together (part d)."""
    feeds = feeds_for(entry, index)
    row: dict[str, Any] = {"model": entry.name, "input_shapes": entry.input_shapes,
                           "backends": {}, "notes": [],
                           "default_devices": [], "default_partitions": None,
                           "predicted_s": None, "fixed_devices": []}
    model = entry.model.SerializeToString()
    kwargs: dict[str, dict[str, Any]] = {
        "default": {}, "tune-off": {"tune": "off"},
        "fixed-order": {"policy": "fixed-order", "tune": "off"},
        **{name: {"devices": [name]} for name in backends}}
    children: dict[str, Child] = {}
    failed: dict[str, str] = {}
    try:
        # The default session first, alone: its measured selection must not compete with
        # its siblings compiling. Then the rest at once (untimed); every call below is made
        # with the others idle.
        plans = {}
        for name, kw in kwargs.items():
            children[name] = Child(session_child, model, kw, feeds, name == "default")
            if name != "default":
                continue
            try:
                kind, plans[name] = children[name].receive()
            except ChildFailed as exc:
                failed[name] = str(exc)
            else:
                if kind == "cannot_run":
                    failed[name] = f"cannot run: {plans.pop(name)}"
        for name, child in children.items():
            if name == "default":
                continue
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
        timing = round_robin(children, settings, ("default", "tune-off", "fixed-order"),
                             first_s, failed)
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
    row["tune_off_s"] = timing.pop("tune-off", {}).get("median_s")
    row["backends"].update(timing)
    row["predicted_over_measured"] = (row["predicted_s"] / row["default_s"]
                                      if row["default_s"] is not None else None)
    alone = {n: t["median_s"] for n, t in timing.items() if "median_s" in t}
    row["best_backend"] = row["best_s"] = row["regret"] = row["fixed_regret"] = None
    row["tune_off_regret"] = None
    if not alone:  # only a plan across backends runs this model: no regret to state
        row["notes"].append("no single backend runs this model")
        return row
    best = min(alone, key=alone.get)
    row["best_backend"], row["best_s"] = best, alone[best]
    if row["default_s"] is not None:
        row["regret"] = row["default_s"] / row["best_s"]
    if row["fixed_s"] is not None:
        row["fixed_regret"] = row["fixed_s"] / row["best_s"]
    if row["tune_off_s"] is not None:
        row["tune_off_regret"] = row["tune_off_s"] / row["best_s"]
    return row


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Part d: geometric mean and worst regret of the default plan, the cost model's plan
    unmeasured and the fixed-order policy; the cost model's error factor on the default
    plans (each None when no model has the figure)."""
    out: dict[str, Any] = {}
    for key in ("regret", "tune_off_regret", "fixed_regret"):
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
            # killed, not left to end: a selection still measuring in the background would
            # compete with the next child's Session()
            child.kill()
        rows.append({"graph": kind, "nodes": n, "devices": devices, **row})
        print(f"measured {kind}-{n} on {devices}", file=sys.stderr, flush=True)
    return rows


# -- calibration -----------------------------------------------------------------------------


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
    """Part d: the regret table, its notes, and the summary against the goals."""
    rows, backends = report["per_backend"], report["meta"]["backends"]
    print("\nd. per-backend regret: latency / best single-backend latency (median ms per run)")
    head = (f"{'model':30} {'default':>9} {'regret':>7} {'tune off':>9} {'regret':>7} "
            f"{'fixed':>9} {'regret':>7} {'best':>13}"
            + "".join(f" {b[:12]:>12}" for b in backends))
    print(head)
    for r in rows:
        regret, off_regret, fixed_regret = (
            f"{r[k]:7.3f}" if r.get(k) is not None else "-"
            for k in ("regret", "tune_off_regret", "fixed_regret"))
        best = (r["best_backend"] or "-")[:13]
        print(f"{r['model']:30} {_ms(r['default_s']):>9} {regret:>7} "
              f"{_ms(r['tune_off_s']):>9} {off_regret:>7} {_ms(r['fixed_s']):>9} "
              f"{fixed_regret:>7} {best:>13}"
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
    s = report["per_backend_summary"]
    reg = s["regret"]
    if reg is None:
        print("  default plan: no regret measured (see the notes)")
    else:
        print(f"  default plan: geomean regret {reg['geomean']:.3f} (goal <= "
              f"{REGRET_GEOMEAN_GOAL}) {_met(reg['geomean_met'])}; worst "
              f"{reg['worst']:.3f} on {reg['worst_model']} (goal <= {REGRET_WORST_GOAL}) "
              f"{_met(reg['worst_met'])}")
    for label, key in (("tune off:    ", "tune_off_regret"), ("fixed-order: ", "fixed_regret")):
        if s[key] is not None:
            print(f"  {label} geomean regret {s[key]['geomean']:.3f}; worst "
                  f"{s[key]['worst']:.3f} on {s[key]['worst_model']}")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(report: dict[str, Any]) -> None:
    from bench_selection import print_cost_model, print_selection

    meta = report["meta"]
    print(f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores; "
          + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(f"data folder: {meta['data_dir']}; wall time {meta['wall_s']:.0f} s; other "
          f"processes used {meta['others_cores']:.2f} cores on average meanwhile"
          + ("; --quick (fewer models, fewer runs)" if meta["quick"] else ""))
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

    if report["selection"]:
        print_selection(report["selection"], report["selection_summary"])

    p = report.get("planning")
    if p is None:
        pass
    elif "failed" in p:
        print(f"\nb. planning a {PLANNING_NODES}-node graph: failed: {p['failed']}")
    else:
        print(f"\nb. planning a {p['nodes']}-node graph (plan_model, no compile): median "
              f"{p['median_s'] * 1e3:.1f} ms of {p['runs']} (goal <= "
              f"{p['goal_s'] * 1e3:.0f} ms) {_met(p['met'])}; "
              f"{p['partitions']} partition(s) on {', '.join(p['devices'])}")
    print_stress(report.get("stress", []))
    if report["selection"]:
        print_cost_model(report["selection"],
                         report["selection_summary"]["cost_model_error_factor"])
    if report["per_backend"]:
        print_regret(report)


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
              f"{_met(ok)}" + ("" if "failed" in goal else
                               f" (on {', '.join(goal['backends'])})"))


def main() -> int:
    from bench_selection import choose_models, run_selection, selection_summary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="corpus or zoo models to measure in a and d (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the corpus's CI subset and the small zoo models, fewer runs "
                             "(a smoke test)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="use the stored calibration instead of measuring the backends")
    parser.add_argument("--keep-data-dir", action="store_true",
                        help="use BACKPLANE_DATA_DIR and BACKPLANE_CACHE_DIR (or the user's "
                             "folders) as they are (a copies the data folder per model)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--corpus-only", action="store_true", help="no zoo models")
    which.add_argument("--zoo-only", action="store_true", help="no corpus models")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--selection-only", action="store_true",
                       help="measure selection cold and warm (a) and the cost model (c) alone")
    parts.add_argument("--planning-only", action="store_true",
                       help="measure planning time and bounded time (b) alone")
    parser.add_argument("--per-backend", action="store_true",
                        help="also measure the zoo's regret against each backend alone (d)")
    parser.add_argument("--qualified", action="store_true",
                        help="in a, give each model's data folder the user's stored "
                             "conformance runs (no first-run check of qualified backends)")
    args = parser.parse_args()
    if args.planning_only and (args.names or args.per_backend):
        parser.error("--planning-only measures no models")
    started, cpu_before = time.perf_counter(), cpu_seconds()
    notes = []
    # This run's own folder, always: the zoo's model files, each model's folders in a.
    # Registered before backplane registers its own exit hooks (which save learned
    # corrections into the data folder here), so it runs after them: nothing is left behind.
    work = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    models = []
    # the user's stored conformance runs (conformance/store.py), before the folder moves
    qualified = data_dir() / "conformance" if args.qualified else None
    if not args.planning_only:
        # Before the cache folder moves: corpus models are kept in the user's cache.
        (work / "zoo").mkdir()
        models, skipped = choose_models(args.names, args.corpus_only, args.zoo_only,
                                        args.quick, work / "zoo")
        notes += skipped
    if not args.keep_data_dir:
        os.environ["BACKPLANE_DATA_DIR"] = str(work / "data")
        # Compiled artefacts of the zoo (up to 100 MB a model) stay out of the user's cache.
        os.environ["BACKPLANE_CACHE_DIR"] = str(work / "cache")
    # In d the children of a model are set up together, so live load at planning time would
    # be their siblings compiling, not the idle machine each is then timed on: plan without
    # it (in a, each is set up alone, on the idle machine this stands for).
    os.environ["BACKPLANE_LOAD"] = "off"
    if os.environ.pop("BACKPLANE_DEVICES", None) is not None:
        notes.append("BACKPLANE_DEVICES was set; unset here so the default plan sees every "
                     "device")
    settings = Settings(args.quick)
    backends, absent = backends_with_devices()
    notes += [f"backend {b}: {why}, not measured" for b, why in absent.items()]
    report: dict[str, Any] = {
        "calibration": None if args.no_calibrate or args.planning_only else calibration()}
    template = None
    if models and (data_dir().is_dir() or qualified):  # each model of a starts from a copy
        template = work / "template"
        if data_dir().is_dir():
            shutil.copytree(data_dir(), template)
        else:
            template.mkdir(mode=0o700)
        if qualified is not None and qualified.is_dir():
            shutil.copytree(qualified, template / "conformance", dirs_exist_ok=True)
        elif qualified is not None:
            notes.append(f"--qualified: no stored conformance runs in {qualified}")
    zoo = []
    if args.per_backend and not args.corpus_only:
        sizes = ["small", "large"] if args.names else settings.sizes
        zoo = [(i, z) for i, z in enumerate(scheduler_zoo(sizes=sizes))
               if not args.names or z.name in args.names]
    (work / "selection").mkdir()
    measuring, parent_before = time.perf_counter(), parent_cpu_seconds()
    report["selection"] = run_selection(models, settings, template, work / "selection")
    rows = []
    for index, entry in zoo:
        rows.append(model_row(entry, index, backends, settings))
        print(f"measured {entry.name} (d)", file=sys.stderr, flush=True)
    parent = (parent_cpu_seconds() - parent_before) / max(time.perf_counter() - measuring,
                                                          1e-9)
    if parent > PARENT_LIMIT_CORES:
        notes.append(f"this process kept {parent:.2f} cores busy on average while the "
                     "sessions' children ran (runtimes left loaded by calibration?): "
                     "latencies may be off")
    report["selection_summary"] = selection_summary(report["selection"])
    report["per_backend"] = rows
    report["per_backend_summary"] = summary(rows)
    report["planning"], report["stress"] = None, []
    if not args.selection_only:
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
                      "quick": args.quick, "models": [m.name for m in models],
                      "notes": notes, "parent_cores": parent,
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
