"""The real-model corpus: public models, kept as a recipe (``corpus.toml``), never as files.

Each entry says where its model comes from: an ``.onnx`` file shipped inside a PyPI package
(pinned version, path in the archive, the file's sha256), an architecture built from a
torch/transformers config with random weights and exported by one of torch's two exporters
(TorchScript-based ``dynamo=False``, or ``dynamo=True``), or a float entry quantized to QDQ
int8 by ``onnxruntime.quantization``. :func:`materialize` makes the file under the user cache
folder (``backplane.cache.cache_root()``, ``BACKPLANE_CACHE_DIR``) and checks every file's
sha256 each time it is read back; :func:`sample_inputs` gives inputs the model accepts;
:func:`check` runs it through backplane and through the runtimes directly::

    from backplane.conformance import corpus
    rec = corpus.check("bert-ts14")
    print(rec.outcome)      # "pass", or "gap: <what failed>"
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backplane.cache import cache_dir, cache_key
from backplane.conformance import tomllib
from backplane.errors import BackplaneError, ConformanceError, did_you_mean

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


# ------------------------------------------------------------------------ materializing

def materialize(name: str | Entry) -> Path:
    """The path of the model's ``.onnx`` file, made on first use and checked on every use.

    A cached copy whose files no longer match the sha256 recorded when it was made (or,
    for a PyPI file, the sha256 pinned in the recipe) is discarded and made again. A fresh
    download that does not match the pinned sha256 raises :class:`CorpusError`.
    """
    import onnx  # deferred: listing the corpus needs no onnx

    e = entry(name)
    folder = _folder(e)
    if _verified(folder, e):
        return folder / MODEL_FILE
    work = Path(tempfile.mkdtemp(prefix=f".{e.name}-", dir=folder.parent))
    try:
        {"pypi": _fetch_pypi, "export": _export, "quantize": _quantize}[e.kind](e, work)
        opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(
            str(work / MODEL_FILE), load_external_data=False).opset_import}
        if opsets.get("ai.onnx") != e.opset:
            raise CorpusError(f"{e.name}: the recipe says opset {e.opset}, the file has "
                              f"{opsets.get('ai.onnx')}")
        files = {p.name: _sha256(p) for p in sorted(work.iterdir()) if p.is_file()}
        (work / MANIFEST).write_text(json.dumps({"entry": e.name, "files": files}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(work, folder)
        except OSError:  # another process made it meanwhile: use theirs once it checks
            if not _verified(folder, e):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder / MODEL_FILE


def _folder(e: Entry) -> Path:
    # caching off, or a cache folder that is not private: one private folder for this process
    root = cache_dir("corpus")
    root = root.parent if root is not None else _private()
    parts: tuple[Any, ...] = (LAYOUT, e.source)
    if e.kind != "pypi":  # a build depends on its inputs, its base and the tools' versions
        base = entry(e.source["quantize"]).source if e.kind == "quantize" else None
        parts += (e.inputs, base, _versions("torch", "transformers", "onnxscript",
                                            "onnxruntime"))
    folder = root / "corpus" / f"{e.name}-{cache_key(*parts)[:16]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


@functools.cache
def _private() -> Path:
    return Path(tempfile.mkdtemp(prefix="backplane-corpus-"))


def _verified(folder: Path, e: Entry) -> bool:
    """Whether ``folder`` holds the entry's files, each with its recorded sha256."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        if e.kind == "pypi" and files.get(MODEL_FILE) != e.source["sha256"]:
            return False
        return MODEL_FILE in files and all("/" not in f and _sha256(folder / f) == h
                                           for f, h in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    found = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    return {n: found.get(n, "absent") for n in names}


def _fetch_pypi(e: Entry, work: Path) -> None:
    """Download the pinned distribution with pip, take the member out, check its sha256."""
    spec, member, want = e.source["pypi"], e.source["member"], e.source["sha256"]
    with tempfile.TemporaryDirectory(prefix="backplane-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", tmp, spec]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        archives = sorted(Path(tmp).iterdir())
        if done.returncode != 0 or not archives:
            raise CorpusError(f"{e.name}: 'pip download {spec}' failed: "
                              f"{(done.stderr or done.stdout).strip()[-800:]}")
        target = work / MODEL_FILE
        try:  # wheels only: an sdist would be built to read its metadata
            with zipfile.ZipFile(archives[0]) as wheel, wheel.open(member) as src, \
                    open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise CorpusError(f"{e.name}: {archives[0].name} holds no '{member}'") from exc
    got = _sha256(target)
    if got != want:
        raise CorpusError(f"{e.name}: {member} from {spec} has sha256 {got}, but the recipe "
                          f"pins {want}; refusing it. The package index serves another file: "
                          f"check it, and update sha256 in {RECIPE.name} only if it is meant")


# ------------------------------------------------------------------------ inputs

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


# ------------------------------------------------------------------------ exports

def _export(e: Entry, work: Path) -> None:
    """Build the architecture with random weights under a fixed seed and export it."""
    s = e.source
    feeds = sample_inputs(e)
    names = list(feeds)
    try:
        import torch  # deferred: torch is only needed to build exported entries

        torch.manual_seed(s.get("seed", 0))
        module = _wrappers()[s["export"]](s, names).eval()
    except ImportError as exc:
        raise CorpusError(f"{e.name}: exports need torch, transformers and onnxscript ({exc}); "
                          f"install them with pip install 'backplane-hal[test]'") from exc
    args = tuple(torch.from_numpy(np.array(v)) for v in feeds.values())
    outputs = list(s["outputs"])
    if s["export"] == "decoder-with-past":
        outputs += [f"present.{i}.{k}" for i in range(s["layers"]) for k in ("key", "value")]
    dims = {n: {i: d for i, d in enumerate(spec.get("dims", [])) if d}
            for n, spec in e.inputs.items()}
    target = str(work / MODEL_FILE)
    log = io.StringIO()
    try:
        # the exporters' progress lines and tracer warnings say nothing about the model
        with contextlib.redirect_stdout(log), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if s["exporter"] == "torchscript":
                torch.onnx.export(module, args, target, dynamo=False, opset_version=e.opset,
                                  input_names=names, output_names=outputs,
                                  dynamic_axes={n: d for n, d in dims.items() if d})
            else:  # every wrapper takes *args: one entry of dynamic_shapes, a tuple
                auto = torch.export.Dim.AUTO
                shapes = tuple({i: auto for i in dims[n]} or None for n in names)
                torch.onnx.export(module, args, target, dynamo=True, opset_version=e.opset,
                                  input_names=names, output_names=outputs,
                                  dynamic_shapes=(shapes,), external_data=True)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is the recipe's to report
        raise CorpusError(f"{e.name}: export failed: {type(exc).__name__}: "
                          f"{str(exc)[:800]}\n{log.getvalue()[-800:]}") from exc


def _build(source: dict[str, Any], model: str | None = None, config: str | None = None) -> Any:
    """A transformers model from its config class and the recipe's config_args (random
    weights from torch's generator; nothing is downloaded)."""
    import importlib

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _import_hub_kernels()
    import transformers  # deferred: only exported entries need it

    def find(path: str) -> Any:
        module, _, attr = path.rpartition(".")
        return getattr(importlib.import_module(f"transformers.{module}") if module
                       else transformers, attr)

    cfg = find(config or source["config"])(**source.get("config_args", {}))
    return find(model or source["model"])(cfg)


def _import_hub_kernels() -> None:
    """Import the Hugging Face ``kernels`` package, which transformers (5.25 and later)
    imports where it is installed, before transformers does. Run from a backplane checkout
    (``python -m`` puts the working folder first on ``sys.path``), the name ``kernels``
    finds backplane's own kernel sources (``kernels/``, the ``backplane.kernels``
    package) instead, and transformers fails on it. The installed package is imported with
    that folder off the path, and the path is restored."""
    import importlib
    import importlib.util

    import backplane.kernels

    try:
        spec = importlib.util.find_spec("kernels")
    except (ImportError, ValueError):
        return
    ours = Path(backplane.kernels.__file__).resolve()
    if spec is None or spec.origin is None or Path(spec.origin).resolve() != ours:
        return  # not shadowed
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ours.parent.parent]
    sys.modules.pop("kernels", None)
    try:
        importlib.import_module("kernels")
    except ImportError:
        sys.modules.pop("kernels", None)  # not installed: transformers will not ask for it
    finally:
        sys.path[:] = saved


