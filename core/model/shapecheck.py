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
declaration is a warning, not the inputs' fault (see :mod:`backplane.model.intake`). Large
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

from backplane.model.external import without_big_weights
from backplane.sdk.errors import InputError
from backplane.sdk.text import shown

#: Input-shape signatures whose verdict is kept.
REMEMBERED = 64
#: A declared 1-D value longer than this turns ONNX's data propagation off: it propagates
#: every element of a 1-D tensor (an int64[2**26] input took 19 s to infer, an int64[2**62]
#: one never finished: found by fuzzing), and shapes are never that long.
PROPAGATED_MAX = 1 << 16


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
            given = ", ".join(f"'{shown(n)}' {list(s)}" for n, s in key if s is not None)
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
    (:func:`backplane.model.external.without_big_weights`), no value infos, outputs typed but
    not shaped."""
    out = without_big_weights(model)
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
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True,
                                                     data_prop=propagates(model))
    except Exception as exc:  # onnx's InferenceError, or a checker error
        return _said(str(exc))
    return contradiction(inferred)


def propagates(model: Any) -> bool:
    """Whether ONNX's shape inference may propagate values (``data_prop``) through ``model``:
    not where a declared 1-D value is longer than :data:`PROPAGATED_MAX`."""
    g = model.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is not None and len(t.shape.dim) == 1 and t.shape.dim[0].dim_value > PROPAGATED_MAX:
            return False
    return True


def contradiction(model: Any) -> str:
    """'' unless the inferred shapes of ``model`` contradict what its nodes need where ONNX's
    inference does not compare them (OpenVINO, and opencl, then compute from memory they
    should not read; found by fuzzing): see :func:`_channels` and :func:`_unchecked`."""
    return _channels(model) or _unchecked(model)


def _said(text: str) -> str:
    """ONNX's inference message, one line, short, the node named first (its name shown:
    escaped and cut short)."""
    # (The node's name is shown before the whitespace is folded, which would change it.)
    text = re.sub(r"\(op_type:([\w.]+), node name: ([^)]*)\): (\[\w+\] )?",
                  lambda m: f"node '{shown(m[2])}' ({m[1]}): ", text)
    text = " ".join(text.split())
    text = re.sub(r"^\[ShapeInferenceError\] Inference error\(s\): ", "", text)
    text = re.sub(r"\(op_type:([\w.]+)\): (\[\w+\] )?", lambda m: f"a {m[1]} node: ", text)
    return shown(text, limit=400)


def _channels(model: Any) -> str:
    """'' unless a Conv's input channels differ from its weight's (ONNX's inference does
    not compare them): C = W[1] * group for Conv, C = W[0] for ConvTranspose."""
    shapes = _known_shapes(model)
    for n in model.graph.node:
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
            return (f"node '{shown(n.name or n.output[0])}' ({n.op_type}) takes {want} input "
                    f"channels (weight '{shown(n.input[1])}' {w}, group {group}), its input "
                    f"'{shown(n.input[0])}' has {x[1]} ({x})")
    return ""


def _known_shapes(model: Any) -> dict[str, list[int | None]]:
    """Each value's dimensions as inferred (None where unknown), initializers included."""
    shapes: dict[str, list[int | None]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in t.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _unchecked(model: Any) -> str:
    """'' unless a node's known shapes break a rule of its op that ONNX's inference leaves
    unchecked:

    - an output of a negative size (Pad's negative pads);
    - a Conv or pool with an input or output of spatial size 0, or a window that does not
      fit once in the padded input (ONNX Runtime and OpenVINO refuse them; onnx.reference
      returned an empty or NaN result);
    - a Gather of a constant index outside its axis;
    - a Pad reflecting an axis of fewer than 2 elements;
    - a Conv's or ConvTranspose's weight of another rank than its input, or of another
      ``kernel_shape``;
    - a Transpose's ``perm`` that is no permutation of its input's axes;
    - a Gemm's C that does not broadcast to its result;
    - a pool's pads not smaller than its kernel;
    - a Reshape that changes the element count;
    - If's condition of other than one element;
    - a LayerNormalization's scale or bias that does not broadcast to the normalized axes.
    """
    import math

    from onnx import numpy_helper

    shapes = _known_shapes(model)
    constants = {t.name: t for t in model.graph.initializer}
    known = (lambda v: v is not None and all(d is not None for d in v))
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        got = [shapes.get(i) if i else None for i in n.input]
        where = f"node '{shown(n.name or (n.output[0] if n.output else ''))}' ({n.op_type})"
        attrs = {a.name: a for a in n.attribute}
        negative = next((o for o in n.output if any(d is not None and d < 0
                                                     for d in shapes.get(o) or ())), None)
        if negative is not None:
            return f"{where} gives '{shown(negative)}' a negative size: {shapes[negative]}"
        if n.op_type in WINDOWED and n.output and (_empty_window(got[0] if got else None)
                                                   or _empty_window(shapes.get(n.output[0]))):
            return (f"{where} has no window to compute: its input is "
                    f"{_dims(got[0] or [])}, its output {_dims(shapes.get(n.output[0]) or [])}")
        misfit = _misfit(n.op_type, attrs, got)
        if misfit:
            return f"{where} {misfit}"
        short = _reflected_short(n, attrs, got, constants) if n.op_type == "Pad" else None
        if short is not None:
            return (f"{where} reflects axis {short} of {_dims(got[0])}: reflecting needs at "
                    "least 2 elements (ONNX Runtime and OpenVINO refuse it too)")
        if n.op_type == "Gather" and len(got) > 1 and got[0] and n.input[1] in constants:
            axis = attrs["axis"].i if "axis" in attrs else 0
            size = got[0][axis] if -len(got[0]) <= axis < len(got[0]) else None
            index = numpy_helper.to_array(constants[n.input[1]]).reshape(-1)
            outside = index[(index >= size) | (index < -size)] \
                if size is not None and index.dtype.kind in "iu" else index[:0]
            if outside.size:
                return (f"{where} gathers index {int(outside.flat[0])} from axis {axis} of "
                        f"{_dims(got[0])}")
        if n.op_type in ("Conv", "ConvTranspose") and len(got) > 1 and got[0] is not None \
                and got[1] is not None and len(got[0]) != len(got[1]):
            return (f"{where} takes a weight of the input's rank {len(got[0])}, its weight "
                    f"'{shown(n.input[1])}' is {_dims(got[1])}")
        if n.op_type in ("Conv", "ConvTranspose") and "kernel_shape" in attrs \
                and len(got) > 1 and got[1] and len(got[1]) > 2:
            kernel, w = list(attrs["kernel_shape"].ints), got[1]
            if all(d is not None for d in w[2:]) and kernel != w[2:]:
                return (f"{where} has kernel_shape {kernel}, its weight "
                        f"'{shown(n.input[1])}' {w} has a {w[2:]} kernel")
        elif n.op_type == "Transpose" and "perm" in attrs and got and got[0] is not None:
            perm = list(attrs["perm"].ints)
            if sorted(perm) != list(range(len(got[0]))):
                return f"{where} has perm {perm}, its input is {_dims(got[0])}"
        elif n.op_type == "Gemm" and len(got) > 2 and got[2] is not None and n.output \
                and shapes.get(n.output[0]) is not None \
                and not _broadcasts(got[2], shapes[n.output[0]]):
            return (f"{where} adds C '{shown(n.input[2])}' {_dims(got[2])}, which does not "
                    f"broadcast to its result {_dims(shapes[n.output[0]])}")
        elif n.op_type in ("MaxPool", "AveragePool", "LpPool") and "kernel_shape" in attrs \
                and "pads" in attrs:
            kernel, pads = list(attrs["kernel_shape"].ints), list(attrs["pads"].ints)
            if len(pads) == 2 * len(kernel) and any(p >= k for p, k in zip(pads, kernel * 2)):
                return (f"{where} has pads {pads}, not all smaller than its kernel {kernel}: "
                        "a window would hold padding only (ONNX Runtime refuses it too)")
        elif n.op_type == "Reshape" and got and known(got[0]) and n.output \
                and known(shapes.get(n.output[0])):
            before, after = math.prod(got[0]), math.prod(shapes[n.output[0]])
            if before != after:
                return (f"{where} cannot reshape {got[0]} ({before} elements) to "
                        f"{shapes[n.output[0]]} ({after} elements)")
        elif n.op_type == "If" and got and known(got[0]) and math.prod(got[0]) != 1:
            return (f"{where} needs a condition of one element, '{shown(n.input[0])}' is "
                    f"{got[0]}")
        elif n.op_type == "LayerNormalization" and got and got[0] is not None:
            axis = attrs["axis"].i if "axis" in attrs else -1
            tail = got[0][axis:] if -len(got[0]) <= axis < len(got[0]) else None
            for k, v in enumerate(got[1:3], 1):
                if tail is None or v is None or not n.input[k]:
                    continue
                if not _broadcasts(v, tail):
                    return (f"{where} normalizes over {_dims(tail)} (axis {axis} of "
                            f"{_dims(got[0])}), its {'scale' if k == 1 else 'bias'} "
                            f"'{shown(n.input[k])}' is {_dims(v)}")
    return ""


#: Ops that slide a window over the spatial axes (2 and on) of their first input.
WINDOWED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool",
                      "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})


def _misfit(op: str, attrs: dict[str, Any], got: list[Any]) -> str:
    """'' unless a Conv's or pool's window does not fit once in its padded input (ONNX's
    inference rounds the negative span to one output; ONNX Runtime refuses it)."""
    x = got[0] if got else None
    if op not in ("Conv", "MaxPool", "AveragePool", "LpPool") or x is None or len(x) < 3 \
            or attrs.get("auto_pad") is not None and attrs["auto_pad"].s not in (b"", b"NOTSET"):
        return ""
    nsp = len(x) - 2
    w = got[1] if op == "Conv" and len(got) > 1 else None
    kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else \
        (w[2:] if w is not None and len(w) == len(x) else [])
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * nsp)
    dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * nsp
    if len(kernel) != nsp or len(pads) != 2 * nsp or len(dilations) != nsp:
        return ""
    for i, (size, k, d) in enumerate(zip(x[2:], kernel, dilations)):
        if size is not None and k is not None and size + pads[i] + pads[nsp + i] < (k - 1) * d + 1:
            return (f"has a window of {(k - 1) * d + 1} on axis {i + 2} of its input "
                    f"{_dims(x)}, padded by {pads[i]} and {pads[nsp + i]}: it does not fit once")
    return ""


