"""Session: hand it a model, get outputs; it picks the hardware and says why.

::

    s = backplane.Session("model.onnx")            # devices="auto", policy="latency", fp32
    out = s.run({"x": x})
    print(s.plan.explain())

Devices are chosen automatically unless named: ``devices=[...]`` (device ids or backend
names), or else the environment's ``BACKPLANE_DEVICES``; the argument wins over the
environment. A named device that is unknown or
failed raises at once with the cause. A compile or run failure re-plans without the failed
device (unless ``strict=True``), records the event in ``plan.events`` and logs a warning; a
request is never lost and numerics never change silently.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from backplane.engine import accuracy, tuning
from backplane.engine.executor import CompiledPlan
from backplane.engine.plan import Plan
from backplane.engine.planner import Planner
from backplane.engine.recovery import DEFAULT_COOLDOWN_S, Recovery
from backplane.engine.registry import registry
from backplane.engine.timing import Timing
from backplane.engine.runcheck import VERIFY_MODES, Verifier
from backplane.engine.scheduler import DEFAULT_HEADROOM, Constraints
from backplane.engine.selection import Gate, Selecting, Selection
from backplane.model.graph import ValueInfo
from backplane.model import torchexport
from backplane.model.inputs import dims_of, validate_inputs
from backplane.model.intake import load_model, with_dims
from backplane.model.samples import RandomInput, draw, random_input_specs
from backplane.model.shapecheck import ShapeCheck
from backplane.sdk.contract import DEVICE_KINDS, POLICIES, PRECISIONS, CompileOptions
from backplane.sdk.env import env_seconds
from backplane.sdk.errors import BackendError, InputError, UnsupportedError
from backplane.sdk.hooks import plugin_manager

#: The accuracy budget of ``precision="auto"`` when none is given.
DEFAULT_MAX_REL_ERROR = 1e-2
#: The longest one partition's compile may take, unless ``compile_timeout_s`` or
#: ``BACKPLANE_COMPILE_TIMEOUT_S`` says otherwise.
DEFAULT_COMPILE_TIMEOUT_S = 300.0

#: Input signatures (names, dtypes, shapes) a session remembers as accepted.
ACCEPTED = 64

log = logging.getLogger("backplane")


class Session(Recovery, Selecting):
    """A model, planned and compiled onto this machine's devices, ready to run.

    Args:
        model: a path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto``.
        devices: ``"auto"`` (every available device, placed by cost; ``BACKPLANE_DEVICES``
            when set), or an ordered list of device ids (``openvino-cpu:0``) and backend
            names, placed first-admitting in that order.
        policy: ``latency`` (default), ``throughput``, ``efficiency`` or ``fixed-order``.
        precision: the compute precision the plan must keep: ``fp32`` by default, or
            ``auto`` to allow fp16, bf16 or int8 paths that keep within ``max_rel_error``
            of the reference on sample inputs.
        max_rel_error: the accuracy budget of ``precision="auto"``: the largest error of
            any output, relative to that output's largest magnitude (default 1e-2).
        strict: fail instead of re-planning when a compile or run fails, and when a node
            would leave the required ``device_class``.
        device_class: the class (``cpu``, ``gpu``, ``npu``, ``accelerator``) every node
            should run on; nodes none of its devices admits fall back elsewhere unless
            strict (``device_class="npu"`` is "prefer the NPU").
        exclude: device classes, backend names or device ids never to use.
        memory_headroom: the share of each device's memory the plan leaves free.
        delegate: ``delegate(node, candidates) -> Candidate | None``, shown each node's
            candidates with their predicted costs (the default first); its choice is kept.
        tune: measured selection (:mod:`backplane.engine.tuning`): ``"auto"`` (default,
            or ``BACKPLANE_TUNE``) measures the best candidate plans on sample inputs when
            the cost model's own measured error cannot separate them; ``"on"`` (or True)
            measures them always; ``"off"`` (or False) never. The winner is kept in a
            database keyed by the model's structure, input sizes, devices and versions,
            and later sessions reuse it without measuring.
        fast_start: answer requests at once on the plan ready first while the other
            candidates compile and are measured in the background, then switch to the
            measured winner (``plan.events`` says so; :meth:`wait_selected` waits for
            it). Default: True under ``tune="auto"``, False under ``"on"`` (the session
            is built on the winner).
        tune_budget_s: seconds of measuring at most (default: 2 s, or 20 % of the first
            compile when that is longer).
        sample_inputs: representative inputs: the plan is priced for their sizes (unless
            ``dims`` is given), and ``tune`` and the ``auto`` precision check run them
            (default: :meth:`random_inputs`).
        dims: sizes of symbolic input dimensions to plan for (``{"batch": 32}``); the
            compiled model still takes any size. Without ``dims`` or ``sample_inputs``,
            the plan is priced at the sizes :meth:`random_inputs` takes, then priced and
            selected again in the background at the first request's sizes where they
            differ (``plan.events`` says so).
        base_dir: folder of external data for a model given as bytes or ModelProto.
        options: backend-specific options, keyed by backend name.
        verify: which partitions have their first run checked against the reference
            backend on the same inputs (:mod:`backplane.engine.runcheck`): ``"unqualified"``
            (default: those on a backend with no passing conformance run stored on this
            device for their ops), ``"always"`` or ``"off"``. A mismatch excludes the
            device for the session's life, with a warning.
        cooldown_s: how long a device whose run failed (and not the request's fault) is
            planned without before it is tried again (default 60 s, doubled at each
            further failure, at most an hour).
        compile_timeout_s: the longest one partition's compile may take before its device
            is passed over (default 300 s, or ``BACKPLANE_COMPILE_TIMEOUT_S``; None: no
            limit).

    ``run`` is safe to call from many threads at once.
    """

    def __init__(self, model: Any, devices: str | Iterable[Any] = "auto", *,
                 policy: str = "latency", precision: str = "fp32",
                 max_rel_error: float | None = None, strict: bool = False,
                 device_class: str | None = None, exclude: Iterable[str] = (),
                 memory_headroom: float = DEFAULT_HEADROOM,
                 delegate: Callable[..., Any] | None = None,
                 tune: bool | str | None = None, fast_start: bool | None = None,
                 tune_budget_s: float | None = None,
                 sample_inputs: Mapping[str, Any] | None = None,
                 dims: Mapping[str, int] | None = None,
                 base_dir: Any = None, options: Mapping[str, Any] | None = None,
                 verify: str = "unqualified", cooldown_s: float = DEFAULT_COOLDOWN_S,
                 compile_timeout_s: float | None | str = "default"):
        if policy not in POLICIES:
            raise UnsupportedError(f"unknown policy '{policy}'; choose one of {', '.join(POLICIES)}")
        if precision != "auto" and precision not in PRECISIONS:
            raise UnsupportedError(f"unknown precision '{precision}'; choose 'auto' or one of "
                                   f"{', '.join(PRECISIONS)}")
        if max_rel_error is not None and precision != "auto":
            raise UnsupportedError("max_rel_error is the budget of precision='auto'; pass "
                                   "precision='auto' with it, or drop it")
        if max_rel_error is not None and not max_rel_error > 0:
            raise UnsupportedError(f"max_rel_error must be a positive number, not "
                                   f"{max_rel_error!r}")
        if device_class is not None and device_class not in DEVICE_KINDS:
            raise UnsupportedError(f"unknown device class '{device_class}'; choose one of "
                                   f"{', '.join(DEVICE_KINDS)}")
        if not 0 <= memory_headroom < 1:
            raise UnsupportedError(f"memory_headroom is a share of memory in [0, 1), not "
                                   f"{memory_headroom!r}")
        if verify not in VERIFY_MODES:
            raise UnsupportedError(f"unknown verify mode {verify!r}; choose one of "
                                   f"{', '.join(VERIFY_MODES)}")
        if not isinstance(cooldown_s, (int, float)) or not 0 <= cooldown_s < float("inf"):
            raise UnsupportedError(f"cooldown_s is a number of seconds >= 0, not {cooldown_s!r}")
        if compile_timeout_s == "default":
            compile_timeout_s = env_seconds("BACKPLANE_COMPILE_TIMEOUT_S",
                                            DEFAULT_COMPILE_TIMEOUT_S, none=True)
        elif compile_timeout_s is not None and not (
                isinstance(compile_timeout_s, (int, float)) and compile_timeout_s > 0):
            raise UnsupportedError(f"compile_timeout_s is a positive number of seconds or "
                                   f"None, not {compile_timeout_s!r}")
        if tune_budget_s is not None and not (isinstance(tune_budget_s, (int, float))
                                              and tune_budget_s > 0):
            raise UnsupportedError(f"tune_budget_s is a positive number of seconds, not "
                                   f"{tune_budget_s!r}")
        if delegate is not None and not callable(delegate):
            raise UnsupportedError("delegate must be a callable (node, candidates) -> "
                                   "candidate or None")
        self.graph = load_model(model, base_dir=base_dir)
        #: The model file the session runs, where it was given as a path (or exported by
        #: :meth:`from_torch`); None for bytes and ModelProtos.
        self.model_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
        self._shapes = ShapeCheck(self.graph.model)  # inputs that do not fit, before any run
        self._source = (model, base_dir)  # read again by a run that overrides initializers
        self._overriding: dict[frozenset[str], Session] = {}
        self._accepted: set[tuple] = set()  # input signatures validate_inputs accepted
        self._listed = frozenset({i.name for i in self.graph.model.graph.input}
                                 & self.graph.initializers)  # inputs a run may override
        self._guesses: dict[int, tuple[Any, str]] = {}  # random inputs the model may refuse
        self.policy, self.precision, self.strict = policy, precision, strict
        self.max_rel_error = (max_rel_error if max_rel_error is not None
                              else DEFAULT_MAX_REL_ERROR) if precision == "auto" else None
        self.constraints = Constraints(device_class, frozenset(
            [exclude] if isinstance(exclude, str) else exclude), memory_headroom)
        self._tune = tuning.mode(tune)
        self._fast_start = (self._tune == "auto") if fast_start is None else bool(fast_start)
        self._tune_budget_s = tune_budget_s
        self._gate = Gate()
        self._selection: Selection | None = None
        self._pending: threading.Event | None = None  # a re-pricing under way
        self._samples = dict(sample_inputs) if sample_inputs is not None else None
        if dims is None and self._samples is not None:
            dims = dims_of(self.graph, self._samples)
        self.dims = dict(dims or {})
        reg = registry()
        explicit, found = reg.resolve_devices(devices)
        options = CompileOptions(precision="fp32" if precision == "auto" else precision,
                                 policy=policy, extra=dict(options or {}),
                                 dims=dict(self.dims))
        self.verify, self.cooldown_s = verify, float(cooldown_s)
        self.compile_timeout_s = compile_timeout_s
        self._timing = Timing()
        # Priced at the sizes given, else at those random inputs take (an image's 224),
        # until the first request says what it runs with (_reprice).
        priced = dict(self.dims) or _default_dims(self.graph, self._samples)
        self._repriced = bool(self.dims)
        try:
            planned_on = with_dims(self.graph, priced)
        except InputError:  # sizes random inputs guess that the model refuses: none
            if self.dims:
                raise
            priced, planned_on = {}, with_dims(self.graph, {})
        self.planner = Planner(
            self.graph, planned_on, reg, found, explicit, options,
            policy, precision, self.constraints, strict, delegate, priced,
            Verifier(self.graph, reg, options), verify, compile_timeout_s,
            self._timing.record)
        self._recovering()
        self._lock = threading.Lock()
        self._compiled = self._build(select=True)
        if self._selection is not None and self._fast_start:
            self._selection.start()
        plugin_manager().hook.backplane_session_created(session=self)

    @classmethod
    def from_torch(cls, module: Any, example_inputs: Any = (), *,
                   dynamic_shapes: Any = None, export_dir: str | os.PathLike | None = None,
                   **options: Any) -> "Session":
        """A session over a torch module, exported to ONNX by ``torch.onnx.export`` with the
        dynamo exporter (torch.export underneath), as the ``torch.compile`` backend does.

        Args:
            module: a ``torch.nn.Module`` (put in eval mode first: what it computes is what
                is exported) or an ``ExportedProgram``.
            example_inputs: a tuple of positional inputs, or a dict of keyword inputs; the
                model's input names are ``forward``'s parameter names.
            dynamic_shapes: torch.export's dynamic shapes (per input, axis to a
                ``torch.export.Dim`` or a name); without it every size is fixed at the
                example's.
            export_dir: the folder the model is written to and kept in (``model.onnx``
                and its weights in ``model.onnx.data``); default: a temporary folder
                removed with the session (or when the interpreter exits).
                ``session.model_path`` names the file.
            **options: :class:`Session`'s own keyword arguments (``devices``, ``policy``,
                ``precision``, ...).

        Raises:
            ModelError: the exporter refused the module (its reason is in the message).
            UnsupportedError: torch or onnxscript is not installed.
        """
        if isinstance(example_inputs, Mapping):
            args, kwargs = (), dict(example_inputs)
        elif isinstance(example_inputs, (tuple, list)):
            args, kwargs = tuple(example_inputs), None
        else:  # one tensor
            args, kwargs = (example_inputs,), None
        path = torchexport.export(module, args, kwargs, dynamic_shapes=dynamic_shapes,
                                  folder=export_dir)
        session = cls(str(path), **options)
        torchexport.remove_with(session, path)
        return session

    @property
    def plan(self) -> Plan:
        """The current plan: what runs where, and why."""
        return self._compiled.plan

    @property
    def memory(self) -> Any:
        """Peak bytes of the values a run holds between partitions: predicted from the
        inferred shapes, measured over the runs so far (:class:`backplane.engine.executor.MemoryStats`).
        Kernel backends report their own peaks inside a partition the same way."""
        return self._compiled.memory

    @property
    def inputs(self) -> list[ValueInfo]:
        """The inputs ``run`` expects."""
        return list(self.graph.inputs)

    @property
    def outputs(self) -> list[ValueInfo]:
        """The outputs ``run`` returns."""
        return list(self.graph.outputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the model once. Returns a dict of output name to numpy array.

        An initializer the model also lists as a graph input (IR < 4 models) is a constant
        that ``inputs`` may override: the array given (checked like an input, dtype and
        shape) replaces the stored value for this run. Such runs go to a second session over
        the model with those initializers as plain inputs, planned and compiled on first
        use for each set of names overridden; it costs a second plan, compile and the
        memory of its executables, and the model is read again from what the session was
        given.

        When a device fails, the request is run again on the plan the session would fall
        back to. If that answers it, the device was at fault: the session keeps the fallback
        plan, and tries the device again after a cool-down (``cooldown_s``). If it fails
        there too, the request was at fault: it fails alone (RequestError) and no device is
        excluded. A device whose outputs disagree with the reference in the run-time check
        (``verify``) is excluded for the session's life. ``plan.events`` says which case it
        was.

        Raises:
            InputError: missing, extra, mis-typed or mis-shaped inputs.
            RequestError: the request failed on its device and on the fallback plan (an
                InputError and an ExecutionError at once).
            ExecutionError: a backend failed and the session is strict, or the error names
                no device to re-plan without, or no other device can run the model to tell
                the device's fault from the request's, or the inputs came from
                :meth:`random_inputs` with values the model may refuse (then the message
                says so, and no device is blamed).
        """
        overridden = self._overridden(inputs)
        if overridden:
            return self._overriding_session(overridden).run(inputs)
        feeds = self._validated(inputs)
        guessed = self._guessed(feeds)
        try:
            self._shapes.check(feeds)
        except InputError as exc:
            _blame_random(exc, guessed)
            raise
        self._gate.begin()
        try:
            while True:
                if self._cooling:
                    self._return_cooled()
                compiled = self._compiled
                try:
                    out = compiled.run(feeds)
                    if not self._repriced:
                        self._reprice(feeds)
                    return out
                except BackendError as exc:  # ExecutionError, or a plugin's BackendError
                    if guessed:  # the inputs, more likely than the device: blame no device
                        _blame_random(exc, guessed)
                        raise
                    if self.strict or exc.device is None:
                        raise
                    answered = self._after_failure(compiled, exc, feeds)
                    if answered is not None:
                        return answered
        finally:
            self._gate.end()

    def _validated(self, inputs: Any) -> dict[str, Any]:
        """``validate_inputs``, skipped for a dict of plain arrays whose names, dtypes and
        shapes a run already accepted (a few microseconds a run, which small models
        notice)."""
        signature = _signature(inputs)
        if signature is not None and signature in self._accepted:
            return dict(inputs)
        feeds = validate_inputs(self.graph, inputs)
        if signature is not None:
            if len(self._accepted) >= ACCEPTED:
                self._accepted.clear()
            self._accepted.add(signature)
        return feeds

    def _overridden(self, inputs: Any) -> frozenset[str]:
        """The initializers ``inputs`` overrides (see :meth:`run`)."""
        listed = self._listed
        if not listed or not isinstance(inputs, Mapping):
            return frozenset()
        return frozenset(n for n in inputs if n in listed)

    def _overriding_session(self, names: frozenset[str]) -> "Session":
        """The session over the model with ``names`` as plain inputs, made on first use."""
        session = self._overriding.get(names)
        if session is not None:
            return session
        samples = None
        if self._tune != "off" or self.precision == "auto":  # its samples: ours, the stored
            from onnx import numpy_helper

            stored = {t.name: numpy_helper.to_array(t) for t in
                      self.graph.model.graph.initializer if t.name in names
                      and not t.external_data}
            samples = {**self.samples(), **stored}
        with self._lock:
            session = self._overriding.get(names)
            if session is not None:
                return session
            model, base_dir = self._source
            planner = self.planner
            graph = load_model(model, base_dir=base_dir, as_inputs=names)
            session = Session(
                graph, [d.id for d in planner.devices] if planner.explicit else "auto",
                policy=self.policy, precision=self.precision,
                max_rel_error=self.max_rel_error, strict=self.strict,
                device_class=self.constraints.device_class,
                exclude=set(self.constraints.exclude) | set(planner.excluded),
                memory_headroom=self.constraints.memory_headroom, delegate=planner.delegate,
                tune=self._tune, sample_inputs=samples, dims=self.dims or None,
                options=planner.options.extra, verify=self.verify, cooldown_s=self.cooldown_s,
                compile_timeout_s=self.compile_timeout_s)
            self._overriding[names] = session
            return session

    def random_input_specs(self, dims: Mapping[str, int] | None = None) -> list[RandomInput]:
        """How :meth:`random_inputs` draws each input: its shape, its values and why
        (:class:`backplane.model.samples.RandomInput`; ``sure`` is False where the model may
        refuse them)."""
        return random_input_specs(self.graph, {**self.dims, **dict(dims or {})})

    def random_inputs(self, seed: int = 0, dims: Mapping[str, int] | None = None
                      ) -> dict[str, Any]:
        """Sample inputs the model can run, drawn as :meth:`random_input_specs` says.

        Symbolic dimensions take their size from ``dims``, else the session's ``dims``,
        else from the graph (a Conv's channels; an image's sides are 224, a batch 1, a
        sequence 16), as shape inference accepts. Floats are standard normal; integers
        that index a table (a Gather's indices) are drawn inside it, other integers in
        [0, 4). A run on inputs the model may refuse that fails says so.
        """
        import weakref

        specs = self.random_input_specs(dims)
        out = draw(specs, seed)
        with self._lock:
            self._guesses = {k: v for k, v in self._guesses.items() if v[0]() is not None}
            for spec in specs:
                if not spec.sure:
                    self._guesses[id(out[spec.name])] = (weakref.ref(out[spec.name]),
                                                         spec.describe())
        return out

    def _guessed(self, feeds: Mapping[str, Any]) -> list[str]:
        """What is guessed about the inputs among ``feeds`` drawn by :meth:`random_inputs`."""
        if not self._guesses:
            return []
        found = []
        for value in feeds.values():
            entry = self._guesses.get(id(value))
            if entry is not None and entry[0]() is value:
                found.append(entry[1])
        return found

    def _build(self, select: bool = False) -> CompiledPlan:
        """Plan and compile, excluding each device whose compile fails, until one holds;
        with precision ``auto``, check accuracy. With ``select`` (the session's first
        plan), start from the database's winner, or prepare the measured selection
        (:meth:`_selecting`)."""
        while True:
            plan = None
            try:
                k = feeds = None
                if select and self._tune != "off":
                    k, feeds = self._selection_key()
                    plan = tuning.stored(self.planner, k) if k is not None else None
                if plan is None:
                    plan = self.planner.schedule()
                started = time.perf_counter()
                compiled = self.planner.compile(plan)
                compile_s = time.perf_counter() - started
                if self.precision == "auto":
                    compiled = accuracy.checked(self.planner, compiled, self.samples,
                                                self.max_rel_error)
                if k is not None and not compiled.plan.selection:
                    compiled = self._selecting(compiled, k, feeds, compile_s)
                compiled.plan.predicted_peak_bytes = compiled.memory.predicted_peak_bytes
                self._timing.reset(compiled.plan)
                plugin_manager().hook.backplane_plan_ready(plan=compiled.plan, graph=self.graph)
                return compiled
            except BackendError as exc:  # CompileError, or a plugin's own BackendError
                planner = self.planner
                if self.strict or exc.device is None or exc.device in planner.excluded:
                    raise
                fresh = [n for n in exc.nodes if (exc.device, n) not in planner.refused]
                if fresh:  # the backend named the nodes it refused: only those move
                    planner.refuse(exc.device, fresh, str(exc))
                    continue
                lower = _lower_precision(plan, exc.device)
                if lower and (exc.device, lower) not in planner.banned:
                    planner.ban(exc.device, lower, str(exc))
                else:
                    planner.exclude(exc.device, str(exc))

    def _selection_key(self) -> tuple[str | None, Any]:
        """The database key of this session and the sample inputs it measures on; no key
        where no sample inputs can be drawn (then nothing is measured, and the plan says
        why)."""
        try:
            feeds = self.samples()
        except InputError as exc:
            self.planner.history.append(f"measured selection off: no sample inputs ({exc})")
            return None, None
        return tuning.key(self.planner, feeds), feeds

    def samples(self) -> dict[str, Any]:
        """The sample inputs for tuning and accuracy checks: ``sample_inputs``, or
        :meth:`random_inputs` (seed 0, sizes from the session's ``dims`` and the graph)."""
        if self._samples is None:
            self._samples = self.random_inputs(seed=0, dims=self.dims)
        return validate_inputs(self.graph, self._samples)


