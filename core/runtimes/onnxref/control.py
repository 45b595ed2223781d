"""Control flow and optionals as the ONNX spec defines them, where onnx.reference (1.23) does not.

- Loop: scan outputs are the per-iteration values stacked on a new first axis (onnx.reference
  concatenates them, so scalars come out (N, 1) and matrices (N * rows, cols)); zero
  iterations give empty scan outputs of the body's declared element shape (onnx.reference
  fails); an absent ``cond`` runs the trip count out, whatever the body says (onnx.reference
  never starts).
- Scan: every version. onnx.reference has no Scan-8 (batch axis, ``sequence_lens``,
  ``directions``) and refuses reverse directions and non-zero axes in Scan-9 and later.
- Optional: an optional holding ``x`` is ``x`` and an empty one is None; onnx.reference
  wraps the value in a one-element list (a sequence) and the empty one in ``[None]``, which
  OptionalHasElement then reports as present. If and Loop pass an empty optional on (their
  output checks refused None).

Imported only when the reference evaluator is built (it imports onnx.reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import helper
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_if import If as _If
from onnx.reference.ops.op_loop import Loop as _Loop

from .legacy import Replacement


def _empty_scan(graph: Any, index: int) -> np.ndarray:
    """A zero-iteration scan output: shape (0, *dims) of the body output's declared type
    (dims it leaves unknown are taken as absent)."""
    tensor = graph.output[index].type.tensor_type
    dims = [d.dim_value for d in tensor.shape.dim] if tensor.HasField("shape") else []
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else np.float32
    return np.zeros((0, *dims) if all(dims) else (0,), dtype)


def _as_is(self: Any, res: tuple) -> tuple:
    """onnx.reference's output check, less its refusal of None (an empty optional)."""
    return tuple(np.array(v) if np.isscalar(v) else v for v in res)


class Loop(_Loop):
    """Loop with the spec's scan outputs, zero-trip loops and absent ``cond`` (module
    docstring)."""

    op_domain = ""
    _check_and_fix_outputs = _as_is

    def _run(self, M: Any, cond: Any, *initial: Any, context: Any = None, body: Any = None,
             attributes: Any = None, bindings: Any = None) -> tuple:
        names = self.body.input_names
        trip = None if M is None else int(np.asarray(M))
        going = True if cond is None else bool(np.asarray(cond))
        state = list(initial)
        scans: list[list[Any]] = [[] for _ in range(self.K)]
        it = 0
        while going and (trip is None or it < trip):
            feed = dict(context or {})  # outer-scope values first; the body's own shadow them
            feed.update({names[0]: np.array(it, np.int64), names[1]: np.array(going)})
            feed.update(zip(names[2:], state))
            out = self._run_body(feed, attributes=attributes, bindings=bindings)
            if cond is not None:  # without a cond input the body's condition is ignored
                going = bool(np.asarray(out[0]))
            state = list(out[1:1 + self.N])
            for k in range(self.K):
                scans[k].append(out[1 + self.N + k])
            it += 1
        graph = self.body.onnx_graph_
        return tuple(state + [np.stack(s) if s else _empty_scan(graph, 1 + self.N + k)
                              for k, s in enumerate(scans)])


class If(_If):
    """If whose branch yields an empty optional (None), which onnx.reference refuses."""

    op_domain = ""
    _check_and_fix_outputs = _as_is

    def _run(self, cond: Any, context: Any = None, else_branch: Any = None,
             then_branch: Any = None, attributes: Any = None, bindings: Any = None) -> tuple:
        if np.size(cond) != 1:
            raise ValueError(f"If expects a single-element condition, got shape {np.shape(cond)}")
        branch = self._run_then_branch if np.asarray(cond).item() else self._run_else_branch
        return tuple(branch(context, attributes=attributes, bindings=bindings))


class Scan(Replacement):
    """Scan at every version (module docstring)."""

    def need_context(self) -> bool:
        """The body may read values of the enclosing graph."""
        return True

    def _run(self, *args: Any, context: Any = None, attributes: Any = None,
             bindings: Any = None, **_: Any) -> tuple:
        m = int(self.attr("num_scan_inputs"))
        run = (context, attributes, bindings)
        if self.version == 8:
            return self._batched(args[0], args[1:], m, run)
        n = len(args) - m
        states, xs = list(args[:n]), list(args[n:])
        axes = [a + x.ndim if a < 0 else a for a, x in
                zip(self.attr("scan_input_axes") or [0] * m, xs)]
        length = xs[0].shape[axes[0]]
        states, scans = self._iterate(states, xs, axes,
                                      self.attr("scan_input_directions") or [0] * m,
                                      length, run)
        k = len(scans)
        out_axes = self.attr("scan_output_axes") or [0] * k
        out_dirs = self.attr("scan_output_directions") or [0] * k
        stacked = []
        for j, (values, axis, direction) in enumerate(zip(scans, out_axes, out_dirs)):
            if not values:
                stacked.append(_empty_scan(self.body.onnx_graph_, n + j))
                continue
            value = np.stack(values[::-1] if direction else values)
            stacked.append(np.moveaxis(value, 0, axis + value.ndim if axis < 0 else axis))
        return tuple(states + stacked)

    def _batched(self, lens: Any, args: tuple, m: int, run: tuple) -> tuple:
        """Scan-8: axis 0 of every input is the batch, axis 1 of the scan inputs the
        sequence; each batch entry runs its own ``sequence_lens`` steps, its scan outputs
        zero beyond them."""
        n = len(args) - m
        states, xs = args[:n], args[n:]
        steps = xs[0].shape[1]
        dirs = self.attr("directions") or [0] * m
        finals, outputs = [], []
        for b in range(xs[0].shape[0]):
            length = steps if lens is None else int(lens[b])
            s, scans = self._iterate([v[b] for v in states], [x[b] for x in xs], [0] * m,
                                     dirs, length, run)
            finals.append(s)
            padded = []
            for j, values in enumerate(scans):
                done = np.stack(values) if values else _empty_scan(self.body.onnx_graph_, n + j)
                full = np.zeros((steps, *done.shape[1:]), done.dtype)
                full[:length] = done
                padded.append(full)
            outputs.append(padded)
        return tuple([np.stack([f[i] for f in finals]) for i in range(n)]
                     + [np.stack([o[j] for o in outputs]) for j in range(len(outputs[0]))])

    def _iterate(self, states: list, xs: list, axes: list, dirs: list, length: int,
                 run: tuple) -> tuple[list, list[list]]:
        context, attributes, bindings = run
        names = self.body.input_names
        n = len(states)
        scans: list[list[Any]] = [[] for _ in self.body.output_names[n:]]
        for t in range(length):
            feed = dict(context or {})
            feed.update(zip(names[:n], states))
            for name, x, axis, d in zip(names[n:], xs, axes, dirs):
                feed[name] = np.take(x, length - 1 - t if d else t, axis=axis)
            out = self._run_body(feed, attributes=attributes, bindings=bindings)
            states = list(out[:n])
            for k, value in enumerate(out[n:]):
                scans[k].append(value)
        return states, scans


class Optional(OpRun):
    """An optional holding ``x`` is ``x``; an empty one is None (module docstring)."""

    op_domain = ""

    def _run(self, x: Any = None, type: Any = None) -> tuple:  # noqa: A002 - ONNX's name
        return (x,)

    _check_and_fix_outputs = _as_is


#: The classes of this module, for ``fixes.fixed_ops``.
KERNELS = (Loop, If, Scan, Optional)
