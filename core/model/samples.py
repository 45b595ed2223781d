"""Random inputs a model can run, and what they are.

``backplane run MODEL`` without ``--input``, ``Session.random_inputs`` and the sample inputs
of tuning and ``precision="auto"`` draw inputs from :func:`random_input_specs`:

- **sizes**: a symbolic dimension takes its size from ``dims`` when given, else from what
  the graph tells (the channels of the Conv that reads an image), else from its name and
  place (a batch is 1; the height and width of an image are 224, a multiple of 32, since a
  1x1 image is refused by every correct detector; a sequence is 16). Shape inference checks
  the choice: sizes it rejects, or that make some value's dimension negative or zero (a
  3x3 convolution of a 1x1 image), are replaced by the next candidates.
- **values**: floats are standard normal, booleans fair coins, a mask all ones; integers
  that index a table (a Gather's indices, an embedding lookup, OneHot's indices) are drawn
  inside the table (``[0, rows)``), through the ops that only move indices around (Cast,
  Reshape, Unsqueeze ...). Other integers are small (``[0, 4)``), and said to be a guess.

Each :class:`RandomInput` says its shape, its values and why; ``sure`` is False where the
model may refuse them (integers of unknown range, sizes inference could not check), and a
session then says that the random inputs are the likely cause of a failed run.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backplane.model.external import without_big_weights
from backplane.model.graph import Graph
from backplane.model.intake import with_dims
from backplane.sdk.errors import BackplaneError, InputError
from backplane.sdk.text import shown

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Node

#: Size of a batch dimension.
BATCH = 1
#: Height and width of an image (a multiple of 32, what detectors' strides divide).
IMAGE = 224
#: Length of a sequence (tokens, frames, time steps).
SEQUENCE = 16
#: Any other symbolic dimension.
OTHER = 16
#: Integers of unknown meaning are drawn from [0, SMALL_INTS).
SMALL_INTS = 4
#: Shape-inference checks tried at most, per model, when choosing sizes.
MAX_TRIES = 24

#: Ops that pass indices through unchanged in value (their first input).
_MOVE_INDICES = frozenset({"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                           "Expand", "Tile", "Transpose", "Slice"})
_INTEGER = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


@dataclass(frozen=True)
class RandomInput:
    """How one random input is drawn.

    Attributes:
        name, dtype, shape: the array drawn.
        values: ``"standard normal"``, ``"integers in [0, 30522)"``, ``"ones"``,
            ``"booleans"``.
        low, high: the integer range ``[low, high)`` (None for floats and booleans).
        why: where the sizes and the range come from.
        sure: whether the model is known to accept them (sizes checked by shape inference,
            integers inside the table they index).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    values: str
    low: int | None
    high: int | None
    why: str
    sure: bool

    def describe(self) -> str:
        """``ids: int64[1,16], integers in [0, 30522) (rows of Gather 'emb' ...)``."""
        dims = ",".join(str(d) for d in self.shape)
        return f"{shown(self.name)}: {self.dtype}[{dims}], {self.values}" + (
            f" ({self.why})" if self.why else "")

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "values": self.values, "low": self.low, "high": self.high, "why": self.why,
                "sure": self.sure}


def random_input_specs(graph: "Graph", dims: Mapping[str, int] | None = None
                       ) -> list[RandomInput]:
    """How to draw random inputs ``graph`` can run (see the module's description).

    Args:
        graph: the model.
        dims: sizes of symbolic dimensions to use as they are (``{"batch": 8}``).
    """
    for name, size in dict(dims or {}).items():
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
            raise InputError(f"dims: '{name}' must be a size (an integer >= 0), not {size!r}")
    sizes, reasons, checked = _sizes(graph, dict(dims or {}))
    bounds = _index_bounds(graph, sizes)
    specs = []
    for vi in graph.inputs:
        shape = tuple(d if isinstance(d, int) else sizes[_key(vi.name, axis, d)]
                      for axis, d in enumerate(vi.shape or ()))
        why = [reasons[_key(vi.name, axis, d)] for axis, d in enumerate(vi.shape or ())
               if not isinstance(d, int)]
        why = list(dict.fromkeys(w for w in why if w))
        low = high = None
        sure = checked and vi.shape is not None
        if vi.shape is None:
            why.append("rank unknown: a scalar")
        if vi.dtype.startswith(("float", "bfloat")):
            values = "standard normal"
        elif vi.dtype == "bool":
            values = "booleans"
        elif "mask" in vi.name.lower() and vi.dtype in _INTEGER:
            values, low, high = "ones", 1, 2
            why.append("a mask: every position kept")
        elif vi.name in bounds:
            low, high = 0, bounds[vi.name][0]
            values = f"integers in [0, {high})"
            why.append(bounds[vi.name][1])
        else:
            low, high = 0, SMALL_INTS
            values = f"integers in [0, {SMALL_INTS})"
            if vi.dtype in _INTEGER:
                why.append("a guess: the graph does not tell their range")
                sure = False
        specs.append(RandomInput(vi.name, vi.dtype, shape, values, low, high, "; ".join(why),
                                 sure))
    return specs