@functools.cache
def _wrappers() -> dict[str, Any]:
    """The torch modules the recipe exports, by ``export`` kind. Defined on first use: they
    derive from ``torch.nn.Module``, and this module must import without torch."""
    import torch

    class Outputs(torch.nn.Module):
        """A transformers model fed the inputs by name; its first len(outputs) tensors out."""

        def __init__(self, source: dict[str, Any], names: list[str]) -> None:
            super().__init__()
            self.model, self.names, self.n = _build(source), names, len(source["outputs"])

        def forward(self, *args: Any) -> Any:
            out = self.model(**dict(zip(self.names, args)), return_dict=False)
            out = out if isinstance(out, tuple) else (out,)
            return tuple(t for t in out if t is not None)[:self.n]

    class WithPast(torch.nn.Module):
        """One decoding step with a KV cache, as decoders are exported for generation: ids,
        mask, positions, past_key_values.{i}.key/value in; logits, present.{i}.* out."""

        def __init__(self, source: dict[str, Any], names: list[str]) -> None:
            super().__init__()
            self.model, self.layers = _build(source), source["layers"]

        def forward(self, *args: Any) -> Any:
            from transformers import DynamicCache

            input_ids, attention_mask, position_ids, past = args[0], args[1], args[2], args[3:]
            cache = DynamicCache()
            for i in range(self.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, past_key_values=cache, use_cache=True)
            present = [t for layer in out.past_key_values.layers
                       for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    class SSDLite(torch.nn.Module):
        """SSD-style: a transformers MobileNetV2 backbone, depthwise-separable heads on its
        last two feature maps, 6 prior boxes per cell (2 scales x 3 aspect ratios), softmax
        class scores and centre-size box decoding against the priors."""

        def __init__(self, source: dict[str, Any], names: list[str]) -> None:
            super().__init__()
            self.backbone = _build(source, "MobileNetV2Model", "MobileNetV2Config")
            self.k, size = source["num_classes"], source["config_args"]["image_size"]
            with torch.no_grad():  # the feature maps' sizes give the heads and the priors
                feats = self.features(torch.zeros(1, 3, size, size))
            self.heads = torch.nn.ModuleList(torch.nn.Sequential(
                torch.nn.Conv2d(f.shape[1], f.shape[1], 3, padding=1, groups=f.shape[1]),
                torch.nn.ReLU6(), torch.nn.Conv2d(f.shape[1], 6 * (self.k + 4), 1))
                for f in feats)
            self.register_buffer("priors", torch.cat([priors(*f.shape[2:]) for f in feats]))

        def features(self, x: Any) -> list[Any]:
            out = self.backbone(x, output_hidden_states=True, return_dict=True)
            return [out.hidden_states[-5], out.last_hidden_state]

        def forward(self, pixel_values: Any) -> Any:
            y = torch.cat([head(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, self.k + 4)
                           for f, head in zip(self.features(pixel_values), self.heads)], 1)
            d, p = y[..., self.k:], self.priors  # per prior: class logits, then box offsets
            centre = p[:, :2] + 0.1 * d[..., :2] * p[:, 2:]
            half = 0.5 * p[:, 2:] * torch.exp(0.2 * d[..., 2:])
            return y[..., :self.k].softmax(-1), torch.cat([centre - half, centre + half], -1)

    def priors(h: int, w: int) -> Any:
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                indexing="ij")
        boxes = [torch.cat([torch.stack([xs, ys], -1), torch.tensor(
            [scale * ratio ** 0.5, scale / ratio ** 0.5]).expand(h, w, 2)], -1)
            for scale in (1.5 / h, 2.5 / h) for ratio in (0.5, 1.0, 2.0)]
        return torch.stack(boxes, 2).reshape(-1, 4)

    return {"transformers": Outputs, "decoder-with-past": WithPast, "ssdlite": SSDLite}


