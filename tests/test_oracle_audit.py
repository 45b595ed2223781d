"""The oracle audit: ONNX's node tests through the reference, the oracle and both runtimes;
the comparison rules, and a small run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from backplane.conformance.oracle_audit import agree


def test_values_within_the_node_tests_tolerance_agree_and_others_do_not():
    want = np.array([1.0, 2.0, np.nan], np.float32)
    assert agree(want + 1e-4, want)[0]
    assert not agree(want + 1e-2, want)[0]
    assert not agree(want.astype(np.float64), want)[0]  # the dtype is part of the answer


def test_integers_must_be_exact():
    assert not agree(np.array([1, 2], np.int64), np.array([1, 3], np.int64))[0]


def test_a_small_audit_runs_every_runner_and_finds_the_reference_right():
    out = subprocess.run([sys.executable, "-m", "backplane.conformance.oracle_audit", "--json",
                          "-k", "test_relu|test_batchnorm_example", "-j", "1"],
                         capture_output=True, text=True, timeout=600)
    data = json.loads(out.stdout)
    assert len(data["cases"]) >= 2, out.stderr[-2000:]
    assert set(data["counts"]) == {"reference", "oracle", "onnxruntime", "openvino"}
    for case in data["cases"]:
        assert case["results"]["reference"]["status"] == "pass", case
    assert not data["flagged"]
