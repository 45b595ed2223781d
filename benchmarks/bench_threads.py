"""Many threads on one session: every answer checked, under auto and on each CPU backend.

Each thread runs its own stream of fresh random inputs through one shared ``Session`` and
compares every output with the reference backend's answer for the same inputs (computed
before the threads start), within 1e-4 of the output's largest magnitude. Bad requests
(an inner dimension that does not fit) are mixed in at a fixed rate: each must fail alone
with an InputError and must not move the session. Prints, per configuration, runs,
mismatches, wrong errors, whether the plan moved, and runs per second.

    python benchmarks/bench_threads.py [--threads 16] [--runs 1000] [--bad-every 50]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

import backplane as bp
from backplane.engine.accuracy import max_rel_error
from backplane.conformance import zoo

from machine import cpu_name, versions

TOLERANCE = 1e-4
INPUTS = 64  # distinct inputs per configuration, each with its reference answer


def measure(devices, threads: int, runs: int, bad_every: int) -> dict:
    model = next(m for m in zoo.models() if m.name == "mlp")
    session = bp.Session(model.model, devices=devices)
    oracle = bp.Session(model.model, devices=["reference"])
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(INPUTS)]
    wants = [oracle.run(f) for f in feeds]
    bad = {"x": np.ones((4, 63), np.float32)}
    before = [p.device for p in session.plan.partitions]
    counts = {"runs": 0, "mismatches": 0, "bad requests": 0, "wrong errors": 0}
    lock = threading.Lock()

    def work(seed: int) -> None:
        local = dict.fromkeys(counts, 0)
        for i in range(runs):
            k = (seed * 7919 + i) % INPUTS
            if bad_every and i % bad_every == bad_every - 1:
                local["bad requests"] += 1
                try:
                    session.run(bad)
                    local["wrong errors"] += 1  # garbage for a bad request
                except bp.InputError:
                    pass
                except Exception:  # noqa: BLE001 - any other outcome is counted
                    local["wrong errors"] += 1
                continue
            try:
                local["mismatches"] += max_rel_error(session.run(feeds[k]), wants[k]) > TOLERANCE
            except Exception:  # noqa: BLE001
                local["mismatches"] += 1
            local["runs"] += 1
        with lock:
            for key, value in local.items():
                counts[key] += value

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    after = [p.device for p in session.plan.partitions]
    return {**counts, "plan moved": before != after, "devices": ",".join(sorted(set(after))),
            "runs/s": counts["runs"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1000, help="runs per thread")
    parser.add_argument("--bad-every", type=int, default=50,
                        help="one bad request in this many (0: none)")
    args = parser.parse_args()
    present = {d.backend for d in bp.registry().devices()}
    configs = [("auto", "auto")] + [(b, [b]) for b in ("onnxruntime", "openvino-cpu", "opencl")
                                    if b in present]
    print(f"# {args.threads} threads x {args.runs} runs on the zoo mlp, one bad request in "
          f"{args.bad_every}; {cpu_name()}; " + ", ".join(f"{k} {v}" for k, v in
                                                         versions().items()))
    print("| devices | ran on | runs | mismatches | bad requests | wrong errors | plan moved "
          "| runs/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for label, devices in configs:
        r = measure(devices, args.threads, args.runs, args.bad_every)
        print(f"| {label} | {r['devices']} | {r['runs']} | {r['mismatches']} | "
              f"{r['bad requests']} | {r['wrong errors']} | {r['plan moved']} | "
              f"{r['runs/s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