# ------------------------------------------------------------------------ quantizing

def _quantize(e: Entry, work: Path) -> None:
    """QDQ int8 by ``quantize_static``, calibrated on random inputs of the float entry."""
    from onnxruntime.quantization import (  # deferred: only quantized entries need it
        CalibrationDataReader, QuantFormat, quantize_static)

    base = entry(e.source["quantize"])
    batches = [sample_inputs(base, seed=1 + i) for i in range(e.source.get("calibration", 4))]

    class Reader(CalibrationDataReader):
        get_next = functools.partial(next, iter(batches), None)

    try:
        quantize_static(str(materialize(base)), str(work / MODEL_FILE), Reader(),
                        quant_format=QuantFormat.QDQ)
    except Exception as exc:  # noqa: BLE001 - reported as the recipe's failure
        raise CorpusError(f"{e.name}: quantize_static failed: {type(exc).__name__}: {exc}"
                          ) from exc
    for leftover in work.glob("*-inferred.onnx"):  # quantize_static's shape-inferred copy
        leftover.unlink()


# ------------------------------------------------------------------------ checking

#: The backends a pinned run names, with the runtime each wraps (its direct run is the
#: pinned run's own reference).
PINNED = {"openvino-cpu": "openvino", "onnxruntime": "onnxruntime"}


