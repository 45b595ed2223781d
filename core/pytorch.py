"""``torch.compile(model, backend="backplane")``: each graph dynamo captures, exported to ONNX
and run by a :class:`backplane.Session` on the devices backplane picks.

::

    import torch
    compiled = torch.compile(model, backend="backplane")   # found through torch's entry points
    out = compiled(x)

torch finds the backend through the entry-point group ``torch_dynamo_backends``
(``torch._dynamo.list_backends()`` lists it). For each graph dynamo hands over:

- The module's parameters and buffers (graph inputs that dynamo reads from an
  ``nn.Module``) are frozen into the ONNX model as weights, as inductor's ``freezing``
  does. A weight changed in place (``optimizer.step()``, ``load_state_dict``) is seen
  (its tensor version moves) and the graph is exported again.
- Sizes dynamo marks dynamic stay dynamic in the ONNX model; a size the exporter fixed,
  and any Python number the graph takes, selects one session per value (at most
  :data:`SESSIONS` per graph, the oldest dropped).
- A graph that cannot be exported, or with an op that only the reference backend runs,
  runs eager with one warning naming why; ``options={"strict": True}`` raises instead.
- Inputs go to the session as numpy views of CPU tensors and outputs come back as
  ``torch.from_numpy`` views: no copies. Tensors on another device go through host
  memory (``Session.run`` takes host arrays).
- Backplane runs inference: outputs carry no autograd history. Under grad mode, a call
  whose inputs require grad runs eager (with one warning), so that ``backward`` works.

Options (``torch.compile(..., options={...})``): :class:`backplane.Session`'s keyword
arguments (``devices``, ``policy``, ``precision``, ``max_rel_error``, ``exclude``,
``tune``, ...), ``strict``, and ``export_dir`` (keep each graph's ONNX model there).
``mode="max-autotune"`` measures the candidate plans always (``tune="on"``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from backplane.engine.session import Session
from backplane.model import torchexport
from backplane.sdk.errors import UnsupportedError

#: Sessions one graph keeps, one per specialisation (Python numbers, sizes the exporter fixed).
SESSIONS = 8
#: A specialisation that could not be exported or compiled: its calls run eager.
EAGER = ("eager",)
#: Session keyword arguments that ``options`` may carry.
SESSION_OPTIONS = ("devices", "policy", "precision", "max_rel_error", "strict", "device_class",
                   "exclude", "memory_headroom", "tune", "fast_start", "tune_budget_s",
                   "options", "verify", "cooldown_s", "compile_timeout_s")
#: Options of the backend itself.
BACKEND_OPTIONS = ("export_dir",)
#: torch.compile modes that ask for the most measured plan.
TUNED_MODES = ("max-autotune", "max-autotune-no-cudagraphs")

log = logging.getLogger("backplane")
_graphs = itertools.count()
_compiled: list[weakref.ref] = []  # every CompiledGraph of this process, oldest first


def graphs() -> list["CompiledGraph"]:
    """The graphs compiled by this backend in this process that are still in use, oldest
    first; each one's ``sessions_list()`` gives the :class:`backplane.Session` objects it
    runs."""
    return [g for g in (ref() for ref in list(_compiled)) if g is not None]


def explain() -> str:
    """Each compiled graph's plans: which device runs what, and why."""
    parts = []
    for graph in graphs():
        for session in graph.sessions_list():
            parts.append(f"torch.compile {graph.name}:\n"
                         f"{session.plan.explain()}")
    return "\n\n".join(parts) or "no graph compiled by backend 'backplane' is in use"


def backend(gm: Any, example_inputs: list[Any], *, options: dict[str, Any] | None = None,
            mode: str | None = None) -> Any:
    """The ``torch_dynamo_backends`` entry point: ``gm`` compiled, or ``gm`` itself (eager)
    with one warning when backplane cannot run it and ``strict`` is not set."""
    settings = _settings(options, mode)
    name = f"graph {next(_graphs)}"
    try:
        compiled = CompiledGraph(gm, example_inputs, settings, name)
        _compiled[:] = [r for r in _compiled if r() is not None] + [weakref.ref(compiled)]
        return compiled
    except Exception as exc:  # noqa: BLE001 - any failure falls back to eager unless strict
        if settings.get("strict"):
            raise
        _warn(f"backplane: torch.compile {name} runs eager: {type(exc).__name__}: {exc}")
        return gm.forward


