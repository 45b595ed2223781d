"""Plugin isolation: a third-party plugin is imported and probed in a child process first, so
one that crashes, exits, hangs or exhausts memory there is named with what it did and never
imported by the application; one that changes process state is named with the changes.

Every test runs backplane in a child process whose PYTHONPATH holds really installed plugin
distributions (tests/plugins/isolation and the example plugin), with a cache folder of the
test's own, so that a cold and a warm verdict cache are the test's choice.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from conftest import CPU_BACKENDS, PROBE_TIMEOUT_S, run_cli, run_python

pytestmark = pytest.mark.slow

DISTRIBUTION = "backplane-test-isolation"
#: Each way a plugin of tests/plugins/isolation misbehaves: its state, words of its reason,
#: and the side effects listed on its record.
KINDS = {
    "segfault-at-import": ("failed", "crashed with SIGSEGV while importing", []),
    "segfault-in-probe": ("failed", "crashed with SIGSEGV in probe()", []),
    "exit-at-import": ("failed", "called os._exit(3) while importing", []),
    "exit-in-probe": ("failed", "called os._exit(4) in probe()", []),
    "sys-exit-at-import": ("failed", "called sys.exit(5) while importing", []),
    "hang-at-import": ("failed", f"did not finish importing within {PROBE_TIMEOUT_S} s", []),
    "memory-at-import": ("failed", "ran out of memory while importing (a check may use 4 GiB)",
                         []),
    "patches-numpy": ("failed", "replaces numpy.matmul: a plugin may not change numpy", []),
    "signal-handler": ("no-device", "test fixture without a device",
                       ["installs a handler for SIGTERM"]),
    "changes-process": ("no-device", "test fixture without a device",
                        ["sets environment variable BP_ISOLATION_FIXTURE",
                         "sets the recursion limit to 2000 (was 1000)",
                         "adds a warnings filter (ignore, RuntimeWarning)"]),
}
FAILED = sorted(name for name, (state, _, _) in KINDS.items() if state == "failed")
#: The modules of the failed plugins: none may ever be imported by the application.
FAILED_MODULES = ["bp_isolation.segfault_at_import", "bp_isolation.probes",
                  "bp_isolation.exit_at_import", "bp_isolation.sys_exit_at_import",
                  "bp_isolation.hang_at_import", "bp_isolation.memory_at_import",
                  "bp_isolation.patches_numpy"]
#: Third-party entry points of the site (the example plugin's too): each is checked.
THIRD_PARTY = len(KINDS) + 1
#: Discovery in a child, with what the isolation did and how long it took.
DISCOVER = """
import json, time
t0 = time.perf_counter()
import backplane as bp
from backplane.engine import isolation
records = {r.name: r.to_dict() for r in bp.registry().records.values()}
print(json.dumps({"stats": isolation.stats, "seconds": time.perf_counter() - t0,
                  "records": records}))
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("isolation-cache")


@pytest.fixture(scope="module")
def cold(isolation_site, cache) -> tuple[dict[str, dict], float]:
    """``backplane plugins --json`` with an empty verdict cache, and its wall time."""
    t0 = time.monotonic()
    done = run_cli("plugins", "--json", site=isolation_site, BACKPLANE_CACHE_DIR=str(cache))
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)}, time.monotonic() - t0


