"""A derived op table checked against ONNX's own node tests, in a child process.

What a runtime registers (ONNX Runtime's kernels) or accepts (OpenVINO's ``query_model``)
is what it runs, not what it computes right. :func:`verify` runs every ONNX node test
(``onnx.backend.test.case.node``: one-node models with recorded outputs) of an op version
and dtype the table declares, through the backend's own compile and run, and compares its
outputs with the recorded ones as ONNX's test runner does (shape, dtype, then values within
the test's rtol/atol, NaN equal to NaN). A test that comes back wrong, or that the backend
refuses at run time, either is explained by an attribute value no passing test of that op
version and dtype sets (GRU's ``layout=1``): then that attribute is limited to the values
that passed (an ``AttributeRule``); or the op version and dtype is taken out of the table,
with the reason. A test whose node the backend's attribute rules already refuse is not
run: the planner never gives the backend such a node. Tests of random ops (Bernoulli,
RandomNormal ..., Dropout in training) are checked for shapes and types only.

The tests run in a child process, one JSON line per test, so that a runtime that crashes
or hangs on one of them costs that test only: the parent records it and starts a new child
at the next test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

from backplane.model.intake import load_model
from backplane.ops.opdef import RANDOM_OPS
from backplane.ops.registrations import op_supports
from backplane.ops.registry import find
from backplane.ops.survey import low_precision_cases, node_test_cases
from backplane.sdk.contract import AttributeRule, Capabilities, CompileOptions

#: Seconds one node test may take in the child before it counts as a hang.
TEST_TIMEOUT_S = 30.0
#: Restarts of the child after crashes or hangs, at most.
MAX_RESTARTS = 20
#: Children run side by side, each on every n-th test (at most one per core).
WORKERS = 2
#: Up to this many ops, the child imports only their ONNX test modules (not all of them).
FEW_OPS = 20
#: Backend options that keep a child's runtime on one thread (the children share cores).
ONE_THREAD = {"openvino-cpu": {"INFERENCE_NUM_THREADS": 1},
              "onnxruntime": {"intra_op_num_threads": 1}}


class VerificationError(RuntimeError):
    """The node tests could not be run (no device for the backend in the child)."""


def verify(backend: str, table: Mapping[str, Mapping[str, list[str]]],
           skip_ops: frozenset[str] = frozenset()
           ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, list[Any]]]]:
    """``(failed, rules)``: ``{op key: {"version/dtype": why}}``, the declared op versions
    and dtypes of ``table`` whose node tests ``backend`` (an entry-point name) got wrong,
    refused at run time, crashed or hung on, beyond what an attribute limit explains; and
    ``{op key: {attribute: [values that passed]}}``, those limits. Ops in ``skip_ops``
    are not checked.

    Raises:
        VerificationError: the backend has no device to run the tests on.
    """
    wanted = {k: v for k, v in table.items() if k not in skip_ops}
    outcomes: list[dict[str, Any]] = []
    shards = max(1, min(WORKERS, os.cpu_count() or 1))
    errors: list[VerificationError] = []
    threads = [threading.Thread(target=_shard, args=(backend, wanted, k, shards, outcomes,
                                                     errors)) for k in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return _judged(outcomes)


def _shard(backend: str, table: Mapping[str, Any], k: int, n: int,
           outcomes: list[dict[str, Any]], errors: list[VerificationError]) -> None:
    """The tests with index ``k`` modulo ``n``, in children restarted after a crash."""
    start, restarts, mine = 0, 0, []
    while restarts <= MAX_RESTARTS:
        try:
            done, start, lost = _run_child(backend, table, start, mine, (k, n))
        except VerificationError as exc:
            errors.append(exc)
            return
        if done:
            break
        restarts += 1
        if lost is not None:
            mine.append(lost)
    outcomes.extend(mine)  # list.extend is atomic under the GIL


def _judged(outcomes: list[dict[str, Any]]
            ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, list[Any]]]]:
    """Failures explained by attribute values, and those that are not."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in sorted(outcomes, key=lambda r: (r["test"][0], str(r["test"][1]), r["test"][2],
                                               r["test"][3])):  # (shards finish in any order)
        key, version, dtype = row["test"][:3]
        groups.setdefault((key, f"{version}/{dtype}"), []).append(row)
    failed: dict[str, dict[str, str]] = {}
    rules: dict[str, dict[str, set[Any]]] = {}
    failures: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    for (key, vd), rows in groups.items():
        passed = [r for r in rows if r["ok"]]
        modes = {**_modes(key), **{name: 0 if name.startswith(OUTPUT) else None
                                   for r in rows for name in r.get("attrs", {})
                                   if name.startswith((OPERAND, OUTPUT))}}
        seen: dict[str, set[Any]] = {}
        for r in passed:  # an attribute left unset is its default
            for name, default in modes.items():
                value = r.get("attrs", {}).get(name, default)
                if value is not None:
                    seen.setdefault(name, set()).add(value)
        for r in rows:
            if r["ok"]:
                continue
            values = {name: r.get("attrs", {}).get(name, default)
                      for name, default in modes.items()}
            # (an operand no passing test has explains nothing: its absence is not a type)
            odd = {name: value for name, value in values.items()
                   if value is not None and value not in seen.get(name, set())
                   and (name in seen or not name.startswith(OPERAND))}
            wrong = r.get("wrong") or []
            if wrong and 0 not in wrong and 0 in r.get("compared", ()):
                # the first output came back right, only optional ones wrong
                odd = {f"{OUTPUT}{k}": 1 for k in wrong}
                seen.update({name: {0} for name in odd})
            if passed and odd and "@" not in r["test"][3]:
                # a variant: limit the attributes to what passed (not from a low-precision
                # retyping of a float32 test: a rule holds for every type of the op)
                for name in odd:
                    rules.setdefault(key, {}).setdefault(name, set()).update(
                        seen.get(name, set()))
                values = {**values, **odd}
            failures.append((key, vd, values, r))
    for key, vd, values, r in failures:
        # A failure whose node the limits found for the op (at any version and dtype)
        # refuse is never given to the backend: no reason to take its version out. One
        # they admit (a value another version passed with) takes it out.
        if not _refused_by(rules.get(key, {}), values):
            failed.setdefault(key, {}).setdefault(vd, f"{r['test'][3]}: {r['why']}"[:300])
    return failed, {k: {a: sorted(v, key=repr) for a, v in per.items()}
                    for k, per in rules.items()}


