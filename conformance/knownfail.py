"""Known failures: data owned by a plugin, scoped to its version and the device name.

A backend declares them with a ``known_failures`` attribute (a path to a TOML file, or a
list of dicts) and/or the ``backplane_known_failures(backend, device)`` hook. A TOML file
holds ``[[known_failure]]`` tables:

```toml
[[known_failure]]
op = "Resize"                # required: the op (or "model:<name>" for zoo models)
dtype = "float16"            # optional: only this dtype
case = "*cubic*"             # optional: a glob on the case id
plugin_version = ">=1.0,<2"  # optional: a version specifier on the plugin's version
device = "NVIDIA .*T4"       # optional: a regular expression searched in the device name
reason = "cubic mode not implemented (issue #12)"   # required
```

A matching case is reported as skipped with the reason; ``--also-run-known-failures`` runs
it anyway and reports ``xpass`` when it now passes.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backplane.sdk.errors import ConformanceError
from backplane.sdk.hooks import plugin_manager


@dataclass(frozen=True)
class KnownFailure:
    """One declared known failure."""

    op: str
    reason: str
    dtype: str | None = None
    case: str | None = None
    plugin_version: str | None = None
    device: str | None = None

    def applies(self, case_id: str, op: str, dtype: str, plugin_version: str | None,
                device_name: str) -> bool:
        """Whether this entry covers one case of one plugin version on one device."""
        if self.op != op or (self.dtype and self.dtype != dtype):
            return False
        if self.case and not fnmatch.fnmatchcase(case_id, self.case):
            return False
        if self.device and not re.search(self.device, device_name):
            return False
        if self.plugin_version:
            from packaging.specifiers import SpecifierSet
            from packaging.version import InvalidVersion, Version

            try:
                return Version(str(plugin_version)) in SpecifierSet(self.plugin_version)
            except InvalidVersion:
                return False
        return True


def parse(entries: Any, where: str) -> list[KnownFailure]:
    """Validate known-failure data (a list of dicts); ConformanceError naming what is wrong."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    out = []
    allowed = {"op", "reason", "dtype", "case", "plugin_version", "device"}
    for i, e in enumerate(entries or []):
        label = f"{where}: known_failure {i + 1}"
        if not isinstance(e, dict):
            raise ConformanceError(f"{label} is a {type(e).__name__}, expected a table")
        extra = set(e) - allowed
        if extra:
            raise ConformanceError(f"{label} has unknown keys {sorted(extra)}; allowed: "
                                   f"{sorted(allowed)}")
        if not e.get("op") or not str(e.get("reason", "")).strip():
            raise ConformanceError(f"{label} needs an op and a non-empty reason")
        if e.get("device"):
            try:
                re.compile(e["device"])
            except re.error as exc:
                raise ConformanceError(f"{label}: device {e['device']!r} is not a regular "
                                       f"expression: {exc}") from None
        if e.get("plugin_version"):
            try:
                SpecifierSet(e["plugin_version"])
            except InvalidSpecifier:
                raise ConformanceError(f"{label}: plugin_version {e['plugin_version']!r} is "
                                       "not a version specifier like '>=1.0,<2'") from None
        out.append(KnownFailure(**{k: e[k] for k in allowed if k in e}))
    return out


def for_backend(backend: Any, device: Any) -> list[KnownFailure]:
    """Every known failure the backend declares, from its attribute and from the hook."""
    found: list[KnownFailure] = []
    declared = getattr(backend, "known_failures", None)
    if isinstance(declared, (str, Path)):
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        path = Path(declared)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConformanceError(f"known failures of '{backend.name}' at {path} cannot be "
                                   f"read: {exc}") from None
        found += parse(data.get("known_failure", []), str(path))
    elif declared:
        found += parse(list(declared), f"{backend.name}.known_failures")
    for contributed in plugin_manager().hook.backplane_known_failures(backend=backend.name,
                                                                      device=device):
        found += parse(contributed, "backplane_known_failures hook")
    return found


def lookup(known: list[KnownFailure], case_id: str, op: str, dtype: str,
           plugin_version: str | None, device_name: str) -> KnownFailure | None:
    """The first known failure covering a case, or None."""
    return next((k for k in known if k.applies(case_id, op, dtype, plugin_version, device_name)),
                None)
