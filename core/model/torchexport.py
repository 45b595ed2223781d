"""Torch modules as ONNX files: ``torch.onnx.export(dynamo=True)`` (torch.export underneath),
the weights beside the model in ``model.onnx.data``.

Used by :meth:`backplane.Session.from_torch` and by the ``torch.compile`` backend
(:mod:`backplane.pytorch`). Each export goes to a folder of its own: the one the caller
names, kept; else a fresh temporary folder, removed with the session that runs it
(:func:`remove_with`) or when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import logging
import re
import shutil
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

from backplane.sdk.errors import ModelError, UnsupportedError

#: The file name of an export inside its folder (its weights: ``model.onnx.data``).
MODEL_FILE = "model.onnx"
#: Characters of an exporter's message kept in a ModelError (torch.export's run to pages).
MESSAGE_CHARS = 400

_temporary: list[Path] = []
_lock = threading.Lock()


def torch_module() -> Any:
    """``torch``, or an UnsupportedError saying how to install it with the exporter."""
    try:
        import torch

        if importlib.util.find_spec("onnxscript") is None:  # the dynamo exporter needs it
            raise ImportError("No module named 'onnxscript'")
    except ImportError as exc:
        raise UnsupportedError(
            f"exporting a torch model needs torch and onnxscript ({exc}); install them with "
            "pip install torch onnxscript (for the CPU build: pip install torch==2.13.0 "
            "--index-url https://download.pytorch.org/whl/cpu)") from None
    return torch


def export(module: Any, args: tuple = (), kwargs: dict[str, Any] | None = None, *,
           dynamic_shapes: Any = None, folder: str | Path | None = None,
           what: str | None = None, input_names: list[str] | None = None,
           output_names: list[str] | None = None) -> Path:
    """Export ``module`` called with ``args``/``kwargs`` to ``folder/model.onnx``.

    ``dynamic_shapes`` is torch.export's (a dict per input, of axis to a ``Dim`` or a
    name; ``torch.export.Dim.AUTO`` lets the exporter decide). Raises ModelError naming
    the exporter's own reason when torch cannot export the module."""
    torch = torch_module()
    target = _folder(folder) / MODEL_FILE
    what = what or type(module).__name__
    try:
        # The exporter's progress lines and torch.export's FutureWarnings about its own
        # internals say nothing about the model; its failure says everything.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet(), \
                torch.no_grad():
            warnings.simplefilter("ignore")
            program = module
            if not isinstance(module, torch.export.ExportedProgram):
                # torch.export marks and then clears the dynamic dimensions of the tensors it
                # is given: the caller's own (a tensor dynamo is compiling for) keep theirs.
                args = tuple(_detached(torch, a) for a in args)
                kwargs = {k: _detached(torch, v) for k, v in (kwargs or {}).items()}
                program = torch.export.export(module, args, kwargs=kwargs or None,
                                              dynamic_shapes=dynamic_shapes, strict=False)
            _refuse_mutations(program, what)
            onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, report=False,
                                             input_names=input_names,
                                             output_names=output_names)
            onnx_program.save(str(target), external_data=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter failure is the model's to report
        raise ModelError(
            f"torch.onnx.export (dynamo) could not export {what}: {reason(exc)} (the "
            f"exporter's full report: torch.onnx.export(module, args, dynamo=True, "
            f"report=True))") from exc
    return target


def _detached(torch: Any, value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


#: Loggers whose warnings during an export are the exporter's own business (a constant
#: folding it skipped, torchvision ops it could not register).
QUIET = ("onnxscript", "torch.onnx", "torch.export", "torch._export")


@contextlib.contextmanager
def _quiet() -> Any:
    loggers = [logging.getLogger(name) for name in QUIET]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _refuse_mutations(program: Any, what: str) -> None:
    """A program that writes into its inputs or buffers (a cache updated in place, a batch
    norm in training mode) has no ONNX equivalent: an ONNX model returns values and never
    writes its inputs. torch.export's own graph keeps the in-place ops (its signature lists
    mutations only after functionalisation), so they are read from the ops' schemas."""
    written = set()
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None or not schema.is_mutable:
            continue
        for arg, value in zip(schema.arguments, node.args):
            if arg.alias_info is not None and arg.alias_info.is_write:
                root = _root(value)
                if getattr(root, "op", None) == "placeholder":
                    written.add(str(root.target))
    if written:
        raise ModelError(
            f"{what} writes into {', '.join(sorted(written))} in place; an ONNX model "
            f"cannot (call .eval() on the module, or return the new value instead)")


def _root(node: Any) -> Any:
    """The value a chain of views (``x[0]``, ``x.view(...)``) starts from."""
    for _ in range(64):
        schema = getattr(getattr(node, "target", None), "_schema", None)
        if getattr(node, "op", None) != "call_function" or schema is None or \
                not schema.returns or schema.returns[0].alias_info is None or not node.args:
            return node
        node = node.args[0]
    return node


def reason(exc: BaseException) -> str:
    """The exporter's failure in a line: the outermost exception's type and the innermost
    cause's first sentence (torch.onnx wraps the op it had no function for in pages of
    advice)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    inner = next((e for e in reversed(chain) if str(e).strip()), exc)
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).split())
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + " ..."
    if inner is exc:
        return f"{type(exc).__name__}: {text}"
    return f"{type(exc).__name__} ({type(inner).__name__}: {text})"


def _folder(folder: str | Path | None) -> Path:
    if folder is not None:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="backplane-torch-"))
    with _lock:
        if not _temporary:
            atexit.register(_remove_temporary)
        _temporary.append(path)
    return path


def remove_with(owner: Any, path: Path) -> None:
    """Remove ``path``'s folder when ``owner`` (the session running it) is collected, if it
    is one of the temporary folders (a folder the caller named is kept)."""
    folder = Path(path).parent
    with _lock:
        if folder not in _temporary:
            return
    weakref.finalize(owner, shutil.rmtree, folder, True)


def _remove_temporary() -> None:
    with _lock:
        for path in _temporary:
            shutil.rmtree(path, ignore_errors=True)
        _temporary.clear()
