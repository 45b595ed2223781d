"""What the engine asks of stored conformance results, through a hook.

The engine does not import the conformance suite: it asks the
``backplane_conformance_results`` hook for an object with the functions of
:class:`Results` (the suite's ``store`` module answers it, registered through the
``backplane.hooks`` entry point ``conformance``). With no answer, or an answer that fails,
nothing counts as failed or qualified and there is nothing to note, as when nothing was
ever stored. An unreadable store is never a planning failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from backplane.sdk.hooks import plugin_manager

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from backplane.engine.plan import Plan


class Results(Protocol):
    """Stored conformance results, by backend, device and version."""

    def store_key(self, device_id: str, fingerprint: str | None) -> str:
        """The key of a device's results: its id and hardware fingerprint."""

    def failed_variants(self, backend: str, key: str, version: str | None = None
                        ) -> set[tuple[str, str]]:
        """(op, dtype) variants the stored run of ``backend`` marks failed."""

    def passed_variants(self, backend: str, key: str, version: str | None = None
                        ) -> set[tuple[str, str]]:
        """(op, dtype) variants the stored run of ``backend`` passed."""

    def special_value_note(self, plan: "Plan") -> list[str]:
        """Notes on the plan's backends that differ from the oracle on special values."""

    def special_value_change(self, before: "Plan", after: "Plan") -> list[str]:
        """Events where a new plan changes what NaN, infinity or a signed zero give."""


def results() -> Results | None:
    """The stored results, or None where no implementation answers."""
    try:
        return plugin_manager().hook.backplane_conformance_results()
    except Exception:  # pluggy's own failure: as if nothing were stored
        return None


def failed_variants(backend: str, device_id: str, fingerprint: str | None,
                    version: str | None) -> set[tuple[str, str]]:
    """Op x dtype variants the stored conformance run marks failed on this device."""
    return _ask(lambda r: set(r.failed_variants(backend, r.store_key(device_id, fingerprint),
                                                version)), set())


def passed_variants(backend: str, device_id: str, fingerprint: str | None,
                    version: str | None) -> set[tuple[str, str]]:
    """Op x dtype variants the stored conformance run passed on this device."""
    return _ask(lambda r: set(r.passed_variants(backend, r.store_key(device_id, fingerprint),
                                                version)), set())


def special_value_note(plan: "Plan") -> list[str]:
    """Notes on the backends of ``plan`` that differ from the oracle on NaN, infinity or
    the sign of zero for ops they run."""
    return _ask(lambda r: list(r.special_value_note(plan)), [])


def special_value_change(before: "Plan", after: "Plan") -> list[str]:
    """Events for where ``after`` changes what special values give, against ``before``."""
    return _ask(lambda r: list(r.special_value_change(before, after)), [])


def _ask(question: "Callable[[Results], Any]", empty: Any) -> Any:
    """``question(results)``, or ``empty`` when nothing answers or the store cannot be read
    (an unreadable store is no result, never a planning failure)."""
    found = results()
    if found is None:
        return empty
    try:
        return question(found)
    except Exception:  # an unreadable store says nothing
        return empty
