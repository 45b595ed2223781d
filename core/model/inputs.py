"""A run's inputs checked against the model: :func:`validate_inputs`, and :func:`dims_of`,
the sizes they give the model's symbolic dimensions.

Every way a run's inputs can be wrong ends here as an :class:`InputError` naming the input,
what the model expects and what to do. Inputs are taken as ONNX Runtime takes them: arrays
are never cast, Python lists and numbers take the input's dtype where it holds their
values, a sequence is a list, an optional may be None, a map is a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backplane.model.graph import NON_TENSOR, Graph, ValueInfo, numpy_dtype
from backplane.sdk.errors import InputError, did_you_mean
from backplane.sdk.text import shown


def validate_inputs(graph: Graph, feeds: Any) -> dict[str, Any]:
    """Check a run's inputs against the model and return them as numpy arrays.

    Refuses missing, extra, mis-typed and mis-shaped inputs, and symbolic dimensions
    bound to different sizes by different inputs. Arrays are never cast: a float64 array
    for a float32 input is refused. Python lists and scalars are converted.
    """
    import numpy as np

    if not isinstance(feeds, Mapping):
        raise InputError(f"inputs must be a dict mapping input names to arrays, got a "
                         f"{type(feeds).__name__}; the model's inputs are: "
                         f"{graph.describe_inputs()}")
    expected = {vi.name: vi for vi in graph.inputs}
    # An optional input may be left out (or given as None): the optional is empty.
    missing = [n for n in expected if n not in feeds
               and not expected[n].dtype.startswith("optional(")]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        # A misspelt name is both unknown and missing: name what was given, then what is
        # missing, then the model's inputs and the likely meaning of each unknown name.
        problems, hints = [], ""
        if extra:
            problems.append(f"unknown input{'s' if len(extra) > 1 else ''} "
                            + ", ".join(f"'{shown(n)}'" for n in extra))
            for n in extra:
                hint = did_you_mean(str(n), missing or expected)
                if hint:
                    hints += (f" For '{shown(n)}':" if len(extra) > 1 else "") + hint
        if missing:
            problems.append(f"missing input{'s' if len(missing) > 1 else ''} "
                            + ", ".join(f"'{shown(n)}' ({expected[n].describe()})"
                                        for n in missing))
        raise InputError("; ".join(problems)
                         + f"; the model's inputs are: {graph.describe_inputs()}.{hints}")
    bound: dict[str, tuple[int, str]] = {}
    out: dict[str, Any] = {}
    for name, vi in expected.items():
        if name in feeds:
            out[name] = _check_one(np, name, vi, feeds[name], bound)
    return out


def _check_one(np: Any, name: str, vi: ValueInfo, value: Any, bound: dict) -> Any:
    if vi.dtype.startswith(NON_TENSOR):
        return _check_non_tensor(np, name, vi, value, bound)
    want = numpy_dtype(vi.dtype) if vi.dtype != "string" else None
    if isinstance(value, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(value))
        if masked:
            raise InputError(f"input '{shown(name)}' is a masked array with {masked} masked "
                             "element(s); a model reads values, not a mask: pass "
                             f"{shown(name)}.filled(value) with the value the model should see")
        value = np.ma.getdata(value)
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise InputError(f"input '{shown(name)}' cannot be read as an array ({exc}); "
                             f"expected {vi.describe()}") from None
        # Python lists and numbers have no dtype of their own: they take the input's where
        # it holds their values. An array of another library (a torch tensor) keeps its
        # own, and is refused below like a numpy array of another dtype.
        if want is not None and arr.dtype != want and arr.dtype.kind in "biuf" and \
                want.kind in "biuf" and np.can_cast(arr.dtype, want, "same_kind") and \
                not hasattr(value, "dtype"):
            arr = arr.astype(want)
    if vi.dtype == "string":
        ok = arr.dtype.kind in "OU"
    else:
        ok = want is not None and arr.dtype == want
    if not ok:
        hint = "" if want is None else (
            f"; convert it with .astype(numpy.{vi.dtype})" if isinstance(value, np.ndarray)
            else f"; convert it to {vi.dtype} first (a torch tensor: .to(torch.{vi.dtype}))")
        raise InputError(f"input '{shown(name)}' has dtype {arr.dtype}, the model expects "
                         f"{vi.dtype} ({vi.describe()}){hint}")
    if vi.shape is None:
        return arr
    if arr.ndim != len(vi.shape):
        raise InputError(f"input '{shown(name)}' has shape {tuple(arr.shape)} (rank "
                         f"{arr.ndim}), the model expects rank {len(vi.shape)}: "
                         f"{vi.describe()}")
    for axis, (got, dim) in enumerate(zip(arr.shape, vi.shape)):
        if isinstance(dim, int) and got != dim:
            raise InputError(f"input '{shown(name)}' has shape {tuple(arr.shape)}, the model "
                             f"expects {vi.describe()}: dimension {axis} must be {dim}, got "
                             f"{got}")
        if isinstance(dim, str):
            if dim in bound and bound[dim][0] != got:
                size, other = bound[dim]
                raise InputError(f"input '{shown(name)}' dimension {axis} ('{shown(dim)}') is "
                                 f"{got}, but input '{shown(other)}' set '{shown(dim)}' = "
                                 f"{size}; inputs sharing a dimension name must agree")
            bound.setdefault(dim, (got, name))
    return arr


def _check_non_tensor(np: Any, name: str, vi: ValueInfo, value: Any, bound: dict) -> Any:
    """A sequence (a list of arrays, each checked as its element type), an optional (None,
    or its element) or a map (a dict), as ONNX Runtime takes them."""
    inner = vi.dtype[vi.dtype.index("(") + 1:-1]
    label = shown(name)
    if vi.dtype.startswith("optional("):
        if value is None:
            return None
        return _check_one(np, name, ValueInfo(name, inner, None), value, bound)
    if vi.dtype.startswith("seq("):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"input '{label}' is a sequence ({vi.dtype}): pass a list of "
                             f"arrays, not a {type(value).__name__}")
        return [_check_one(np, f"{name}[{k}]", ValueInfo(f"{name}[{k}]", inner, None), v, {})
                for k, v in enumerate(value)]
    if not isinstance(value, Mapping):
        raise InputError(f"input '{label}' is a map ({vi.dtype}): pass a dict, not a "
                         f"{type(value).__name__}")
    return dict(value)


def dims_of(graph: Graph, feeds: Any) -> dict[str, int]:
    """The size of each symbolic input dimension in ``feeds`` (``{"batch": 32}``)."""
    out: dict[str, int] = {}
    for vi in graph.inputs:
        value = feeds.get(vi.name) if hasattr(feeds, "get") else None
        shape = getattr(value, "shape", None)
        if vi.shape is None or shape is None or len(shape) != len(vi.shape):
            continue
        for d, size in zip(vi.shape, shape):
            if isinstance(d, str):
                out.setdefault(d, int(size))
    return out