def _settings(options: dict[str, Any] | None, mode: str | None) -> dict[str, Any]:
    settings = dict(options or {})
    unknown = sorted(set(settings) - set(SESSION_OPTIONS) - set(BACKEND_OPTIONS))
    if unknown:
        raise UnsupportedError(
            f"unknown torch.compile option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} for backend 'backplane'; it takes "
            f"{', '.join(SESSION_OPTIONS + BACKEND_OPTIONS)} (docs/pytorch.md)")
    if mode in TUNED_MODES:
        settings.setdefault("tune", "on")
    return settings


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class CompiledGraph:
    """One dynamo graph: its placeholders sorted into user tensors (the ONNX model's inputs),
    sizes read from them, frozen module state, and Python values (one session each)."""

    def __init__(self, gm: Any, example_inputs: list[Any], settings: dict[str, Any],
                 name: str) -> None:
        self.torch = torchexport.torch_module()
        self.gm, self.name = gm, name
        self.settings = {k: v for k, v in settings.items() if k in SESSION_OPTIONS}
        self.export_dir = settings.get("export_dir")
        self.inputs: list[int] = []        # argument positions fed to the ONNX model
        self.names: list[str] = []         # their ONNX input names
        self.sizes: dict[int, tuple[int, int]] = {}  # argument -> (input, axis) it is read from
        self.frozen: list[int] = []        # argument positions frozen into the model
        self.values: list[int] = []        # Python numbers: one session per value
        self.numbers: dict[int, Any] = {}  # those of them dynamo wraps as 0-d tensors: dtype
        self.dynamic: list[dict[int, str]] = []  # per ONNX input: axis -> dynamo's symbol
        self._sort(gm, example_inputs)
        self.outputs = _output_count(gm)
        self.fixed: list[tuple[int, int]] = []  # (input, axis) the exporter fixed: keyed
        # key -> (session, its (input name, argument position) pairs, output names)
        self.sessions: OrderedDict[tuple, tuple] = OrderedDict()
        self.lock = threading.Lock()
        self.versions: list[int] = []
        self.weights: list[Any] = []
        self.watched: list[Any] = []
        self.warned = False
        self._freeze(example_inputs)
        # Exported in a thread of its own: dynamo's tracing state for the frame being
        # compiled is per thread, and torch.export must not add guards to that frame.
        _outside(self._session, example_inputs, self._key(example_inputs))

    # ------------------------------------------------------------------ placeholders

    def _sort(self, gm: Any, example_inputs: list[Any]) -> None:
        torch = self.torch
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise UnsupportedError(f"the graph has {len(placeholders)} inputs and dynamo gave "
                                   f"{len(example_inputs)} examples")
        symbols: dict[str, tuple[int, int]] = {}
        pending: list[tuple[int, str]] = []
        taken: set[str] = set()
        for i, (node, example) in enumerate(zip(placeholders, example_inputs)):
            fake = node.meta.get("example_value")
            if _wrapped_number(node, example):
                self.numbers[i] = example.dtype  # a Python number dynamo passes as a tensor
                self.values.append(i)
            elif _from_module(node) and isinstance(example, torch.Tensor):
                self.frozen.append(i)  # a module's number (eps, a size) is keyed instead
            elif isinstance(example, torch.Tensor):
                position = len(self.inputs)
                self.inputs.append(i)
                self.names.append(_input_name(node.target, taken))
                axes = {}
                for axis, dim in enumerate(getattr(fake, "shape", ())):
                    if isinstance(dim, torch.SymInt):
                        axes[axis] = str(dim)
                        symbols.setdefault(str(dim), (position, axis))
                self.dynamic.append(axes)
            elif isinstance(example, (torch.SymInt, int)) and fake is not None:
                pending.append((i, str(fake)))
            else:
                self.values.append(i)
        for i, symbol in pending:  # a size dynamo passes beside the tensor it belongs to
            if symbol in symbols:
                self.sizes[i] = symbols[symbol]
            else:
                self.values.append(i)
        self.values.sort()

    def _freeze(self, args: Any) -> None:
        """Remember the frozen values, and the versions of those a later in-place change
        can move (an inference tensor has no version: it can only change under
        ``torch.inference_mode()``, and such a change is not seen)."""
        self.weights = [args[i] for i in self.frozen]
        self.watched = [t for t in self.weights
                        if isinstance(t, self.torch.Tensor) and not t.is_inference()]
        self.versions = [t._version for t in self.watched]

    def _key(self, args: Any) -> tuple:
        values = tuple(_plain(args[i]) for i in self.values)
        if not self.fixed:
            return values
        return values + tuple(args[self.inputs[k]].shape[axis] for k, axis in self.fixed)

    # ------------------------------------------------------------------ export

    def _session(self, args: Any, key: tuple) -> tuple:
        with self.lock:
            found = self.sessions.get(key)
            if found:
                return found
            torch = self.torch
            module = _replay_class(torch)(self, args).eval()
            examples = tuple(args[i] for i in self.inputs)
            auto = torch.export.Dim.AUTO
            shapes = (tuple({axis: auto for axis in axes} or None for axes in self.dynamic),)
            folder = None
            if self.export_dir is not None:
                tag = self.name.replace(" ", "-")
                folder = Path(self.export_dir) / f"{tag}-{len(self.sessions)}"
            path = torchexport.export(module, examples, dynamic_shapes=shapes, folder=folder,
                                      what=f"torch.compile {self.name}",
                                      input_names=self.names,
                                      output_names=[f"output_{i}" for i in range(self.outputs)])
            session = Session(str(path), **self.settings)
            torchexport.remove_with(session, path)
            _check_fast(session, self.settings)
            self._note_fixed(session)
            outputs = [vi.name for vi in session.outputs]
            if len(outputs) != self.outputs:
                raise UnsupportedError(f"the ONNX model has {len(outputs)} outputs, the graph "
                                       f"{self.outputs}")
            # each of the session's inputs (the exporter drops unused ones) and its argument
            position = dict(zip(self.names, self.inputs))
            found = (session, [(vi.name, position[vi.name]) for vi in session.inputs], outputs)
            self.sessions[self._key(args)] = found
            while len(self.sessions) > SESSIONS:
                self.sessions.popitem(last=False)
            return found

    def sessions_list(self) -> list[Session]:
        """The sessions this graph keeps, oldest first."""
        with self.lock:
            return [found[0] for found in self.sessions.values() if found is not EAGER]

    def _note_fixed(self, session: Session) -> None:
        """Dynamic axes the exporter fixed to the example's size: keyed from now on."""
        declared = {vi.name: vi.shape for vi in session.inputs}
        for k, axes in enumerate(self.dynamic):
            shape = declared.get(self.names[k])
            for axis in axes:
                if shape is not None and isinstance(shape[axis], int) \
                        and (k, axis) not in self.fixed:
                    self.fixed.append((k, axis))

    # ------------------------------------------------------------------ calls

    def __call__(self, *args: Any) -> Any:
        torch = self.torch
        if torch.is_grad_enabled():
            if any(args[i].requires_grad for i in self.inputs):
                self._warn_once("inputs that require grad: this call runs eager so that "
                                "backward works (backplane runs inference only)")
                return self.gm.forward(*args)
        weights = self.weights
        if any(args[i] is not w for i, w in zip(self.frozen, weights)) or \
                [w._version for w in self.watched] != self.versions:
            self._thaw(args)
        key = self._key(args)
        found = self.sessions.get(key) or self._specialised(args, key)
        if found is EAGER:
            return self.gm.forward(*args)
        session, feeding, outputs = found
        feeds = {}
        device = None
        for name, i in feeding:
            tensor = args[i]
            if tensor.device.type != "cpu":
                device = tensor.device
                tensor = tensor.cpu()
            feeds[name] = tensor.detach().numpy()
        out = session.run(feeds)
        result = [torch.from_numpy(out[n]) for n in outputs]
        if device is not None:
            result = [t.to(device) for t in result]
        return tuple(result)

    def _specialised(self, args: Any, key: tuple) -> Any:
        """The session for a key first seen now, or EAGER (kept: it is not tried again)
        when it cannot be made and the graph is not strict."""
        try:
            return self._session(args, key)
        except Exception as exc:  # noqa: BLE001 - a new specialisation falls back like a graph
            if self.settings.get("strict"):
                raise
            self._warn_once(f"runs eager for these inputs: {type(exc).__name__}: {exc}")
            with self.lock:
                self.sessions[key] = EAGER
            return EAGER

    def _thaw(self, args: Any) -> None:
        """A weight changed since the export: export again with the new values."""
        log.info("backplane: torch.compile %s: weights changed in place; exporting again",
                 self.name)
        with self.lock:
            self.sessions.clear()
        self._freeze(args)

    def _warn_once(self, why: str) -> None:
        if not self.warned:
            self.warned = True
            _warn(f"backplane: torch.compile {self.name}: {why}")


