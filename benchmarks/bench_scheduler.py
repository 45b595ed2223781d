"""Device selection by the scheduler, measured on the scheduler zoo (issue 6, point 10).

Everything is measured in one run, on this machine's backends:

a. selection regret: per zoo model (five families x small, large x batch 1, 32), the latency
   of the default plan (``Session(model)``: devices auto, policy latency) over the best
   single-backend latency, each loaded backend that has a device timed alone
   (``Session(model, devices=[name])``; one that cannot run every node is shown as such).
   Beside it, the same for the fixed-order policy: the first admitting backend in priority
   order, as ONNX Runtime assigns nodes to its execution providers. Goals for the default
   plan: geometric mean <= 1.05, worst <= 1.25.
b. planning time: ``backplane.scheduler.plan_model`` on a loaded graph of 1,000 nodes
   (MatMul, Add, Relu, Softmax, LayerNormalization; branches, joins and long skips), no
   compile; median of 10 after one warm-up. Goal <= 50 ms.
c. cost-model error: the default plan's ``predicted_s`` over its measured latency, per
   model, and the geometric mean of |log ratio| as a factor.

Latency is the median of timed ``session.run`` calls on the same inputs, after warm-up.
The sessions of one model are measured in rounds: each round visits every session, in a
fresh random order, for one untimed call and a burst of about 25 ms of timed calls, so
that drift in the machine's speed hits them alike while each is timed as an application
running one model sees it (runtimes sharing a process disturb the call after a switch).
A single backend whose warm-up run took over 30x the fastest session's (and over 20 ms)
cannot be the best: it is not timed further, and its warm-up time is shown in brackets.
Every session's outputs are checked against the default plan's. Run it on an otherwise
idle machine: the load of other processes changes which backend is fastest.

Before measuring, the backends are calibrated once (fp32) into a fresh temporary data
folder (the compiled-artefact cache goes to a temporary folder too), so that no stored
calibration or correction learned in earlier runs steers the result, and nothing is left
behind; the cost model's learned corrections start empty and build up over the run, as in
an application.

    python benchmarks/bench_scheduler.py [--quick] [--json OUT] [--no-calibrate]
                                         [--keep-data-dir]
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

import backplane as bp
from backplane.conformance.zoo import QDQ_ACTIVATION_SCALE, SchedulerModel, scheduler_zoo
from backplane.hardware.db import data_dir

REGRET_GEOMEAN_GOAL = 1.05
REGRET_WORST_GOAL = 1.25
PLANNING_GOAL_S = 0.050
PLANNING_NODES = 1000
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


class Settings:
    """Repetitions: ``budget_s`` of timed rounds per model, within [min, max] rounds."""

    def __init__(self, quick: bool):
        self.sizes = ["small"] if quick else ["small", "large"]
        self.budget_s = 0.3 if quick else 3.0
        self.min_rounds = 3 if quick else 8
        self.max_rounds = 10 if quick else 60
        self.planning_runs = 5 if quick else 10


# -- timing ----------------------------------------------------------------------------------


def round_robin(runs: dict[str, Any], feeds: dict[str, np.ndarray], settings: Settings,
                always: tuple[str, ...], first_s: dict[str, float]
                ) -> dict[str, dict[str, Any]]:
    """Per session: median seconds over calls made in rounds, after warm-up calls (the
    first, already made, took ``first_s``; two more follow).

    Each round visits every session once, in a fresh random order, for one untimed call
    and then a burst of timed calls (about BURST_S of them). Runtimes in one process
    disturb each other at the switch (worker threads of the one before still spinning or
    gone to sleep, a cold cache): the untimed call absorbs it, the burst measures the
    session as an application running one model would see it, and the rounds spread drift
    in the machine's speed over every session alike. Rounds go on until the budget is spent
    (at least ``min_rounds``). A session not in ``always`` whose best warm-up call is over
    SLOW_FACTOR x the fastest (and over SLOW_FLOOR_S), or whose first call took over
    SLOW_FIRST_S, is left out of the rounds; its entry holds ``warmup_s`` only.
    """
    warm: dict[str, float] = {}
    for name, session in runs.items():
        warm[name] = first_s[name]
        if warm[name] > SLOW_FIRST_S and name not in always:  # too slow to call again
            continue
        calls = []
        for _ in range(2):
            t0 = time.perf_counter()
            session.run(feeds)
            calls.append(time.perf_counter() - t0)
        warm[name] = min(calls)
    fastest = min(warm.values())
    timed = [n for n in runs if n in always or
             not (warm[n] > SLOW_FACTOR * fastest and warm[n] > SLOW_FLOOR_S)]
    burst = {n: int(min(BURST_MAX, max(1, BURST_S / max(warm[n], 1e-6)))) for n in timed}
    order = np.random.default_rng(0)
    times: dict[str, list[float]] = {n: [] for n in timed}
    rounds, start = 0, time.perf_counter()
    while rounds < settings.min_rounds or (rounds < settings.max_rounds and
                                           time.perf_counter() - start < settings.budget_s):
        for i in order.permutation(len(timed)):
            session, sink = runs[timed[i]], times[timed[i]]
            session.run(feeds)
            for _ in range(burst[timed[i]]):
                t0 = time.perf_counter()
                session.run(feeds)
                sink.append(time.perf_counter() - t0)
        rounds += 1
    out = {n: {"warmup_s": warm[n]} for n in runs}
    for n, ts in times.items():
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
    """Sessions for one model (default, fixed-order, each backend alone), timed together."""
    feeds = feeds_for(entry, index)
    row: dict[str, Any] = {"model": entry.name, "input_shapes": entry.input_shapes,
                           "backends": {}, "notes": []}
    sessions: dict[str, Any] = {"default": bp.Session(entry.model)}
    plan = sessions["default"].plan
    row["default_devices"] = sorted({p.device for p in plan.partitions})
    row["default_partitions"] = len(plan.partitions)
    row["predicted_s"] = plan.predicted_s
    sessions["fixed-order"] = bp.Session(entry.model, policy="fixed-order")
    row["fixed_devices"] = sorted({p.device for p in sessions["fixed-order"].plan.partitions})
    for name in backends:
        try:
            sessions[name] = bp.Session(entry.model, devices=[name])
        except bp.UnsupportedError as exc:
            row["backends"][name] = {"cannot_run": str(exc).splitlines()[0]}
    atol = QDQ_ACTIVATION_SCALE if entry.name.startswith("qdq-") else CHECK_ATOL
    first_s, want = {}, None
    for name, session in sessions.items():  # the first call (it may compile for the shapes)
        t0 = time.perf_counter()
        got = session.run(feeds)
        first_s[name] = time.perf_counter() - t0
        want = got if want is None else want
        for out, ref in want.items():
            if not np.allclose(got[out], ref, rtol=CHECK_RTOL, atol=atol):
                err = float(np.max(np.abs(got[out] - ref)))
                row["notes"].append(f"{name}: output {out} differs from the default plan's "
                                    f"(max abs {err:.3g})")
    timing = round_robin(sessions, feeds, settings, ("default", "fixed-order"), first_s)
    if sessions["default"].plan is not plan:
        row["notes"].append("the default plan changed while it was measured: "
                            + "; ".join(sessions["default"].plan.events))
    row["default_s"] = timing.pop("default")["median_s"]
    row["fixed_s"] = timing.pop("fixed-order")["median_s"]
    row["backends"].update(timing)
    row["predicted_over_measured"] = row["predicted_s"] / row["default_s"]
    alone = {n: t["median_s"] for n, t in timing.items() if "median_s" in t}
    if not alone:  # only a plan across backends runs this model: no regret to state
        row["notes"].append("no single backend runs this model")
        row["best_backend"] = row["best_s"] = row["regret"] = row["fixed_regret"] = None
        return row
    best = min(alone, key=alone.get)
    row["best_backend"], row["best_s"] = best, alone[best]
    row["regret"] = row["default_s"] / row["best_s"]
    row["fixed_regret"] = row["fixed_s"] / row["best_s"]
    return row


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric mean and worst regret of both policies; the cost model's error factor."""
    out: dict[str, Any] = {}
    with_regret = [r for r in rows if r["regret"] is not None]
    for key in ("regret", "fixed_regret"):
        worst = max(with_regret, key=lambda r: r[key])
        out[key] = {"geomean": geomean([r[key] for r in with_regret]), "worst": worst[key],
                    "worst_model": worst["model"], "models": len(with_regret)}
    r = out["regret"]
    r["geomean_met"] = r["geomean"] <= REGRET_GEOMEAN_GOAL
    r["worst_met"] = r["worst"] <= REGRET_WORST_GOAL
    logs = [abs(math.log(row["predicted_over_measured"])) for row in rows]
    out["cost_model_error_factor"] = math.exp(sum(logs) / len(logs))
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


