"""The probe-child helper (backplane.sdk.child.run_child): the child imports what this
process imports and gets its arguments; its JSON lines are the answer; a timeout, a crash or
no answer is a reason naming what happened, raised only when asked."""

from __future__ import annotations

import pytest

from backplane.sdk.child import run_child
from backplane.sdk.errors import DeviceUnavailable


def test_json_lines_are_the_answer_and_other_output_is_skipped():
    code = ("import json, sys; print('a driver says hello'); "
            "print(json.dumps({'args': sys.argv[1:]})); print(json.dumps([1, 2]))")
    found = run_child(code, "x", "y", timeout_s=30)
    assert found.lines == [{"args": ["x", "y"]}, [1, 2]] and found.last == [1, 2]
    assert found.reason is None and found.returncode == 0


def test_the_child_imports_what_this_process_imports(tmp_path, monkeypatch):
    (tmp_path / "only_here_module.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = run_child("import only_here_module as m; print(m.VALUE)", timeout_s=30)
    assert found.last == 42


def test_a_timeout_is_a_reason_and_keeps_what_was_printed_before():
    code = "import json, time; print(json.dumps({'first': 1}), flush=True); time.sleep(30)"
    found = run_child(code, timeout_s=3, what="the sleepy check")
    assert found.timed_out and found.reason == "the sleepy check gave no answer within 3 s"
    assert found.lines == [{"first": 1}] and found.returncode is None


def test_a_crash_is_a_reason_with_its_exit_code_and_last_stderr_line():
    found = run_child("import sys; sys.exit('driver exploded')", timeout_s=30, what="the check")
    assert found.reason == "the check exited with code 1: driver exploded"
    signalled = run_child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                          timeout_s=30, what="the check")
    assert signalled.reason.startswith("the check was killed by SIGKILL")


def test_no_json_is_a_reason_and_raising_is_the_callers_choice():
    found = run_child("print('hello')", timeout_s=30, what="the check")
    assert found.reason == "the check printed no JSON answer: no output"
    with pytest.raises(DeviceUnavailable, match="printed no JSON answer"):
        run_child("print('hello')", timeout_s=30, what="the check", raises=DeviceUnavailable)
