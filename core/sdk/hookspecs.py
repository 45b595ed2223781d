"""The cross-cutting extension points, as pluggy hook specifications.

Implement a hook by decorating a function or method with ``backplane.hookimpl`` and
registering the object: a backend object is registered automatically when it loads; any
other package declares an entry point in the group ``backplane.hooks``; an application can
call ``backplane.plugin_manager().register(obj)``.

Core calls a hook through pluggy, ``plugin_manager().hook.backplane_NAME(arg=...)``:
implementations run last registered first, each given only the parameters it names. A hook
returns the list of its implementations' non-None results, or, where the spec says it stops at
the first non-None result (``firstresult``), that result or None.

Specs evolve by adding parameters only; an implementation may take fewer parameters than
its spec. An implementation that raises is reported as a warning and skipped: the others
still run and the application goes on (see :func:`backplane.sdk.hooks.plugin_manager`).

No hook is historic (replayed to implementations registered after it was called): the calls
are about objects that are replaced or short-lived (records replaced on every refresh,
sessions, plans), and replaying them would keep those objects alive for the process's life.

This module imports nothing of backplane's at run time: it is the contract, read by the
registry, plugins and applications alike.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from backplane.sdk.contract import Device
    from backplane.model.graph import Graph, Node
    from backplane.engine.plan import Candidate, Plan

PROJECT = "backplane"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class LoadedPlugin(Protocol):
    """What ``backplane_plugin_loaded`` is told about one backend entry point.

    :class:`backplane.engine.registry.PluginRecord` is the object passed; this names the fields an
    implementation may rely on without importing the registry.
    """

    name: str
    entry_point: str
    state: str
    reason: str
    distribution: str | None
    distribution_version: str | None
    api_version: int | None
    plugin_version: str | None
    exception: BaseException | None


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_plugin_loaded(record: LoadedPlugin) -> None:
    """Observe the outcome of loading one backend plugin.

    Called by ``backplane.registry()`` after each discovery (again after a refresh), once per
    entry point in ``backplane.backends``, for loaded, disabled and failed plugins alike,
    before probing and outside the registry's lock (an implementation may call
    ``backplane.registry()``).

    Not historic: a refresh replaces every record, so replaying earlier calls to a late
    registrant would report stale outcomes twice over. The current records are always
    available as data from ``backplane.plugin_records()``.

    Args:
        record: the plugin's record (a ``PluginRecord``): name, entry point, distribution,
            state, reason.

    Returns:
        Nothing. Every implementation is called; none stops the others.
    """


# ---------------------------------------------------------------------------------------------
# hardware
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_hwdb_entries() -> list[str | os.PathLike[str] | dict[str, Any]]:
    """Contribute hardware-characteristics entries for chips a plugin knows.

    Called by the hwdb loader (``backplane.hardware.db.load()``), which validates every
    contributed entry against the same schema as the shipped files (origin ``plugin``).

    Returns:
        A list of paths to TOML files, or of already-parsed entries (dicts). Does not stop at
        the first non-None result: every implementation is called and the lists are
        concatenated.
    """


@hookspec(firstresult=True)
def backplane_hwdb_match(kind: str, name: str, vendor: str, source: str,
                         facts: dict[str, Any]) -> tuple[str, str] | None:
    """Name the hwdb entry a device a plugin found matches, and the rule that matched it.

    Called by backend plugins while they probe (cuda-tensorrt, rocm), once per device they
    list, so that a plugin reaches the hardware database without importing the hardware
    layer. The hardware layer implements it (entry point ``hwdb`` of the group
    ``backplane.hooks``, :mod:`backplane.hardware.hooks`); another package may stand in.
    First-result: a device matches one entry, so the first implementation to name one
    decides.

    Args:
        kind: the device's kind (``"gpu"``, ``"cpu"``, ``"npu"`` ...).
        name: its name as the plugin lists it (``"NVIDIA H100 80GB HBM3"``).
        vendor: its vendor in lower case (``"nvidia"``, ``"amd"``).
        source: what found it (``"cuda-driver"``, ``"rocm"``), for the match's record.
        facts: what match rules read, in the hardware probe's keys (``pci_vendor_id``,
            ``pci_device_id``, ``compute_capability``, ``gfx_target``, ``units``,
            ``clock_mhz``, ``memory_gib`` ...).

    Returns:
        ``(entry id, the matching rule in words)``, or None when no entry matches or the
        database cannot be read (a device without an entry is still listed). Stops at the
        first non-None result.
    """


# ---------------------------------------------------------------------------------------------
# capability
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_known_failures(backend: str, device: Device) -> list[dict[str, Any]]:
    """Contribute known failures of a backend on a device.

    Called at the start of a conformance run (``conformance.knownfail.for_backend()``).

    Args:
        backend: the backend's name.
        device: the device the failures are scoped to.

    Returns:
        A list of known-failure entries: dicts with ``op`` and ``reason``, optionally
        ``dtype``, ``case``, ``plugin_version`` and ``device``, validated like the TOML
        tables. Does not stop at the first non-None result: every implementation is called
        and the lists are concatenated.
    """


# ---------------------------------------------------------------------------------------------
# scheduling
# ---------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def backplane_select_device(node: Node, candidates: list[Candidate]) -> Candidate | None:
    """A custom selection delegate: choose where one node runs.

    Called by the scheduler once per node, unless the session was given its own delegate.
    First-result: a placement has exactly one answer, so the first implementation with an
    opinion decides and the later ones are not asked.

    Args:
        node: the node being placed.
        candidates: every admitted candidate, in the default order, the default first, each
            with its predicted cost.

    Returns:
        One of ``candidates``, or None to keep the default choice (and let the next
        implementation answer). Stops at the first non-None result. A result that is not one
        of the candidates is ignored and the plan records why.
    """


@hookspec
def backplane_plan_ready(plan: Plan, graph: Graph) -> None:
    """Observe a plan once it is made (and again after every re-plan).

    Called by the session once each plan is compiled (and, with ``precision="auto"``,
    its accuracy checked). Not historic: replaying plans to late registrants would keep
    every plan and graph of the process alive.

    Args:
        plan: the plan, with its placements, partitions and events.
        graph: the graph it places.

    Returns:
        Nothing. Every implementation is called; none stops the others.
    """


# ---------------------------------------------------------------------------------------------
# conformance
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_conformance_cases() -> list[Any]:
    """Contribute conformance cases (for ops in a plugin's own domain, or extra inputs).

    Called when a conformance run collects its cases (``conformance.suite.collect()``).

    Returns:
        A list of ``backplane.conformance`` ``Case`` objects; mandatory ones join every tier
        but ``api``. Does not stop at the first non-None result: every implementation is
        called and the lists are concatenated.
    """



@hookspec(firstresult=True)
def backplane_conformance_results() -> Any:
    """The stored conformance results the engine plans and verifies with.

    Called when a plan is made (variants that failed on a device are not placed there, and
    notes on special values), when a plan's first run is checked (variants that passed
    need no check) and when a plan replaces another. The conformance suite implements it
    (entry point ``conformance`` of the group ``backplane.hooks``); another package may
    stand in for it.

    Returns:
        An object with the functions of :class:`backplane.engine.qualification.Results`,
        or None. Stops at the first non-None result. With none, nothing counts as failed
        or qualified.
    """

# ---------------------------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_session_created(session: Any) -> None:
    """Observe a new Session, after its first plan and compile.

    Called at the end of ``Session.__init__``. Not historic: replaying sessions to late
    registrants would keep every session of the process, and its compiled kernels, alive.

    Args:
        session: the :class:`backplane.Session` (typed ``Any``: the contract does not import
            the engine).

    Returns:
        Nothing. Every implementation is called; none stops the others.
    """