def _lower_precision(plan: Plan | None, device: str) -> str | None:
    """The precision ``plan`` ran ``device`` at, when every partition there is below fp32
    (so a compile failure there may be the precision's, not the device's), else None."""
    found = {p.precision for p in (plan.partitions if plan else []) if p.device == device}
    return found.pop() if len(found) == 1 and found != {"fp32"} else None


def _blame_random(exc: Exception, guessed: list[str]) -> None:
    """Say in ``exc`` that the inputs were drawn by :meth:`Session.random_inputs`, with what
    was guessed about them (``guessed`` empty: nothing to say)."""
    if guessed:
        exc.args = (f"{exc}. The inputs were random and the model may refuse them: "
                    f"{'; '.join(guessed)}. Pass real inputs (Session.run({{name: array}}); "
                    "backplane run --input NAME=FILE.npy)",)


def _default_dims(graph: Any, samples: Mapping[str, Any] | None) -> dict[str, int]:
    """The sizes of the symbolic input dimensions random inputs take (none when the
    session was given samples: their sizes were taken)."""
    if samples is not None:
        return {}
    try:
        return dims_of(graph, {spec.name: spec for spec in random_input_specs(graph)})
    except InputError:
        return {}


def _signature(inputs: Any) -> tuple | None:
    """(name, dtype, shape) of each input, when ``inputs`` is a dict of plain numpy arrays
    (no subclass: a masked array is checked every time); else None."""
    if type(inputs) is not dict:
        return None
    out, ndarray = [], _ndarray()
    for name, value in inputs.items():
        if type(value) is not ndarray:
            return None
        out.append((name, value.dtype, value.shape))
    return tuple(out)


@functools.cache
def _ndarray() -> type:
    import numpy as np  # (loaded by then: a run's inputs are arrays)

    return np.ndarray