@functools.cache
def _replay_class(torch: Any) -> type:
    """The module the exporter traces: the graph with its frozen state as buffers, its
    sizes read from the inputs, and its Python values as constants."""

    class Replay(torch.nn.Module):
        def __init__(self, graph: CompiledGraph, args: Any) -> None:
            super().__init__()
            self.gm = _numbers_inlined(torch, graph.gm, {i: _plain(args[i])
                                                         for i in graph.numbers})
            for n, i in enumerate(graph.frozen):
                self.register_buffer(f"w{n}", args[i].detach(), persistent=True)
            self.plan = []
            inputs = {i: k for k, i in enumerate(graph.inputs)}
            frozen = {i: n for n, i in enumerate(graph.frozen)}
            for i in range(len(args)):
                if i in inputs:
                    self.plan.append(("input", inputs[i]))
                elif i in frozen:
                    self.plan.append(("frozen", f"w{frozen[i]}"))
                elif i in graph.sizes:
                    self.plan.append(("size", graph.sizes[i]))
                elif i in graph.numbers:
                    self.plan.append(("value", torch.tensor(_plain(args[i]),
                                                            dtype=graph.numbers[i])))
                else:
                    self.plan.append(("value", _plain(args[i])))

        def forward(self, *tensors: Any) -> Any:
            args = []
            for kind, ref in self.plan:
                if kind == "input":
                    args.append(tensors[ref])
                elif kind == "frozen":
                    args.append(getattr(self, ref))
                elif kind == "size":
                    args.append(tensors[ref[0]].shape[ref[1]])
                else:
                    args.append(ref)
            return tuple(self.gm(*args))

    return Replay


