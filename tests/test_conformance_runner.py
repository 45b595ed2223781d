"""The conformance runner catches planted defects, each a real plugin package installed by the
tests, and reports each as exactly what it is while the rest of the run completes.

The cases here are built in the test with their expected values computed by numpy, so the
runner is checked independently of the case generators and the oracle.
"""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, pip_install, run_python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def defects_site(tmp_path_factory):
    work = tmp_path_factory.mktemp("defects-src")
    return pip_install([ROOT / "tests" / "plugins" / "defects"],
                       tmp_path_factory.mktemp("defects-site"), work)


RUN = """
import json, sys, types
import numpy as np
sys.path.insert(0, 'tests')
from models import single
from onnx import TensorProto
from backplane.conformance.runner import run_cases

FUNCS = {{'Relu': lambda x: np.maximum(x, 0), 'Sigmoid': lambda x: 1 / (1 + np.exp(-x)),
         'Tanh': np.tanh, 'Neg': np.negative,
         'Softmax': lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)}}
cases = []
rng = np.random.default_rng({seed})
for op in {ops!r}:
    for dtype, code in (('float32', TensorProto.FLOAT), ('float16', TensorProto.FLOAT16)):
        x = rng.standard_normal((3, 4)).astype(dtype)
        want = FUNCS[op](x.astype(np.float64)).astype(dtype)
        cases.append(types.SimpleNamespace(id=f'{{op}}/{{dtype}}', op=op, dtype=dtype,
                     tier='mandatory', tags=(), model=single(op, code), inputs={{'x': x}},
                     expected={{'y': want}}, tolerance_key=op))
results = run_cases(cases, {backend!r}, {backend!r} + ':0', jobs={jobs}, timeout_s={timeout})
print(json.dumps({{r.id: [r.status, r.error] for r in results}}))
"""


