"""Plugin discovery: broken plugins are isolated and explained; explicit names are loud.

Every test here runs backplane in a child process whose PYTHONPATH holds really installed
plugin distributions (see conftest.py), so discovery goes through real entry points.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import PROBE_TIMEOUT_S, run_cli, run_python

pytestmark = pytest.mark.slow


def plugin_records(site, **env) -> dict[str, dict]:
    result = run_cli("plugins", "--json", site=site, **env)
    assert result.returncode == 0, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def records(broken_site) -> dict[str, dict]:
    return plugin_records(broken_site)


def test_plugin_that_fails_to_import_is_recorded_with_reason_and_distribution(records):
    r = records["broken-import"]
    assert r["state"] == "failed"
    assert "import failed: ModuleNotFoundError" in r["reason"]
    assert "vendor_runtime_that_is_not_installed" in r["reason"]
    assert (r["distribution"], r["distribution_version"]) == ("backplane-test-broken-import", "0.1.0")
    assert r["error_type"] == "ModuleNotFoundError"


def test_plugin_whose_probe_hangs_is_cut_off_by_the_timeout(records):
    r = records["hanging-probe"]
    assert r["state"] == "failed"
    assert f"probe did not return within {PROBE_TIMEOUT_S} s" in r["reason"]
    assert (r["distribution"], r["distribution_version"]) == ("backplane-test-hanging-probe", "0.2.0")


def test_plugin_whose_probe_raises_is_recorded_with_the_vendor_message(records):
    r = records["raising-probe"]
    assert r["state"] == "failed"
    assert "probe raised RuntimeError: driver exploded: CUDA_ERROR_UNKNOWN (999)" in r["reason"]
    assert r["distribution"] == "backplane-test-faulty"


def test_plugin_written_for_an_unsupported_api_version_is_refused(records):
    r = records["future-api"]
    assert r["state"] == "failed"
    assert r["api_version"] == 99
    assert "written for backend API 99" in r["reason"] and "Upgrade backplane-hal" in r["reason"]


def test_backend_without_hardware_is_healthy_with_its_reason(records):
    r = records["no-device"]
    assert r["state"] == "no-device"
    assert r["reason"] == "no accelerator found: /dev/accel0 does not exist"
    assert r["error_type"] is None


def test_good_plugins_load_beside_broken_ones(records):
    assert records["example-numpy"]["state"] == "ready"
    assert records["example-numpy"]["devices"] == ["example-numpy:0"]
    assert records["example-numpy"]["distribution"] == "backplane-example-plugin"
    assert records["reference"]["state"] == "ready"
    assert records["reference"]["distribution"] == "backplane-hal"


def test_failures_warn_one_line_each_without_traceback(broken_site):
    result = run_cli("devices", site=broken_site)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "is unavailable" in line]
    assert len(warnings) == 4  # broken-import, future-api, raising-probe, hanging-probe


def test_debug_mode_shows_the_traceback(broken_site):
    result = run_cli("plugins", "--json", site=broken_site, BACKPLANE_DEBUG="1")
    assert "Traceback" in result.stderr
    record = {r["name"]: r for r in json.loads(result.stdout)}["broken-import"]
    assert "vendor_runtime_that_is_not_installed" in record["traceback"]


def test_application_runs_a_model_despite_broken_plugins(broken_site):
    code = """
import numpy as np, backplane as bp, sys
sys.path.insert(0, 'tests')
from models import relu_conv_relu, relu_conv_relu_numpy
x = np.random.default_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32)
s = bp.Session(relu_conv_relu())
y = s.run({'x': x})['y']
np.testing.assert_allclose(y, relu_conv_relu_numpy(x), rtol=1e-5, atol=1e-5)
print(sorted({p.device for p in s.plan.partitions}))
"""
    from conftest import CPU_BACKENDS

    # injected-faults (a working pretend accelerator) would take every node.
    result = run_python(code, site=broken_site,
                        BACKPLANE_DISABLE_PLUGINS=CPU_BACKENDS + ",injected-faults")
    assert result.returncode == 0, result.stderr
    assert "example-numpy:0" in result.stdout and "reference:0" in result.stdout


def test_allowlist_is_applied_before_any_plugin_is_imported(broken_site):
    code = """
import sys, json, backplane as bp
records = {r.name: r.state for r in bp.plugin_records()}
print(json.dumps({'records': records,
                  'imported': [m for m in ('bp_broken_import', 'bp_hanging_probe', 'bp_faulty')
                               if m in sys.modules]}))
"""
    result = run_python(code, site=broken_site, BACKPLANE_PLUGINS="example-numpy")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["imported"] == []
    assert data["records"]["example-numpy"] == "ready"
    assert data["records"]["reference"] == "ready"  # the oracle is always loaded
    assert data["records"]["broken-import"] == "disabled"
    assert data["records"]["hanging-probe"] == "disabled"


def test_denylist_disables_named_plugins_before_import(broken_site):
    names = "broken-import,hanging-probe,raising-probe,future-api,failing-compile,failing-run"
    code = """