def _refused_by(limits: Mapping[str, set[Any]], values: Mapping[str, Any]) -> bool:
    """Whether a test node with these attribute ``values`` breaks one of ``limits``."""
    for name, allowed in limits.items():
        value = values.get(name, 0 if name.startswith(OUTPUT) else None)
        if value is not None and value not in allowed:
            return True
    return False


#: Pseudo-attributes of a test's node that a failure may be explained by: the dtype of an
#: input beyond the first (``#dtype1``: Pow's exponent), and whether an optional output
#: past the first is asked for (``#output3``: Attention's qk_matmul_output). (Optional
#: inputs are not among them: limiting those would refuse the variants models use most,
#: LSTM's initial states.)
OPERAND, OUTPUT = "#dtype", "#output"


def _modes(key: str) -> dict[str, Any]:
    """The attributes of an op that choose a variant (a mode, a layout, a flag), with their
    defaults: those whose default is a string or an integer, as opposed to sizes and
    coefficients."""
    definition = find(key)
    if definition is None:
        return {}
    return {name: default for s in definition.schemas for name, default in s.attributes.items()
            if isinstance(default, (str, int)) and not isinstance(default, bool)}


def attribute_rules(rules: Mapping[str, Mapping[str, list[Any]]]) -> dict[str, dict[str, Any]]:
    """OpSupport keyword arguments from :func:`verify`'s limits: ``attributes`` rules,
    ``input_dtypes`` from operand dtypes, ``absent_outputs`` from outputs asked for."""
    out: dict[str, dict[str, Any]] = {}
    for key, per in rules.items():
        kwargs: dict[str, Any] = {}
        for name, values in per.items():
            if name.startswith(OPERAND):
                kwargs.setdefault("input_dtypes", {})[int(name[len(OPERAND):])] = \
                    frozenset(values)
            elif name.startswith(OUTPUT):
                if 1 not in values:
                    kwargs["absent_outputs"] = kwargs.get("absent_outputs", frozenset()) | {
                        int(name[len(OUTPUT):])}
            else:
                kwargs.setdefault("attributes", {})[name] = AttributeRule(allowed=tuple(values))
        out[key] = kwargs
    return out


