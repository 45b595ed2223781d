"""Part a of bench_scheduler.py: measured plan selection, cold and warm, on the real-model
corpus and the scheduler zoo, against ONNX Runtime and OpenVINO called directly.

Per model, five child processes (started with "spawn", as bench_scheduler's children are),
set up one after another, each while the others sit idle:

1. ``onnxruntime``: ORT called directly, with the corpus check's settings
   (:func:`backplane.conformance.corpus_check._ort_direct`: the CPU provider's defaults);
2. ``openvino``: OpenVINO called directly (``compile_model(..., "CPU")``, f32 inference
   precision, the LATENCY hint: ``_openvino_direct``);
3. ``cold``: ``backplane.Session(path, sample_inputs=feeds)`` with the defaults
   (``tune="auto"``, ``fast_start=True``) in a cache folder and a data folder of the model's
   own: the cache empty (no selection database, no compiled artefacts), the data a copy of
   the calibrated template; after its first result it waits for the selection to end
   (``wait_selected``) and saves its learned corrections, as an application that ends would;
4. ``warm``: the same call in a new child with the same folders, now holding what the cold
   child left there (the selection database's winner among it).

Time to first result is measured inside each child, from just before the runtime is loaded
(``import`` and ``InferenceSession``, or ``import``, ``read_model`` and ``compile_model``) or
just before ``Session(...)`` (``import backplane`` done: it loads no runtime) to the first
run's return, on a model file already on disk. Steady-state latency is measured afterwards
by bench_scheduler's ``round_robin``: all four children in the same interleaved rounds, each
asked in turn for one untimed call and a burst of about 25 ms of timed calls, the others
idle; the median of the timed calls. Regret is backplane's latency over the faster direct
runtime's. Every output is compared with ORT direct's (relative to each output's largest
magnitude), the cold child's both from its first run and from its selected plan.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple
from unittest.mock import patch

import numpy as np

import backplane as bp
from bench_scheduler import (Child, ChildFailed, Settings, _ms, _why, feeds_for, geomean, quiet,
                             round_robin, serve)

#: The paths measured per model, in the order their children are set up.
DIRECT = ("onnxruntime", "openvino")
BACKPLANE = ("cold", "warm")
PATHS = DIRECT + BACKPLANE
#: Goals: steady-state regret of the warm and the cold session.
WARM_GEOMEAN_GOAL, WARM_WORST_GOAL = 1.03, 1.10
COLD_GEOMEAN_GOAL = 1.10
#: Seconds a child may take to set up and answer ``ready`` (the cold child compiles and
#: measures every candidate plan before it answers), and that it waits for the selection.
SETUP_TIMEOUT_S, SELECT_TIMEOUT_S = 900.0, 600.0
#: Outputs of the zoo within this of ORT direct's (relative to each output's largest
#: magnitude); the QDQ models' within one quantization step more or less (runtimes round a
#: tie either way), as backplane's run check allows. Corpus models use their entry's rtol.
ZOO_RTOL, ZOO_QDQ_RTOL = 1e-3, 5e-2


class Model(NamedTuple):
    """One model of part a: its ``.onnx`` file on disk, its inputs and its output budget."""

    name: str
    source: str
    path: str
    feeds: dict[str, np.ndarray]
    rtol: float


def choose_models(names: list[str], corpus_only: bool, zoo_only: bool, quick: bool,
                  work: Path) -> tuple[list[Model], list[str]]:
    """The models to measure, and notes on those that could not be had.

    Corpus models are materialized (with the cache folder as it is when this is called:
    call it before pointing BACKPLANE_CACHE_DIR elsewhere); zoo models are written under
    ``work``. Without ``names``: every corpus model (its CI subset with ``quick``) and every
    zoo model (the small ones with ``quick``), less what ``corpus_only`` or ``zoo_only`` drops.
    """
    from backplane.conformance import corpus
    from backplane.conformance.zoo import scheduler_zoo

    entries = corpus.entries()
    sizes = ["small"] if quick and not names else ["small", "large"]
    # built only when asked for (the large models take seconds and hold up to 100 MB each)
    wanted = not corpus_only and (not names or set(names) - {e.name for e in entries})
    zoo = list(enumerate(scheduler_zoo(sizes=sizes))) if wanted else []
    if names:
        known = {e.name for e in entries} | {z.name for _, z in zoo}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from: "
                             + ", ".join(sorted(known)))
        entries = [e for e in entries if e.name in names]
        zoo = [(i, z) for i, z in zoo if z.name in names]
    elif quick:
        entries = [e for e in entries if e.ci]
    if zoo_only:
        entries = []
    models, notes = [], []
    for e in entries:
        try:
            path = corpus.materialize(e)
        except corpus.CorpusError as exc:
            notes.append(f"{e.name}: not materialized, not measured: {_why(exc)}")
            continue
        models.append(Model(e.name, "corpus", str(path), corpus.sample_inputs(e), e.rtol))
    written: dict[int, str] = {}  # the batches of one family and size share one ModelProto
    for index, z in zoo:  # index: its place in the zoo, which seeds its inputs
        if id(z.model) not in written:
            path = work / f"{z.name.rsplit('-b', 1)[0]}.onnx"
            path.write_bytes(z.model.SerializeToString())
            written[id(z.model)] = str(path)
        rtol = ZOO_QDQ_RTOL if z.name.startswith("qdq-") else ZOO_RTOL
        models.append(Model(z.name, "zoo", written[id(z.model)], feeds_for(z, index), rtol))
    return models, notes


# -- children --------------------------------------------------------------------------------


def direct_child(conn: Any, runtime: str, path: str, feeds: dict[str, np.ndarray]) -> None:
    """Entry point of a direct runtime's child: load the model, run it once, answer
    ``("ready", {ttfr_s, load_s, first_run_s, outputs})``, then :func:`serve`."""
    # The corpus check's own loaders (they import the runtime when called): same settings.
    from backplane.conformance.corpus_check import _openvino_direct, _ort_direct

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    make = {"onnxruntime": _ort_direct, "openvino": _openvino_direct}[runtime]
    try:
        t0 = time.perf_counter()
        run = make(Path(path))
        t1 = time.perf_counter()
        outputs = run(feeds)
        t2 = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - a runtime's own failure is a row note
        return conn.send(("error", f"{runtime} direct: {_why(exc)}"))
    quiet()
    conn.send(("ready", {"ttfr_s": t2 - t0, "load_s": t1 - t0, "first_run_s": t2 - t1,
                         "outputs": outputs}))
    serve(conn, lambda: run(feeds), dict)


def backplane_child(conn: Any, path: str, feeds: dict[str, np.ndarray]) -> None:
    """Entry point of a cold or warm child: ``Session(path, sample_inputs=feeds)`` with the
    defaults, one run, then wait for the selection to end and run once more on the selected
    plan; answer ``("ready", {...})`` (or ``cannot_run``), then :func:`serve`."""
    from backplane.engine import costmodel

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        t0 = time.perf_counter()
        session = bp.Session(path, sample_inputs=feeds)
        t1 = time.perf_counter()
        outputs = session.run(feeds)
        t2 = time.perf_counter()
        first_plan = session.plan
        selected = session.wait_selected(SELECT_TIMEOUT_S)
        t3 = time.perf_counter()
        plan = session.plan
        final = session.run(feeds)
        # What an application that ends leaves for the next one (it saves at exit too).
        costmodel.save()
    except bp.UnsupportedError as exc:
        return conn.send(("cannot_run", str(exc).splitlines()[0]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a row note
        return conn.send(("error", _why(exc)))
    # plain data only: the report is written as JSON
    selection = json.loads(json.dumps(plan.selection, default=str))
    quiet()
    conn.send(("ready", {
        "ttfr_s": t2 - t0, "session_s": t1 - t0, "first_run_s": t2 - t1,
        "selected": selected, "selected_after_s": t3 - t0 if selected else None,
        "selection": selection,
        "first_devices": sorted({p.device for p in first_plan.partitions}),
        "devices": sorted({p.device for p in plan.partitions}),
        "partitions": len(plan.partitions), "predicted_s": plan.predicted_s,
        "outputs": outputs, "final": final}))
    serve(conn, lambda: session.run(feeds),
          lambda: {"plan_changed": session.plan is not plan, "events": list(session.plan.events)})


def spawn(env: dict[str, str], target: Any, *args: Any) -> Child:
    """A :class:`Child` started with ``env`` over this process's environment ("spawn" starts
    the child with the environment as it is then); this process's is restored after."""
    with patch.dict(os.environ, env):
        return Child(target, *args)


