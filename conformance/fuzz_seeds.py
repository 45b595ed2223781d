"""The fuzzer's seed models and their inputs (``backplane.conformance.fuzz``).

Every seed is a few nodes on a few dozen elements, so that one case plans, compiles and
runs in milliseconds: ten built with ``onnx.helper`` (an MLP, a CNN, shape ops,
elementwise ops with two outputs, an integer Gather, a LayerNormalization, an If, int32
arithmetic, indexing ops, a Resize) and three zoo models at small sizes (a transformer
encoder block, an int8 QDQ MLP, a depthwise-separable CNN). :func:`draw_feeds` draws
inputs for whatever a mutated model declares, and :func:`mutate_feeds` breaks them at run
time. Everything random is drawn from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from backplane.conformance.zoo import depthwise_separable, qdq_mlp, transformer_encoder
from backplane.model.graph import numpy_dtype

F = TensorProto.FLOAT


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes: list, inputs: list, outputs: list, inits: list, opset: int = 17,
           extra_opsets: tuple = ()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=opsets,
                             ir_version=helper.find_min_ir_version_for(opsets))


def _w(rng: np.random.Generator, name: str, shape: tuple, scale: float = 0.5,
       dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)


def _int(name: str, values: list, dtype: Any = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype), name)


# ---- seed models --------------------------------------------------------------------------


def mlp() -> onnx.ModelProto:
    """x[batch,8] -> MatMul -> Add -> Relu -> MatMul -> Softmax -> y[batch,4]."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    return _model(nodes, [_vi("x", F, ["batch", 8])], [_vi("y", F, ["batch", 4])],
                  [_w(rng, "w1", (8, 6)), _w(rng, "b1", (6,)), _w(rng, "w2", (6, 4))])


def conv() -> onnx.ModelProto:
    """x[1,2,6,6] -> Conv 3x3 -> Relu -> MaxPool 2x2 -> y[1,3,3,3]."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    return _model(nodes, [_vi("x", F, [1, 2, 6, 6])], [_vi("y", F, [1, 3, 3, 3])],
                  [_w(rng, "w", (3, 2, 3, 3)), _w(rng, "b", (3,))], opset=13)


def shapes() -> onnx.ModelProto:
    """Transpose, Reshape, Slice, Concat on x[batch,4,6]; Shape of x as a second output."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["r"]),
             helper.make_node("Slice", ["r", "starts", "ends", "axes", "steps"], ["s"]),
             helper.make_node("Concat", ["s", "s"], ["y"], axis=1),
             helper.make_node("Shape", ["x"], ["dims"])]
    return _model(nodes, [_vi("x", F, ["batch", 4, 6])],
                  [_vi("y", F, ["batch", 20]), _vi("dims", TensorProto.INT64, [3])],
                  [_int("shape", [0, -1]), _int("starts", [2]), _int("ends", [12]),
                   _int("axes", [1]), _int("steps", [1])], opset=18)


def elementwise() -> onnx.ModelProto:
    """a[n,5], b[5]: Mul, Sub, Sigmoid, Div, Greater/Where and ReduceMean, two outputs."""
    nodes = [helper.make_node("Mul", ["a", "b"], ["m"]),
             helper.make_node("Sub", ["m", "a"], ["d"]),
             helper.make_node("Sigmoid", ["d"], ["s"]),
             helper.make_node("Abs", ["b"], ["ab"]),
             helper.make_node("Add", ["ab", "one"], ["den"]),
             helper.make_node("Div", ["s", "den"], ["q"]),
             helper.make_node("Greater", ["a", "b"], ["g"]),
             helper.make_node("Where", ["g", "q", "a"], ["y"]),
             helper.make_node("ReduceMean", ["y", "axes"], ["mean"], keepdims=0)]
    return _model(nodes, [_vi("a", F, ["n", 5]), _vi("b", F, [5])],
                  [_vi("y", F, ["n", 5]), _vi("mean", F, [5])],
                  [numpy_helper.from_array(np.float32(1.0), "one"), _int("axes", [0])],
                  opset=18)


