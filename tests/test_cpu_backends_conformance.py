"""The three CPU backends pass the conformance mandatory tier on this machine.

One CLI run per backend, as a hardware team would run it: exit status 0, every declared
core op passing, the fused and model cases included. Skipped, with the reason, where the
backend has no device here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backplane.conformance.cases import MANDATORY_OPS

# The fewest core ops each backend must declare and pass here: what its runtime runs
# correctly today, so that a lost capability fails this test instead of passing quietly.
BACKENDS = {"openvino-cpu": 49, "onnxruntime": 49, "opencl": 46}


def _device_or_skip(backend: str) -> None:
    import backplane as bp

    record = next((r for r in bp.plugin_records() if r.name == backend), None)
    if record is None or record.state != "ready":
        pytest.skip(f"{backend}: {record.reason if record else 'not installed'}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_mandatory_tier_passes(backend, tmp_path):
    _device_or_skip(backend)
    rep = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "backplane", "conformance", "run", "--backend", backend,
         "--tier", "mandatory", "-j", "2", "--report", str(rep)],
        capture_output=True, text=True, timeout=900,
        env={**__import__("os").environ, "BACKPLANE_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((rep / "report.json").read_text())
    coverage = report["coverage"]
    assert coverage["declared"] == coverage["passed"]
    assert len(coverage["passed"]) >= BACKENDS[backend], coverage
    assert set(coverage["passed"]) <= set(MANDATORY_OPS)
    statuses = {c["status"] for c in report["cases"]}
    # special-values: right on ordinary values, different on NaN or infinities (listed in
    # the report's special_values and in docs/backends/BACKEND.md), which qualifies.
    assert statuses <= {"pass", "unsupported", "undeclared-pass", "skipped", "special-values"}, \
        statuses
    assert all(c["deviations"] for c in report["cases"] if c["status"] == "special-values")