def _reflected_short(n: Any, attrs: dict[str, Any], got: list[Any], constants: dict[str, Any]
                     ) -> int | None:
    """The first axis a reflecting Pad (constant pads and axes) pads that holds fewer than 2
    elements, or None."""
    from onnx import numpy_helper

    mode = attrs.get("mode")
    if mode is None or mode.s != b"reflect" or not got or got[0] is None or len(n.input) < 2 \
            or n.input[1] not in constants:
        return None
    shape = got[0]
    pads = numpy_helper.to_array(constants[n.input[1]]).reshape(-1).tolist()
    axes = list(range(len(shape)))
    if len(n.input) > 3 and n.input[3]:
        if n.input[3] not in constants:
            return None
        axes = [a % len(shape) for a in numpy_helper.to_array(constants[n.input[3]]).reshape(-1)]
    if len(pads) != 2 * len(axes):
        return None
    return next((a for k, a in enumerate(axes) if (pads[k] or pads[k + len(axes)])
                 and shape[a] is not None and shape[a] < 2), None)


def _empty_window(shape: list[int | None] | None) -> bool:
    """Whether a spatial size (axis 2 and on) of ``shape`` is known to be 0."""
    return shape is not None and any(d == 0 for d in shape[2:])


def _broadcasts(small: list[int | None], shape: list[int | None]) -> bool:
    """Whether ``small`` broadcasts to ``shape`` one way (unknown sizes fit anything)."""
    return len(small) <= len(shape) and all(
        a is None or b is None or a in (1, b) for a, b in zip(small[::-1], shape[::-1]))


def _dims(shape: list[int | None]) -> str:
    """``[?, 4, 6]``: ``?`` where a size is unknown."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
