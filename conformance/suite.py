"""One conformance run: the cases of a tier, on one backend and device, into a report.

Tiers: ``api`` (the plugin contract, ``apitier.py``); ``mandatory`` (api, plus generated
cases of the 49 core ops, the fused ops and the model zoo); ``all`` (mandatory, plus ONNX's
own node tests for every op the backend declares). Fresh random inputs each run; the seed is in the report,
and ``seed=`` replays a run.
"""

from __future__ import annotations

import datetime as _dt
import platform
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backplane.conformance import knownfail
from backplane.conformance.apitier import CHECKS, run_api_tier
from backplane.conformance.report import Report
from backplane.conformance.runner import DEFAULT_TIMEOUT_S, CaseResult, run_cases, select
from backplane.conformance.store import save, store_key
from backplane.engine.registry import registry
from backplane.sdk.errors import ConformanceError
from backplane.sdk.hooks import plugin_manager

import backplane

TIERS = ("api", "mandatory", "all")


def collect(tier: str, seed: int, pattern: str | None = None, backend: Any = None
            ) -> list[Any]:
    """The op and model cases of a tier (the API checks are not cases of this kind).

    ``mandatory``: generated cases of the core ops (and the special-value cases of
    ``cases.SPECIAL_VALUE_OPS``), the fused ops' cases and the model zoo.
    ``all`` adds ONNX's own node tests for every default-domain op ``backend`` declares
    (every op with node tests for a backend that admits any op; the core ops when no
    backend is given), and plugin-contributed cases of every tier.
    """
    if tier not in TIERS:
        raise ConformanceError(f"unknown tier '{tier}'; choose one of {', '.join(TIERS)}")
    if tier == "api":
        return []
    # on use only: the suite's modules load when a run asks for them
    from backplane.conformance import cases, zoo
    from backplane.conformance.fused_cases import fused_cases


    found = (list(cases.all_cases(seed, tier="mandatory")) + fused_cases(seed)
             + list(zoo.zoo_cases(seed)))
    if tier == "all":
        found += cases.onnx_node_cases(_declared_ops(backend))
    for contributed in plugin_manager().hook.backplane_conformance_cases():
        found += [c for c in contributed if tier == "all" or c.tier in ("api", "mandatory")]
    return select(found, pattern)


def _declared_ops(backend: Any) -> list[str]:
    """Default-domain ops whose ONNX node tests the ``all`` tier runs for ``backend``."""
    # on use only: the suite's modules load when a run asks for them
    from backplane.conformance.cases import MANDATORY_OPS

    caps = getattr(backend, "capabilities", None)
    if caps is None:
        return list(MANDATORY_OPS)
    if caps.any_op:
        import onnx

        return sorted({s.name for s in onnx.defs.get_all_schemas() if s.domain == ""})
    return sorted(k for k in caps.ops if "::" not in k)


def _device_record(device: Any) -> dict[str, Any]:
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.match import match_devices

    try:
        m = match_devices([device])[device.id]
    except Exception:  # hwdb trouble must not stop a conformance run
        m = None
    return {"id": device.id, "name": device.name, "kind": device.kind,
            "hwdb": m.entry_id if m else None,
            "fingerprint": store_key(device.id, m.hardware.fingerprint if m else None)}


def _versions(backend: Any) -> dict[str, str]:
    import numpy
    import onnx


    versions = {"backplane": backplane.__version__, "numpy": numpy.__version__,
                "onnx": onnx.__version__, "python": platform.python_version()}
    extra = getattr(backend, "runtime_versions", None)
    if callable(extra):
        try:
            versions.update({str(k): str(v) for k, v in extra().items()})
        except Exception as exc:
            versions["runtime_versions_error"] = f"{type(exc).__name__}: {exc}"
    return versions


def run(backend: str, device: str | None = None, *, tier: str = "mandatory",
        pattern: str | None = None, jobs: int = 1, seed: int | None = None,
        report_dir: str | Path | None = None, also_run_known_failures: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        progress: Callable[[CaseResult, int], None] | None = None) -> Report:
    """Run a tier on one backend and device; write the report files when ``report_dir``.

    ``progress(result, total)`` is called after every case.
    """
    if tier not in TIERS:
        raise ConformanceError(f"unknown tier '{tier}'; choose one of {', '.join(TIERS)}")
    reg = registry()
    plugin = reg.backend(backend)
    devices = reg.resolve(device or backend)
    target = devices[0]
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    cases = collect(tier, seed, pattern, plugin)
    total = len(cases) + len(CHECKS)
    record = next((r for r in reg.plugins() if r.name == backend), None)
    known = knownfail.for_backend(plugin, target)
    version = getattr(plugin, "version", None)

    def is_known(case: Any) -> Any:
        return knownfail.lookup(known, case.id, case.op, case.dtype, version, target.name)

    results = run_api_tier(backend, target.id, seed, timeout_s)
    if progress:
        for r in results:
            progress(r, total)
    results += run_cases(cases, backend, target.id, jobs=jobs, timeout_s=timeout_s,
                         known=is_known, also_run_known_failures=also_run_known_failures,
                         tolerance_backend=backend,
                         progress=(lambda r: progress(r, total)) if progress else None)
    report = Report(
        backend={"name": backend, "version": version,
                 "distribution": record.distribution if record else None,
                 "distribution_version": record.distribution_version if record else None,
                 "api_version": getattr(plugin, "api_version", None)},
        device=_device_record(target), versions=_versions(plugin),
        host={"hostname": socket.gethostname(), "platform": platform.platform(),
              "python": platform.python_version(), "cpu": platform.processor() or
              platform.machine()},
        seed=seed, tier=tier, pattern=pattern, started=started,
        seconds=time.perf_counter() - t0, cases=results)
    if report_dir is not None:
        report.write(report_dir)
    if not pattern:
        save(report)
    return report