def narrowed(table: Mapping[str, Mapping[str, list[str]]],
             failed: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, list[str]]]:
    """``table`` without the op versions and dtypes in ``failed``."""
    out: dict[str, dict[str, list[str]]] = {}
    for key, versions in table.items():
        bad = failed.get(key, {})
        kept = {v: [d for d in dtypes if f"{v}/{d}" not in bad] for v, dtypes in versions.items()}
        kept = {v: d for v, d in kept.items() if d}
        if kept:
            out[key] = kept
    return out


def valid_rules(data: Any) -> bool:
    """Whether a derivation read back from a cache was verified and holds rules of the
    shape written here."""
    rules = data.get("rules", {}) if isinstance(data, dict) else None
    return isinstance(rules, dict) and "unverified" not in data and all(
        isinstance(per, dict) and all(isinstance(v, list) and all(
            isinstance(x, (int, float, str)) for x in v) for v in per.values())
        for per in rules.values())


def merged_constraints(*tables: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """OpSupport keyword arguments per op key, the attribute rules of several sources
    merged (the first source's rule for an attribute wins)."""
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        for key, kwargs in table.items():
            merged = out.setdefault(key, {})
            for name, value in kwargs.items():
                if name == "attributes":
                    merged["attributes"] = {**value, **merged.get("attributes", {})}
                else:
                    merged.setdefault(name, value)
    return out


def _run_child(backend: str, table: Mapping[str, Any], start: int,
               outcomes: list[dict[str, Any]], shard: tuple[int, int]
               ) -> tuple[bool, int, Any]:
    """One child from test ``start``: ``(finished, next test, the outcome of the test that
    crashed or hung, or None)``; the outcomes of the tests run are appended."""
    code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
            "from backplane.ops.verify import _child; "
            "_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))")
    child = subprocess.Popen([sys.executable, "-c", code, json.dumps(sys.path), backend,
                              str(start), str(shard[0]), str(shard[1])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=tempfile.gettempdir(),
                             # only the backend checked is loaded and probed there
                             env={**os.environ, "BACKPLANE_PLUGINS": backend})
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps(table))
    child.stdin.close()
    current: Any = None
    started = _now()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(child.stdout.readline, "")),
                              daemon=True)
    reader.start()
    seen = 0
    while True:
        reader.join(0.05)
        while seen < len(lines):
            row = json.loads(lines[seen])
            seen += 1
            if "error" in row:
                child.wait()
                raise VerificationError(row["error"])
            if "end" in row:
                child.wait()
                return True, start, None
            if "start" in row:
                current, start = row, row["index"] + 1
                started = _now()
            else:
                outcomes.append(row)
                current = None
        if not reader.is_alive() and seen == len(lines):
            child.wait()
            lost = None if current is None else {
                "test": current["start"], "ok": False, "attrs": current.get("attrs", {}),
                "why": f"the runtime crashed (exit code {child.returncode})"}
            return False, start, lost
        if current is not None and _now() - started > TEST_TIMEOUT_S:
            child.kill()
            child.wait()
            return False, start, {"test": current["start"], "ok": False,
                                  "attrs": current.get("attrs", {}),
                                  "why": f"no answer within {TEST_TIMEOUT_S:g} s"}


def _now() -> float:
    import time

    return time.monotonic()


