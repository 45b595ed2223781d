"""The corpus recipe (``corpus.toml``): its entries, and the sample inputs each model takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backplane.conformance import tomllib
from backplane.sdk.errors import ConformanceError, did_you_mean

RECIPE = Path(__file__).with_name("corpus.toml")
#: The default accuracy budget: max|a-b| / max|b| per output, against ORT called directly.
RTOL = 1e-4
#: Bumped when the way a model is materialized changes, so that cached copies are remade.
LAYOUT = 2
MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"


class CorpusError(ConformanceError):
    """A corpus model could not be materialized: a download, a checksum or an export failed."""


@dataclass(frozen=True)
class Entry:
    """One model of the recipe (see the header of ``corpus.toml`` for each field)."""

    name: str
    family: str
    opset: int
    source: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    expect: str = "pass"
    ci: bool = False
    rtol: float = RTOL

    @property
    def kind(self) -> str:
        """``pypi``, ``export`` or ``quantize``."""
        return next(k for k in ("pypi", "export", "quantize") if k in self.source)

    @property
    def origin(self) -> str:
        """Where the model comes from, in a few words."""
        s = self.source
        if self.kind == "pypi":
            return f"pypi {s['pypi']}:{s['member'].rsplit('/', 1)[-1]}"
        if self.kind == "export":
            return f"{s['export']} {s.get('model', 'MobileNetV2')} {s['exporter']}"
        return f"quantize_static QDQ of {s['quantize']}"


def entries() -> list[Entry]:
    """Every model of the recipe, in its order."""
    return [Entry(**m) for m in tomllib.loads(RECIPE.read_text())["model"]]


def entry(name: str | Entry) -> Entry:
    """The entry called ``name`` (an Entry is returned as it is)."""
    if isinstance(name, Entry):
        return name
    found = {e.name: e for e in entries()}
    if name not in found:
        raise CorpusError(f"no corpus model '{name}' in {RECIPE}."
                          f"{did_you_mean(name, found)}")
    return found[name]


def sample_inputs(name: str | Entry, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs the model accepts, from the recipe's input specs, drawn with ``seed``."""
    e = entry(name)
    rng = np.random.default_rng(seed)
    return {n: _fill(spec, rng) for n, spec in e.inputs.items()}


def _fill(spec: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    shape, fill = tuple(spec["shape"]), spec["fill"]
    if fill == "image":  # pixels in [0, 1), normalised by a typical mean and deviation
        x = (rng.random(shape) - 0.45) / 0.25
    elif fill == "normal":
        x = rng.standard_normal(shape) * spec.get("scale", 1.0)
    elif fill == "audio":  # a tone in noise, as a microphone would give
        t = np.arange(shape[-1]) / 16000.0
        x = np.broadcast_to(0.3 * np.sin(2 * np.pi * 440.0 * t), shape)
        x = np.clip(x + rng.normal(0.0, 0.05, shape), -1.0, 1.0)
    elif fill == "tokens":
        x = rng.integers(spec.get("low", 0), spec["high"], shape)
    elif fill == "range":  # position ids: start, start + 1, ... along the last axis
        x = np.broadcast_to(spec.get("start", 0) + np.arange(shape[-1]), shape)
    elif fill in ("ones", "value"):
        x = np.full(shape, spec.get("value", 1))
    else:
        raise CorpusError(f"unknown input fill '{fill}'")
    integral = fill in ("tokens", "ones", "range") or isinstance(spec.get("value"), int)
    # np.array, not np.ascontiguousarray: the latter makes a scalar input (shape []) 1-D
    return np.array(x, dtype=spec.get("dtype", "int64" if integral else "float32"), order="C")
