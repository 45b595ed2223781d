"""Known failures as plugin data, the result store for planning, reports and the matrix."""

from __future__ import annotations

import json
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from backplane.conformance import knownfail, store
from backplane.conformance.report import Report, junit, load, matrix, render_matrix_html
from backplane.conformance.runner import CaseResult
from backplane.sdk.errors import ConformanceError
from tests.conftest import run_cli


def case(id_, op, dtype, status, **kw):
    return CaseResult(id_, op, dtype, kw.pop("tier", "mandatory"), [], status, **kw)


def report(cases, backend="demo-backend", device="demo:0", host="host-a"):
    return Report({"name": backend, "version": "1.2.0"},
                  {"id": device, "name": f"Demo {device}", "kind": "cpu", "hwdb": None,
                   "fingerprint": f"{device}-fp"}, {"numpy": "2"},
                  {"hostname": host, "platform": "linux"}, 7, "mandatory", None,
                  "2026-11-22T00:00:00+00:00", 1.5, cases)


# -- known failures ---------------------------------------------------------------------------


KNOWN = [{"op": "Resize", "dtype": "float16", "reason": "cubic not written", "case": "*cubic*",
          "plugin_version": ">=1.0,<2", "device": "NVIDIA .*T4"}]


def test_a_known_failure_applies_only_within_its_op_dtype_case_version_and_device():
    [k] = knownfail.parse(KNOWN, "test")
    hit = dict(case_id="Resize/float16/cubic", op="Resize", dtype="float16",
               plugin_version="1.4.0", device_name="NVIDIA Tesla T4")
    assert k.applies(**hit)
    for change in ({"dtype": "float32"}, {"case_id": "Resize/float16/linear"},
                   {"plugin_version": "2.0.0"}, {"device_name": "AMD MI300X"}, {"op": "Conv"}):
        assert not k.applies(**{**hit, **change}), change


@pytest.mark.parametrize("bad, words", [
    ({"op": "Resize"}, "non-empty reason"),
    ({"op": "Resize", "reason": "x", "colour": "red"}, "unknown keys ['colour']"),
    ({"op": "Resize", "reason": "x", "device": "(["}, "not a regular expression"),
    ({"op": "Resize", "reason": "x", "plugin_version": "one"}, "not a version specifier"),
])
def test_malformed_known_failures_are_refused_naming_the_problem(bad, words):
    with pytest.raises(ConformanceError, match=words.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")):
        knownfail.parse([bad], "plugin.toml")


def test_known_failures_come_from_the_plugins_toml_file(tmp_path):
    path = tmp_path / "known.toml"
    path.write_text('[[known_failure]]\nop = "Conv"\nreason = "groups > 1 not written"\n')
    backend = SimpleNamespace(name="x", known_failures=str(path))
    [k] = knownfail.for_backend(backend, None)
    assert (k.op, k.reason) == ("Conv", "groups > 1 not written")


# -- the store that feeds planning --------------------------------------------------------------


def test_stored_results_say_which_variants_passed_and_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path))
    r = report([case("Relu/a", "Relu", "float32", "pass"), case("Relu/b", "Relu", "float32", "fail"),
                case("Relu/c", "Relu", "float16", "pass"), case("Conv/a", "Conv", "float32", "skipped"),
                case("Tanh/a", "Tanh", "float32", "crash")])
    store.save(r)
    assert store.variant_status("demo-backend", "demo:0-fp", "Relu", "float32") == "failed"
    assert store.variant_status("demo-backend", "demo:0-fp", "Relu", "float16") == "passed"
    assert store.variant_status("demo-backend", "demo:0-fp", "Conv", "float32") == "passed"
    assert store.variant_status("demo-backend", "demo:0-fp", "Gemm", "float32") is None
    assert store.failed_variants("demo-backend", "demo:0-fp") == {("Relu", "float32"),
                                                                 ("Tanh", "float32")}
    assert store.failed_variants("demo-backend", "demo:0-fp", version="9.9") == set()


# -- reports ----------------------------------------------------------------------------------


