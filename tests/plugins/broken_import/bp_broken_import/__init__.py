"""A backend whose vendor runtime is missing: importing it raises ModuleNotFoundError."""

import vendor_runtime_that_is_not_installed  # noqa: F401


class BrokenBackend:
    name = "broken-import"
