"""Where backends keep compiled artefacts on disk, and how they name and write them.

One folder per backend under the cache root: ``CompileOptions.cache_dir`` when the session
sets one, else ``BACKPLANE_CACHE_DIR`` (``off`` disables caching), else the per-user cache
folder (platformdirs). Keys are hashes of everything the artefact depends on (model bytes,
options, device, runtime version), so a change in any of them is a miss, never a stale hit.

Nothing read from the cache is trusted without a check: the folders are private to the
user (created 0700; one another user owns, or others may write, is not used), every
artefact is written through a unique temporary file and a rename with the SHA-256 of its
content before it (:func:`write_sealed`), and a file whose content no longer matches is
deleted and made again (:func:`read_sealed`), never handed to a runtime.
:class:`ArtifactCache` puts these together for one kind of artefact (folder, naming, seal,
pruning); a backend's cache is one of those and a get and a put.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

OFF = "off"


def cache_root(options: Any = None) -> Path | None:
    """The cache root, or None when caching is off."""
    chosen = getattr(options, "cache_dir", None) or os.environ.get("BACKPLANE_CACHE_DIR", "").strip()
    if chosen == OFF:
        return None
    if chosen:
        return Path(chosen)
    import platformdirs

    return Path(platformdirs.user_cache_dir("backplane", appauthor=False))


def cache_dir(backend: str, options: Any = None) -> Path | None:
    """The backend's own cache folder (created private, 0700), or None when caching is off,
    the folder cannot be created (a read-only home must not stop a compile), or the root or
    the folder is not private to this user (:func:`unsafe`: then a warning says which and
    what to do, once per folder, and nothing is read from or written there)."""
    root = cache_root(options)
    if root is None:
        return None
    folder = root / backend
    return folder if private_folder(root) and private_folder(folder) else None


def private_folder(path: Path, what: str = "cache") -> Path | None:
    """``path``, created private (0700) where it is missing, or None when it cannot be
    created or is not private to this user (:func:`unsafe`; a warning then says which and
    what to do, once per folder). Check a root before anything inside it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    why = unsafe(path)
    if why is not None:
        _warn_once(path, why, what)
        return None
    return path


def unsafe(path: Path) -> str | None:
    """Why ``path`` (a folder, followed through symbolic links) may not hold cached
    artifacts, or None when only this user can write there: a folder another user owns, or
    one that group or others may write (anyone who can plant a file in a cache can change
    results, or native code a backend loads)."""
    if not hasattr(os, "getuid"):  # no POSIX owners and modes to check (Windows)
        return None
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if st.st_uid != os.getuid():
        return f"it belongs to user id {st.st_uid}, not to this user ({os.getuid()})"
    if st.st_mode & 0o022:
        return f"group or others may write it (mode {st.st_mode & 0o777:o})"
    return None


_warned: set[str] = set()


def _warn_once(path: Path, why: str, what: str = "cache") -> None:
    import logging

    if str(path) in _warned:
        return
    _warned.add(str(path))
    variable = "BACKPLANE_CACHE_DIR" if what == "cache" else "BACKPLANE_DATA_DIR"
    logging.getLogger("backplane").warning(
        "backplane: the %s folder %s is not used: %s. Make it this user's own and private "
        "(chown, then chmod 700 %s), or set %s to a private folder%s.", what, path, why, path,
        variable, " ('off' disables caching)" if what == "cache" else "")


