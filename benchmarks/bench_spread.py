"""Throughput spread (issue 20, point 4): requests over two plans at once, against the winner
alone, as measured selection measures it under ``policy="throughput"``.

For each model (default: five corpus models), a session with ``policy="throughput"`` and
``tune="on"`` in a fresh cache folder times the winner alone and spread with the runner-up
on another device (:data:`backplane.engine.selection.SPREAD_THREADS` requests in flight,
``SPREAD_S`` seconds each) and keeps the spread only where it answers more requests per
second by ``SPREAD_GAIN``. This prints what it measured and kept.

    python benchmarks/bench_spread.py [NAME ...]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

MODELS = ["ppocr-mobile-cls", "ppocr-v4-rec", "mobilenetv2-ts10", "bert-ts14", "segformer-ts"]


def main(names: list[str]) -> int:
    logging.disable(logging.WARNING)
    os.environ["BACKPLANE_CACHE_DIR"] = tempfile.mkdtemp(prefix="bp-spread-")
    import backplane as bp
    from backplane.conformance import corpus

    print(f"{'model':24} {'winner':28} {'spread with':40} {'alone/s':>9} {'spread/s':>9} kept")
    for name in names or MODELS:
        path, feeds = corpus.materialize(name), corpus.sample_inputs(name)
        s = bp.Session(str(path), sample_inputs=feeds, policy="throughput", tune="on")
        spread = s.plan.selection.get("spread")
        if spread is None:
            print(f"{name:24} {s.plan.selection.get('winner', '?'):28} (no runner-up on another "
                  f"device: {s.plan.selection.get('how')})")
            continue
        print(f"{name:24} {s.plan.selection['winner']:28} {spread['with']:40} "
              f"{spread['alone_per_s']:9.0f} {spread['spread_per_s']:9.0f} {spread['kept']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