def discover(site, cache, **env) -> dict:
    done = run_python(DISCOVER, site=site, BACKPLANE_CACHE_DIR=str(cache), **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def verdict_file(cache: Path) -> Path:
    [path] = (cache / "plugin-checks").glob("verdicts-*.json")
    return path


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_misbehaving_plugin_is_named_with_what_it_did(cold, name):
    state, words, effects = KINDS[name]
    r = cold[0][name]
    assert r["state"] == state, r
    assert words in r["reason"]
    assert r["isolated"] is True and r["side_effects"] == effects
    assert (r["distribution"], r["distribution_version"]) == (DISTRIBUTION, "0.1.0")
    if state == "failed":
        assert "never imported into this one" in r["reason"] and r["devices"] == []


def test_every_broken_plugin_kind_is_isolated(cold, record_property):
    records = cold[0]
    isolated = [name for name, (state, words, effects) in KINDS.items()
                if records[name]["state"] == state and words in records[name]["reason"]
                and records[name]["side_effects"] == effects]
    figure = f"broken-plugin kinds isolated ({len(isolated)} of {len(KINDS)})"
    record_property("kinds_isolated", figure)
    print(figure)
    assert len(isolated) == len(KINDS) >= 8, figure


def test_the_application_survives_and_never_imports_a_failed_plugin(isolation_site, cache,
                                                                     cold):
    code = f"""
import json, signal, sys
import numpy as np
matmul = np.matmul
import backplane as bp
from onnx import TensorProto, helper
g = helper.make_graph([helper.make_node('MatMul', ['x', 'w'], ['y'])], 'g',
    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 3]),
     helper.make_tensor_value_info('w', TensorProto.FLOAT, [3, 2])],
    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2, 2])])
s = bp.Session(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]))
x, w = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((3, 2), np.float32)
assert np.array_equal(s.run({{'x': x, 'w': w}})['y'], x @ w)
print(json.dumps({{
    'states': {{r.name: r.state for r in bp.plugin_records()}},
    'imported': [m for m in {FAILED_MODULES!r} if m in sys.modules],
    'numpy_untouched': np.matmul is matmul,
    'sigterm_handler': callable(signal.getsignal(signal.SIGTERM)),
}}))
"""
    done = run_python(code, site=isolation_site, BACKPLANE_CACHE_DIR=str(cache),
                      BACKPLANE_DISABLE_PLUGINS=CPU_BACKENDS)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert data["imported"] == [] and data["numpy_untouched"] is True
    assert {n: data["states"][n] for n in FAILED} == {n: "failed" for n in FAILED}
    assert data["states"]["example-numpy"] == "ready"
    # A plugin that only changes process state is loaded: its handler is installed here.
    assert data["states"]["signal-handler"] == "no-device" and data["sigterm_handler"]


def test_backplane_plugins_names_each_plugin_with_state_and_reason(isolation_site, cache, cold):
    done = run_cli("plugins", site=isolation_site, BACKPLANE_CACHE_DIR=str(cache),
                   COLUMNS="2000")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name, (state, words, effects) in KINDS.items():
        assert any(f" {name} " in line and f" {state} " in line and words in line
                   for line in lines), name
        if effects:
            assert f"  {name}: {'; '.join(effects)}" in lines
    assert "changes process state when imported (loaded all the same):" in lines


def test_backplane_doctor_names_each_plugin_and_exits_0(isolation_site, cache, cold):
    done = run_cli("doctor", "--json", "-j", "2", site=isolation_site,
                   BACKPLANE_CACHE_DIR=str(cache), BACKPLANE_DISABLE_PLUGINS=CPU_BACKENDS)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {r["device"] or r["backend"]: r for r in data["rows"]}
    assert rows["reference:0"]["verdict"] == rows["example-numpy:0"]["verdict"] == "PASS"
    for name, (state, words, effects) in KINDS.items():
        assert rows[name]["verdict"] == {"failed": "FAILED", "no-device": "NO DEVICE"}[state]
        assert words in rows[name]["reason"] and rows[name]["side_effects"] == effects
    hints = [h["text"] for h in data["hints"]]
    assert any("segfault-at-import" in h and "so it is never imported" in h for h in hints)
    assert any(h.startswith("signal-handler changes the process that imports it: installs a "
                            "handler for SIGTERM") for h in hints)


def test_a_warm_cache_spawns_no_child(isolation_site, cache, cold):
    warm = discover(isolation_site, cache)
    assert warm["stats"] == {"checked": 0, "cached": THIRD_PARTY}
    assert warm["records"]["segfault-at-import"]["state"] == "failed"
    assert warm["seconds"] < float(PROBE_TIMEOUT_S)  # the hanging plugin was not waited for


def test_a_cold_cache_checks_each_third_party_plugin_once(isolation_site, tmp_path):
    first = discover(isolation_site, tmp_path)
    assert first["stats"] == {"checked": THIRD_PARTY, "cached": 0}
    print(f"discovery with {THIRD_PARTY} third-party plugins: cold {first['seconds']:.2f} s")


def test_built_in_plugins_stay_in_process(cold):
    records = cold[0]
    assert records["reference"]["isolated"] is False
    assert records["reference"]["distribution"] == "backplane-hal"
    assert records["example-numpy"]["isolated"] is True
    assert records["example-numpy"]["state"] == "ready"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong type", "unknown state",
                                    "other key", "extra field"])
