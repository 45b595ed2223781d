"""The command line: a thin shell over the API, printing the same data with --json."""

from __future__ import annotations

import json

import numpy as np
import pytest

import backplane as bp
from conftest import run_cli
from models import relu_conv_relu, relu_conv_relu_numpy, save

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save(relu_conv_relu(), tmp_path_factory.mktemp("cli") / "model.onnx")


def test_devices_json_is_the_api_data(example_site):
    result = run_cli("devices", "--json", site=example_site)
    assert result.returncode == 0, result.stderr
    from backplane.hardware.match import device_records

    assert json.loads(result.stdout) == device_records(bp.devices())


def test_plugins_json_is_the_api_data(example_site):
    result = run_cli("plugins", "--json", site=example_site)
    assert result.returncode == 0, result.stderr
    def without_timing(records):  # probe_seconds is measured anew in each process
        return [{k: v for k, v in r.items() if k != "probe_seconds"} for r in records]

    assert without_timing(json.loads(result.stdout)) == without_timing(
        [r.to_dict() for r in bp.plugin_records()])


@pytest.fixture
def same_costs(tmp_path, monkeypatch):
    """This process and the CLI's child plan alike: no live load, and no corrections that
    earlier tests' runs taught this process's cost model (the child would not have them)."""
    from backplane.engine import costmodel

    monkeypatch.setenv("BACKPLANE_LOAD", "off")
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path / "data"))
    costmodel.refresh()
    yield {"BACKPLANE_LOAD": "off", "BACKPLANE_DATA_DIR": str(tmp_path / "data")}
    costmodel.refresh()


def test_plan_json_is_the_api_data(example_site, model_path, same_costs):
    result = run_cli("plan", model_path, "--json", site=example_site, **same_costs)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == bp.Session(model_path).plan.to_dict()


def test_plan_prints_the_explanation(example_site, model_path, same_costs):
    result = run_cli("plan", model_path, site=example_site, **same_costs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == bp.Session(model_path).plan.explain()


def test_run_reads_inputs_and_writes_outputs(example_site, model_path, tmp_path):
    x = np.random.default_rng(42).standard_normal((1, 2, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_cli("run", model_path, "--input", f"x={tmp_path / 'x.npy'}",
                     "--output", str(tmp_path / "out"), "--json", site=example_site)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["random_inputs"] is False
    # The devices an automatic plan picks depend on the backends installed: the API's own.
    assert data["devices"] == sorted({p.device for p in bp.Session(model_path).plan.partitions})
    y = np.load(tmp_path / "out" / "y.npy")
    np.testing.assert_allclose(y, relu_conv_relu_numpy(x), rtol=1e-5, atol=1e-5, err_msg="seed 42")
    assert data["outputs"][0]["shape"] == [1, 3, 6, 6]


def test_run_without_inputs_uses_seeded_random_inputs(model_path):
    result = run_cli("run", model_path, "--device", "reference")
    assert result.returncode == 0, result.stderr
    assert "random inputs, seed 0" in result.stdout and "ran on reference:0" in result.stdout


@pytest.mark.parametrize("args, phrase", [
    (["--input", "x"], "must look like NAME=FILE.npy"),
    (["--input", "x=/nonexistent.npy"], "cannot read '/nonexistent.npy'"),
    (["--device", "refrence"], "Did you mean 'reference'"),
])
def test_run_refuses_bad_arguments_with_one_clear_line(model_path, args, phrase):
    result = run_cli("run", model_path, *args)
    assert result.returncode == 2
    assert phrase in result.stderr and "Traceback" not in result.stderr


def test_wrong_input_shape_is_an_input_error_not_a_traceback(model_path, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 5, 5), np.float32))
    result = run_cli("run", model_path, "--input", f"x={tmp_path / 'x.npy'}")
    assert result.returncode == 2
    assert "InputError: input 'x' has shape (1, 2, 5, 5)" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_file_is_a_model_error(tmp_path):
    result = run_cli("plan", str(tmp_path / "nope.onnx"))
    assert result.returncode == 2
    assert "ModelError" in result.stderr and "does not exist" in result.stderr


def test_demo_checks_every_device_against_the_reference(example_site):
    from conftest import CPU_BACKENDS

    result = run_cli("demo", "--json", "--repeats", "2", site=example_site,
                     BACKPLANE_DISABLE_PLUGINS=CPU_BACKENDS)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    rows = {r["target"]: r for r in data["rows"]}
    assert set(rows) == {"auto", "example-numpy:0", "reference:0"}
    assert rows["auto"]["devices"] == ["example-numpy:0", "reference:0"]
    for row in rows.values():
        assert row["status"] == "PASS" and row["max_abs_error"] <= row["atol"] + row["rtol"]
        assert row["median_ms"] > 0


def test_demo_table_is_the_default_output():
    result = run_cli("demo", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "backplane demo" in result.stdout and "reference:0" in result.stdout
    assert "PASS" in result.stdout
