"""Start-up cost: ``import backplane`` plus discovery, against the 0.3 s target.

Each measurement runs in a fresh interpreter (so nothing is cached in-process) and is
timed inside that interpreter with perf_counter, from before the import to after the
step; interpreter start-up itself is reported separately. Prints the median of N runs per
step, its ratio to the target, and which heavy runtimes each step imported.

    python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys

TARGET_S = 0.3
HEAVY = ("numpy", "onnx", "onnxruntime", "openvino", "torch", "pyopencl", "tensorrt", "cupy")

STEPS = {
    "import backplane": "import backplane",
    "import + discovery (load plugins)": "import backplane; backplane.registry()",
    "import + discovery + probe (devices)": "import backplane; backplane.devices()",
    "import + Session on a tiny model": (
        "import backplane, onnx.helper as h\n"
        "g = h.make_graph([h.make_node('Relu', ['x'], ['y'])], 'g', "
        "[h.make_tensor_value_info('x', 1, [2])], [h.make_tensor_value_info('y', 1, [2])])\n"
        "backplane.Session(h.make_model(g, opset_imports=[h.make_opsetid('', 17)]))"),
}

CHILD = """
import time, sys, json
t0 = time.perf_counter()
{body}
elapsed = time.perf_counter() - t0
print(json.dumps([elapsed, sorted(m for m in sys.modules if m in {heavy!r})]))
"""


def measure(body: str, runs: int) -> tuple[float, list[str]]:
    """Median seconds of ``body`` over fresh interpreters, and the heavy modules it imported."""
    times, heavy = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD.format(body=body, heavy=HEAVY)],
                             capture_output=True, text=True, check=True)
        elapsed, heavy = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(elapsed)
    return statistics.median(times), heavy


def interpreter_start(runs: int) -> float:
    """Median wall time of ``python -c pass``, for scale."""
    import time

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    import backplane

    print(f"backplane {backplane.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {len(backplane.registry().records)} backend entry points, "
          f"median of {args.runs} fresh interpreters")
    print(f"interpreter start-up (python -c pass, wall): {interpreter_start(args.runs) * 1e3:.1f} ms")
    print(f"{'step':40} {'median ms':>10} {'/ target':>9}  heavy modules imported")
    verdict = 0
    for name, body in STEPS.items():
        seconds, heavy = measure(body, args.runs)
        ratio = seconds / TARGET_S
        print(f"{name:40} {seconds * 1e3:10.1f} {ratio:8.2f}x  {', '.join(heavy) or '-'}")
        if "discovery" in name and "probe" not in name and (ratio > 1 or heavy):
            verdict = 1
    print(f"target: import + discovery under {TARGET_S * 1e3:.0f} ms with no heavy runtime: "
          + ("MISSED" if verdict else "met"))
    return verdict


if __name__ == "__main__":
    sys.exit(main())