def run(site, backend: str, ops: list[str], jobs: int = 1, timeout: float = 20) -> dict:
    code = RUN.format(seed=3, ops=ops, backend=backend, jobs=jobs, timeout=timeout)
    result = run_python(code, site=site, timeout=300)
    assert result.returncode == 0, result.stderr
    return {k: tuple(v) for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


def test_wrong_values_for_one_op_and_dtype_are_a_failure_of_exactly_that_variant(defects_site):
    got = run(defects_site, "wrong-values", ["Relu", "Neg"])
    assert got["Relu/float32"][0] == "fail" and "max abs error" in got["Relu/float32"][1]
    assert {k: v[0] for k, v in got.items() if k != "Relu/float32"} == \
        {"Relu/float16": "pass", "Neg/float32": "pass", "Neg/float16": "pass"}


def test_a_segfault_is_recorded_as_a_crash_and_the_run_goes_on(defects_site):
    got = run(defects_site, "segfaults", ["Neg", "Sigmoid", "Relu"], jobs=2)
    assert got["Sigmoid/float32"][0] == "crash" and got["Sigmoid/float16"][0] == "crash"
    assert "exit code -11" in got["Sigmoid/float32"][1]
    assert all(got[f"{op}/{dt}"][0] == "pass" for op in ("Neg", "Relu")
               for dt in ("float32", "float16"))


def test_a_hang_is_cut_off_by_the_case_timeout_and_the_run_goes_on(defects_site):
    got = run(defects_site, "hangs", ["Tanh", "Relu"], timeout=3)
    assert got["Tanh/float32"][0] == "hang" and "no answer within 3 s" in got["Tanh/float32"][1]
    assert got["Relu/float32"][0] == "pass" and got["Relu/float16"][0] == "pass"


def test_a_declared_op_that_cannot_run_is_an_error_and_an_undeclared_one_that_works_is_reported(
        defects_site):
    got = run(defects_site, "overclaims", ["Softmax", "Relu", "Sigmoid"])
    assert got["Softmax/float32"][0] == "error"
    assert "Softmax is declared but was never written" in got["Softmax/float32"][1]
    assert got["Relu/float32"][0] == "pass"
    assert got["Sigmoid/float32"][0] == "undeclared-pass"


def test_the_api_tier_passes_on_the_reference_backend_and_writes_all_three_reports(tmp_path):
    from conftest import run_cli

    result = run_cli("conformance", "run", "--backend", "reference", "--tier", "api",
                     "--report", str(tmp_path / "rep"), BACKPLANE_DATA_DIR=str(tmp_path / "d"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["schema"] == "backplane-conformance/1" and report["mandatory_passed"]
    from backplane.conformance.apitier import CHECKS

    assert [c["status"] for c in report["cases"]] == ["pass"] * len(CHECKS)
    assert report["device"]["hwdb"] and report["seed"] >= 0
    assert (tmp_path / "rep" / "junit.xml").read_text().startswith("<?xml")
    assert "PASSED: reference" in (tmp_path / "rep" / "report.html").read_text()


def test_the_example_plugin_runs_the_suite_with_plain_pytest(example_site, tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import EXAMPLE, clean_env

    work = tmp_path / "example"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA"], cwd=work,
                            capture_output=True, text=True, timeout=300,
                            env=clean_env(example_site, BACKPLANE_DATA_DIR=str(tmp_path / "d")))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    from backplane.conformance.apitier import CHECKS

    assert f"{len(CHECKS)} passed" in result.stdout
    assert "PASSED backplane:example-numpy::conformance[api/thread-safe]" in result.stdout \
        or "conformance[api/thread-safe]" in result.stdout


def _cli_report(site, tmp_path, name, *args):
    from conftest import run_cli

    rep = tmp_path / name
    result = run_cli("conformance", "run", *args, "--report", str(rep), site=site,
                     timeout=300, BACKPLANE_DATA_DIR=str(tmp_path / "data"))
    report = json.loads((rep / "report.json").read_text())
    return result, report, {c["id"]: c for c in report["cases"]}


KNOWN = "Relu/float32/rank-2-*|Relu/float16/rank-2-*|Neg/float32/rank-*|Add/float32/broadcast-*"


def test_generated_cases_through_the_cli_skip_known_failures_with_their_reason(defects_site,
                                                                             tmp_path):
    result, report, cases = _cli_report(defects_site, tmp_path, "known", "--backend",
                                        "wrong-values", "-k", KNOWN, "-j", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    relu = [c for i, c in cases.items() if i.startswith("Relu/float32/")]
    neg = [c for i, c in cases.items() if i.startswith("Neg/float32/")]
    assert relu and all(c["status"] == "skipped" and "planted defect" in c["reason"]
                        for c in relu)
    assert neg and all(c["status"] == "skipped" for c in neg)
    assert all(c["status"] == "pass" for i, c in cases.items()
               if i.startswith(("Relu/float16/", "Add/float32/")))
    assert report["pattern"] == KNOWN and "PASSED: wrong-values" in result.stdout


def test_also_running_known_failures_shows_which_now_pass(defects_site, tmp_path):
    result, _, cases = _cli_report(defects_site, tmp_path, "also", "--backend", "wrong-values",
                                   "-k", KNOWN, "--also-run-known-failures")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {c["status"] for i, c in cases.items() if i.startswith("Neg/float32/")} == {"xpass"}
    still = [c for i, c in cases.items() if i.startswith("Relu/float32/")]
    assert all(c["status"] == "skipped" and "max abs error" in c["error"] for c in still)


def test_a_defect_in_generated_cases_fails_the_run_with_exit_code_1(defects_site, tmp_path):
    result, report, cases = _cli_report(defects_site, tmp_path, "seg", "--backend",
                                        "segfaults", "-k", "Sigmoid/float32/rank-*|Neg/float32/"
                                        "rank-2-*", "-j", "2")
    assert result.returncode == 1 and "FAILED: segfaults" in result.stdout
    assert {c["status"] for i, c in cases.items() if i.startswith("Sigmoid/")} == {"crash"}
    assert {c["status"] for i, c in cases.items() if i.startswith("Neg/")} == {"pass"}
    assert not report["mandatory_passed"]


def test_a_backend_answers_for_the_ops_it_declares(defects_site, tmp_path):
    """overclaims declares Relu, Softmax and Add: undeclared ops' cases are unsupported (or
    undeclared-pass) and do not fail the run; the declared Softmax does."""
    result, report, cases = _cli_report(defects_site, tmp_path, "over", "--backend",
                                        "overclaims", "-k", "Relu/float32/rank-2-*|Sigmoid/"
                                        "float32/rank-2-*|Softmax/float32/rank-2-*")
    assert result.returncode == 1
    assert cases["Softmax/float32/rank-2-3x4"]["status"] == "error"
    assert cases["Sigmoid/float32/rank-2-3x4"]["status"] == "undeclared-pass"
    assert report["coverage"]["declared"] == ["Relu", "Softmax"]
    assert report["coverage"]["passed"] == ["Relu"]
    assert "core ops declared: 2 of 49" in result.stdout


def test_the_mandatory_tier_passes_on_the_reference_backend(tmp_path):
    """Every generated, fused and zoo case, on the backend that is the oracle's own."""
    from backplane.conformance.cases import MANDATORY_OPS

    result, report, cases = _cli_report(None, tmp_path, "ref", "--backend", "reference",
                                        "--tier", "mandatory", "-j", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert set(report["summary"]) <= {"pass", "special-values"}, report["summary"]
    # onnx.reference's own kernels, where a NaN or an infinity sits in a window: MaxPool and
    # AveragePool leave NaN out, Resize weighs every element (0 x inf is NaN), QuantizeLinear
    # casts inf before it saturates (docs/conformance.md, "Special values").
    assert set(report["special_values"]) <= {"MaxPool", "AveragePool", "Resize",
                                             "QuantizeLinear"}, report["special_values"]
    assert report["coverage"]["passed"] == sorted(MANDATORY_OPS)
    ops = {c["op"] for c in cases.values()}
    assert {"FusedConvRelu", "FusedMatMulBiasGelu", "Attention"} <= ops
    assert sum(1 for i in cases if i.startswith("model:")) >= 10
    assert len(cases) >= 1200
    assert all(c["max_abs_error"] is not None for i, c in cases.items()
               if not i.startswith("api/"))
