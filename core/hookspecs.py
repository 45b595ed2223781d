"""The cross-cutting extension points, as pluggy hook specifications.

Implement a hook by decorating a function or method with ``backplane.hookimpl`` and
registering the object: a backend object is registered automatically when it loads; any
other package declares an entry point in the group ``backplane.hooks``; an application can
call ``backplane.plugin_manager().register(obj)``.

Specs evolve by adding parameters only; an implementation may take fewer parameters than
its spec. A hook that raises is reported as a warning and does not stop the application.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .contract import Device
    from .graph import Graph, Node
    from .planner import Candidate, Plan
    from .registry import PluginRecord

PROJECT = "backplane"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_plugin_loaded(record: "PluginRecord") -> None:
    """Observe the outcome of loading one backend plugin.

    Called once per entry point in ``backplane.backends`` after discovery, for loaded,
    disabled and failed plugins alike.

    Args:
        record: the plugin's record: name, entry point, distribution, state, reason.

    Returns:
        Nothing; every implementation is called.
    """


# ---------------------------------------------------------------------------------------------
# hardware
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_hwdb_entries() -> "list[Any]":
    """Contribute hardware-characteristics entries for chips a plugin knows.

    Read by the hwdb loader, which validates every contributed entry against the same
    schema as the shipped files.

    Returns:
        A list of paths to TOML files, or of already-parsed entries (dicts). Every
        implementation is called and the lists are concatenated.
    """


# ---------------------------------------------------------------------------------------------
# capability
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_known_failures(backend: str, device: "Device") -> "list[Any]":
    """Contribute known failures of a backend on a device (op, dtype, reason).

    Args:
        backend: the backend's name.
        device: the device the failures are scoped to.

    Returns:
        A list of known-failure entries. Every implementation is called.
    """


# ---------------------------------------------------------------------------------------------
# scheduling
# ---------------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def backplane_select_device(node: "Node", candidates: "list[Candidate]") -> "Candidate | None":
    """A custom selection delegate: choose where one node runs.

    Args:
        node: the node being placed.
        candidates: every admitted candidate, in the default order, the default first.

    Returns:
        One of ``candidates``, or None to keep the default choice. Stops at the first
        non-None result. A result that is not one of the candidates is ignored and the
        plan records why.
    """


@hookspec
def backplane_plan_ready(plan: "Plan", graph: "Graph") -> None:
    """Observe a plan once it is made (and again after every re-plan).

    Args:
        plan: the plan, with its placements, partitions and events.
        graph: the graph it places.

    Returns:
        Nothing; every implementation is called.
    """


# ---------------------------------------------------------------------------------------------
# conformance
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_conformance_cases() -> "list[Any]":
    """Contribute conformance cases (for ops in a plugin's own domain, or extra inputs).

    Returns:
        A list of cases. Every implementation is called and the lists are concatenated.
    """


# ---------------------------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------------------------

@hookspec
def backplane_session_created(session: Any) -> None:
    """Observe a new Session, after its first plan and compile.

    Args:
        session: the :class:`backplane.Session`.

    Returns:
        Nothing; every implementation is called.
    """
