"""A model repository: the models a server serves, where they are, and how each is run.

Two layouts:

- one ``.onnx`` file: one model, named by the file's stem, version ``1``;
- a folder with one sub-folder per model, named by the folder::

      models/
        mlp/                    # model "mlp", version 1
          model.onnx
          config.toml           # optional
        resnet/                 # model "resnet", versions 1 and 3 (Triton's layout)
          config.toml
          1/model.onnx
          3/model.onnx

A model's ``config.toml`` (every key optional)::

    devices = ["openvino-cpu", "onnxruntime"]   # or "auto" (default)
    policy = "latency"                           # Session(policy=...)
    precision = "fp32"                           # Session(precision=...), or "auto"
    max_rel_error = 1e-2                         # the budget of precision "auto"
    dims = { batch = 8 }                         # sizes to plan for

    [batching]                                   # Batcher(...)
    max_batch_size = 8
    max_delay_ms = 2.0
    preferred_batch_sizes = [4, 8]
    max_queue_size = 64
    timeout_s = 1.0                              # a request's default deadline
    workers = 1                                  # batches run at once

Each key is checked when the repository is read: an unknown key, or a value of the wrong
type, is a :class:`RepositoryError` that names the file and the key. Loading
(:meth:`Repository.load`) makes one :class:`~backplane.Session` and one
:class:`~backplane.engine.batcher.Batcher` per model version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backplane.engine.batcher import Batcher
from backplane.engine.session import Session
from backplane.sdk.contract import POLICIES, PRECISIONS
from backplane.sdk.errors import BackplaneError, ModelError, did_you_mean
from backplane.sdk.text import shown
from backplane.serving.protocol import datatype_of, shape_of

#: The file name of a model inside its folder (or its version folder).
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"
#: The version a model without version folders has.
DEFAULT_VERSION = "1"


class RepositoryError(ModelError):
    """A model repository's layout, or a model's ``config.toml``, is wrong; the message
    names the file (and the key) and says what is expected."""


class ModelNotFoundError(BackplaneError):
    """A request names a model, or a version of one, that the server does not serve
    (HTTP 404)."""


# --- configuration -------------------------------------------------------------------

def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: key -> (check, what it must be), for the top level and the [batching] table.
_MODEL_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "devices": (lambda v: v == "auto" or (isinstance(v, list) and bool(v) and all(
        isinstance(d, str) and d for d in v)), '"auto" or a non-empty list of device ids '
                                                "and backend names"),
    "policy": (lambda v: v in POLICIES, f"one of {', '.join(POLICIES)}"),
    "precision": (lambda v: v == "auto" or v in PRECISIONS,
                  f"\"auto\" or one of {', '.join(PRECISIONS)}"),
    "max_rel_error": (lambda v: _number(v) and v > 0, "a positive number"),
    "dims": (lambda v: isinstance(v, dict) and all(_positive_int(n) for n in v.values()),
             "a table of dimension name = positive integer"),
    "batching": (lambda v: isinstance(v, dict), "a table ([batching])"),
}
_BATCHING_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_batch_size": (_positive_int, "an integer >= 1 (1: no batching)"),
    "max_delay_ms": (lambda v: _number(v) and v >= 0, "a number of milliseconds >= 0"),
    "preferred_batch_sizes": (lambda v: isinstance(v, list) and all(_positive_int(n)
                                                                    for n in v),
                              "a list of integers >= 1"),
    "max_queue_size": (_positive_int, "an integer >= 1"),
    "timeout_s": (lambda v: _number(v) and v > 0, "a positive number of seconds"),
    "workers": (_positive_int, "an integer >= 1 (batches run at once)"),
}


@dataclass(frozen=True)
class ModelConfig:
    """A model's settings: what ``config.toml`` says, with the server's overrides.

    ``session`` holds keyword arguments of :class:`~backplane.Session` (``devices``,
    ``policy``, ``precision``, ``max_rel_error``, ``dims``); ``batching`` those of
    :class:`~backplane.engine.batcher.Batcher`. Keys not set are left to their defaults.
    """

    session: dict[str, Any] = field(default_factory=dict)
    batching: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    """The config.toml it was read from, or None."""

    def with_overrides(self, session: Mapping[str, Any] | None = None,
                       batching: Mapping[str, Any] | None = None) -> "ModelConfig":
        """This config with the given keys replaced (values of None are left alone)."""
        given = {k: v for k, v in (batching or {}).items() if v is not None}
        merged = {**self.batching, **given}
        if "max_batch_size" in given and "preferred_batch_sizes" not in given and \
                "preferred_batch_sizes" in merged:  # (sizes over the new maximum are moot)
            merged["preferred_batch_sizes"] = [n for n in merged["preferred_batch_sizes"]
                                               if n <= given["max_batch_size"]]
        return ModelConfig({**self.session, **{k: v for k, v in (session or {}).items()
                                               if v is not None}}, merged, self.source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"session": dict(self.session), "batching": dict(self.batching),
                "source": self.source}


def read_config(path: Path) -> ModelConfig:
    """Read and check one ``config.toml``.

    Raises:
        RepositoryError: the file is no TOML, a key is unknown, or a value has the wrong
            type; the message names the file and the key.
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RepositoryError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot be read: {exc}") from None
    _check(path, data, _MODEL_KEYS, "")
    batching = dict(data.pop("batching", {}))
    _check(path, batching, _BATCHING_KEYS, "batching.")
    return ModelConfig(data, batching, str(path))