def draw(specs: list[RandomInput], seed: int = 0) -> dict[str, Any]:
    """Arrays drawn as ``specs`` say, from ``numpy.random.default_rng(seed)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.values == "booleans":
            out[s.name] = rng.integers(0, 2, s.shape).astype(bool)
        elif s.dtype == "string":
            out[s.name] = rng.integers(s.low, s.high, s.shape).astype(str).astype(object)
        elif s.values == "standard normal":
            out[s.name] = rng.standard_normal(s.shape).astype(_np_dtype(np, s))
        else:
            out[s.name] = rng.integers(s.low, s.high, s.shape).astype(_np_dtype(np, s))
    return out


def _np_dtype(np: Any, spec: RandomInput) -> Any:
    """The numpy dtype of ``spec`` (bfloat16 through ml_dtypes, which onnx installs)."""
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        if spec.dtype == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
    raise InputError(f"input '{spec.name}' is {spec.dtype}, which backplane cannot draw "
                     "random values of; pass real inputs")


# ------------------------------------------------------------------------- sizes

def _key(name: str, axis: int, dim: Any) -> str:
    """A symbolic dimension's name, or for an unnamed one its input and axis."""
    return dim if isinstance(dim, str) else f"{name}:{axis}"


def _sizes(graph: "Graph", given: dict[str, int]) -> tuple[dict[str, int], dict[str, str], bool]:
    """(size per symbolic dimension, why, whether shape inference accepted the sizes)."""
    channels = _conv_channels(graph)
    picks: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    for vi in graph.inputs:
        shape = vi.shape or ()
        image = _image_axes(vi.dtype, shape)
        for axis, d in enumerate(shape):
            if isinstance(d, int):
                continue
            key = _key(vi.name, axis, d)
            if key in picks:
                continue
            if key in given:
                picks[key], reasons[key] = [int(given[key])], ""
            elif axis == 1 and (vi.name, 1) in channels:
                picks[key] = [channels[(vi.name, 1)]]
                reasons[key] = f"{key}={picks[key][0]}: the channels of the Conv reading it"
            else:
                picks[key], reasons[key] = _candidates(key if isinstance(d, str) else "",
                                                       axis, image)
    chosen = {k: v[0] for k, v in picks.items()}
    named = {k: v for k, v in chosen.items() if ":" not in k}
    if not named:
        return chosen, reasons, True
    fits = _fits_checker(graph)
    tries = 0
    if fits(named):
        return chosen, reasons, True
    # One dimension at a time, its next candidates, the others as chosen.
    for key in named:
        for size in picks[key][1:]:
            if tries >= MAX_TRIES:
                break
            tries += 1
            trial = {**named, key: size}
            if fits(trial):
                chosen.update(trial)
                reasons[key] = f"{key}={size}: the first size shape inference accepts"
                return chosen, reasons, True
    ones = {k: given.get(k, 1) for k in named}
    if tries < MAX_TRIES and fits(ones):
        chosen.update(ones)
        return chosen, {k: "" if k in given else f"{k}=1: the only sizes shape inference "
                        "accepts" for k in reasons}, True
    return chosen, reasons, False


def _candidates(name: str, axis: int, image: dict[int, str]) -> tuple[list[int], str]:
    """Sizes to try for a symbolic dimension, best first, and why the first."""
    words = set(re.split(r"[^a-z0-9]+", name.lower())) - {""}
    low = name.lower()
    if "batch" in low or words & {"n", "b", "bs", "batchsize"}:
        return [BATCH, 2], f"{name}={BATCH}: a batch"
    if words & {"height", "width", "h", "w"} or "height" in low or "width" in low:
        return [IMAGE, 256, 320, 384, 512, 640, 32, 64], f"{name}={IMAGE}: an image side"
    if words & {"seq", "sequence", "len", "length", "tokens", "time", "frames", "steps"} or \
            "seq" in low:
        return [SEQUENCE, 32, 8, 64, 128, 1], f"{name}={SEQUENCE}: a sequence length"
    if words & {"c", "channels", "channel"}:
        return [3, 1, 4], f"{name}=3: channels"
    label = name or f"dimension {axis}"
    if axis in image:
        if image[axis] == "channels":
            return [3, 1, 4], f"{label}=3: an image's channels"
        return [IMAGE, 256, 320, 384, 512, 640, 32, 64], f"{label}={IMAGE}: an image side"
    if axis == 0:
        return [BATCH, 2], f"{label}={BATCH}: a batch"
    return [OTHER, 1, 32, 8, 64, 3], f"{label}={OTHER}"


def _image_axes(dtype: str, shape: tuple) -> dict[int, str]:
    """For a rank-4 float or uint8 input laid out NCHW or NHWC (a channel count of 1, 3 or
    4 where channels go, or unknown channels and sides), which axes are which."""
    if len(shape) != 4 or not (dtype.startswith(("float", "bfloat")) or dtype == "uint8"):
        return {}
    static = lambda d: isinstance(d, int)  # noqa: E731
    if static(shape[3]) and shape[3] in (1, 3, 4) and not static(shape[1]):
        return {1: "side", 2: "side"}
    if not static(shape[2]) and not static(shape[3]):
        return {1: "channels", 2: "side", 3: "side"}
    return {}


