"""Loading the hwdb: shipped entries, plugin entries, user folders; validated, with precedence.

Sources, lowest precedence first:

1. ``shipped``: the TOML files of the ``backplane.hwdb`` package (``hwdb/`` in the repo).
2. ``plugin``: entries returned by ``backplane_hwdb_entries`` hook implementations.
3. ``user``: ``<user data dir>/hwdb/**/*.toml`` (platformdirs; ``BACKPLANE_DATA_DIR``
   moves the data dir).
4. ``path``: the folders of ``BACKPLANE_HWDB_PATH`` (``os.pathsep``-separated; an earlier
   folder wins over a later one).

An entry whose id is already taken by a lower-precedence source replaces it, and the
conflict is recorded in :attr:`HardwareDB.conflicts` and logged as a warning, unless the
entry says ``replaces = true``, which marks the replacement as intended (still recorded).
Two entries with one id from the *same* source are an error: the first is kept and the
second is reported as a problem. A file that does not parse or validate is skipped with a
warning naming the file, the field, the value and what was expected. Loading never
executes anything from a data file: TOML is parsed with ``tomllib``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backplane import hwdb
from backplane.hardware.checks import Problem, check
from backplane.hardware.schema import Entry
from backplane.sdk.cache import private_folder
from backplane.sdk.errors import BackplaneError, did_you_mean
from backplane.sdk.hooks import plugin_manager

log = logging.getLogger("backplane")

ORIGINS = ("shipped", "plugin", "user", "path")


class HwdbError(BackplaneError):
    """An hwdb entry is invalid, or a requested entry does not exist."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Loaded:
    """An entry and where it came from."""

    entry: Entry
    origin: str
    location: str


@dataclass(frozen=True)
class Conflict:
    """An id provided by two sources, and which one won."""

    id: str
    winner: Loaded
    loser: Loaded
    intended: bool

    def __str__(self) -> str:
        how = "replaces (replaces = true)" if self.intended else "overrides"
        return (f"hwdb entry '{self.id}' from {self.winner.origin} ({self.winner.location}) "
                f"{how} the {self.loser.origin} one ({self.loser.location})")


@dataclass
class HardwareDB:
    """Every valid entry by id, with the conflicts and problems met while loading."""

    entries: dict[str, Loaded] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def get(self, entry_id: str) -> Entry:
        """The entry ``vendor/sku``; raises HwdbError with a did-you-mean if there is none."""
        if entry_id in self.entries:
            return self.entries[entry_id].entry
        raise HwdbError(f"no hwdb entry '{entry_id}'; 'backplane hwdb list' shows the "
                        f"{len(self.entries)} entries.{did_you_mean(entry_id, self.entries)}")

    def __iter__(self):
        return iter(sorted(self.entries.values(), key=lambda x: x.entry.id))

    def __len__(self) -> int:
        return len(self.entries)


def data_dir() -> Path:
    """The per-user data folder (``BACKPLANE_DATA_DIR``, else platformdirs' user data dir)."""
    override = os.environ.get("BACKPLANE_DATA_DIR", "").strip()
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("backplane", appauthor=False))


def private_data_dir(create: bool = False) -> Path | None:
    """:func:`data_dir` when it is private to this user, else None (owned by another user,
    or writable by others: a warning says so, once). With ``create``, a missing folder is
    made (0700); without, a missing one is None (nothing to read). What backplane learns
    and stores there (conformance results, calibrations, cost corrections, hwdb entries) is
    read and written only through this."""
    root = data_dir()
    if not create and not root.is_dir():
        return None
    return private_folder(root, "data")


def shipped_dir() -> Path:
    """The folder of the shipped entries."""
    return Path(hwdb.__file__).resolve().parent


def _problems_of(exc: Any, file: str) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ()))
        value = err.get("input")
        if isinstance(value, dict):  # a missing field: pydantic hands the whole table
            value = None
        out.append(Problem(file, loc, value, err.get("msg", "")))
    return out