def cache_key(*parts: Any) -> str:
    """A stable hex key over ``parts`` (bytes as they are, anything else by its repr)."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, (bytes, bytearray, memoryview)) else repr(part).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def model_bytes(model: Any) -> bytes:
    """The deterministic serialisation of an ONNX ModelProto, for hashing."""
    return model.SerializeToString(deterministic=True)


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temporary file and a rename, so that a reader in
    another process never sees half a file. Returns False (and writes nothing) on OSError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except (OSError, NameError):
            pass
        return False


#: The first bytes of a sealed artefact; the SHA-256 of the rest follows, then a newline.
SEAL = b"backplane-sealed-v1 sha256:"


def write_sealed(path: Path, data: bytes) -> bool:
    """:func:`write_atomic` with the SHA-256 of ``data`` recorded before it, so that
    :func:`read_sealed` can tell a file that changed after it was written (a torn write, a
    bad disk, a hand edit) and never hands it to a runtime."""
    return write_atomic(path, SEAL + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def read_sealed(path: Path) -> bytes | None:
    """The data :func:`write_sealed` wrote at ``path``, or None when there is no file, or it
    does not match the hash recorded with it (then it is deleted, and a warning names it
    once: the caller computes the artefact again and writes it anew)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    digest, newline, data = raw[len(SEAL):].partition(b"\n")
    if not raw.startswith(SEAL) or not newline:
        why = "it carries no integrity seal (written by another program or an older release)"
    elif hashlib.sha256(data).hexdigest().encode() != digest:
        why = "its content does not match the hash recorded when it was written"
    else:
        return data
    _discard(Path(path), why)
    return None


def _discard(path: Path, why: str) -> None:
    import logging

    try:
        path.unlink()
    except OSError:
        pass
    if str(path) not in _warned:
        _warned.add(str(path))
        logging.getLogger("backplane").warning(
            "backplane: the cached file %s was not used and is deleted: %s; it is made again",
            path, why)