import sys, json, backplane as bp
print(json.dumps({'records': {r.name: [r.state, r.reason] for r in bp.plugin_records()},
                  'imported': 'bp_broken_import' in sys.modules or 'bp_hanging_probe' in sys.modules}))
"""
    result = run_python(code, site=broken_site, BACKPLANE_DISABLE_PLUGINS=names)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["imported"] is False
    assert data["records"]["hanging-probe"] == ["disabled", "listed in BACKPLANE_DISABLE_PLUGINS"]
    assert data["records"]["example-numpy"][0] == "ready"
    assert "is unavailable" not in result.stderr


def test_explicitly_requested_failed_backend_raises_with_the_stored_cause(broken_site):
    code = """
import backplane as bp, sys
sys.path.insert(0, 'tests')
from models import single
try:
    bp.Session(single('Relu'), devices=['raising-probe'])
except bp.DeviceNotFoundError as e:
    print(type(e.__cause__).__name__, '|', e)
"""
    result = run_python(code, site=broken_site)
    assert result.returncode == 0, result.stderr
    cause, message = result.stdout.split("|", 1)
    assert cause.strip() == "RuntimeError"
    assert "backend 'raising-probe' failed" in message and "driver exploded" in message
    assert "Available devices:" in message and "reference:0" in message


def test_backplane_devices_env_is_an_ordered_explicit_list(broken_site, tmp_path):
    from models import relu_conv_relu, save

    path = save(relu_conv_relu(), tmp_path / "m.onnx")
    result = run_cli("plan", path, "--json", site=broken_site,
                     BACKPLANE_DEVICES="reference,example-numpy")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["explicit"] is True
    assert plan["devices"] == ["reference:0", "example-numpy:0"]
    assert {p["device"] for p in plan["placements"]} == {"reference:0"}

    unknown = run_cli("plan", path, site=broken_site, BACKPLANE_DEVICES="reference,example-nupmy")
    assert unknown.returncode == 2
    assert "unknown device or backend 'example-nupmy'" in unknown.stderr
    assert "Did you mean 'example-numpy'" in unknown.stderr

    failed = run_cli("plan", path, site=broken_site, BACKPLANE_DEVICES="hanging-probe")
    assert failed.returncode == 2
    assert "probe did not return within" in failed.stderr


def test_device_index_out_of_range_lists_the_devices_that_exist(tmp_path):
    from models import relu_conv_relu, save

    path = save(relu_conv_relu(), tmp_path / "m.onnx")
    result = run_cli("plan", path, "--device", "reference:3")
    assert result.returncode == 2
    assert "device 'reference:3' does not exist; backend 'reference' has reference:0" in result.stderr


def test_a_backend_name_declared_twice_uses_the_first_and_says_so(broken_site, duplicate_site):
    # PYTHONPATH order is import order: the example plugin's declaration comes first.
    records = plugin_records(f"{broken_site}{os.pathsep}{duplicate_site}")
    r = records["example-numpy"]
    assert r["state"] == "ready" and r["distribution"] == "backplane-example-plugin"
    result = run_cli("devices", site=f"{broken_site}{os.pathsep}{duplicate_site}")
    assert "backend name 'example-numpy' is declared twice" in result.stderr
    assert "bp_duplicate_name:Impostor' (from backplane-test-duplicate-name 0.4.0) is ignored" \
        in result.stderr


def test_a_hook_that_asks_for_the_registry_while_plugins_load_does_not_deadlock():
    code = """
import backplane as bp

class Curious:
    seen = []
    @bp.hookimpl
    def backplane_plugin_loaded(self, record):
        Curious.seen.append((record.name, len(bp.registry().records)))

bp.plugin_manager().register(Curious())
bp.registry(refresh=True)
print(sorted(name for name, _ in Curious.seen))
"""
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "'reference'" in result.stdout.strip()


def test_refresh_replaces_the_backend_objects_carrying_hooks():
    code = """
import backplane as bp
first = bp.registry().backends['reference']
second = bp.registry(refresh=True).backends['reference']
pm = bp.plugin_manager()
print(first is not second, pm.is_registered(first), pm.get_plugin('backend:reference') is second)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True"]
    assert "rejected" not in result.stderr


@pytest.mark.parametrize("value", ["abc", "-1", "0", "inf"])
def test_a_bad_probe_timeout_warns_and_uses_the_default(value):
    result = run_cli("devices", BACKPLANE_PROBE_TIMEOUT_S=value)
    assert result.returncode == 0, result.stderr
    assert f"BACKPLANE_PROBE_TIMEOUT_S={value!r} is not a positive number of seconds; " \
           "using 5" in result.stderr
    assert "reference:0" in result.stdout
