"""The worker process of a conformance run: compiles and runs one case at a time.

It lives in its own process so that a backend that segfaults or hangs on a case takes only
that case down: the runner records a crash or a hang and starts a fresh worker. The worker
talks to the runner over a ``multiprocessing`` pipe:

- runner -> worker: ``("case", case_id, model_bytes, inputs, want_expected)`` or ``("stop",)``
- worker -> runner: ``("ready", error)`` once, then per case ``("done", case_id, result)``
  where ``result`` is a dict: ``outputs``, ``expected``, ``oracle_mode``, ``declared``,
  ``error_type``, ``error``, ``seconds``.

The oracle's expected values are computed in the worker, before the backend runs, so that
the runner's process stays free to watch the workers.

Cases run through the backend's own ``compile`` and ``run``, not through a Session, so
what is measured is the plugin itself; core's wrappers would hide what it does.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any
from backplane.engine.executor import to_host
from backplane.model.intake import load_model
from backplane.sdk.errors import BackplaneError


def main(conn: Any, backend_name: str, device_id: str) -> None:
    """Serve cases until told to stop (or until the runner goes away)."""
    try:
        # on use only: keeps this module's own import light
        import warnings

        from backplane.sdk.contract import CompileOptions
        from backplane.sdk.errors import PluginDeprecationWarning
        from backplane.engine.registry import registry

        warnings.simplefilter("ignore", PluginDeprecationWarning)  # the runner has shown it

        reg = registry()
        backend = reg.backend(backend_name)
        [device] = reg.resolve(device_id)
        options = CompileOptions()
    except BaseException as exc:  # the runner reports it; nothing else can
        conn.send(("ready", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    serve_tasks(conn, "case", lambda message: (
        "done", message[1], run_case(backend, device, options, *message[2:])))


def serve_tasks(conn: Any, tag: str, answer: Callable[[tuple], tuple]) -> None:
    """Answer each message ``(tag, ...)`` from ``conn`` with ``answer(message)`` until
    another message comes (``("stop",)``) or the other end goes away: the loop of every
    worker process the conformance runners keep."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != tag:
            return
        conn.send(answer(message))


def run_case(backend: Any, device: Any, options: Any, model_bytes: bytes,
             inputs: dict[str, Any], want_expected: bool) -> dict[str, Any]:
    """The oracle's answer, then the backend's compile and run; every exception becomes data."""
    import numpy as np


    result: dict[str, Any] = {"outputs": None, "expected": None, "oracle_mode": None,
                              "declared": None, "error_type": None, "error": None,
                              "seconds": 0.0}
    try:
        graph = load_model(model_bytes)
        if want_expected:
            # on use only: the suite's modules load when a run asks for them
            import onnx

            from backplane.conformance.oracle import expected_with_mode

            model = onnx.load_from_string(model_bytes)
            result["expected"], result["oracle_mode"] = expected_with_mode(model, dict(inputs))
    except Exception as exc:  # the suite's own case or oracle is broken: not the plugin's fault
        result.update(error_type="InvalidCase", error=f"{type(exc).__name__}: {exc}")
        return result
    result["declared"] = all(bool(backend.capabilities.check(n)) for n in graph.nodes)
    stage = "compile"
    t0 = time.perf_counter()
    try:
        exe = backend.compile(graph, device, options)
        stage = "run"
        outputs = exe.run({k: v.copy() for k, v in inputs.items()})
        # Device tensors (a GPU backend's torch or CuPy arrays) come to the host as the
        # executor brings them.
        result["outputs"] = {k: to_host(np, v) for k, v in dict(outputs).items()}
    except Exception as exc:
        detail = f"{stage}: {type(exc).__name__}: {exc}"
        if not isinstance(exc, BackplaneError):
            detail += "\n" + "".join(traceback.format_exception(exc)[-3:])
        result.update(error_type=type(exc).__name__, error=detail)
    result["seconds"] = time.perf_counter() - t0
    return result
