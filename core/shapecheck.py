"""Inputs checked against the model before any kernel runs.

A run's inputs can each match their declaration (dtype, rank, fixed sizes) and still not fit
the model together: a symbolic dimension that feeds a Gemm's inner dimension, channels that
a Conv's weight does not take, Concat inputs that differ off the axis, shapes that do not
broadcast. Some runtimes raise on such inputs; others return values computed from memory
they should not read (OpenVINO does not check a Gemm's K at run time; opencl's Gemm,
Conv and Concat did not either). :class:`ShapeCheck` asks ONNX's own shape inference, in
strict mode, about the model with the run's actual input shapes, and refuses the run with
an InputError that names the node and the shapes before any backend sees it.

Attributed to the inputs only: the model is first inferred with its declared input shapes
(the baseline); where that already fails strictly (declared sizes that contradict each
other, an op whose inference is stricter than the runtimes) the check stands aside for the
session. Ops ONNX holds no schema for (``com.microsoft`` ones) are passed over by the
inference: their outputs are of unknown shape, and nothing after them is refused for it. Declared
output shapes and intermediate value infos are left out of both, since a model's wrong
declaration is a warning, not the inputs' fault (see :mod:`backplane.intake`). Large
weights become typed inputs of their shape, so an inference costs milliseconds whatever the
model's size (up to 57 ms on the real-model corpus); each distinct set of input shapes is
inferred once (the last :data:`REMEMBERED` are kept), and a run with shapes seen before
pays a dictionary lookup (about 1 us).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from .errors import InputError

#: Input-shape signatures whose verdict is kept.
REMEMBERED = 64


class ShapeCheck:
    """The shape check of one model (thread-safe; built on first use)."""

    def __init__(self, model: Any):
        self._model = model
        self._lock = threading.Lock()
        self._skeleton: Any = None
        self._off: str | None = None  # why the check stands aside, once known
        self._verdicts: dict[tuple, str] = {}

    @property
    def off(self) -> str | None:
        """Why the check stands aside for this model (None while it checks)."""
        return self._off

    def check(self, feeds: Mapping[str, Any]) -> None:
        """Raise InputError when the shapes of ``feeds`` do not fit the model together."""
        if self._off is not None:
            return
        key = tuple((n, getattr(v, "shape", None)) for n, v in feeds.items())
        verdict = self._verdicts.get(key)  # (a dict read: no lock on the way of every run)
        if verdict is None:
            with self._lock:
                verdict = self._judged(key)
        if verdict:
            given = ", ".join(f"'{n}' {list(s)}" for n, s in key if s is not None)
            raise InputError(f"the input shapes do not fit the model together: {verdict} "
                             f"(inputs given: {given}). No backend ran; check the sizes "
                             "the model's inputs declare (Session.graph.describe_inputs())")

    def _judged(self, key: tuple) -> str:
        """The verdict for one set of input shapes (under the lock): '' when they fit."""
        if key in self._verdicts:
            return self._verdicts[key]
        if self._skeleton is None:
            self._skeleton = _skeleton(self._model)
            why = _inferred(self._skeleton, None)
            if why:
                self._off = f"ONNX's strict shape inference fails on the model as declared: {why}"
                return ""
        if self._off is not None:
            return ""
        verdict = _inferred(self._skeleton, {n: tuple(int(d) for d in s)
                                             for n, s in key if s is not None})
        self._verdicts[key] = verdict
        while len(self._verdicts) > REMEMBERED:  # the oldest first
            self._verdicts.pop(next(iter(self._verdicts)))
        return verdict


def _skeleton(model: Any) -> Any:
    """The model for inference: large weights as typed inputs of their shape
    (:func:`backplane.samples._without_big_weights`), no value infos, outputs typed but
    not shaped."""
    from .samples import _without_big_weights

    out = _without_big_weights(model)
    del out.graph.value_info[:]
    for o in out.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
    return out


def _inferred(skeleton: Any, shapes: Mapping[str, tuple[int, ...]] | None) -> str:
    """'' when strict inference of ``skeleton`` (with ``shapes`` for those inputs) passes and
    every Conv's channels agree with its weight, else what does not fit."""
    import onnx

    model = skeleton
    if shapes:
        model = onnx.ModelProto()
        model.CopyFrom(skeleton)
        for vi in model.graph.input:
            shape = shapes.get(vi.name)
            if shape is None or not vi.type.HasField("tensor_type"):
                continue
            dims = vi.type.tensor_type.shape
            dims.ClearField("dim")
            for d in shape:
                dims.dim.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx's InferenceError, or a checker error
        return _said(str(exc))
    return _channels(inferred)


def _said(text: str) -> str:
    """ONNX's inference message, one line, short, the node named first."""
    text = " ".join(text.split())
    text = re.sub(r"^\[ShapeInferenceError\] Inference error\(s\): ", "", text)
    text = re.sub(r"\(op_type:([\w.]+), node name: ([^)]*)\): (\[\w+\] )?",
                  lambda m: f"node '{m[2]}' ({m[1]}): ", text)
    text = re.sub(r"\(op_type:([\w.]+)\): (\[\w+\] )?", lambda m: f"a {m[1]} node: ", text)
    return text[:400]


def _channels(model: Any) -> str:
    """'' unless a Conv's input channels differ from its weight's (ONNX's inference does
    not compare them): C = W[1] * group for Conv, C = W[0] for ConvTranspose."""
    shapes: dict[str, list[int | None]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in t.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose") or n.domain not in ("", "ai.onnx") \
                or len(n.input) < 2:
            continue
        x, w = shapes.get(n.input[0]), shapes.get(n.input[1])
        if not x or not w or len(x) < 2 or len(w) < 2:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        want = w[1] * group if n.op_type == "Conv" and w[1] is not None else \
            (w[0] if n.op_type == "ConvTranspose" else None)
        if want is not None and x[1] is not None and x[1] != want:
            return (f"node '{n.name or n.output[0]}' ({n.op_type}) takes {want} input "
                    f"channels (weight '{n.input[1]}' {w}, group {group}), its input "
                    f"'{n.input[0]}' has {x[1]} ({x})")
    return ""