# -- one model -------------------------------------------------------------------------------


def selection_row(model: Model, settings: Settings, template: Path | None, work: Path
                  ) -> dict[str, Any]:
    """The four paths of one model, each in its child, set up one after another and then
    timed together (see the module docstring)."""
    from backplane.conformance.corpus_check import _rel_error

    row: dict[str, Any] = {"model": model.name, "source": model.source, "notes": [],
                           "ttfr_s": {}, "setup": {}, "latency_s": {}, "rel_error": {},
                           "regret": {}, "selection": {}, "predicted_s": None,
                           "predicted_over_measured": None, "database_files": None}
    home = Path(tempfile.mkdtemp(prefix=f"{model.name}-", dir=work))
    data, cache = home / "data", home / "cache"
    if template is not None:
        shutil.copytree(template, data)
    else:
        data.mkdir(mode=0o700)
    env = {"BACKPLANE_DATA_DIR": str(data), "BACKPLANE_CACHE_DIR": str(cache)}
    children: dict[str, Child] = {}
    ready: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for name in PATHS:
            args = ((direct_child, name, model.path, model.feeds) if name in DIRECT else
                    (backplane_child, model.path, model.feeds))
            children[name] = spawn(env, *args)
            try:
                kind, value = children[name].receive(SETUP_TIMEOUT_S)
            except ChildFailed as exc:
                failed[name] = str(exc)
                continue
            if kind == "cannot_run":
                failed[name] = f"cannot run: {value}"
                continue
            ready[name] = value
            if name == "cold":  # what the warm child will find
                tune = cache / "tune"
                row["database_files"] = len(list(tune.iterdir())) if tune.is_dir() else 0
        _compare(row, ready, model.rtol, _rel_error)
        first_s = {n: r["first_run_s"] for n, r in ready.items()}
        timing = round_robin({n: children[n] for n in ready}, settings, tuple(ready), first_s,
                             failed)
        for name in BACKPLANE:
            if name not in timing:
                continue
            try:
                end = children[name].ask("stop")
            except ChildFailed as exc:
                failed[name] = str(exc)
                timing.pop(name)
                continue
            if end["plan_changed"]:
                row["notes"].append(f"{name}: the plan changed while it was timed: "
                                    + "; ".join(end["events"][-3:]))
    finally:
        for child in children.values():
            child.close()
        shutil.rmtree(home, ignore_errors=True)
    row["wall_s"] = time.perf_counter() - started
    for name, why in failed.items():
        row["notes"].append(f"{name} failed: {why}")
    for name, r in ready.items():
        row["ttfr_s"][name] = r.pop("ttfr_s")
        row["setup"][name] = r
        if "median_s" in timing.get(name, {}):
            row["latency_s"][name] = timing[name]["median_s"]
    for name in BACKPLANE:
        r = ready.get(name)
        if r is None:
            continue
        row["selection"][name] = r.pop("selection")  # how, winner, alternatives, why ...
        if not r["selected"]:
            row["notes"].append(f"{name}: selection not over after {SELECT_TIMEOUT_S:g} s")
    direct = [row["latency_s"][n] for n in DIRECT if n in row["latency_s"]]
    best = min(direct) if direct else None
    row["best_direct_s"] = best
    for name in BACKPLANE:
        if best is not None and name in row["latency_s"]:
            row["regret"][name] = row["latency_s"][name] / best
    if best is None:
        row["notes"].append("neither runtime ran it directly: no regret")
    cold = ready.get("cold")
    if cold is not None and "cold" in row["latency_s"]:
        row["predicted_s"] = cold["predicted_s"]
        row["predicted_over_measured"] = cold["predicted_s"] / row["latency_s"]["cold"]
    return row