def _conv_channels(graph: "Graph") -> dict[tuple[str, int], int]:
    """(input, axis 1) -> channels, for inputs a Conv reads with a static weight."""
    out: dict[tuple[str, int], int] = {}
    fed = {vi.name for vi in graph.inputs}
    for n in graph.nodes:
        if n.op_type not in ("Conv", "ConvTranspose") or len(n.inputs) < 2:
            continue
        source = _source_input(graph, n.inputs[0], fed)
        w = n.input_types[1]
        if source is None or w is None or w.shape is None or len(w.shape) < 2:
            continue
        group = int(n.attributes.get("group", 1))
        c = w.shape[0] if n.op_type == "ConvTranspose" else w.shape[1]
        if isinstance(c, int):
            out.setdefault((source, 1), c * group if n.op_type == "Conv" else c)
    return out


def _source_input(graph: "Graph", value: str, fed: set[str]) -> str | None:
    """The graph input ``value`` is, or is cast from (through Cast only)."""
    producers = {o: n for n in graph.nodes for o in n.outputs}
    for _ in range(4):
        if value in fed:
            return value
        n = producers.get(value)
        if n is None or n.op_type != "Cast":
            return None
        value = n.inputs[0]
    return None


def _fits_checker(graph: "Graph") -> Any:
    """``fits(dims)``: whether shape inference accepts ``dims`` and gives no value a
    dimension below 1 that it did not have already."""
    def nonpositive(g: "Graph") -> int:
        return sum(1 for vi in g.values.values() if vi.shape is not None
                   for d in vi.shape if isinstance(d, int) and d < 1)

    base = nonpositive(graph)
    # Each check copies the model: a copy without its big weights (inputs of their type
    # instead) costs what the graph does, not what the weights do.
    light = Graph(without_big_weights(graph.model), graph.name)
    light.unconfirmed_outputs = graph.unconfirmed_outputs

    def fits(dims: dict[str, int]) -> bool:
        try:
            fixed = with_dims(light, dims)
        except BackplaneError:
            return False
        return nonpositive(fixed) <= base

    return fits


# ---------------------------------------------------------------------- integer ranges

def _index_bounds(graph: "Graph", sizes: dict[str, int]) -> dict[str, tuple[int, str]]:
    """Integer inputs that index a table: input -> (rows, why), the smallest table read
    (a table fed as an input has the rows ``sizes`` gives its symbolic dimension)."""
    fed = {vi.name for vi in graph.inputs if vi.dtype in _INTEGER}
    readers: dict[str, list[tuple["Node", int]]] = {}
    for n in graph.nodes:
        for k, name in enumerate(n.inputs):
            if name:
                readers.setdefault(name, []).append((n, k))
    out: dict[str, tuple[int, str]] = {}
    for name in fed:
        frontier, seen = [name], {name}
        while frontier:
            value = frontier.pop()
            for n, k in readers.get(value, []):
                bound = _bound(graph, n, k, sizes)
                if bound is not None and (name not in out or bound[0] < out[name][0]):
                    out[name] = bound
                if n.op_type in _MOVE_INDICES and k == 0:
                    for o in n.outputs:
                        if o and o not in seen:
                            seen.add(o)
                            frontier.append(o)
    return out


def _bound(graph: "Graph", n: "Node", k: int, sizes: dict[str, int]
           ) -> tuple[int, str] | None:
    """(rows, why) when input ``k`` of ``n`` indexes a table of known size."""
    def dim(value: str, axis: int) -> int | None:
        vi = graph.values.get(value)
        if vi is None or vi.shape is None or not vi.shape:
            return None
        d = vi.shape[axis % len(vi.shape)]
        d = sizes.get(d) if isinstance(d, str) else d
        return d if isinstance(d, int) and d > 0 else None

    if n.domain == "" and n.op_type in ("Gather", "GatherElements") and k == 1:
        axis = int(n.attributes.get("axis", 0))
        rows = dim(n.inputs[0], axis)
        if rows is not None:
            return rows, f"indices of {n.op_type} '{shown(n.name)}' into a table of {rows}"
    if n.domain == "" and n.op_type == "OneHot" and k == 0 and len(n.inputs) > 1:
        value = _initializer(graph, n.inputs[1])
        if value is not None and value.size == 1 and int(value.reshape(-1)[0]) > 0:
            rows = int(value.reshape(-1)[0])
            return rows, f"indices of OneHot '{shown(n.name)}' of depth {rows}"
    if n.domain == "com.microsoft" and n.op_type == "EmbedLayerNormalization" and k in (0, 1):
        table = n.inputs[2 if k == 0 else 4] if len(n.inputs) > (2 if k == 0 else 4) else ""
        rows = dim(table, 0) if table else None
        if rows is not None:
            return rows, f"rows of the embedding table '{shown(table)}' of '{shown(n.name)}'"
    return None


def _initializer(graph: "Graph", name: str) -> Any:
    from onnx import TensorProto, numpy_helper

    for t in graph.model.graph.initializer:
        if t.name == name and t.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
    return None