def parse_entry(data: Any, file: str) -> tuple[Entry | None, list[Problem]]:
    """Validate parsed TOML data as an entry, then check its plausibility."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        return None, [Problem(file, "", type(data).__name__, "a TOML table (an entry)")]
    try:
        entry = Entry.model_validate(data)
    except ValidationError as exc:
        return None, _problems_of(exc, file)
    problems = check(entry, file)
    return (None if problems else entry), problems


def read_file(path: str | os.PathLike, root: str | os.PathLike | None = None
              ) -> tuple[Entry | None, list[Problem]]:
    """Read and validate one TOML file.

    With ``root``, the file's path below it must be ``<id>.toml``; without, the path must
    end with ``<id>.toml`` (so an entry is always found where its id says).
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    file = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        return None, [Problem(file, "", None, f"a readable file ({exc.strerror or exc})")]
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem(file, "", None, f"valid TOML ({exc})")]
    entry, problems = parse_entry(data, file)
    if entry is not None:
        where = path.resolve().relative_to(Path(root).resolve()).as_posix() if root else \
            path.resolve().as_posix()
        if not (where == f"{entry.id}.toml" or (root is None and where.endswith(f"/{entry.id}.toml"))):
            problems.append(Problem(file, "id", entry.id,
                                    f"an id matching the file's place: store it as "
                                    f"'{entry.id}.toml' under an hwdb folder"))
            entry = None
    return entry, problems


def _folder_entries(root: Path) -> list[tuple[Path, Entry | None, list[Problem]]]:
    if not root.is_dir():
        return []
    return [(p, *read_file(p, root)) for p in sorted(root.glob("*/*.toml"))]


_db: HardwareDB | None = None
_lock = threading.Lock()


def load(refresh: bool = False) -> HardwareDB:
    """The process's hwdb, loaded on first use (or again with ``refresh=True``)."""
    global _db
    with _lock:
        if _db is None or refresh:
            _db = _load()
        return _db


def _load() -> HardwareDB:
    db = HardwareDB()
    layers: list[tuple[str, list[tuple[str, Entry | None, list[Problem]]]]] = []
    layers.append(("shipped", [(str(p), e, pr) for p, e, pr in _folder_entries(shipped_dir())]))
    layers.append(("plugin", _plugin_entries()))
    private = private_data_dir()
    layers.append(("user", [(str(p), e, pr) for p, e, pr in
                            (_folder_entries(private / "hwdb") if private else [])]))
    folders = [Path(p) for p in os.environ.get("BACKPLANE_HWDB_PATH", "").split(os.pathsep)
               if p.strip()]
    path_layer = []
    for folder in reversed(folders):  # the first folder listed wins: apply it last
        path_layer += [(str(p), e, pr) for p, e, pr in _folder_entries(folder)]
        if not folder.is_dir():
            db.problems.append(Problem(str(folder), "BACKPLANE_HWDB_PATH", str(folder),
                                       "an existing folder of <vendor>/<sku>.toml files"))
    layers.append(("path", path_layer))
    for origin, items in layers:
        seen_here: dict[str, str] = {}
        for location, entry, problems in items:
            db.problems += problems
            if entry is None:
                continue
            if entry.id in seen_here and origin != "path":
                db.problems.append(Problem(location, "id", entry.id,
                                           f"a unique id; '{seen_here[entry.id]}' already "
                                           f"declares it"))
                continue
            seen_here[entry.id] = location
            new = Loaded(entry, origin, location)
            old = db.entries.get(entry.id)
            if old is not None:
                conflict = Conflict(entry.id, new, old, entry.replaces)
                db.conflicts.append(conflict)
                if not entry.replaces:
                    log.warning("backplane: %s; set replaces = true in the entry if this is "
                                "intended", conflict)
            db.entries[entry.id] = new
    for p in db.problems:
        log.warning("backplane: hwdb entry skipped: %s", p)
    return db


def _plugin_entries() -> list[tuple[str, Entry | None, list[Problem]]]:
    out: list[tuple[str, Entry | None, list[Problem]]] = []
    for contributed in plugin_manager().hook.backplane_hwdb_entries():
        for i, item in enumerate(contributed if isinstance(contributed, list) else [contributed]):
            if isinstance(item, (str, os.PathLike)):
                out.append((str(item), *read_file(item)))
            else:
                label = f"plugin entry {item.get('id', i) if isinstance(item, dict) else i}"
                out.append((label, *parse_entry(item, label)))
    return out


def validate_paths(paths: list[str | os.PathLike]) -> tuple[int, list[Problem]]:
    """Validate files and folders (``*/*.toml`` below a folder): (files read, problems).

    Duplicate ids among the files given are problems too.
    """
    files: list[tuple[Path, Path | None]] = []
    problems: list[Problem] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [(f, p) for f in sorted(p.glob("*/*.toml"))]
        elif p.is_file():
            files.append((p, None))
        else:
            problems.append(Problem(str(p), "", None, "an existing file or folder"))
    seen: dict[str, str] = {}
    for f, root in files:
        entry, found = read_file(f, root)
        problems += found
        if entry is not None:
            if entry.id in seen:
                problems.append(Problem(str(f), "id", entry.id,
                                        f"a unique id; '{seen[entry.id]}' already declares it"))
            seen.setdefault(entry.id, str(f))
    return len(files), problems