def cached_json(backend: str, key_parts: tuple[Any, ...],
                compute: Callable[[], dict[str, Any]], *, name: str = "capabilities",
                valid: Callable[[dict[str, Any]], bool] | None = None,
                use_cache: bool = True, shipped: Path | None = None,
                keep: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """A JSON object kept at ``cache_dir(backend)/NAME-KEY.json``, KEY being
    ``cache_key(*key_parts)`` (put in them everything the object depends on: runtime and
    backplane versions, a derivation version, the machine).

    Read from ``shipped`` (a file of the plugin's package data, written by
    :func:`write_shipped`) when it records the same KEY, then from that file in the cache,
    when either holds a JSON object that ``valid`` accepts (a missing, unreadable, corrupt,
    other-keyed or rejected file is a miss), else ``compute()``-d and written to the cache
    atomically. With ``use_cache`` False it is computed and nothing is read or written; with
    caching off only ``shipped`` is read. Used for tables that are slow to derive and the same
    until a version changes, such as the capabilities a graph-compiler backend derives from
    its runtime. A computed object that ``keep`` rejects (a derivation that could not be
    completed here) is returned but not written.
    """
    key = cache_key(*key_parts)
    if use_cache and shipped is not None:
        try:
            data = json.loads(Path(shipped).read_text("utf-8"))
            if isinstance(data, dict) and data.pop("key", None) == key and (
                    valid is None or valid(data)):
                return data
        except (OSError, ValueError):
            pass
    store = ArtifactCache(backend, prefix=f"{name}-", suffix=".json") if use_cache else None
    if store is None or store.folder is None:
        return compute()
    found = store.get_json(key, valid)
    if found is not None:
        return found
    with store.lock(key):  # one process derives; the others wait
        found = store.get_json(key, valid)
        if found is not None:
            return found
        data = compute()
        if keep is None or keep(data):
            store.put(key, json.dumps(data, indent=1, sort_keys=True).encode())
    return data


def read_json(path: Path, valid: Callable[[dict[str, Any]], bool] | None = None
              ) -> dict | None:
    """The JSON object :func:`write_sealed` wrote at ``path`` when its seal holds and
    ``valid`` (if given) accepts it, else None."""
    raw = read_sealed(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) and (valid is None or valid(data)) else None


class exclusive:
    """An advisory lock on ``path`` across processes (none where locks are unavailable)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self) -> None:
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            self.fd = None

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


def write_shipped(path: Path, key_parts: tuple[Any, ...], data: dict[str, Any]) -> None:
    """Write ``data`` as a shipped table for :func:`cached_json`, recording its KEY."""
    text = json.dumps({"key": cache_key(*key_parts), **data}, indent=1, sort_keys=True)
    Path(path).write_text(text + "\n", "utf-8")


def subfolder(backend: str, name: str, options: Any = None) -> Path | None:
    """``cache_dir(backend)/name`` (created), or None when caching is off or the folder
    cannot be created: where a graph compiler keeps its compiled blobs."""
    root = cache_dir(backend, options)
    if root is None:
        return None
    folder = root / name
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return folder


def prune(folder: Path, pattern: str, keep: int) -> None:
    """Delete the least recently used files matching ``pattern`` beyond the ``keep`` newest
    (by modification time; readers touch what they use). Never raises."""
    try:
        files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
        for old in files[:max(0, len(files) - keep)]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


class ArtifactCache:
    """One kind of artefact a backend keeps on disk: the files ``PREFIX + KEY + SUFFIX`` in
    ``cache_dir(backend, options)``, or in its subfolder ``under`` (:func:`subfolder`).

    Each is written sealed (:func:`write_sealed`) and checked on read (:func:`read_sealed`:
    a file that changed is deleted and is a miss, so the caller makes it again and puts it
    anew). With ``keep``, a hit touches its file and a put prunes the folder to the ``keep``
    newest files matching ``pattern`` (default ``PREFIX*SUFFIX``): the least recently used
    go first. ``folder`` is None when caching is off or the folder is not this user's own and
    private (:func:`cache_dir`): then every get is a miss and a put writes nothing.

    A KEY is a :func:`cache_key` (a str), or the tuple of parts to make one from."""

    def __init__(self, backend: str, options: Any = None, under: str | None = None, *,
                 prefix: str = "", suffix: str = ".bin", keep: int | None = None,
                 pattern: str | None = None):
        self.folder = (subfolder(backend, under, options) if under
                       else cache_dir(backend, options))
        self.prefix, self.suffix, self.keep = prefix, suffix, keep
        self.pattern = pattern or f"{prefix}*{suffix}"

    def path(self, key: str | tuple[Any, ...]) -> Path | None:
        """Where KEY's artefact is kept, or None when nothing is cached."""
        if self.folder is None:
            return None
        name = key if isinstance(key, str) else cache_key(*key)
        return self.folder / f"{self.prefix}{name}{self.suffix}"

    def get(self, key: str | tuple[Any, ...]) -> bytes | None:
        """KEY's artefact as it was put, or None (a miss: absent, changed, or not cached)."""
        path = self.path(key)
        data = read_sealed(path) if path is not None else None
        if data is not None and self.keep is not None:
            try:
                os.utime(path)  # pruning deletes the least recently used first
            except OSError:
                pass
        return data

    def get_json(self, key: str | tuple[Any, ...],
                 valid: Callable[[dict[str, Any]], bool] | None = None) -> dict | None:
        """KEY's artefact as a JSON object that ``valid`` (if given) accepts, else None."""
        path = self.path(key)
        return read_json(path, valid) if path is not None else None

    def put(self, key: str | tuple[Any, ...], data: bytes) -> bool:
        """Keep ``data`` as KEY's artefact (then prune, with ``keep``); whether it was
        written. Never raises."""
        path = self.path(key)
        if path is None or not write_sealed(path, data):
            return False
        if self.keep is not None:
            prune(path.parent, self.pattern, self.keep)
        return True

    def lock(self, key: str | tuple[Any, ...]) -> Any:
        """A context holding an advisory lock on KEY across processes (``.lock`` for its
        suffix), so that one process makes the artefact while the others wait."""
        path = self.path(key)
        return exclusive(path.with_suffix(".lock")) if path is not None else nullcontext()

    def clear(self) -> int:
        """Delete every artefact of this kind (``PREFIX*SUFFIX``); the number deleted."""
        removed = 0
        for path in self.folder.glob(f"{self.prefix}*{self.suffix}") if self.folder else ():
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
        return removed
