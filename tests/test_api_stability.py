"""The backend API's version window: a plugin written for an older version inside it loads
with a deprecation warning naming what to change and keeps working; one outside it is
refused with the reason; a plugin of the current version is held to the current rules.

The plugins are real installed distributions (tests/plugins/old_api), seen by child
processes through PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import backplane as bp
from tests.conftest import ROOT, pip_install, run_python


@pytest.fixture(scope="module")
def old_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install([ROOT / "tests" / "plugins" / "old_api"],
                       tmp_path_factory.mktemp("old-api-site"),
                       tmp_path_factory.mktemp("old-api-src"))


def _records(site: Path) -> dict:
    code = ("import json, warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import backplane as bp\n"
            "    records = {r.name: r.to_dict() for r in bp.plugin_records()}\n"
            "print(json.dumps({'records': records, 'warnings': [\n"
            "    [w.category.__name__, str(w.message)] for w in caught]}))")
    done = run_python(code, site=site, BACKPLANE_PLUGINS="old-api,ancient-api,odd-kind")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_window_is_stated_and_every_version_in_it_says_what_changed():
    assert bp.MIN_API_VERSION < bp.API_VERSION
    for version in range(bp.MIN_API_VERSION + 1, bp.API_VERSION + 1):
        assert bp.API_CHANGES[version], f"API {version} lists no change"


def test_a_plugin_for_a_deprecated_version_loads_with_a_warning_naming_what_to_change(old_site):
    found = _records(old_site)
    record = found["records"]["old-api"]
    assert record["state"] == "ready" and record["api_version"] == 1
    [(category, message)] = [w for w in found["warnings"] if "old-api" in w[1]]
    assert category == "PluginDeprecationWarning"
    assert "backplane-test-old-api 1.2.0" in message
    assert "written for backend API 1, which is deprecated" in message
    assert "set api_version = 2" in message
    assert "DeviceUnavailable" in message and "kind" in message
    assert record["deprecation"] == message


def test_a_deprecated_plugin_is_adapted_and_still_runs(old_site):
    code = ("import json, warnings, numpy as np\n"
            "warnings.simplefilter('ignore')\n"
            "import backplane as bp\n"
            "from onnx import helper, TensorProto\n"
            "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',\n"
            "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [4])],\n"
            "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [4])])\n"
            "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 21)])\n"
            "s = bp.Session(m, devices=['old-api'])\n"
            "y = s.run({'x': np.array([-1, 2, -3, 4], np.float32)})['y']\n"
            "[d] = [d for d in bp.devices() if d.backend == 'old-api']\n"
            "print(json.dumps([y.tolist(), d.kind]))")
    done = run_python(code, site=old_site, BACKPLANE_PLUGINS="old-api")
    assert done.returncode == 0, done.stderr
    y, kind = json.loads(done.stdout.strip().splitlines()[-1])
    assert y == [0, 2, 0, 4]
    assert kind == "gpu"  # API 1's free-text "GPU", read as the API 2 kind


def test_a_plugin_outside_the_window_is_refused_with_the_reason(old_site):
    record = _records(old_site)["records"]["ancient-api"]
    assert record["state"] == "failed"
    assert "written for backend API 0; this backplane supports 1 to 2" in record["reason"]
    assert "Upgrade the plugin" in record["reason"]


def test_a_current_plugin_is_held_to_the_current_rules(old_site):
    record = _records(old_site)["records"]["odd-kind"]
    assert record["state"] == "failed"
    assert "kind ['dsp']" in record["reason"] and "cpu, gpu, npu, accelerator" in record["reason"]


def test_the_api_tier_certifies_only_the_current_version_and_says_what_to_change(old_site, tmp_path):
    from tests.conftest import run_cli

    done = run_cli("conformance", "run", "--backend", "old-api", "--tier", "api",
                   "--report", str(tmp_path), site=old_site, BACKPLANE_PLUGINS="old-api")
    assert done.stderr.count("PluginDeprecationWarning") == 1, done.stderr  # not per worker
    cases = {c["id"]: c for c in json.loads((tmp_path / "report.json").read_text())["cases"]}
    check = cases["api/api-version-current"]
    assert check["status"] == "fail"
    assert "the current one is 2" in check["error"] and "DeviceUnavailable" in check["error"]