def _check(path: Path, data: dict[str, Any], keys: Mapping[str, tuple[Callable, str]],
           prefix: str) -> None:
    for key, value in data.items():
        if key not in keys:
            raise RepositoryError(
                f"{path}: unknown key '{prefix}{shown(key)}'; the keys are "
                f"{', '.join(prefix + k for k in keys)}.{did_you_mean(key, keys)}")
        check, what = keys[key]
        if not check(value):
            raise RepositoryError(f"{path}: key '{prefix}{key}' must be {what}, not "
                                  f"{shown(repr(value))}")


# --- layout --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    """One version of one model in a repository (not loaded)."""

    name: str
    version: str
    path: Path
    config: ModelConfig


class Repository:
    """The models found at ``path`` (a ``.onnx`` file or a repository folder), read and
    checked, not loaded.

    Attributes:
        path: where the repository is.
        entries: every model version, sorted by name then version.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_file():
            if self.path.suffix != ".onnx":
                raise RepositoryError(f"{self.path}: a model repository is one .onnx file or "
                                      "a folder of model folders")
            self.entries = [ModelEntry(self.path.stem, DEFAULT_VERSION, self.path,
                                       ModelConfig())]
        elif self.path.is_dir():
            self.entries = _scan(self.path)
        else:
            raise RepositoryError(f"{self.path}: no such file or folder")

    def names(self) -> list[str]:
        """The model names, sorted."""
        return sorted({e.name for e in self.entries})

    def load(self, session: Mapping[str, Any] | None = None,
             batching: Mapping[str, Any] | None = None,
             observer: Callable[[ModelEntry], Callable[[Any], None] | None] | None = None,
             on_loaded: Callable[["ServedModel"], None] | None = None
             ) -> dict[str, dict[str, "ServedModel"]]:
        """Make a Session and a Batcher for every model version: ``{name: {version:
        ServedModel}}``. ``session`` and ``batching`` override every config.toml (values
        of None are left alone); ``observer(entry)`` gives each Batcher's observer;
        ``on_loaded`` is called after each model is loaded (progress)."""
        served: dict[str, dict[str, ServedModel]] = {}
        try:
            for entry in self.entries:
                config = entry.config.with_overrides(session, batching)
                try:
                    model = ServedModel(entry, config, observer(entry) if observer else None)
                except BackplaneError as exc:  # say which model, whatever the error's type
                    exc.args = (f"model '{shown(entry.name)}' version {entry.version} "
                                f"({entry.path}): {exc}",)
                    raise
                served.setdefault(entry.name, {})[entry.version] = model
                if on_loaded:
                    on_loaded(model)
        except BaseException:
            for versions in served.values():
                for model in versions.values():
                    model.batcher.close(drain=False)
            raise
        return served


def _scan(root: Path) -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()
                         and not p.name.startswith((".", "__"))):
        config_path = folder / CONFIG_FILE
        config = read_config(config_path) if config_path.is_file() else ModelConfig()
        versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name))
        plain = folder / MODEL_FILE
        if plain.is_file() and versions:
            raise RepositoryError(f"{folder}: holds both {MODEL_FILE} and version folders "
                                  f"({', '.join(p.name for p in versions)}); keep one layout")
        if plain.is_file():
            entries.append(ModelEntry(folder.name, DEFAULT_VERSION, plain, config))
            continue
        found = [p for p in versions if (p / MODEL_FILE).is_file()]
        if not found:
            raise RepositoryError(f"{folder}: no {MODEL_FILE} in it nor in a numeric version "
                                  f"folder ({folder.name}/1/{MODEL_FILE})")
        entries += [ModelEntry(folder.name, str(int(p.name)), p / MODEL_FILE, config)
                    for p in found]
    if not entries:
        loose = sorted(p.name for p in root.glob("*.onnx"))
        hint = (f"; to serve {loose[0]}, pass the file itself, or move it to "
                f"{Path(loose[0]).stem}/{MODEL_FILE}" if loose else "")
        raise RepositoryError(f"{root}: no model folders (NAME/{MODEL_FILE} or "
                              f"NAME/1/{MODEL_FILE}){hint}")
    return entries


# --- loaded models -------------------------------------------------------------------

class ServedModel:
    """One model version, loaded: its Session and the Batcher requests go through.

    Attributes:
        name, version: as served.
        entry: where it came from.
        config: the settings it was loaded with.
        session: the :class:`~backplane.Session`.
        batcher: the :class:`~backplane.engine.batcher.Batcher`.
    """

    def __init__(self, entry: ModelEntry, config: ModelConfig,
                 observer: Callable[[Any], None] | None = None):
        self.entry, self.config = entry, config
        self.name, self.version = entry.name, entry.version
        self.session = Session(str(entry.path), **config.session)
        self.batcher = Batcher(self.session, observer=observer, **config.batching)

    def metadata(self) -> dict[str, Any]:
        """The model's Open Inference Protocol metadata (name, versions, platform, inputs
        and outputs with their datatype and shape, -1 for a dynamic dimension). Its
        ``versions`` is this version alone; the server lists every version it serves."""

        def tensors(infos: list[Any]) -> list[dict[str, Any]]:
            return [{"name": vi.name, "datatype": datatype_of(vi.dtype) or vi.dtype.upper(),
                     "shape": shape_of(vi.shape)} for vi in infos]

        return {"name": self.name, "versions": [self.version], "platform": "onnx",
                "inputs": tensors(self.session.inputs), "outputs": tensors(self.session.outputs)}

    def config_data(self) -> dict[str, Any]:
        """The settings it runs with: the batcher's, the session's, and the plan (as data,
        and explained)."""
        plan = self.session.plan
        return {"name": self.name, "version": self.version, "path": str(self.entry.path),
                "config": self.config.to_dict(), "batcher": self.batcher.config(),
                "plan": plan.to_dict(), "explain": plan.explain()}

    def devices(self) -> list[str]:
        """The device ids the current plan runs on."""
        return self.session.plan.devices_used
