"""The conformance suite's hook implementations (entry point ``conformance`` of the group
``backplane.hooks``): the engine reads stored results through them, never by importing
the suite."""

from __future__ import annotations

from typing import Any

from backplane.sdk.hookspecs import hookimpl


@hookimpl
def backplane_conformance_results() -> Any:
    """The results stored by ``backplane conformance run`` (:mod:`.store`)."""
    from backplane.conformance import store  # the suite loads only when results are asked

    return store