def _compare(row: dict[str, Any], ready: dict[str, dict[str, Any]], rtol: float,
             rel_error: Any) -> None:
    """Each path's outputs against ORT direct's (else OpenVINO direct's), into
    ``row["rel_error"]``, with a note for each over ``rtol``; outputs leave ``ready``."""
    outputs = {n: r.pop("outputs") for n, r in ready.items()}
    for name in BACKPLANE:
        if name in ready:
            outputs[f"{name} selected"] = ready[name].pop("final")
    reference = next((n for n in DIRECT if n in outputs), None)
    if reference is None:
        return
    for name, out in outputs.items():
        if name == reference:
            continue
        err = row["rel_error"][name] = rel_error(out, outputs[reference])
        if not err <= rtol:
            row["notes"].append(f"{name}: outputs differ from {reference} direct's by "
                                f"{err:.3g} (relative; budget {rtol:g})")


# -- summary and report ----------------------------------------------------------------------


def selection_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Regret (geomean, worst, per source) of the cold and the warm session against the
    goals; time to first result per path; how the sessions selected; the cost model's
    error factor (geomean |log(predicted / measured)| of the cold session's plan)."""
    out: dict[str, Any] = {}
    for name in BACKPLANE:
        have = [r for r in rows if name in r["regret"]]
        if not have:
            out[name] = None
            continue
        worst = max(have, key=lambda r: r["regret"][name])
        sources = sorted({r["source"] for r in have})
        out[name] = {"geomean": geomean([r["regret"][name] for r in have]),
                     "worst": worst["regret"][name], "worst_model": worst["model"],
                     "models": len(have),
                     "by_source": {s: geomean([r["regret"][name] for r in have
                                               if r["source"] == s]) for s in sources}}
    if out["warm"] is not None:
        out["warm"]["geomean_goal"], out["warm"]["worst_goal"] = WARM_GEOMEAN_GOAL, WARM_WORST_GOAL
        out["warm"]["geomean_met"] = out["warm"]["geomean"] <= WARM_GEOMEAN_GOAL
        out["warm"]["worst_met"] = out["warm"]["worst"] <= WARM_WORST_GOAL
    if out["cold"] is not None:
        out["cold"]["geomean_goal"] = COLD_GEOMEAN_GOAL
        out["cold"]["geomean_met"] = out["cold"]["geomean"] <= COLD_GEOMEAN_GOAL
    # Over the models every path answered, so that the figures compare.
    full = [r for r in rows if all(n in r["ttfr_s"] for n in PATHS)]
    out["ttfr"] = None if not full else {
        "models": len(full), "geomean_s": {n: geomean([r["ttfr_s"][n] for r in full])
                                           for n in PATHS},
        "over_faster_direct": {n: geomean([r["ttfr_s"][n] / min(r["ttfr_s"][d] for d in DIRECT)
                                           for r in full]) for n in BACKPLANE}}
    out["how"] = {n: dict(Counter(str(r["selection"][n].get("how")) for r in rows
                                  if n in r["selection"])) for n in BACKPLANE}
    logs = [abs(math.log(r["predicted_over_measured"])) for r in rows
            if r["predicted_over_measured"]]
    out["cost_model_error_factor"] = math.exp(sum(logs) / len(logs)) if logs else None
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"


def print_selection(rows: list[dict[str, Any]], s: dict[str, Any]) -> None:
    """Part a: latency and regret, time to first result, notes, and the goals."""
    print("\na. selection, cold and warm, against ONNX Runtime and OpenVINO called directly "
          "(median ms per run; regret: / the faster direct runtime)")
    print(f"{'model':28} {'ORT':>9} {'OpenVINO':>9} {'cold':>9} {'regret':>7} {'how':>9} "
          f"{'warm':>9} {'regret':>7} {'how':>9}  winner (warm)")
    for r in rows:
        lat, reg, sel = r["latency_s"], r["regret"], r["selection"]
        how = {n: str(sel.get(n, {}).get("how") or "-")[:9] for n in BACKPLANE}
        winner = sel.get("warm", sel.get("cold", {})).get("winner") or "-"
        print(f"{r['model'][:28]:28} {_ms(lat.get('onnxruntime')):>9} "
              f"{_ms(lat.get('openvino')):>9} {_ms(lat.get('cold')):>9} "
              f"{_x(reg.get('cold')):>7} {how['cold']:>9} {_ms(lat.get('warm')):>9} "
              f"{_x(reg.get('warm')):>7} {how['warm']:>9}  {winner[:60]}")
    print("\n   time to first result (s: loading the runtime and the model, or Session(), "
          "then the first run); of it, Session() and the first run; selected: seconds from "
          "Session() to the selection's end")
    print(f"{'model':28} {'ORT':>8} {'OpenVINO':>9} {'cold':>8} {'warm':>8}   cold: "
          f"{'Session()':>9} {'first run':>9} {'selected':>9}   warm: {'Session()':>9} "
          f"{'first run':>9}")
    for r in rows:
        t, cold, warm = r["ttfr_s"], r["setup"].get("cold", {}), r["setup"].get("warm", {})
        print(f"{r['model'][:28]:28} {_s(t.get('onnxruntime')):>8} {_s(t.get('openvino')):>9} "
              f"{_s(t.get('cold')):>8} {_s(t.get('warm')):>8}         "
              f"{_s(cold.get('session_s')):>9} {_s(cold.get('first_run_s')):>9} "
              f"{_s(cold.get('selected_after_s')):>9}         {_s(warm.get('session_s')):>9} "
              f"{_s(warm.get('first_run_s')):>9}")
    for r in rows:
        for note in r["notes"]:
            print(f"  {r['model']}: {note}")
    warm, cold = s["warm"], s["cold"]
    if warm is None:
        print("  warm: no regret measured (see the notes)")
    else:
        print(f"  warm: geomean regret {warm['geomean']:.3f} (goal <= {WARM_GEOMEAN_GOAL}) "
              f"{_met(warm['geomean_met'])}; worst {warm['worst']:.3f} on "
              f"{warm['worst_model']} (goal <= {WARM_WORST_GOAL}) {_met(warm['worst_met'])}; "
              f"{warm['models']} models")
    if cold is None:
        print("  cold: no regret measured (see the notes)")
    else:
        print(f"  cold: geomean regret {cold['geomean']:.3f} (goal <= {COLD_GEOMEAN_GOAL}) "
              f"{_met(cold['geomean_met'])}; worst {cold['worst']:.3f} on "
              f"{cold['worst_model']}; {cold['models']} models")
    for name in BACKPLANE:
        if s[name] is not None and len(s[name]["by_source"]) > 1:
            print(f"  {name} geomean regret by source: " + ", ".join(
                f"{src} {g:.3f}" for src, g in s[name]["by_source"].items()))
    t = s["ttfr"]
    if t is not None:
        g, over = t["geomean_s"], t["over_faster_direct"]
        print(f"  time to first result, geomean over {t['models']} models: ORT "
              f"{g['onnxruntime']:.3f} s, OpenVINO {g['openvino']:.3f} s, cold "
              f"{g['cold']:.3f} s (x{over['cold']:.2f} the faster direct), warm "
              f"{g['warm']:.3f} s (x{over['warm']:.2f})")
    for name in BACKPLANE:
        if s["how"][name]:
            print(f"  {name} selection: " + ", ".join(
                f"{how} {n}" for how, n in sorted(s["how"][name].items())))


def print_cost_model(rows: list[dict[str, Any]], error: float | None) -> None:
    """Part c: the cold session's predicted seconds per run over its measured latency."""
    if not rows:
        return
    print("\nc. cost model: predicted / measured seconds per run of the cold session's plan "
          "(after selection)")
    print(f"{'model':30} {'predicted':>10} {'measured':>10} {'ratio':>8}")
    for r in rows:
        ratio = r["predicted_over_measured"]
        print(f"{r['model'][:30]:30} {_ms(r['predicted_s']):>10} "
              f"{_ms(r['latency_s'].get('cold')):>10} "
              + (f"{ratio:8.3f}" if ratio is not None else f"{'-':>8}"))
    if error is not None:
        print(f"  geomean |log(predicted / measured)| as a factor: x{error:.2f}")


def run_selection(models: list[Model], settings: Settings, template: Path | None,
                  work: Path) -> list[dict[str, Any]]:
    """Part a's rows, one model after another."""
    rows = []
    for model in models:
        rows.append(selection_row(model, settings, template, work))
        print(f"measured {model.name} ({rows[-1]['wall_s']:.0f} s)", file=sys.stderr,
              flush=True)
    return rows