def _child(backend: str, start: int, k: int = 0, n: int = 1) -> None:
    """The child's side: run the node tests from ``start`` whose index is ``k`` modulo
    ``n`` on ``backend``, one thread of the runtime's own."""
    import numpy as np

    from importlib.metadata import entry_points


    table = json.loads(sys.stdin.read())
    try:
        # The backend straight from its entry point (the parent is that backend deriving
        # its own table, so it was loaded and accepted already), and its first device.
        found = [e for e in entry_points(group="backplane.backends") if e.name == backend]
        if not found:
            raise LookupError(f"no backend entry point named {backend!r} is installed")
        impl = found[0].load()()
        device = dataclasses.replace(impl.probe()[0], backend=backend, index=0)
    except Exception as exc:
        print(json.dumps({"error": f"no {backend} device to verify on: {exc}"}), flush=True)
        os._exit(0)
    # The table as declared, with the backend's attribute rules and value types; its
    # capabilities are not read here (that would derive them again, verification included).
    module = sys.modules[type(impl).__module__]
    constraints = getattr(module, "CONSTRAINTS", {})
    # Ops whose integer outputs the backend states may land this many quantization steps
    # off (its conformance tolerance says the same): compared so, not exactly.
    steps_of = getattr(module, "QUANTIZATION_STEPS", {})
    declared = Capabilities(ops=op_supports(table, constraints),
                            value_dtypes=impl.capabilities.value_dtypes)

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)

    ops = tuple(sorted({key.split("::")[-1] for key in table}))
    cases = node_test_cases(ops if len(ops) <= FEW_OPS else None)
    cases += low_precision_cases(cases, table)
    for index in range(start, len(cases)):
        if index % n != k:
            continue
        key, version, dtype, name, model, feeds, expected, rtol, atol = cases[index]
        if dtype not in table.get(key, {}).get(str(version), ()) or not expected:
            continue
        test = [key, version, dtype, name]
        try:
            graph = load_model(model)
        except Exception:  # a test backplane's intake refuses is no verdict on the backend
            continue
        if len(graph.nodes) != 1 or not declared.check(graph.nodes[0]):
            continue
        node = graph.nodes[0]
        attrs = {k: v for k, v in node.attributes.items()
                 if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        attrs.update({f"{OPERAND}{k}": vi.dtype for k, vi in enumerate(node.input_types)
                      if k and vi is not None})
        attrs.update({f"{OUTPUT}{k}": 1 for k, o in enumerate(node.outputs) if k and o})
        random = key in RANDOM_OPS or (key == "Dropout" and "training" in name)
        try:
            if callable(expected):  # a low-precision variant: the oracle's outputs
                expected = expected()
                finite = [v.astype(np.float64) for v in expected.values()
                          if v.dtype.kind not in "biuOUS"]
                atol *= max([float(np.abs(v[np.isfinite(v)]).max(initial=0.0))
                             for v in finite] or [1.0])
        except Exception:  # the oracle cannot run it: no verdict
            continue
        emit({"start": test, "index": index, "attrs": attrs})
        try:
            exe = impl.compile(graph, device, CompileOptions(
                cache_dir="off", extra={backend: ONE_THREAD.get(backend, {})}))
            with np.errstate(all="ignore"):
                got = exe.run(dict(feeds))
            steps = int(steps_of.get(key, 0))
            why = _mismatch(got, expected, rtol, atol, values=not random, steps=steps)
            # Which outputs are wrong: a failure in optional outputs only (past the first)
            # is a variant, the outputs a model rarely asks for.
            compared = [k for k, o in enumerate(node.outputs) if o in expected]
            wrong = [k for k in compared if _mismatch(
                {node.outputs[k]: got.get(node.outputs[k])},
                {node.outputs[k]: expected[node.outputs[k]]}, rtol, atol, not random, steps)]
        except Exception as exc:  # refused or failed at run time: not a kernel to plan
            why, wrong, compared = f"{type(exc).__name__}: {exc}".split("\n")[0][:200], [], []
        emit({"test": test, "ok": not why, "why": why, "attrs": attrs, "wrong": wrong,
              "compared": compared})
    emit({"end": True})
    sys.stdout.flush()
    os._exit(0)  # a runtime's teardown must not turn a finished run into a crash


def _mismatch(got: Mapping[str, Any], expected: Mapping[str, Any], rtol: float,
              atol: float, values: bool = True, steps: int = 0) -> str:
    """'' when every output matches as ONNX's test runner compares (with ``values``
    False, shapes and dtypes only; integer outputs within ``steps`` of the recorded ones),
    else what differs."""
    import numpy as np

    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            return f"output {name} missing"
        have, want = np.asarray(have), np.asarray(want)
        if have.shape != want.shape:
            return f"output {name} has shape {have.shape}, the test {want.shape}"
        if have.dtype != want.dtype:
            return f"output {name} is {have.dtype}, the test {want.dtype}"
        if not values:
            continue
        if want.dtype.kind in "OUS":
            if not np.array_equal(have, want):
                return f"output {name} differs"
            continue
        integer = want.dtype.kind in "iu"
        try:
            np.testing.assert_allclose(have.astype(np.float64), want.astype(np.float64),
                                       rtol=0.0 if integer and steps else rtol,
                                       atol=steps if integer and steps else atol,
                                       equal_nan=True)
        except AssertionError:
            err = np.nanmax(np.abs(have.astype(np.float64) - want.astype(np.float64)))
            return f"output {name} differs from the recorded one by up to {err:.3g}"
    return ""