def test_a_corrupt_or_altered_verdict_file_is_ignored_and_the_check_redone(
        isolation_site, tmp_path, damage):
    only = {"BACKPLANE_PLUGINS": "segfault-at-import,signal-handler"}
    discover(isolation_site, tmp_path, **only)
    from backplane.sdk.cache import read_sealed, write_sealed

    path = verdict_file(tmp_path)
    text = path.read_text()
    data = json.loads(read_sealed(path))
    entry = data["verdicts"]["segfault-at-import"]
    if damage == "garbage":
        path.write_bytes(os.urandom(256))
    elif damage == "truncated":
        path.write_text(text[:len(text) // 2])
    else:
        if damage == "wrong type":
            data["verdicts"]["signal-handler"]["side_effects"] = "installs nothing"
        elif damage == "unknown state":
            entry["state"] = "fine"
        elif damage == "other key":
            data["key"] = "0" * 32
        else:
            entry["trusted"] = True
        write_sealed(path, json.dumps(data).encode())  # sealed anew: the checks behind it
    again = discover(isolation_site, tmp_path, **only)
    assert again["stats"] == {"checked": 2, "cached": 0}
    assert again["records"]["segfault-at-import"]["state"] == "failed"
    rewritten = json.loads(read_sealed(verdict_file(tmp_path)))["verdicts"]
    assert rewritten["segfault-at-import"]["state"] == "failed" and "trusted" not in \
        rewritten["segfault-at-import"]


def test_an_unsafe_cache_folder_is_not_used_and_plugins_are_still_checked(isolation_site,
                                                                           tmp_path):
    tmp_path.chmod(stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
    found = discover(isolation_site, tmp_path, BACKPLANE_PLUGINS="segfault-at-import")
    assert found["stats"] == {"checked": 1, "cached": 0}
    assert found["records"]["segfault-at-import"]["state"] == "failed"
    assert not (tmp_path / "plugin-checks").exists()


def test_a_timeout_is_checked_again_under_another_timeout(isolation_site, tmp_path):
    only = {"BACKPLANE_PLUGINS": "hang-at-import,example-numpy"}
    discover(isolation_site, tmp_path, **only)
    longer = discover(isolation_site, tmp_path, BACKPLANE_PROBE_TIMEOUT_S="3", **only)
    assert longer["stats"] == {"checked": 1, "cached": 1}
    assert "did not finish importing within 3 s" in \
        longer["records"]["hang-at-import"]["reason"]


def test_isolation_can_be_turned_off_or_extended_to_built_in_plugins(isolation_site, tmp_path):
    off = discover(isolation_site, tmp_path, BACKPLANE_ISOLATE="0",
                   BACKPLANE_PLUGINS="signal-handler")
    assert off["stats"] == {"checked": 0, "cached": 0}
    assert off["records"]["signal-handler"]["isolated"] is False
    assert off["records"]["signal-handler"]["side_effects"] == []
    every = discover(isolation_site, tmp_path, BACKPLANE_ISOLATE="all",
                     BACKPLANE_PLUGINS="example-numpy")
    assert every["stats"] == {"checked": 2, "cached": 0}  # reference is always loaded
    assert every["records"]["reference"]["isolated"] is True
    assert every["records"]["reference"]["state"] == "loaded"


def test_debug_mode_shows_where_a_plugin_crashed(isolation_site, cache, cold):
    done = run_cli("plugins", "--json", site=isolation_site, BACKPLANE_CACHE_DIR=str(cache),
                   BACKPLANE_DEBUG="1")
    assert done.returncode == 0, done.stderr
    record = {r["name"]: r for r in json.loads(done.stdout)}["segfault-at-import"]
    assert "Segmentation fault" in record["traceback"]
    assert "segfault_at_import.py" in record["traceback"]


def test_recheck_forgets_the_cached_verdicts_and_checks_again(isolation_site, tmp_path):
    only = {"BACKPLANE_PLUGINS": "segfault-at-import"}
    discover(isolation_site, tmp_path, **only)
    before = verdict_file(tmp_path).stat().st_mtime_ns
    done = run_cli("plugins", "--recheck", "--json", site=isolation_site,
                   BACKPLANE_CACHE_DIR=str(tmp_path), **only)
    assert done.returncode == 0, done.stderr
    assert verdict_file(tmp_path).stat().st_mtime_ns != before  # written anew
    again = discover(isolation_site, tmp_path, **only)
    assert again["stats"] == {"checked": 0, "cached": 1}
    assert again["records"]["segfault-at-import"]["state"] == "failed"
