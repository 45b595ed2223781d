"""Probe children: Python code run in a short-lived child process, bounded, answering in JSON.

Probes ask vendor runtimes in a child (importing a runtime is slow, may start threads or
print, and a broken driver may crash the process that loads it), so discovery imports none
of them. :func:`run_child` is the one way to do it:

- the child runs ``code`` with this process's import path (``sys.path``) in front of its
  own, so it imports what this process imports, and ``sys.argv[1:]`` set to ``args``; its
  working directory is the temporary folder, so nothing in the caller's folder shadows a
  module;
- it has ``timeout_s`` seconds, by default the probe budget
  (:func:`backplane.sdk.env.probe_budget_s`); callers pass their own share of it;
- every line of its stdout that is JSON is a line of the answer (other lines, a driver's
  chatter, are skipped), also when it timed out or crashed after answering in part;
- a timeout, a crash or a failure to start is returned as a reason naming what happened
  (:attr:`ChildAnswer.reason`), never raised, unless the caller passes ``raises``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NamedTuple

from backplane.sdk.env import probe_budget_s

#: How the child starts: this process's import path in front, then the code with its args.
_WRAPPER = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); code = sys.argv[2]; "
            "sys.argv[1:] = sys.argv[3:]; "
            "exec(compile(code, '<backplane-child>', 'exec'), {'__name__': '__main__'})")
#: Characters of the child's last stderr line kept in a reason.
TAIL_CHARS = 300


class ChildAnswer(NamedTuple):
    """What a child said and how it ended.

    Attributes:
        lines: the JSON value of each stdout line that is JSON, in order.
        reason: None when the child exited with code 0 having printed JSON, else what
            happened, naming the child: it gave no answer within the time, could not
            start, exited with a code, was killed by a signal, or printed no JSON.
        returncode: the exit code (negative: the signal), None when it did not finish.
        timed_out: whether it was stopped at the timeout.
        stderr: what it wrote to stderr (empty when it did not finish).
    """

    lines: list[Any]
    reason: str | None = None
    returncode: int | None = None
    timed_out: bool = False
    stderr: str = ""

    @property
    def last(self) -> Any:
        """The last JSON line, or None."""
        return self.lines[-1] if self.lines else None


def run_child(code: str, *args: str, timeout_s: float | None = None,
              what: str = "the probe child",
              raises: type[BaseException] | None = None) -> ChildAnswer:
    """Run ``code`` in a child Python (see the module's docstring) and read its answer.

    Args:
        code: Python source; it answers by printing JSON lines.
        args: the child's ``sys.argv[1:]``.
        timeout_s: seconds it may take; None: the whole probe budget.
        what: the child, in words, as reasons name it ("the OpenVINO NPU probe").
        raises: an exception type raised with the reason when there is one (the caller
            wants a failure raised); by default nothing is raised.
    """
    import subprocess  # (kept off the import of the modules that declare probes)
    import tempfile

    budget = probe_budget_s(cap=None) if timeout_s is None else max(0.1, timeout_s)
    argv = [sys.executable, "-c", _WRAPPER, json.dumps(sys.path), code, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=budget,
                              cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired as exc:
        # What it printed before it was stopped still counts (bytes on POSIX).
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else exc.stdout or ""
        answer = ChildAnswer(_json_lines(out), f"{what} gave no answer within {budget:g} s",
                             timed_out=True)
    except OSError as exc:
        answer = ChildAnswer([], f"{what} could not start: {type(exc).__name__}: {exc}")
    else:
        lines = _json_lines(done.stdout)
        answer = ChildAnswer(lines, _ending(what, done.returncode, done.stderr, bool(lines)),
                             done.returncode, stderr=done.stderr)
    if raises is not None and answer.reason is not None:
        raise raises(answer.reason)
    return answer


def _json_lines(out: str) -> list[Any]:
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def _ending(what: str, code: int, stderr: str, answered: bool) -> str | None:
    """Why a child that finished gave no full answer, or None."""
    tail = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()),
                "no output")[:TAIL_CHARS]
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{what} was killed by {name}: {tail}"
    if code:
        return f"{what} exited with code {code}: {tail}"
    return None if answered else f"{what} printed no JSON answer: {tail}"


__all__ = ["ChildAnswer", "TAIL_CHARS", "run_child"]