@dataclass
class Record:
    """What :func:`check` found for one model. ``problems`` is empty when it passed."""

    name: str
    family: str
    origin: str
    opset: int
    expect: str
    rtol: float
    direct: dict[str, str] = field(default_factory=dict)
    """Per runtime called directly (onnxruntime, openvino): "ok" or its error."""
    auto: str = ""
    """"ok", or the error of the devices="auto" session."""
    auto_devices: list[str] = field(default_factory=list)
    fallback_ops: dict[str, int] = field(default_factory=dict)
    """Ops of the nodes the automatic plan put on the reference backend, with counts."""
    refused: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per device of the automatic plan: why it refused nodes (capability codes), counted."""
    pinned: dict[str, str] = field(default_factory=dict)
    """Per backend: "ok", "skipped: <why>" or the error of the pinned session."""
    rel_error: dict[str, float] = field(default_factory=dict)
    """Worst relative error of the outputs: "direct:openvino" and "auto" against ORT direct,
    "pinned:<backend>" against its own runtime direct (keys of direct:onnxruntime too);
    where one of those is over the budget, "oracle:<key>" is that path's distance from the
    float64 oracle and "oracle:direct:<runtime>" the runtime's own."""
    latency_s: dict[str, float] = field(default_factory=dict)
    """Median seconds per run (``check(..., runs=N)``), keyed as ``rel_error``."""
    materialize_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every check held."""
        return not self.problems

    @property
    def outcome(self) -> str:
        """"pass", or "gap: " and the problems: the form of the recipe's ``expect``."""
        return "pass" if self.passed else "gap: " + "; ".join(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (with ``outcome``), for JSON reports."""
        return {**asdict(self), "outcome": self.outcome}


def check(name: str | Entry, *, runs: int = 0, warmup: int = 3) -> Record:
    """Run the model on ONNX Runtime and OpenVINO directly, then through backplane with
    ``devices="auto"`` and pinned to ``openvino-cpu`` and to ``onnxruntime`` (each where
    its runtime reads the model directly). It passes when the automatic plan puts no node
    on the reference backend and is within the entry's ``rtol`` (relative to each output's
    largest magnitude) of ORT direct, and each pinned run is within it of its own runtime
    direct. A float run over the budget still agrees when it is no farther from the float64
    oracle (:func:`backplane.conformance.oracle.expected`) than the runtime it is compared
    with: the budget is then finer than that runtime's own float32 rounding on this model.
    With ``runs``, each path is timed: the median of ``runs`` calls after ``warmup``.
    """
    e = entry(name)
    rec = Record(e.name, e.family, e.origin, e.opset, e.expect, e.rtol)
    t0 = time.perf_counter()
    path = materialize(e)
    rec.materialize_s = time.perf_counter() - t0
    feeds = sample_inputs(e)
    results: dict[str, dict[str, np.ndarray]] = {}
    for runtime, make in (("onnxruntime", _ort_direct), ("openvino", _openvino_direct)):
        try:
            fn = make(path)
            results[runtime] = fn(feeds)
            rec.direct[runtime] = "ok"
            _time(rec, f"direct:{runtime}", fn, feeds, runs, warmup)
        except Exception as exc:  # noqa: BLE001 - a runtime's own failure is a finding
            rec.direct[runtime] = f"{type(exc).__name__}: {_short(exc)}"
    ref = results.get("onnxruntime")
    if ref is None:
        rec.problems.append("onnxruntime cannot run it directly: " + rec.direct["onnxruntime"])
    elif "openvino" in results:
        rec.rel_error["direct:openvino"] = _rel_error(results["openvino"], ref)
    truth = _Oracle(path, feeds)
    _through_backplane(rec, e, None, path, feeds, (ref, "onnxruntime", truth), runs, warmup)
    for backend, runtime in PINNED.items():
        if runtime in results:
            _through_backplane(rec, e, backend, path, feeds,
                               (results[runtime], runtime, truth), runs, warmup)
        else:
            rec.pinned[backend] = f"skipped: {runtime} cannot read it directly"
    return rec


class _Oracle:
    """The float64 oracle's outputs for a model's sample inputs, evaluated on first use
    (only where a run is over its budget: onnx.reference is slow on big models)."""

    _UNSET: Any = object()

    def __init__(self, path: Path, feeds: dict[str, np.ndarray]):
        self.path, self.feeds = path, feeds
        self._out: Any = self._UNSET

    def outputs(self) -> dict[str, np.ndarray] | None:
        """The outputs, or None where the oracle cannot evaluate the model in float64."""
        if self._out is self._UNSET:
            import onnx

            from backplane.conformance.oracle import FLOAT64, expected_with_mode

            try:
                out, mode = expected_with_mode(onnx.load(str(self.path)), self.feeds)
                self._out = out if mode == FLOAT64 else None
            except Exception:  # noqa: BLE001 - no arbitration then: the budget stands
                self._out = None
        return self._out


def _arbitrated(rec: Record, label: str, out: dict[str, np.ndarray], compared: tuple
                ) -> bool:
    """Whether ``out``, over the budget against the runtime's answer, is no farther from
    the float64 oracle than that runtime's answer is (recorded in ``rec.rel_error``)."""
    ref, runtime, truth = compared
    exact = truth.outputs()
    if exact is None:
        return False
    mine = rec.rel_error[f"oracle:{label}"] = _rel_error(out, exact)
    theirs = rec.rel_error[f"oracle:direct:{runtime}"] = _rel_error(ref, exact)
    return mine <= max(rec.rtol, theirs)


