"""The hwdb: shipped entries validate, classic datasheet mistakes are caught with the file and
field named, sources have a documented precedence, and conflicts are reported."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

import backplane as bp
from backplane.hardware import db as hwdb
from backplane.hardware.schema import json_schema

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "hwdb" / "nvidia" / "h100-sxm5-80gb.toml"


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path, monkeypatch):
    """Every test gets its own user data dir and no BACKPLANE_HWDB_PATH."""
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BACKPLANE_HWDB_PATH", raising=False)
    yield
    hwdb.load(refresh=True)


def test_every_shipped_file_validates():
    count, problems = hwdb.validate_paths([hwdb.shipped_dir()])
    assert problems == []
    assert count == len(list(hwdb.shipped_dir().glob("*/*.toml")))


def test_the_shipped_json_schema_is_the_schema_in_the_code():
    shipped = json.loads((ROOT / "hwdb" / "schema.json").read_text())
    assert shipped == json_schema(), "regenerate with: backplane hwdb schema > hwdb/schema.json"


# -- classic mistakes, planted one at a time ---------------------------------------------------


def plant(tmp_path: Path, old: str, new: str, text: str | None = None) -> Path:
    """A copy of the H100 entry in an hwdb folder, with one substitution."""
    source = text if text is not None else H100.read_text()
    assert old in source, old
    folder = tmp_path / "planted"
    path = folder / "nvidia" / "h100-sxm5-80gb.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source.replace(old, new, 1))
    return path


MISTAKES = {
    # name: (text in the good file, mistaken text, field named, words in what was expected)
    "bandwidth in TB/s": ("bandwidth_gb_s = 3350", "bandwidth_gb_s = 3.35",
                          "memory.bandwidth_gb_s", "TB/s written into a GB/s field"),
    "sparse rate in the dense table": ("fp16_tflops = 989.4", "fp16_tflops = 1979",
                                       "dense.fp16_tflops", "sparse figure in the dense table"),
    "fp16 below fp32 with tensor units": ("fp16_tflops = 989.4", "fp16_tflops = 33.5",
                                          "dense.fp16_tflops", "tensor units"),
    "figure without a source": ('tdp_w = 700\nsource = "nv-h100-datasheet"', "tdp_w = 700",
                                "power.tdp_w", "a source"),
    "source id not listed": ('tdp_w = 700\nsource = "nv-h100-datasheet"',
                             'tdp_w = 700\nsource = "nv-h100-brochure"', "power.source",
                             "one of [[sources]]"),
    "clock in GHz": ("boost_clock_mhz = 1980", "boost_clock_mhz = 1.98",
                     "compute.boost_clock_mhz", "is it GHz"),
    "memory size in MiB": ("size_gib = 80", "size_gib = 81920", "memory.size_gib", "is it MiB"),
    "unit missing from a field name": ("bandwidth_gb_s = 3350", "bandwidth = 3350",
                                       "memory.bandwidth", "Extra inputs are not permitted"),
    "negative figure": ("fp32_tflops = 67", "fp32_tflops = -67", "dense.fp32_tflops",
                        "greater than 0"),
    "unknown dtype": ('dtypes = ["fp64"', 'dtypes = ["float64"', "dtypes.0", "Input should be"),
    "id not where the file is": ('id = "nvidia/h100-sxm5-80gb"', 'id = "nvidia/h100"', "id",
                                 "matching the file's place"),
    "source without a url": ('url = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"',
                             'url = "the datasheet"', "sources.0.url", "should match pattern"),
    "bad regular expression in a rule": ('name = "H100.*(SXM|HBM3)"', 'name = "H100.*(SXM|HBM3"',
                                         "match.0.cuda.name", "not a valid regular expression"),
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_a_planted_mistake_is_rejected_naming_the_file_and_field(tmp_path, mistake):
    good, bad, field, expected = MISTAKES[mistake]
    path = plant(tmp_path, good, bad)
    count, problems = hwdb.validate_paths([path.parents[1]])
    assert count == 1
    assert problems, f"{mistake} was not caught"
    hit = [p for p in problems if p.field == field]
    assert hit, [str(p) for p in problems]
    assert hit[0].file == str(path)
    assert expected in hit[0].expected
    assert str(path) in str(hit[0]) and field in str(hit[0])


def test_a_cpu_peak_inconsistent_with_its_per_core_figures_is_rejected(tmp_path):
    text = H100.read_text()
    cpu = text.replace('kind = "gpu"', 'kind = "cpu"').replace(
        "[compute]", "[cpu]\ncores = 56\nall_core_clock_mhz = 2000\nfp32_flops_per_cycle = 64\n"
        "source = \"nv-hopper-whitepaper\"\n\n[compute]")
    path = plant(tmp_path, "fp32_tflops = 67", "fp32_tflops = 0.128", text=cpu)  # one core's
    _, problems = hwdb.validate_paths([path.parents[1]])
    assert any(p.field == "dense.fp32_tflops" and "per-core and per-socket" in p.expected
               for p in problems), [str(p) for p in problems]


def test_a_file_that_is_not_toml_is_rejected_naming_it(tmp_path):
    path = plant(tmp_path, "[memory]", "[memory")
    _, problems = hwdb.validate_paths([path])
    assert len(problems) == 1 and problems[0].file == str(path)
    assert "valid TOML" in problems[0].expected


def test_duplicate_ids_are_rejected(tmp_path):
    first = plant(tmp_path, "NVIDIA H100 SXM5 80GB", "NVIDIA H100 SXM5 80GB (copy)")
    second = tmp_path / "other" / "nvidia" / "h100-sxm5-80gb.toml"
    second.parent.mkdir(parents=True)
    shutil.copy(H100, second)
    _, problems = hwdb.validate_paths([first.parents[1], second.parents[1]])
    assert [p.field for p in problems] == ["id"]
    assert "already declares it" in problems[0].expected and str(first) in problems[0].expected


def test_loading_executes_nothing_from_a_data_file(tmp_path):
    marker = tmp_path / "executed"
    path = plant(tmp_path, 'name = "NVIDIA H100 SXM5 80GB"',
                 f'name = "__import__(\'pathlib\').Path(\'{marker}\').touch()"')
    entry, problems = hwdb.read_file(path, path.parents[1])
    assert problems == [] and entry.name.startswith("__import__")
    assert not marker.exists()


def test_validate_command_exits_non_zero_and_names_file_and_field(tmp_path):
    from conftest import run_cli

    path = plant(tmp_path, "bandwidth_gb_s = 3350", "bandwidth_gb_s = 3.35")
    bad = run_cli("hwdb", "validate", str(path))
    assert bad.returncode == 1
    assert str(path) in bad.stdout and "memory.bandwidth_gb_s = 3.35" in bad.stdout
    good = run_cli("hwdb", "validate", str(H100))
    assert good.returncode == 0 and "1 file checked, 0 problems" in good.stdout


# -- sources and precedence ---------------------------------------------------------------------


def user_entry(folder: Path, old: str, new: str) -> Path:
    path = folder / "nvidia" / "h100-sxm5-80gb.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(H100.read_text().replace(old, new, 1))
    return path


def test_a_user_entry_overrides_a_shipped_one_and_the_conflict_is_reported(tmp_path, caplog):
    path = user_entry(tmp_path / "data" / "hwdb", "tdp_w = 700", "tdp_w = 600")
    with caplog.at_level(logging.WARNING, logger="backplane"):
        db = hwdb.load(refresh=True)
    loaded = db.entries["nvidia/h100-sxm5-80gb"]
    assert (loaded.origin, loaded.location, loaded.entry.power.tdp_w) == ("user", str(path), 600)
    [conflict] = db.conflicts
    assert (conflict.winner.origin, conflict.loser.origin, conflict.intended) == \
        ("user", "shipped", False)
    assert "overrides the shipped one" in caplog.text and "replaces = true" in caplog.text


def test_replaces_true_marks_an_override_as_intended_without_a_warning(tmp_path, caplog):
    user_entry(tmp_path / "data" / "hwdb", "tdp_w = 700", "tdp_w = 600").write_text(
        "replaces = true\n" + (tmp_path / "data" / "hwdb" / "nvidia" /
                               "h100-sxm5-80gb.toml").read_text())
    with caplog.at_level(logging.WARNING, logger="backplane"):
        db = hwdb.load(refresh=True)
    assert db.entries["nvidia/h100-sxm5-80gb"].entry.power.tdp_w == 600
    assert db.conflicts[0].intended is True
    assert "overrides" not in caplog.text


def test_backplane_hwdb_path_wins_over_the_user_folder_and_its_first_folder_wins(
        tmp_path, monkeypatch):
    user_entry(tmp_path / "data" / "hwdb", "tdp_w = 700", "tdp_w = 600")
    user_entry(tmp_path / "first", "tdp_w = 700", "tdp_w = 500")
    user_entry(tmp_path / "second", "tdp_w = 700", "tdp_w = 400")
    monkeypatch.setenv("BACKPLANE_HWDB_PATH",
                       f"{tmp_path / 'first'}{__import__('os').pathsep}{tmp_path / 'second'}")
    db = hwdb.load(refresh=True)
    loaded = db.entries["nvidia/h100-sxm5-80gb"]
    assert (loaded.origin, loaded.entry.power.tdp_w) == ("path", 500)
    assert [c.loser.entry.power.tdp_w for c in db.conflicts] == [700, 600, 400]


class _Contributes:
    def __init__(self, entries):
        self.entries = entries

    @bp.hookimpl
    def backplane_hwdb_entries(self):
        return self.entries


@pytest.fixture
def hook():
    pm = bp.plugin_manager()
    added = []

    def register(entries):
        obj = _Contributes(entries)
        pm.register(obj)
        added.append(obj)

    yield register
    for obj in added:
        pm.unregister(obj)


def plugin_entry(**changes) -> dict:
    import tomllib

    data = tomllib.loads(H100.read_text())
    data.update({"id": "acme/np-1", "vendor": "acme", "name": "Acme NP-1", "kind": "npu",
                 "match": [], "tensor_units": False, **changes})
    return data


def test_plugins_contribute_entries_through_the_hook_and_users_override_them(tmp_path, hook):
    hook([plugin_entry()])
    db = hwdb.load(refresh=True)
    assert db.entries["acme/np-1"].origin == "plugin"
    folder = tmp_path / "data" / "hwdb" / "acme"
    folder.mkdir(parents=True)
    text = H100.read_text().replace('id = "nvidia/h100-sxm5-80gb"', 'id = "acme/np-1"').replace(
        'vendor = "nvidia"', 'vendor = "acme"')
    (folder / "np-1.toml").write_text(text)
    db = hwdb.load(refresh=True)
    assert db.entries["acme/np-1"].origin == "user"
    assert [(c.winner.origin, c.loser.origin) for c in db.conflicts] == [("user", "plugin")]


def test_an_invalid_plugin_entry_is_skipped_with_the_problem_and_the_rest_loads(hook):
    hook([plugin_entry(memory={"bandwidth_gb_s": 3.35, "type": "HBM3", "source": "nv-h100-datasheet"})])
    db = hwdb.load(refresh=True)
    assert "acme/np-1" not in db.entries
    assert "nvidia/h100-sxm5-80gb" in db.entries
    assert any(p.field == "memory.bandwidth_gb_s" and p.file == "plugin entry acme/np-1"
               for p in db.problems)


def test_two_entries_with_one_id_from_one_source_keep_the_first_and_report_the_second(hook):
    hook([plugin_entry(), plugin_entry(name="Acme NP-1 again")])
    db = hwdb.load(refresh=True)
    assert db.entries["acme/np-1"].entry.name == "Acme NP-1"
    assert any(p.field == "id" and "already declares it" in p.expected for p in db.problems)


def test_an_unknown_id_suggests_the_near_one():
    with pytest.raises(hwdb.HwdbError, match=re.escape("Did you mean 'nvidia/h100-sxm5-80gb'")):
        hwdb.load().get("nvidia/h100-sxm-80gb")
