"""The conformance suite as a pytest plugin (entry point ``pytest11``: ``backplane``).

Inert unless ``--backplane-backend NAME`` is given. Then every conformance case of the chosen
tier becomes a pytest item, so a third-party plugin's own CI runs the suite with plain
``pytest --backplane-backend my-chip``::

    --backplane-backend NAME    the backend to check (required to activate)
    --backplane-device D        a device id (default: the backend's first device)
    --backplane-tier T          api | mandatory | all (default: mandatory)
    --backplane-seed N          replay the random inputs of an earlier run
    --backplane-report DIR      also write report.json, junit.xml, report.html
    -k                          pytest's own selection works on the case ids

The suite runs once, in worker processes, the first time an item runs; each item then
reports its case: pass, skip (a known failure, with its reason) or fail (with the error).
"""

from __future__ import annotations

import random
from typing import Any

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("backplane", "backplane conformance suite")
    group.addoption("--backplane-backend", metavar="NAME", help="Run the conformance suite "
                    "on this backend (the plugin is inert without it).")
    group.addoption("--backplane-device", metavar="D", help="Device id (default: first).")
    group.addoption("--backplane-tier", default="mandatory",
                    choices=["api", "mandatory", "all"], help="Tier (default: mandatory).")
    group.addoption("--backplane-seed", type=int, help="Seed of the random inputs.")
    group.addoption("--backplane-report", metavar="DIR", help="Write the report files here.")


class _Suite:
    def __init__(self, config: Any):
        self.config = config
        self.backend = config.getoption("backplane_backend")
        self.tier = config.getoption("backplane_tier")
        seed = config.getoption("backplane_seed")
        self.seed = random.SystemRandom().randrange(2**31) if seed is None else seed
        self.results: dict[str, Any] | None = None
        self._ids: list[str] | None = None

    def ids(self) -> list[str]:
        # on use only: each command loads what it runs, so every command starts fast
        from backplane.conformance.apitier import CHECKS
        from backplane.conformance.suite import collect

        if self._ids is None:
            # on use only: each command loads what it runs, so every command starts fast
            from backplane.engine.registry import registry

            try:
                backend = registry().backend(self.backend)
            except Exception:  # reported by the run itself, case by case
                backend = None
            self._ids = [f"api/{c}" for c in CHECKS] + [
                c.id for c in collect(self.tier, self.seed, backend=backend)]
        return self._ids

    def result(self, case_id: str, selected: list[str]) -> Any:
        if self.results is None:
            # on use only: each command loads what it runs, so every command starts fast
            from backplane.conformance.suite import run

            pattern = None if len(selected) == len(self.ids()) else "|".join(
                s for s in selected if not s.startswith("api/"))
            report = run(self.backend, self.config.getoption("backplane_device"),
                         tier=self.tier, seed=self.seed, pattern=pattern or None,
                         report_dir=self.config.getoption("backplane_report"))
            self.results = {c.id: c for c in report.cases}
        return self.results.get(case_id)


class ConformanceItem(pytest.Item):
    """One conformance case."""

    def __init__(self, *, suite: _Suite, case_id: str, **kw: Any):
        super().__init__(**kw)
        self.suite, self.case_id = suite, case_id

    def runtest(self) -> None:
        selected = [i.case_id for i in self.session.items if isinstance(i, ConformanceItem)]
        r = self.suite.result(self.case_id, selected)
        if r is None:
            pytest.fail(f"case {self.case_id} was not run")
        if r.status == "skipped":
            pytest.skip(f"known failure: {r.reason}")
        if r.status == "unsupported":
            pytest.skip(f"not declared by {self.suite.backend}: {r.error or r.reason}")
        if r.status == "special-values":  # passed, and what differs is said
            import warnings

            warnings.warn(f"{self.case_id}: special values differ from the oracle's: "
                          + "; ".join(r.deviations or []), pytest.PytestWarning)
        elif r.status not in ("pass", "undeclared-pass", "xpass"):
            pytest.fail(f"{r.status}: {r.error}", pytrace=False)

    def reportinfo(self) -> tuple[str, int, str]:
        return f"backplane:{self.suite.backend}", 0, self.case_id


@pytest.hookimpl(tryfirst=True)  # before pytest's -k and -m deselection sees the items
def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    if not config.getoption("backplane_backend"):
        return
    suite = _Suite(config)
    items.extend(ConformanceItem.from_parent(session, name=f"conformance[{case_id}]",
                                             suite=suite, case_id=case_id)
                 for case_id in suite.ids())