def test_a_report_round_trips_through_json_and_refuses_another_schema(tmp_path):
    r = report([case("Relu/a", "Relu", "float32", "pass", max_rel_error=1e-7)])
    paths = r.write(tmp_path)
    back = load(paths["json"])
    assert back.to_dict() == r.to_dict()
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/9"}))
    with pytest.raises(ConformanceError, match="not a backplane conformance report"):
        load(tmp_path / "other.json")


def test_diff_finds_a_changed_verdict_and_ignores_timings_and_measured_texts(tmp_path):
    from backplane.conformance.report import diff

    before = report([case("Relu/a", "Relu", "float32", "pass", max_rel_error=1e-7, seconds=1.0),
                     case("Add/a", "Add", "float32", "pass", reason="grew 3.9 MiB")])
    same = report([case("Relu/a", "Relu", "float32", "pass", max_rel_error=1e-7, seconds=9.0),
                   case("Add/a", "Add", "float32", "pass", reason="grew 4.1 MiB")])
    d = diff(before, same)
    assert d["same"] and d["verdicts"] == [] and [t["field"] for t in d["texts"]] == ["reason"]
    worse = report([case("Relu/a", "Relu", "float32", "fail", max_rel_error=0.5),
                    case("Mul/a", "Mul", "float32", "pass")])
    d = diff(before, worse)
    assert not d["same"] and d["only_before"] == ["Add/a"] and d["only_after"] == ["Mul/a"]
    assert {(v["field"], v["before"], v["after"]) for v in d["verdicts"]} == {
        ("status", "pass", "fail"), ("max_rel_error", 1e-7, 0.5)}
    a, b = before.write(tmp_path / "a")["json"], worse.write(tmp_path / "b")["json"]
    assert run_cli("conformance", "diff", str(a), str(a)).returncode == 0
    shown = run_cli("conformance", "diff", str(a), str(b), "--json")
    assert shown.returncode == 1 and json.loads(shown.stdout)["only_after"] == ["Mul/a"]


def test_the_verdict_ignores_optional_cases_and_known_failures():
    ok = report([case("a", "Relu", "float32", "pass"), case("b", "Relu", "float32", "skipped"),
                 case("c", "Erf", "float64", "fail", tier="optional")])
    assert ok.mandatory_passed
    assert not report([case("a", "Relu", "float32", "hang")]).mandatory_passed


def test_junit_marks_failures_errors_and_skips():
    xml = junit(report([case("a", "Relu", "float32", "fail", error="off by one"),
                        case("b", "Tanh", "float32", "crash", error="exit code -11"),
                        case("c", "Conv", "float32", "skipped", reason="known"),
                        case("d", "Erf", "float16", "unsupported")]))
    assert 'failures="1"' in xml and 'errors="1"' in xml and 'skipped="2"' in xml
    assert "unsupported: the backend does not declare" in xml
    assert "off by one" in xml and "exit code -11" in xml


def test_the_matrix_merges_machines_and_keeps_the_worst_status_per_cell():
    a = report([case("Relu/1", "Relu", "float32", "pass"), case("Relu/2", "Relu", "float32", "fail")])
    b = report([case("Relu/1", "Relu", "float32", "pass")], device="other:0", host="host-b")
    m = matrix([a, b])
    assert len(m["columns"]) == 2
    [row] = m["rows"]
    assert sorted(row["cells"].values()) == ["fail", "pass"]
    assert "<td class='fail'>fail</td>" in render_matrix_html(m)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed "
                    "(.ci/run installs it)")
def test_the_html_report_shows_the_verdict_and_every_case_in_a_real_browser(tmp_path):
    r = report([case("Relu/float32/a", "Relu", "float32", "pass"),
                case("Tanh/float32/b", "Tanh", "float32", "hang", error="no answer within 3 s")])
    paths = r.write(tmp_path)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", paths["html"].as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<h1 id="verdict">FAILED: demo-backend 1.2.0 on demo:0</h1>' in dom.stdout
    assert "Relu/float32/a" in dom.stdout and "no answer within 3 s" in dom.stdout
    assert "<td>hang</td><td>1</td>" in dom.stdout.replace("\n", "")