def _through_backplane(rec: Record, e: Entry, backend: str | None, path: Path,
                       feeds: dict[str, np.ndarray], compared: tuple,
                       runs: int, warmup: int) -> None:
    """One Session: ``devices="auto"`` (backend None) or pinned to ``backend``;
    ``compared`` is (the runtime's outputs or None, that runtime, the :class:`_Oracle`)."""
    import backplane as bp

    ref = compared[0]

    what = f"pinned to {backend}" if backend else "auto"
    try:
        session = bp.Session(str(path), devices=[backend] if backend else "auto")
        out = session.run(feeds)
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded; a non-backplane error is a finding too
        status = _error(exc)
        rec.problems.append(f"{what}: {status}")
    if backend:
        rec.pinned[backend] = status
    else:
        rec.auto = status
    if status != "ok":
        return
    if not backend:
        placements = session.plan.placements
        rec.auto_devices = sorted({p.device for p in placements})
        rec.fallback_ops = dict(Counter(p.op for p in placements if p.fallback))
        if rec.fallback_ops:
            rec.problems.append("auto: on reference: " + ", ".join(
                f"{op} x{n}" for op, n in sorted(rec.fallback_ops.items())))
        for p in placements:  # what each device refused, for whoever widens its coverage
            for r in p.rejected:
                if r.code.startswith("capability"):
                    refused = rec.refused.setdefault(r.device, {})
                    refused[r.detail] = refused.get(r.detail, 0) + 1
    label = f"pinned:{backend}" if backend else "auto"
    if ref is not None:
        err = rec.rel_error[label] = _rel_error(out, ref)
        if not err <= e.rtol and not (math.isfinite(err) and _arbitrated(rec, label, out,
                                                                           compared)):
            rec.problems.append(f"{what}: relative error {err:.3g} > {e.rtol:g} against "
                                + (f"{PINNED[backend]} called directly" if backend else "ORT"))
    _time(rec, label, session.run, feeds, runs, warmup)