def planning_row(settings: Settings) -> dict[str, Any]:
    """Median seconds of ``plan_model`` on the loaded synthetic graph."""
    from backplane.intake import load_model
    from backplane.scheduler import plan_model

    graph = load_model(synthetic_graph())
    assert len(graph.nodes) == PLANNING_NODES, len(graph.nodes)
    plan = plan_model(graph)  # warm-up: device profiles, capability caches
    times = []
    for _ in range(settings.planning_runs):
        t0 = time.perf_counter()
        plan_model(graph)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"nodes": len(graph.nodes), "median_s": median, "runs": len(times),
            "partitions": len(plan.partitions),
            "devices": sorted({p.device for p in plan.partitions}),
            "goal_s": PLANNING_GOAL_S, "met": median <= PLANNING_GOAL_S}


# -- d: calibration --------------------------------------------------------------------------


def calibration() -> dict[str, Any]:
    from backplane.hardware.calibrate import calibrate

    t0 = time.perf_counter()
    results = calibrate(dtypes=["fp32"])
    return {"seconds": time.perf_counter() - t0,
            "devices": [{"device": r.device,
                         "measured": {m.key: m.value for m in r.measurements},
                         "skipped": [s.splitlines()[0] for s in r.skipped]}
                        for r in results]}


# -- report ----------------------------------------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds spent so far by the whole machine, and by this process."""
    import psutil

    t = psutil.cpu_times()
    machine = t.user + t.system + sum(getattr(t, k, 0.0) for k in ("nice", "irq", "softirq"))
    own = psutil.Process().cpu_times()
    return machine, own.user + own.system + own.children_user + own.children_system


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__,
           "backplane": bp.__version__}
    for module in ("openvino", "onnxruntime", "pyopencl", "onnx"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent runtimes are listed as such
            out[module] = "absent"
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _cell(entry: dict[str, Any]) -> str:
    if "cannot_run" in entry:
        return "cannot"
    if "median_s" in entry:
        return _ms(entry["median_s"])
    if "warmup_s" in entry:
        return f"[{_ms(entry['warmup_s'])}]"
    return entry.get("reason", "-")


def print_report(report: dict[str, Any]) -> None:
    meta, rows, backends = report["meta"], report["regret"], report["meta"]["backends"]
    print(f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores; "
          + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(f"data folder: {meta['data_dir']}; wall time {meta['wall_s']:.0f} s; other "
          f"processes used {meta['others_cores']:.2f} cores on average meanwhile"
          + ("; --quick (small models, fewer runs)" if meta["quick"] else ""))
    for note in meta["notes"]:
        print(f"note: {note}")
    cal = report.get("calibration")
    if cal is None:
        print("calibration: skipped (--no-calibrate)")
    else:
        print(f"calibration (fp32), {cal['seconds']:.1f} s:")
        for d in cal["devices"]:
            figures = ", ".join(f"{k} {v:g}" for k, v in d["measured"].items())
            skipped = d["skipped"]
            print(f"  {d['device']:16} {figures or 'nothing measured'}"
                  + (f"; skipped {len(skipped)}, e.g. {skipped[0][:100]}" if skipped else ""))

    print("\na. selection regret: latency / best single-backend latency (median ms per run)")
    head = (f"{'model':30} {'default':>9} {'regret':>7} {'fixed':>9} {'regret':>7} "
            f"{'best':>13}" + "".join(f" {b[:12]:>12}" for b in backends))
    print(head)
    for r in rows:
        regret, fixed_regret, best = ((f"{r['regret']:7.3f}", f"{r['fixed_regret']:7.3f}",
                                       r["best_backend"][:13])
                                      if r["regret"] is not None else ("-", "-", "-"))
        print(f"{r['model']:30} {_ms(r['default_s']):>9} {regret:>7} {_ms(r['fixed_s']):>9} "
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
            groups.setdefault(" + ".join(r[key]), []).append(r["model"])
        print(f"  {policy} ran on " + "; ".join(f"{devices}: {', '.join(models)}"
                                              for devices, models in groups.items()))
    s = report["summary"]
    reg, fixed = s["regret"], s["fixed_regret"]
    print(f"  default plan: geomean regret {reg['geomean']:.3f} (goal <= "
          f"{REGRET_GEOMEAN_GOAL}) {'PASS' if reg['geomean_met'] else 'MISS'}; worst "
          f"{reg['worst']:.3f} on {reg['worst_model']} (goal <= {REGRET_WORST_GOAL}) "
          f"{'PASS' if reg['worst_met'] else 'MISS'}")
    print(f"  fixed-order:  geomean regret {fixed['geomean']:.3f}; worst "
          f"{fixed['worst']:.3f} on {fixed['worst_model']}")

    p = report["planning"]
    print(f"\nb. planning a {p['nodes']}-node graph (plan_model, no compile): median "
          f"{p['median_s'] * 1e3:.1f} ms of {p['runs']} (goal <= {p['goal_s'] * 1e3:.0f} ms) "
          f"{'PASS' if p['met'] else 'MISS'}; {p['partitions']} partition(s) on "
          f"{', '.join(p['devices'])}")

    print("\nc. cost model: predicted / measured seconds per run of the default plan")
    print(f"{'model':30} {'predicted':>10} {'measured':>10} {'ratio':>8}")
    for r in rows:
        print(f"{r['model']:30} {_ms(r['predicted_s']):>10} {_ms(r['default_s']):>10} "
              f"{r['predicted_over_measured']:8.3f}")
    print(f"  geomean |log(predicted / measured)| as a factor: "
          f"x{s['cost_model_error_factor']:.2f}")


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
    if os.environ.pop("BACKPLANE_DEVICES", None) is not None:
        notes.append("BACKPLANE_DEVICES was set; unset here so the default plan sees every "
                     "device")
    settings = Settings(args.quick)
    backends, absent = backends_with_devices()
    notes += [f"backend {b}: {why}, not measured" for b, why in absent.items()]
    report: dict[str, Any] = {
        "calibration": None if args.no_calibrate else calibration()}
    zoo = scheduler_zoo(sizes=settings.sizes)
    rows = []
    for index, entry in enumerate(zoo):
        rows.append(model_row(entry, index, backends, settings))
        print(f"measured {entry.name}", file=sys.stderr, flush=True)
    report["regret"] = rows
    report["summary"] = summary(rows)
    report["planning"] = planning_row(settings)
    report["meta"] = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
                      "cores": os.cpu_count(), "versions": versions(), "backends": backends,
                      "data_dir": ("temporary" if not args.keep_data_dir else str(data_dir())),
                      "quick": args.quick, "notes": notes,
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
