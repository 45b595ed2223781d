"""Compile paths: one way for a backend with several ways to compile a partition to choose.

A backend such as cuda-tensorrt (TensorRT, ONNX Runtime's CUDA provider, a kernel path) or
rocm (ONNX Runtime's MIGraphX provider, torch on HIP, ROCm's OpenCL) declares its paths once,
in the order they are tried, as a :class:`CompilePaths`. At each compile it gives a
readiness check (``why_not(path) -> str``: ``""`` when the path is ready on this device at
this precision, else the reason) and a compile function per path; the mechanism does the
rest, the same way for every backend:

- **order**: the ready paths are tried in the declared order; every other path is passed
  over with its reason (:class:`PassedOver`);
- **forcing**: ``forced`` (the backend's option, ``options={"rocm": {"path": "opencl"}}``)
  tries that path alone; an unknown name, or a path that is not ready, is refused loudly
  (:class:`PathUnavailable`), naming the paths or the reason;
- **fall-through**, the one rule: when a path's compile raises one of the mechanism's
  :attr:`CompilePaths.falls_through` errors (:class:`~backplane.sdk.errors.CompileError` by
  default: the path's compiler refused this graph) and the path was not forced, the path is
  passed over as ``"failed at compile: <error>"`` and the next ready path is tried. A
  forced path's error, and any other error (an :class:`ExecutionError`, a bug), propagate
  unchanged. When the last path fails too, :class:`PathUnavailable` lists every path with
  its reason, carrying the last failure's op and vendor message, chained from it;
- **explanation**: the :class:`Choice` says which path was taken, whether it was forced,
  and why each other path was passed over, for ``Executable.path`` (``explain``) and device
  properties.

Backends whose paths are devices of their own (npu: OpenVINO's NPU device, ONNX Runtime's
QNN and VitisAI providers) use :meth:`CompilePaths.survey` alone: every ready path in order,
and why each other one is not. Nothing here imports a vendor runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from backplane.sdk.errors import BackplaneError, CompileError, did_you_mean

T = TypeVar("T")

#: A readiness check: ``""`` when the path is ready, else why not; None when the path is not
#: offered here at all and needs no mention (:meth:`CompilePaths.survey` only).
WhyNot = Callable[[str], "str | None"]

#: The messages of :class:`PathUnavailable`, by case; a mechanism may keep its backend's
#: wording of a case (``CompilePaths(messages=...)``). Fields: backend, option, path,
#: label, paths, hint, reason, reasons, precision, at (" at <precision>" when one is given).
MESSAGES = {
    "unknown": "options {backend}.{option} must be one of {paths}, not {path!r}.{hint}",
    "forced": ("the {label} was asked for (options {backend}.{option}={path!r}) but cannot "
               "be taken: {reason}"),
    "none": "no {backend} path can compile{at}: {reasons}",
}


class PathUnavailable(CompileError):
    """No path can take the compile, or not the forced one: the message says why, naming
    each path passed over with its reason (its ``reasons``)."""

    def __init__(self, message: str, *, backend: str, device: str | None = None,
                 reasons: Sequence["PassedOver"] = (), op: str | None = None,
                 vendor_message: str | None = None):
        super().__init__(message, backend=backend, device=device, op=op,
                         vendor_message=vendor_message, located=True)
        self.reasons = list(reasons)


class PassedOver(NamedTuple):
    """A path not taken: its name, label, why, and the compile error when it failed at
    compile (None when it was not ready)."""

    path: str
    label: str
    reason: str
    error: BaseException | None = None

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


class Choice:
    """The path a compile took, whether it was forced, and every path passed over (in the
    declared order; none when forced). ``names`` are the paths in order, ``option`` how
    forcing is spelled ("options rocm.path")."""

    def __init__(self, path: str, forced: bool, passed: list[PassedOver],
                 names: tuple[str, ...] = (), option: str = "options path"):
        # (A plain class: a dataclass would cost milliseconds at every discovery.)
        self.path, self.forced, self.passed = path, forced, passed
        self.names, self.option = names, option

    def __repr__(self) -> str:
        return f"Choice({self.path!r}, forced={self.forced}, passed={self.passed!r})"

    @property
    def before(self) -> list[PassedOver]:
        """The paths passed over that come before the one taken (those tried first)."""
        rank = self.names.index(self.path) if self.path in self.names else len(self.names)
        return [p for p in self.passed
                if p.path in self.names and self.names.index(p.path) < rank]

    def explain(self, text: str) -> str:
        """``text`` (what the path taken runs on, in words) with why each path before it
        was passed over: ``"torch ... on HIP device 0; graph path passed over: <why>"``,
        or ``"... (forced by options rocm.path)"``."""
        if self.forced:
            return f"{text} (forced by {self.option})"
        return "; ".join([text] + [f"{p.label} passed over: {p.reason}" for p in self.before])


class CompilePaths:
    """A backend's compile paths, in the order they are tried (see the module's docstring).

    Args:
        backend: the backend's name (errors carry it).
        paths: ``{name: label}`` in order; the label names the path in explanations
            ("graph path", "TensorRT").
        option: the key of the backend's options that forces a path.
        falls_through: the errors of a path's compile that hand over to the next path.
        messages: the backend's own wording of some :data:`MESSAGES`.
    """

    def __init__(self, backend: str, paths: Mapping[str, str], *, option: str = "path",
                 falls_through: tuple[type[BaseException], ...] = (CompileError,),
                 messages: Mapping[str, str] | None = None):
        self.backend = backend
        self.labels = dict(paths)
        self.names = tuple(paths)
        self.option = option
        self.falls_through = falls_through
        self.messages = {**MESSAGES, **(messages or {})}

    def survey(self, why_not: WhyNot) -> tuple[list[str], list[PassedOver]]:
        """``(every ready path in order, each other path offered here with its reason)``:
        ``why_not`` is asked of each path in order; a None answer leaves the path out."""
        ready, passed = [], []
        for name in self.names:
            reason = why_not(name)
            if reason == "":
                ready.append(name)
            elif reason is not None:
                passed.append(PassedOver(name, self.labels[name], reason))
        return ready, passed

    def order(self, why_not: WhyNot, forced: str | None = None, *, device: str | None = None,
              precision: str = "") -> tuple[list[str], list[PassedOver]]:
        """``(the paths to try, in order; each path passed over with its reason)``.

        A ``forced`` path is the only one tried (nothing is passed over). Raises
        :class:`PathUnavailable` for an unknown or unready forced path, and when no path is
        ready."""
        if forced is not None:
            if forced not in self.labels:
                raise self._refusal("unknown", device, path=forced,
                                    hint=did_you_mean(forced, self.names))
            reason = why_not(forced)
            if reason is None:
                reason = "not offered here"
            if reason:
                raise self._refusal("forced", device, path=forced, reason=reason,
                                    label=self.labels[forced])
            return [forced], []
        ready, passed = self.survey(why_not)
        if not ready:
            raise self._refusal("none", device, passed, precision=precision)
        return ready, passed

    def choose(self, why_not: WhyNot, forced: str | None = None, *, device: str | None = None,
               precision: str = "") -> Choice:
        """The path a compile would take first, without compiling (:meth:`order`'s first)."""
        order, passed = self.order(why_not, forced, device=device, precision=precision)
        return self._choice(order[0], forced is not None, passed)

    def compile(self, why_not: WhyNot, attempt: Callable[[str], T], forced: str | None = None,
                *, device: str | None = None, precision: str = "") -> tuple[T, Choice]:
        """``(attempt(path) of the first path that compiles, the choice)``, by the module's
        rules: ready paths in order, a forced one alone, :attr:`falls_through` errors
        handing over to the next path."""
        order, passed = self.order(why_not, forced, device=device, precision=precision)
        last: BaseException | None = None
        for name in order:
            try:
                made = attempt(name)
            except self.falls_through as exc:
                if forced is not None:
                    raise
                last = exc
                passed.append(PassedOver(name, self.labels[name], f"failed at compile: {exc}",
                                         exc))
                continue
            return made, self._choice(name, forced is not None, passed)
        raise self._refusal("none", device, self._ranked(passed), precision=precision,
                            cause=last) from last

    def _ranked(self, passed: list[PassedOver]) -> list[PassedOver]:
        return sorted(passed, key=lambda p: self.names.index(p.path))

    def _choice(self, name: str, forced: bool, passed: list[PassedOver]) -> Choice:
        return Choice(name, forced, self._ranked(passed), self.names,
                      f"options {self.backend}.{self.option}")

    def _refusal(self, case: str, device: str | None, passed: Sequence[PassedOver] = (),
                 cause: BaseException | None = None, **fields: Any) -> PathUnavailable:
        precision = fields.get("precision") or ""
        text = self.messages[case].format(**{
            "backend": self.backend, "option": self.option, "paths": ", ".join(self.names),
            "hint": "", "reasons": "; ".join(map(str, passed)), "precision": precision,
            "at": f" at {precision}" if precision else "", "path": "", "label": "",
            "reason": "", **fields})
        return PathUnavailable(text, backend=self.backend, device=device, reasons=passed,
                               op=getattr(cause, "op", None),
                               vendor_message=_vendor_message(cause))


def _vendor_message(cause: BaseException | None) -> str | None:
    if cause is None:
        return None
    if isinstance(cause, BackplaneError):
        return getattr(cause, "vendor_message", None)
    return f"{type(cause).__name__}: {cause}"


__all__ = ["Choice", "CompilePaths", "MESSAGES", "PassedOver", "PathUnavailable"]