def _ort_direct(path: Path) -> Any:
    import onnxruntime as ort  # deferred: a vendor runtime

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: exporters' wrong declared shapes warn per run
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds)))


def _openvino_direct(path: Path) -> Any:
    import openvino as ov  # deferred: a vendor runtime
    import openvino.properties.hint as hints

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        hints.inference_precision: ov.Type.f32,
        hints.performance_mode: hints.PerformanceMode.LATENCY})
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request.infer(feeds)
        return {n: np.array(request.get_output_tensor(i).data) for i, n in enumerate(names)}
    return run


def _rel_error(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """The largest, over the reference's outputs, of max|a-b| / max|b| (max|a-b| where b is
    all zeros); integer and boolean outputs must be equal (else inf), as must shapes."""
    worst = 0.0
    for i, (name, b) in enumerate(ref.items()):
        a = out.get(name, list(out.values())[i] if i < len(out) else None)  # else by position
        a, b = (None if a is None else np.asarray(a)), np.asarray(b)
        if a is None or a.shape != b.shape:
            return float("inf")
        if not np.issubdtype(b.dtype, np.floating):  # integers and booleans: equal, or inf
            worst = worst if np.array_equal(a, b) else float("inf")
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(a64) & np.isfinite(b64)  # non-finite values must agree exactly
        if not np.array_equal(a64[~finite], b64[~finite], equal_nan=True):
            return float("inf")
        diff = float(np.max(np.abs(a64 - b64)[finite], initial=0.0))
        scale = float(np.max(np.abs(b64)[finite], initial=0.0))
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _time(rec: Record, label: str, fn: Any, feeds: dict[str, np.ndarray], runs: int,
          warmup: int) -> None:
    if runs <= 0:
        return
    for _ in range(warmup):
        fn(feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(feeds)
        times.append(time.perf_counter() - t)
    rec.latency_s[label] = statistics.median(times)


def _error(exc: BaseException) -> str:
    """The error in one line; one that is no BackplaneError is marked: it escaped backplane."""
    unexpected = "" if isinstance(exc, BackplaneError) else f"unexpected {type(exc).__module__}."
    return f"{unexpected}{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException, limit: int = 400) -> str:
    """One line; a long message keeps its head and its tail (where runtimes put the cause)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else f"{text[:limit // 2]} ... {text[-limit // 2:]}"