def _wrapped_number(node: Any, example: Any) -> bool:
    """A Python number (a module's ``eps``, a float argument under ``dynamic=True``) that
    dynamo passes as a 0-d tensor and reads back with ``.item()``."""
    grapharg = node.meta.get("grapharg")
    return bool(getattr(grapharg, "pass_arg_as_tensor", False)) and \
        getattr(example, "ndim", None) == 0


def _numbers_inlined(torch: Any, gm: Any, numbers: dict[int, Any]) -> Any:
    """``gm``, or a copy of it in which each ``.item()`` of a wrapped number is the number
    itself: traced as a tensor read, it would be a data-dependent value to the exporter."""
    if not numbers:
        return gm
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    items = (torch.ops.aten.item.default, torch.Tensor.item)
    for i, value in numbers.items():
        for user in list(placeholders[i].users):
            if (user.op == "call_method" and user.target == "item") or \
                    (user.op == "call_function" and user.target in items):
                for reader in list(user.users):
                    reader.replace_input_with(user, value)
                graph.erase_node(user)
    return torch.fx.GraphModule(gm, graph)


def _outside(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh thread, its exception raised here."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
            result.append((False, exc))

    thread = threading.Thread(target=run, name="backplane-torch-export", daemon=True)
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _from_module(node: Any) -> bool:
    """Whether dynamo read this graph input from an ``nn.Module`` (a parameter, a buffer
    or an attribute): frozen into the model."""
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    if source is None:
        return False
    guard = getattr(source, "guard_source", None)
    if guard is None:
        return False
    if guard.is_specialized_nn_module() or guard.is_unspecialized_nn_module():
        return True
    return ("._parameters[" in source.name) or ("._buffers[" in source.name)


def _input_name(target: str, taken: set[str]) -> str:
    name = re.sub(r"\W", "_", str(target))
    name = re.sub(r"^L_|_$", "", name) or "input"
    name = name.strip("_") or "input"
    base, n = name, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _plain(value: Any) -> Any:
    """A Python number as itself (a 0-d tensor of one too, and the value dynamo's example
    of a symbolic number stands for): a session key and a constant."""
    hint = getattr(getattr(value, "node", None), "hint", None)
    if hint is not None:
        return hint
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    return value


def _output_count(gm: Any) -> int:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    results = output.args[0]
    results = results if isinstance(results, (tuple, list)) else (results,)
    for r in results:
        value = getattr(r, "meta", {}).get("example_value")
        if value is None or type(value).__name__ not in ("FakeTensor", "Tensor", "Parameter"):
            raise UnsupportedError(f"the graph returns {type(value).__name__} "
                                   f"({getattr(r, 'name', r)}), not a tensor; an ONNX model "
                                   f"returns tensors only")
    return len(results)


def _check_fast(session: Session, settings: dict[str, Any]) -> None:
    """Nodes that only the reference backend (pure Python) would run make a graph slower
    than eager: refused, unless the caller named the devices."""
    if settings.get("devices", "auto") != "auto":
        return
    slow = sorted({p.op for p in session.plan.placements if p.backend == "reference"})
    if slow:
        raise UnsupportedError(
            f"op{'s' if len(slow) > 1 else ''} {', '.join(slow)} run on no fast backend "
            f"here, only on the reference backend (pure Python, slower than eager); name "
            f"devices=[...] in options to run it anyway")
