"""The exception hierarchy. Every error backplane raises at the user's door is one of these.

Each message says what happened, to what, and what to do next. Errors that come from a
backend carry the backend, the device, the op and the vendor's own message as attributes,
so programs can act on them without parsing text.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from backplane.sdk.text import safe_message, shown


class BackplaneError(Exception):
    """Base of every backplane exception.

    Its message is safe to print wherever it was built: control and format characters
    (escape sequences, carriage returns, NUL, bidi overrides) are shown as Python escapes,
    newline and tab excepted, and it holds at most :data:`backplane.sdk.text.MESSAGE_LIMIT`
    (4000) characters, its head and tail kept (:func:`backplane.sdk.text.safe_message`). Call
    sites still format names with :func:`backplane.sdk.text.shown`, which also cuts each one
    short (80 characters), so a message keeps what it says around them.
    """

    def __init__(self, *args: object):
        super().__init__(*(safe_message(a) if isinstance(a, str) else a for a in args))

    def __str__(self) -> str:
        return safe_message(super().__str__())


class PluginLoadError(BackplaneError):
    """A backend plugin could not be loaded, or a requested backend is not available."""


class DeviceNotFoundError(BackplaneError):
    """A named device or backend does not exist, or its backend failed."""


class DeviceUnavailable(BackplaneError):
    """Raised by a backend's ``probe`` to say it is healthy but has no device here.

    The message is the reason (no driver, no runtime package, no GPU); it is shown in
    ``backplane plugins`` and the backend is not counted as failed.
    """


class PluginDeprecationWarning(FutureWarning):
    """A plugin is written for a backend API version that still loads but is deprecated.

    A ``FutureWarning``, so that it is shown by default: it is addressed to whoever
    installed the plugin. The message names the plugin, its version and what to change."""


class ModelError(BackplaneError):
    """The model cannot be read, is invalid, or uses something backplane does not support."""


class InputError(BackplaneError):
    """The inputs given to a run do not match what the model expects."""


class UnsupportedError(BackplaneError):
    """No allowed device can run (part of) the model, or an option is not supported."""


class BackendError(BackplaneError):
    """An error raised inside a backend, with its context.

    The message is rendered from the fields: an error made by :meth:`wrap`, or with
    ``located=True``, starts with where it happened (:meth:`where`: the stage, the backend,
    the device and the op), then ``detail``. So code that raises on behalf of another
    backend (a shared runtime adapter's executable) names that backend by passing it, and
    no caller rewrites the text afterwards.

    Attributes:
        backend: the backend's name.
        device: the device id, or None.
        op: the ONNX op type concerned, or None.
        vendor_message: the message of the original exception.
        nodes: the graph nodes the backend refused, when it can tell (a session then plans
            those nodes elsewhere and keeps the device for the rest).
        detail: what happened, without the place (the message given).
        located: whether the message starts with :meth:`where`.
    """

    stage = "backend"

    def __init__(self, message: str, *, backend: str, device: str | None = None,
                 op: str | None = None, vendor_message: str | None = None,
                 nodes: tuple[str, ...] = (), located: bool = False):
        super().__init__(f"{self.where(backend, device, op)}: {message}" if located
                         else message)
        self.backend = backend
        self.device = device
        self.op = op
        self.vendor_message = vendor_message
        self.nodes = tuple(nodes)
        self.detail = message
        self.located = located

    @classmethod
    def where(cls, backend: str, device: str | None = None, op: str | None = None) -> str:
        """``"compile failed in backend 'B' on device 'D' for op O"``, from what is known
        (the stage is the class's)."""
        return (f"{cls.stage} failed in backend '{backend}'"
                + (f" on device '{device}'" if device else "") + (f" for op {op}" if op else ""))

    @classmethod
    def wrap(cls, exc: BaseException, *, backend: str, device: str | None = None,
             op: str | None = None, advice: str = "") -> "BackendError":
        """Translate a vendor exception into this backplane error, keeping its message."""
        vendor = f"{type(exc).__name__}: {exc}"
        return cls(vendor + (f". {advice}" if advice else ""), backend=backend, device=device,
                   op=op, vendor_message=vendor, located=True)


class CompileError(BackendError):
    """A backend failed to compile a (sub)graph."""

    stage = "compile"


class ExecutionError(BackendError):
    """A compiled executable failed while running."""

    stage = "run"


class VerificationError(ExecutionError):
    """A backend's outputs disagreed with the reference backend's on the same inputs, in the
    run-time check of a backend not qualified on this device (``Session(verify=...)``).
    The session excludes that device for the rest of its life."""

    stage = "verification"


class RequestError(ExecutionError, InputError):
    """A request failed on its device and again on the plan the session would fall back
    to: its inputs (or the model) are at fault, not a device, and no device is excluded.

    Both an :class:`ExecutionError` (it failed while running; ``device`` names the first
    device that failed) and an :class:`InputError` (what to fix is the request)."""


class OverloadError(BackplaneError):
    """A request was refused at once because it could not be accepted now: the batcher's
    queue is full, or it is closing. Nothing was run; sending it again later may succeed.

    ``retry_after_s`` is a suggested wait in seconds (None when the batcher is closing and
    will not accept again); a server answers 503 with a ``Retry-After`` header."""

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineError(BackplaneError, TimeoutError):
    """A request's deadline passed before it could be run; it was not run. Also a
    :class:`TimeoutError`."""


class ConformanceError(BackplaneError):
    """The conformance suite could not run or found a contract violation."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for an unknown name, or '' when nothing is close."""
    # (Names past a few hundred characters are no typing mistake, and difflib's time grows
    # with the square of their length.)
    choices = [c for c in choices if len(c) <= _COMPARED]
    if len(name) > _COMPARED:
        return ""
    same_letters = [c for c in choices if c.lower() == name.lower() and c != name]
    close = same_letters or difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"'{shown(c)}'" for c in close) + "?"


#: The longest name :func:`did_you_mean` compares.
_COMPARED = 256