def gather() -> onnx.ModelProto:
    """ids int64[n] -> Gather(table[10,4]) -> ReduceSum; ids + 1 as an integer output."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
             helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=1),
             helper.make_node("Add", ["ids", "step"], ["next"])]
    return _model(nodes, [_vi("ids", TensorProto.INT64, ["n"])],
                  [_vi("y", F, ["n", 1]), _vi("next", TensorProto.INT64, ["n"])],
                  [_w(rng, "table", (10, 4)), _int("axes", [1]), _int("step", [1])])


def norm() -> onnx.ModelProto:
    """x[batch,6] -> LayerNormalization -> Mul -> Erf -> Cast to float16 -> y."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["n"], axis=-1,
                              epsilon=1e-5),
             helper.make_node("Mul", ["n", "half"], ["h"]),
             helper.make_node("Erf", ["h"], ["e"]),
             helper.make_node("Cast", ["e"], ["y"], to=TensorProto.FLOAT16)]
    return _model(nodes, [_vi("x", F, ["batch", 6])],
                  [_vi("y", TensorProto.FLOAT16, ["batch", 6])],
                  [_w(rng, "scale", (6,)), _w(rng, "bias", (6,)),
                   numpy_helper.from_array(np.float32(0.7071), "half")])


def branch() -> onnx.ModelProto:
    """If(c) then x * 2 else x - 1, on x[3] with a bool input c."""
    two = helper.make_tensor("two", F, [], [2.0])
    one = helper.make_tensor("one", F, [], [1.0])
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                             [_vi("t", F, [3])], initializer=[two])
    other = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e"])], "else", [],
                              [_vi("e", F, [3])], initializer=[one])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    return _model(nodes, [_vi("x", F, [3]), _vi("c", TensorProto.BOOL, [])], [_vi("y", F, [3])],
                  [])


