"""RNN, GRU and LSTM where onnx.reference (1.23) ignores part of the spec.

onnx.reference's recurrent kernels ignore ``sequence_lens`` (every batch entry runs the full
sequence), ``clip``, ``activations`` with their ``activation_alpha``/``activation_beta``
(LSTM and GRU always use sigmoid and tanh; RNN knows tanh and affine only) and LSTM's
``input_forget``. A node that uses any of them is computed here, in float64, at every
version (7, 14, 22: the later ones add ``layout`` and types); the others stay with
onnx.reference.

The equations are the spec's: gates ``f(X W^T + H R^T + Wb + Rb)`` in the order zrh (GRU)
and iofc (LSTM, with peepholes ``P`` on i, o, f); ``clip`` bounds every activation's input
to [-clip, clip]; past a batch entry's sequence length its outputs are zero and its state
stays as it was, and the reverse direction starts at the entry's last valid step.

Imported only when the reference evaluator is built (it imports onnx.reference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .legacy import Replacement

#: The activation functions the spec lists: (uses alpha, default alpha, uses beta,
#: default beta, f(x, alpha, beta)).
ACTIVATIONS: dict[str, tuple[bool, float, bool, float, Callable[..., np.ndarray]]] = {
    "relu": (False, 0, False, 0, lambda x, a, b: np.maximum(x, 0)),
    "tanh": (False, 0, False, 0, lambda x, a, b: np.tanh(x)),
    "sigmoid": (False, 0, False, 0, lambda x, a, b: 1 / (1 + np.exp(-x))),
    "affine": (True, 1.0, True, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (True, 0.01, False, 0, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (True, 1.0, False, 0, lambda x, a, b: np.where(x > a, x, 0)),
    "scaledtanh": (True, 1.0, True, 1.0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (True, 0.2, True, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1)),
    "elu": (True, 1.0, False, 0, lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1))),
    "softsign": (False, 0, False, 0, lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": (False, 0, False, 0, lambda x, a, b: np.log1p(np.exp(x))),
}
#: Gates (weight blocks) and default activations per op.
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def activations(names: list[str], alphas: list[float], betas: list[float]
                ) -> list[Callable[[np.ndarray], np.ndarray]]:
    """The activation functions, each taking the next alpha and beta if it uses them."""
    out, ia, ib = [], iter(alphas), iter(betas)
    for name in names:
        uses_a, da, uses_b, db, f = ACTIVATIONS[name.lower()]
        a = next(ia, da) if uses_a else da
        b = next(ib, db) if uses_b else db
        out.append(lambda x, f=f, a=a, b=b: f(x, a, b))
    return out


class _Recurrent(Replacement):
    """The common part of RNN, GRU and LSTM (module docstring)."""

    def takes(self) -> bool:  # noqa: D102 - see the module docstring
        used = {a.name for a in self.onnx_node.attribute}
        inputs = list(self.onnx_node.input)
        return bool(used & {"clip", "activations", "activation_alpha", "activation_beta"}
                    or (len(inputs) > 4 and inputs[4])
                    or self.attr("input_forget", 0))

    def replacement(self, X: np.ndarray, W: np.ndarray, R: np.ndarray, B: Any = None,
                    sequence_lens: Any = None, initial_h: Any = None, initial_c: Any = None,
                    P: Any = None) -> tuple:
        op = self.onnx_node.op_type
        layout = self.attr("layout", 0)
        if layout:
            X = np.swapaxes(X, 0, 1)
            initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
            initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
        steps, batch = X.shape[:2]
        dirs, hidden = W.shape[0], R.shape[-1]
        lens = (np.full(batch, steps, np.int64) if sequence_lens is None
                else np.asarray(sequence_lens, np.int64))
        names = self.attr("activations") or DEFAULTS[op] * dirs
        per = len(DEFAULTS[op])
        funcs = activations(names, list(self.attr("activation_alpha") or []),
                            list(self.attr("activation_beta") or []))
        if len(funcs) < per * dirs:  # one direction's list, for both
            funcs = funcs * dirs
        clip = self.attr("clip")
        zeros = np.zeros((dirs, batch, hidden))
        h0 = zeros if initial_h is None else np.asarray(initial_h, np.float64)
        c0 = zeros if initial_c is None else np.asarray(initial_c, np.float64)
        b = np.zeros((dirs, 2 * GATES[op] * hidden)) if B is None else np.asarray(B, np.float64)
        p = np.zeros((dirs, 3 * hidden)) if P is None else np.asarray(P, np.float64)
        reverse = self.attr("direction", "forward") == "reverse"
        ys, hs, cs = [], [], []
        for d in range(dirs):
            backward = reverse or d == 1
            fs = [(lambda x, f=f: f(np.clip(x, -clip, clip))) if clip is not None else f
                  for f in funcs[d * per:(d + 1) * per]]
            y, h, c = self._direction(op, X.astype(np.float64), W[d].astype(np.float64),
                                      R[d].astype(np.float64), b[d], p[d], h0[d], c0[d],
                                      lens, backward, fs)
            ys.append(y)
            hs.append(h)
            cs.append(c)
        Y, Y_h, Y_c = np.stack(ys, axis=1), np.stack(hs), np.stack(cs)
        if layout:
            Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), np.swapaxes(Y_h, 0, 1), np.swapaxes(Y_c, 0, 1)
        out = (Y, Y_h, Y_c)[:len(self.onnx_node.output)]
        return tuple(v.astype(X.dtype) for v in out)

    def _direction(self, op: str, X: np.ndarray, W: np.ndarray, R: np.ndarray, b: np.ndarray,
                   p: np.ndarray, h: np.ndarray, c: np.ndarray, lens: np.ndarray,
                   backward: bool, fs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One direction over the whole batch; a backward one reads each entry's valid
        steps last to first."""
        steps, batch = X.shape[:2]
        cols = np.arange(batch)
        order = np.array([[(lens[k] - 1 - s if backward else s) if s < lens[k] else s
                           for k in range(batch)] for s in range(steps)], np.intp)
        wb, rb = np.split(b, 2)
        Y = np.zeros((steps, batch, R.shape[-1]))
        for s in range(steps):
            x = X[order[s], cols]
            live = (s < lens)[:, None]
            h_new, c_new = self._cell(op, x, h, c, W, R, wb, rb, p, fs)
            Y[order[s], cols] = np.where(live, h_new, 0)
            h, c = np.where(live, h_new, h), np.where(live, c_new, c)
        return Y, h, c

    def _cell(self, op: str, x: np.ndarray, h: np.ndarray, c: np.ndarray, W: np.ndarray,
              R: np.ndarray, wb: np.ndarray, rb: np.ndarray, p: np.ndarray, fs: list
              ) -> tuple[np.ndarray, np.ndarray]:
        if op == "RNN":
            return fs[0](x @ W.T + h @ R.T + wb + rb), c
        if op == "GRU":
            wz, wr, wh = np.split(W, 3)
            rz, rr, rh = np.split(R, 3)
            (bz, br, bh), (bRz, bRr, bRh) = np.split(wb, 3), np.split(rb, 3)
            z = fs[0](x @ wz.T + h @ rz.T + bz + bRz)
            r = fs[0](x @ wr.T + h @ rr.T + br + bRr)
            if self.attr("linear_before_reset", 0):
                n = fs[1](x @ wh.T + r * (h @ rh.T + bRh) + bh)
            else:
                n = fs[1](x @ wh.T + (r * h) @ rh.T + bRh + bh)
            return (1 - z) * n + z * h, c
        gates = x @ W.T + h @ R.T + wb + rb
        gi, go, gf, gc = np.split(gates, 4, axis=-1)
        pi, po, pf = np.split(p, 3)
        f = fs[0](gf + pf * c)
        i = 1 - f if self.attr("input_forget", 0) else fs[0](gi + pi * c)
        c_new = f * c + i * fs[1](gc)
        o = fs[0](go + po * c_new)
        return o * fs[2](c_new), c_new


class RNN(_Recurrent):
    __doc__ = _Recurrent.__doc__


class GRU(_Recurrent):
    __doc__ = _Recurrent.__doc__


class LSTM(_Recurrent):
    __doc__ = _Recurrent.__doc__


#: The classes of this module, for ``fixes.fixed_ops``.
KERNELS = (RNN, GRU, LSTM)
