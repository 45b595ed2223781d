"""Where compiled artefacts are cached, how they are keyed, and how they are written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import backplane as bp
from backplane.sdk import cache


def test_the_session_option_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path / "env"))
    assert cache.cache_dir("x") == tmp_path / "env" / "x"
    chosen = bp.CompileOptions(cache_dir=str(tmp_path / "option"))
    assert cache.cache_dir("x", chosen) == tmp_path / "option" / "x"
    assert (tmp_path / "option" / "x").is_dir()


def test_off_disables_caching(monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", "off")
    assert cache.cache_dir("x") is None
    assert cache.cache_dir("x", bp.CompileOptions(cache_dir="off")) is None


def test_an_unwritable_root_means_no_cache_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cache.cache_dir("x", bp.CompileOptions(cache_dir=str(blocker))) is None


def test_keys_change_with_any_part_and_only_then():
    key = cache.cache_key(b"model", "fp32", (1, 3), "2026.4")
    assert key == cache.cache_key(b"model", "fp32", (1, 3), "2026.4")
    assert key != cache.cache_key(b"model", "fp16", (1, 3), "2026.4")
    assert key != cache.cache_key(b"mode", b"lfp32", (1, 3), "2026.4")  # no concatenation clash


def test_write_atomic_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "blob.bin"
    assert cache.write_atomic(target, b"abc")
    assert target.read_bytes() == b"abc"
    assert os.listdir(target.parent) == ["blob.bin"]


def test_write_atomic_answers_false_where_it_cannot_write(tmp_path: Path):
    (tmp_path / "file").write_text("a file, not a folder")
    assert not cache.write_atomic(tmp_path / "file" / "blob.bin", b"abc")


def test_cached_json_computes_once_then_reads_the_file_back(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"ops": {"Add": ["float32"]}}

    key = ("runtime 1.0", "0.1.0", 1)
    assert cache.cached_json("x", key, compute) == {"ops": {"Add": ["float32"]}}
    [path] = (tmp_path / "x").glob("capabilities-*.json")
    assert path.name == f"capabilities-{cache.cache_key(*key)}.json"
    assert cache.cached_json("x", key, compute) and len(calls) == 1  # read back
    path.write_text('{"ops": {"Add": ["float16"]}}')  # a file without its seal is not read
    assert cache.cached_json("x", key, compute)["ops"]["Add"] == ["float32"] and len(calls) == 2
    cache.cached_json("x", ("runtime 1.1", "0.1.0", 1), compute)  # another key: a miss
    assert len(calls) == 3


def test_cached_json_recomputes_a_corrupt_or_rejected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path))
    valid = lambda data: isinstance(data.get("ops"), dict)  # noqa: E731
    cache.cached_json("x", ("k",), lambda: {"ops": {}}, valid=valid)
    [path] = (tmp_path / "x").glob("*.json")
    for planted in ("{not json", "[1, 2]", '{"ops": 3}'):
        path.write_text(planted)
        assert cache.cached_json("x", ("k",), lambda: {"ops": {"Relu": []}}, valid=valid) == {
            "ops": {"Relu": []}}
        assert cache.read_json(path) == {"ops": {"Relu": []}}, planted


def test_a_sealed_file_whose_content_changed_is_deleted_never_returned(tmp_path, caplog):
    path = tmp_path / "blob.bin"
    assert cache.write_sealed(path, b"compiled code")
    assert path.read_bytes().startswith(cache.SEAL)
    assert cache.read_sealed(path) == b"compiled code"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x20  # a flipped bit, as a bad disk or a torn copy leaves it
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="backplane"):
        assert cache.read_sealed(path) is None
    assert not path.exists()
    assert "does not match the hash recorded when it was written" in caplog.text
    path.write_bytes(b"written by someone else")
    assert cache.read_sealed(path) is None and not path.exists()
    assert cache.read_sealed(tmp_path / "missing") is None


def test_cached_json_with_caching_off_computes_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path))
    assert cache.cached_json("x", ("k",), lambda: {"a": 1}, use_cache=False) == {"a": 1}
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", "off")
    assert cache.cached_json("x", ("k",), lambda: {"a": 2}) == {"a": 2}
    assert not (tmp_path / "x").exists()


def test_a_shipped_table_is_read_where_its_key_matches_and_ignored_elsewhere(tmp_path, monkeypatch):
    from backplane.sdk.cache import cached_json, write_shipped

    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path / "cache"))
    shipped = tmp_path / "capabilities.json"
    write_shipped(shipped, ("ort", "1.0"), {"ops": {"Relu": ["float32"]}})
    calls = []

    def compute():
        calls.append(1)
        return {"ops": {"Relu": ["float16"]}}

    assert cached_json("b", ("ort", "1.0"), compute, shipped=shipped)["ops"] == \
        {"Relu": ["float32"]} and not calls
    assert cached_json("b", ("ort", "2.0"), compute, shipped=shipped)["ops"] == \
        {"Relu": ["float16"]} and calls == [1]  # another version: derived, then cached
    assert cached_json("b", ("ort", "2.0"), compute, shipped=shipped) and calls == [1]
    shipped.write_text("{not json")
    assert cached_json("b", ("ort", "1.0"), compute, shipped=shipped)["ops"] == \
        {"Relu": ["float16"]} and calls == [1, 1]  # a broken shipped file is no table


def test_cache_folders_are_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path / "root"))
    folder = cache.cache_dir("unit")
    assert folder == tmp_path / "root" / "unit"
    assert (tmp_path / "root").stat().st_mode & 0o777 == 0o700
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_folder_others_may_write_is_not_used_and_the_warning_says_what_to_do(
        tmp_path, monkeypatch, caplog):
    root = tmp_path / "shared"
    (root / "unit").mkdir(parents=True)
    os.chmod(root, 0o777)
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(root))
    cache._warned.clear()
    with caplog.at_level("WARNING", logger="backplane"):
        assert cache.cache_dir("unit") is None
        assert cache.cache_dir("unit") is None  # warned once
    warnings = [r.getMessage() for r in caplog.records if "is not used" in r.getMessage()]
    assert len(warnings) == 1 and "mode 777" in warnings[0] and "chmod 700" in warnings[0]
    os.chmod(root, 0o700)
    os.chmod(root / "unit", 0o770)
    assert cache.cache_dir("unit") is None  # the backend's own folder too


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                    reason="giving a folder to another user needs root")
def test_a_cache_that_is_a_link_to_another_users_folder_is_not_used(tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    (theirs / "unit").mkdir(parents=True, mode=0o700)
    for path in (theirs, theirs / "unit"):
        os.chown(path, 65534, 65534)
    link = tmp_path / "link"
    link.symlink_to(theirs, target_is_directory=True)
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(link))
    cache._warned.clear()
    assert cache.cache_dir("unit") is None
    assert "belongs to user id 65534" in cache.unsafe(link)
    # a session planned with such a cache still runs, uncached
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    import numpy as np

    out = bp.Session(helper.make_model(g), devices=["openvino-cpu"]).run(
        {"x": np.array([-1.0, 2.0], np.float32)})
    assert out["y"].tolist() == [0.0, 2.0]
    assert not any(p.name != "unit" for p in theirs.iterdir())


def test_a_data_folder_others_may_write_is_neither_read_nor_written(tmp_path, monkeypatch,
                                                                       caplog):
    """Stored conformance results decide what a plan may use, and calibrations what it
    predicts: in a data folder others may write, none is read, and nothing is stored."""
    from backplane.conformance import store
    from backplane.hardware import calibrate
    from backplane.hardware.db import private_data_dir

    data = tmp_path / "data"
    monkeypatch.setenv("BACKPLANE_DATA_DIR", str(data))
    assert private_data_dir() is None and not data.exists()  # nothing to read: not made
    assert private_data_dir(create=True) == data and data.stat().st_mode & 0o777 == 0o700
    record = data / "conformance" / "onnxruntime" / "fp.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": "1", "variants": {"Relu|float32": "passed"}}))
    (data / "calibration.json").write_text(json.dumps(
        {"schema": calibrate.OVERLAY_SCHEMA, "records": [{"fingerprint": "fp"}]}))
    assert store.passed_variants("onnxruntime", "fp") == {("Relu", "float32")}
    assert calibrate.read_overlay() == [{"fingerprint": "fp"}]
    os.chmod(data, 0o777)
    with caplog.at_level("WARNING", logger="backplane"):
        assert store.passed_variants("onnxruntime", "fp") == set()
        assert calibrate.read_overlay() == []
    assert "data folder" in caplog.text and "BACKPLANE_DATA_DIR" in caplog.text
    record.write_text('{"variants": {"Relu|float32": "maybe"}}')  # and a malformed record
    os.chmod(data, 0o700)
    assert store.passed_variants("onnxruntime", "fp") == set()


# ---------------------------------------------------------------------- ArtifactCache

def _artifacts(tmp_path: Path, **kwargs) -> cache.ArtifactCache:
    return cache.ArtifactCache("unit", bp.CompileOptions(cache_dir=str(tmp_path)), "compiled",
                               suffix=".blob", **kwargs)


def test_an_artifact_put_is_got_back_under_its_key_and_only_there(tmp_path):
    blobs = _artifacts(tmp_path)
    assert blobs.get(("model", "fp32")) is None
    assert blobs.put(("model", "fp32"), b"compiled code")
    assert blobs.get(("model", "fp32")) == b"compiled code"
    assert blobs.get(("model", "fp16")) is None
    key = cache.cache_key("model", "fp32")  # a key the caller made names the same file
    assert blobs.path(key) == tmp_path / "unit" / "compiled" / f"{key}.blob"
    assert blobs.get(key) == b"compiled code"


def test_an_artifact_whose_file_changed_is_a_miss_and_is_made_anew(tmp_path):
    blobs = _artifacts(tmp_path)
    blobs.put(("k",), b"compiled code")
    path = blobs.path(("k",))
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # one bit flipped on disk
    path.write_bytes(bytes(data))
    assert blobs.get(("k",)) is None and not path.exists()  # never handed back
    assert blobs.put(("k",), b"compiled code") and blobs.get(("k",)) == b"compiled code"


def test_pruning_keeps_the_newest_artifacts_and_a_hit_counts_as_new(tmp_path):
    blobs = _artifacts(tmp_path, keep=3)
    for i in range(3):
        blobs.put((i,), b"x")
        os.utime(blobs.path((i,)), (1000 + i, 1000 + i))  # put long ago, oldest first
    (blobs.folder / "notes.json").write_text("{}")  # not this kind of artefact
    assert blobs.get((0,)) == b"x"  # the oldest, used again
    blobs.put((3,), b"x")
    assert {p.name for p in blobs.folder.iterdir()} == {
        "notes.json", *(blobs.path((i,)).name for i in (0, 2, 3))}


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no POSIX owners and modes")
def test_an_artifact_cache_in_a_folder_others_may_write_reads_and_writes_nothing(tmp_path):
    root = tmp_path / "shared"
    (root / "unit" / "compiled").mkdir(parents=True)
    planted = root / "unit" / "compiled" / f"{cache.cache_key('k')}.blob"
    cache.write_sealed(planted, b"planted code")
    os.chmod(root, 0o777)
    blobs = _artifacts(root)
    assert blobs.folder is None and blobs.path(("k",)) is None
    assert blobs.get(("k",)) is None  # the planted file is not read
    assert not blobs.put(("j",), b"x")
    assert [p.name for p in planted.parent.iterdir()] == [planted.name]


def test_clearing_an_artifact_cache_deletes_its_kind_only(tmp_path):
    blobs = _artifacts(tmp_path)
    blobs.put(("a",), b"x")
    blobs.put(("b",), b"y")
    (blobs.folder / "notes.json").write_text("{}")
    assert blobs.clear() == 2
    assert [p.name for p in blobs.folder.iterdir()] == ["notes.json"]
    assert cache.ArtifactCache("unit", bp.CompileOptions(cache_dir="off")).clear() == 0