def integers() -> onnx.ModelProto:
    """int32 arithmetic: (a * 3 + b) mod 7, Max with b, ArgMax, on a, b int32[n,4]."""
    i32 = TensorProto.INT32
    nodes = [helper.make_node("Mul", ["a", "three"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["s"]),
             helper.make_node("Mod", ["s", "seven"], ["r"]),
             helper.make_node("Max", ["r", "b"], ["y"]),
             helper.make_node("ArgMax", ["y"], ["idx"], axis=1, keepdims=0)]
    return _model(nodes, [_vi("a", i32, ["n", 4]), _vi("b", i32, ["n", 4])],
                  [_vi("y", i32, ["n", 4]), _vi("idx", TensorProto.INT64, ["n"])],
                  [_int("three", [3], np.int32), _int("seven", [7], np.int32)], opset=13)


def indexing() -> onnx.ModelProto:
    """Pad, TopK (values and indices), Tile, CumSum and Expand on x[n,6]: ops whose integer
    inputs (pads, k, repeats, axis, shape) the value mutations change."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("TopK", ["p", "k"], ["top", "idx"], axis=-1),
             helper.make_node("Tile", ["top", "repeats"], ["t"]),
             helper.make_node("CumSum", ["t", "axis"], ["c"]),
             helper.make_node("Expand", ["c", "shape"], ["y"])]
    return _model(nodes, [_vi("x", F, ["n", 6])],
                  [_vi("y", F, [2, "n", 6]), _vi("idx", TensorProto.INT64, ["n", 3])],
                  [_int("pads", [0, 1, 0, 1]), _int("k", [3]), _int("repeats", [1, 2]),
                   numpy_helper.from_array(np.int32(1), "axis"), _int("shape", [2, 1, 1])],
                  opset=18)


def resize() -> onnx.ModelProto:
    """x[1,2,4,4] -> Resize by 2 (nearest, half-pixel) -> AveragePool 3x3 -> y."""
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest",
                              coordinate_transformation_mode="half_pixel",
                              nearest_mode="round_prefer_floor"),
             helper.make_node("AveragePool", ["r"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              count_include_pad=0)]
    return _model(nodes, [_vi("x", F, [1, 2, 4, 4])], [_vi("y", F, [1, 2, 8, 8])],
                  [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
                  opset=19)


def encoder() -> onnx.ModelProto:
    """The zoo's transformer encoder block at width 8, 2 heads (opset 21: Gelu)."""
    return transformer_encoder(dim=8, heads=2, hidden=16).model


def qdq() -> onnx.ModelProto:
    """The zoo's int8 QDQ MLP at widths 8 -> 16 -> 4."""
    return qdq_mlp(widths=(8, 16, 4)).model


def separable() -> onnx.ModelProto:
    """The zoo's depthwise-separable CNN at width 4 on 8x8 images."""
    return depthwise_separable(width=4, size=8).model


#: The seed models by name.
SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {
    f.__name__: f for f in (mlp, conv, shapes, elementwise, gather, norm, branch, integers,
                            indexing, resize, encoder, qdq, separable)}
#: The size of each symbolic dimension in the seeds' inputs.
DIMS = {"batch": 2, "n": 3}


def pick(rng: np.random.Generator, items: Any) -> Any:
    """One of ``items`` (None when there are none)."""
    items = list(items)
    return items[int(rng.integers(len(items)))] if items else None


# ---- inputs -------------------------------------------------------------------------------

_EXTRA_DIMS = (1, 2, 3)


def draw_feeds(inputs: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    """Inputs for a model's declared inputs (``backplane.ValueInfo``s): symbolic dimensions
    at their seed sizes (else 1 to 3), unknown ones 2, declared sizes over 64 or negative
    replaced by 2 (so such a model meets a wrong size); floats standard normal, integers
    in [0, 3), booleans fair coins."""
    sizes = dict(DIMS)
    feeds: dict[str, Any] = {}
    for vi in inputs:
        shape = []
        for d in vi.shape or ():
            if isinstance(d, str):
                d = sizes.setdefault(d, int(pick(rng, _EXTRA_DIMS)))
            shape.append(d if isinstance(d, int) and 0 <= d <= 64 else 2)
        dtype = numpy_dtype(vi.dtype) if not vi.dtype.startswith(("seq(", "optional(", "map(")) \
            else None
        if dtype is None:
            feeds[vi.name] = None
        elif dtype.kind == "b":
            feeds[vi.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            feeds[vi.name] = rng.integers(0, 3, shape).astype(dtype)
        elif dtype.kind == "O":
            feeds[vi.name] = np.array(rng.choice(["a", "bc", ""], shape), dtype=object)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def mutate_feeds(feeds: dict[str, Any], rng: np.random.Generator) -> tuple[Any, str]:
    """One run-time mutation of the inputs: a name missing, extra or misspelt; a wrong
    dtype, rank or size; special values; zero-size, strided, read-only, list, scalar or
    None inputs; not a dict at all. Returns the new inputs and what was done."""
    feeds = dict(feeds)
    name = pick(rng, sorted(feeds))
    how = int(rng.integers(14))
    value = feeds.get(name)
    arr = value if isinstance(value, np.ndarray) else None
    if how == 0 and name is not None:
        del feeds[name]
        return feeds, f"input '{name}' left out"
    if how == 1:
        feeds["zz_extra"] = np.zeros(2, np.float32)
        return feeds, "an extra input"
    if how == 2 and name is not None:
        feeds[name.upper() if name != name.upper() else name + "_"] = feeds.pop(name)
        return feeds, f"input '{name}' misspelt"
    if arr is None:
        return feeds, "(no array input to mutate)"
    if how == 3:
        dtype = pick(rng, [np.float64, np.float16, np.int32, np.int64, np.bool_, np.uint8,
                            object, np.complex64])
        feeds[name] = arr.astype(dtype)
        return feeds, f"input '{name}' as {np.dtype(dtype)}"
    if how == 4:
        feeds[name] = arr[..., None] if rng.random() < 0.5 or arr.ndim == 0 else arr[0]
        return feeds, f"input '{name}' of another rank"
    if how == 5 and arr.ndim:
        shape = list(arr.shape)
        shape[int(rng.integers(len(shape)))] += int(pick(rng, [1, 2]))
        feeds[name] = np.resize(arr, shape)
        return feeds, f"input '{name}' of shape {shape}"
    if how == 6 and arr.dtype.kind == "f" and arr.size:
        arr = arr.copy()
        flat = arr.reshape(-1)
        for _ in range(int(rng.integers(1, 4))):
            flat[int(rng.integers(flat.size))] = pick(rng, [np.nan, np.inf, -np.inf, 1e30,
                                                             -1e30, -0.0, 1e-42])
        feeds[name] = arr
        return feeds, f"special values in '{name}'"
    if how == 7 and arr.ndim:
        axis = int(rng.integers(arr.ndim))
        feeds[name] = np.take(arr, [], axis=axis)
        return feeds, f"input '{name}' with dimension {axis} of size 0"
    if how == 8 and arr.ndim:
        wide = np.repeat(arr, 2, axis=-1)
        feeds[name] = wide[..., ::2]
        return feeds, f"input '{name}' strided"
    if how == 9:
        arr = arr.copy()
        arr.setflags(write=False)
        feeds[name] = arr
        return feeds, f"input '{name}' read-only"
    if how == 10:
        feeds[name] = arr.tolist()
        return feeds, f"input '{name}' as a list"
    if how == 11:
        feeds[name] = pick(rng, [None, 1.0, "x", [1, [2]], {"a": 1}, b"\0"])
        return feeds, f"input '{name}' as {feeds[name]!r}"
    if how == 12:
        return list(feeds.values()), "inputs as a list"
    feeds[name] = np.asfortranarray(arr)
    return feeds, f"input '{name}' in Fortran order"
