"""Model intake and input validation, as specifications.

``backplane.load_model`` (and so ``Session``) takes a path, bytes or an ``onnx.ModelProto``
and gives a checked, shape-inferred Graph; every way a model can be wrong is a
``ModelError`` that names the problem. External data is read only from inside the model's
own folder. ``Session.run`` refuses wrong inputs with an ``InputError`` that names the
input, what was given and what is expected, and leaves the caller's arrays alone.

Every model here is built in code with ``onnx.helper``. Numerical checks compare with
numpy on fresh random inputs; the seed is printed and put in every assertion message
(set ``BACKPLANE_TEST_SEED`` to replay one).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp
from backplane.model import intake

RTOL, ATOL = 1e-6, 1e-6

# --------------------------------------------------------------------------------------
# Helpers: models built in code, and the seed of this run.
# --------------------------------------------------------------------------------------


def tensor(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17,
               extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "intake-test", list(inputs), list(outputs),
                              initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def two_input_model() -> onnx.ModelProto:
    """x: float32[batch,3], n: int64[batch] -> y = Relu(x) + c, m = n + n."""
    c = numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "c")
    return make_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "c"], ["y"]),
         helper.make_node("Add", ["n", "n"], ["m"])],
        [tensor("x", TensorProto.FLOAT, ["batch", 3]), tensor("n", TensorProto.INT64, ["batch"])],
        [tensor("y", TensorProto.FLOAT, ["batch", 3]), tensor("m", TensorProto.INT64, ["batch"])],
        [c])


def relu_add_model(opset: int = 17, batch: int | str = "batch") -> onnx.ModelProto:
    """a, b: float32[batch,3] -> y = Relu(a) + b."""
    return make_model(
        [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"])],
        [tensor("a", TensorProto.FLOAT, [batch, 3]), tensor("b", TensorProto.FLOAT, [batch, 3])],
        [tensor("y", TensorProto.FLOAT, [batch, 3])], opset=opset)


def relu_add_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(a.astype(np.float64), 0) + b.astype(np.float64)


def static_add_model() -> onnx.ModelProto:
    """a, b: float32[2,3] -> y = a + b."""
    return make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                      [tensor("a", TensorProto.FLOAT, [2, 3]), tensor("b", TensorProto.FLOAT, [2, 3])],
                      [tensor("y", TensorProto.FLOAT, [2, 3])])


def reference_session(model) -> "bp.Session":
    return bp.Session(model, devices=["reference"])


#: Fresh for every run of the suite, unless BACKPLANE_TEST_SEED replays one.
SEED = int(os.environ.get("BACKPLANE_TEST_SEED") or secrets.randbits(32))


@pytest.fixture
def seed() -> int:
    """This run's seed, printed in each test that uses it so a failure shows it."""
    print(f"random seed: {SEED} (replay with BACKPLANE_TEST_SEED={SEED})")
    return SEED


def normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal float32 values, shifted so none is exactly zero."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[x == 0] = 0.25
    return x


# --------------------------------------------------------------------------------------
# 1. Loading from a path, bytes or a ModelProto.
# --------------------------------------------------------------------------------------

EXPECTED_INPUTS = [("x", "float32", ("batch", 3)), ("n", "int64", ("batch",))]
EXPECTED_OUTPUTS = [("y", "float32", ("batch", 3)), ("m", "int64", ("batch",))]


@pytest.mark.parametrize("form", ["str path", "pathlib path", "bytes", "bytearray", "ModelProto"])
def test_every_model_form_gives_a_graph_with_the_declared_inputs_and_outputs(form, tmp_path):
    """Names, dtypes and shapes (symbolic 'batch' included) come through every way in."""
    model = two_input_model()
    path = tmp_path / "two.onnx"
    onnx.save_model(model, str(path))
    source = {"str path": str(path), "pathlib path": path, "bytes": path.read_bytes(),
              "bytearray": bytearray(path.read_bytes()), "ModelProto": model}[form]
    graph = bp.load_model(source)
    assert isinstance(graph, bp.Graph)
    assert [(v.name, v.dtype, v.shape) for v in graph.inputs] == EXPECTED_INPUTS
    assert [(v.name, v.dtype, v.shape) for v in graph.outputs] == EXPECTED_OUTPUTS


def test_loading_a_model_proto_leaves_the_callers_proto_unchanged():
    model = relu_add_model(opset=11)  # an upgrade, node naming and shape inference all apply
    before = model.SerializeToString()
    graph = bp.load_model(model)
    assert model.SerializeToString() == before
    assert graph.model is not model
    assert not any(n.name for n in model.graph.node)
    assert not model.graph.value_info


# --------------------------------------------------------------------------------------
# 2. Files and objects that are not models.
# --------------------------------------------------------------------------------------


def test_a_nonexistent_path_is_a_model_error_saying_it_does_not_exist(tmp_path):
    path = tmp_path / "nowhere.onnx"
    with pytest.raises(bp.ModelError, match="does not exist") as err:
        bp.load_model(path)
    assert str(path) in str(err.value)


def test_a_directory_path_is_a_model_error_saying_it_is_a_folder(tmp_path):
    with pytest.raises(bp.ModelError, match="is a folder") as err:
        bp.load_model(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_an_empty_file_is_a_model_error_saying_it_is_empty(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(bp.ModelError, match="is empty") as err:
        bp.load_model(path)
    assert str(path) in str(err.value)


def test_files_of_random_bytes_are_model_errors_saying_they_are_not_onnx(tmp_path, seed):
    rng = np.random.default_rng(seed)
    for trial in range(20):
        path = tmp_path / f"random{trial}.onnx"
        path.write_bytes(rng.bytes(int(rng.integers(1, 2000))))
        with pytest.raises(bp.ModelError) as err:
            bp.load_model(path)
        assert re.search(r"not (a valid ONNX file|an ONNX model)", str(err.value)), \
            f"seed {seed}, trial {trial}: {err.value}"


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_truncated_model_file_is_a_model_error_saying_it_may_be_truncated(fraction, tmp_path):
    data = two_input_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(bp.ModelError, match="truncated") as err:
        bp.load_model(path)
    assert str(path) in str(err.value)


def test_every_proper_prefix_of_model_bytes_is_a_model_error():
    """However the bytes are cut, the only exception is ModelError (no crash, no other type)."""
    data = two_input_model().SerializeToString()
    for cut in range(len(data)):
        try:
            bp.load_model(data[:cut])
        except bp.ModelError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point is to catch any other type
            pytest.fail(f"cut at {cut} of {len(data)} bytes raised {type(exc).__name__}: {exc}")
        pytest.fail(f"cut at {cut} of {len(data)} bytes loaded as a model")


@pytest.mark.parametrize("value", [42, {"graph": "x"}], ids=["int", "dict"])
def test_an_object_that_is_not_a_model_is_a_model_error_naming_its_type(value):
    with pytest.raises(bp.ModelError, match=type(value).__name__) as err:
        bp.load_model(value)
    assert "ModelProto" in str(err.value)


# --------------------------------------------------------------------------------------
# 3-5. Invalid models, domains and opsets.
# --------------------------------------------------------------------------------------


def test_a_model_the_onnx_checker_rejects_is_a_model_error_naming_the_checker():
    model = make_model([helper.make_node("Relu", ["undefined"], ["y"])],
                       [tensor("x", TensorProto.FLOAT, [2])], [tensor("y", TensorProto.FLOAT, [2])])
    with pytest.raises(bp.ModelError, match="checker") as err:
        bp.load_model(model)
    assert "undefined" in str(err.value)


def test_inconsistent_static_shapes_are_a_model_error_naming_shape_inference():
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                       [tensor("a", TensorProto.FLOAT, [2, 3]), tensor("b", TensorProto.FLOAT, [4, 5])],
                       [tensor("y", TensorProto.FLOAT, [2, 3])])
    with pytest.raises(bp.ModelError, match="shape inference"):
        bp.load_model(model)


def test_a_com_microsoft_node_loads_and_its_output_is_typed_from_its_schema():
    model = make_model(
        [helper.make_node("FastGelu", ["a"], ["g"], domain="com.microsoft"),
         helper.make_node("Relu", ["g"], ["y"])],
        [tensor("a", TensorProto.FLOAT, [2, 3])],
        [tensor("y", TensorProto.FLOAT, [2, 3])], extra_opsets=[("com.microsoft", 1)])
    graph = bp.load_model(model)
    assert graph.nodes[0].domain == "com.microsoft" and graph.nodes[0].version == 1
    assert graph.values["g"].dtype == "float32"  # ONNX shape inference does not know FastGelu


def test_a_node_of_a_domain_nobody_declares_loads_and_planning_names_it():
    model = make_model(
        [helper.make_node("Frobnicate", ["a"], ["y"], domain="my.company")],
        [tensor("a", TensorProto.FLOAT, [2, 3])],
        [tensor("y", TensorProto.FLOAT, [2, 3])], extra_opsets=[("my.company", 1)])
    graph = bp.load_model(model)
    with pytest.raises(bp.UnsupportedError) as err:
        bp.plan_model(graph)
    assert "my.company::Frobnicate" in str(err.value)


def test_an_opset_newer_than_the_installed_onnx_knows_is_refused_naming_both():
    import onnx

    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(bp.ModelError) as err:
        bp.load_model(relu_add_model(opset=newest + 1))
    message = str(err.value)
    assert f"opset {newest + 1}" in message and f"up to {newest}" in message
    assert onnx.__version__ in message


@pytest.mark.parametrize("opset", [7, 9, 11, 12, 13, 18, 21, 23, 25])
def test_a_model_keeps_its_own_opset_from_7_to_the_newest(opset):
    graph = bp.load_model(relu_add_model(opset=opset))
    assert graph.opsets[""] == opset and not graph.notes
    assert graph.model.opset_import[0].version == opset


def test_an_opset_older_than_7_is_upgraded_and_the_graph_notes_say_so():
    graph = bp.load_model(relu_add_model(opset=6, batch=5))
    assert graph.opsets[""] == intake.MIN_OPSET == 7
    assert any("opset 6" in n and "7" in n for n in graph.notes), graph.notes


def test_an_upgraded_model_runs_and_matches_numpy(seed):
    session = reference_session(relu_add_model(opset=6, batch=5))
    rng = np.random.default_rng(seed)
    a, b = normal(rng, (5, 3)), normal(rng, (5, 3))
    y = session.run({"a": a, "b": b})["y"]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, relu_add_numpy(a, b), rtol=RTOL, atol=ATOL,
                               err_msg=f"seed {seed}")


# --------------------------------------------------------------------------------------
# 6. External data.
# --------------------------------------------------------------------------------------

W_SHAPE = (3, 4)


class External:
    """A model folder ``root/model`` holding ``m.onnx`` (y = x @ w) and ``weights.bin``."""

    def __init__(self, root: Path, seed: int):
        self.seed = seed
        self.root = root
        self.folder = root / "model"
        self.folder.mkdir()
        self.w = normal(np.random.default_rng(seed), W_SHAPE)
        model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                           [tensor("x", TensorProto.FLOAT, ["batch", W_SHAPE[0]])],
                           [tensor("y", TensorProto.FLOAT, ["batch", W_SHAPE[1]])],
                           [numpy_helper.from_array(self.w, "w")])
        self.path = self.folder / "m.onnx"
        onnx.save_model(model, str(self.path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
        self.proto = onnx.load_model(str(self.path), load_external_data=False)
        assert self.proto.graph.initializer[0].data_location == TensorProto.EXTERNAL
        assert (self.folder / "weights.bin").stat().st_size == self.w.nbytes

    def variant(self, name: str, **entries: str) -> Path:
        """The model saved as ``name`` with the tensor's external_data entries replaced."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        t = proto.graph.initializer[0]
        info = {e.key: e.value for e in t.external_data}
        info.update(entries)
        del t.external_data[:]
        for key, value in info.items():
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        path = self.folder / name
        onnx.save_model(proto, str(path))
        return path


@pytest.fixture
def ext(tmp_path, seed, monkeypatch) -> External:
    """An external-data model folder; the working directory is its parent, never the folder,
    so no test passes merely because data paths happen to resolve from the CWD."""
    built = External(tmp_path, seed)
    monkeypatch.chdir(built.root)
    return built


def check_matmul(session: "bp.Session", ext: External) -> None:
    x = normal(np.random.default_rng(ext.seed + 1), (4, W_SHAPE[0]))
    y = session.run({"x": x})["y"]
    np.testing.assert_allclose(y, x.astype(np.float64) @ ext.w.astype(np.float64),
                               rtol=1e-5, atol=1e-5, err_msg=f"seed {ext.seed}")


def test_an_external_data_model_loads_from_its_path_and_runs_correctly(ext):
    check_matmul(reference_session(ext.path), ext)


def test_external_data_loading_does_not_depend_on_the_working_directory(ext, monkeypatch):
    elsewhere = ext.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    check_matmul(reference_session(ext.path), ext)


def _outside_location(ext: External, how: str) -> str:
    """Put a real copy of the weights outside the folder and return a location reaching it."""
    outside = ext.root / "escape.bin"
    shutil.copy(ext.folder / "weights.bin", outside)
    if how == "parent":
        return "../escape.bin"
    if how == "absolute":
        return str(outside)
    link = ext.folder / "link.bin"
    link.symlink_to(outside)
    return "link.bin"


OUTSIDE = ["parent", "absolute", "symlink"]


@pytest.mark.parametrize("how", OUTSIDE)
def test_external_data_outside_the_model_folder_is_refused(ext, how):
    path = ext.variant(f"{how}.onnx", location=_outside_location(ext, how))
    with pytest.raises(bp.ModelError):
        bp.load_model(path)


@pytest.mark.parametrize("how", OUTSIDE)
def test_refused_outside_external_data_message_says_it_is_outside_the_model_folder(ext, how):
    path = ext.variant(f"{how}.onnx", location=_outside_location(ext, how))
    with pytest.raises(bp.ModelError, match="outside the model's folder") as err:
        bp.load_model(path)
    assert str(ext.folder.resolve()) in str(err.value)


def test_a_missing_external_data_file_is_a_model_error_naming_it(ext):
    path = ext.variant("missing.onnx", location="missing.bin")
    with pytest.raises(bp.ModelError, match="missing.bin"):
        bp.load_model(path)


@pytest.mark.parametrize("entries", [{"offset": "40"}, {"length": "1000"},
                                     {"offset": "8", "length": str(W_SHAPE[0] * W_SHAPE[1] * 4)}],
                         ids=["offset", "length", "offset+length"])
def test_an_external_data_range_beyond_the_file_is_a_model_error(ext, entries):
    path = ext.variant("range.onnx", **entries)
    size = (ext.folder / "weights.bin").stat().st_size
    with pytest.raises(bp.ModelError, match=f"has {size} bytes"):
        bp.load_model(path)


def test_external_data_shorter_than_the_tensor_is_a_model_error(ext):
    path = ext.variant("short.onnx", length="8")
    with pytest.raises(bp.ModelError, match="'w'"):
        bp.load_model(path)


@pytest.mark.parametrize("entries", [{"offset": "abc"}, {"length": "12x"},
                                     {"location": "weights.bin\x00.txt"}],
                         ids=["offset-not-a-number", "length-not-a-number", "nul-in-location"])
def test_malformed_external_data_entries_are_model_errors(ext, entries):
    path = ext.variant("malformed.onnx", **entries)
    with pytest.raises(bp.ModelError):
        bp.load_model(path)


def test_model_bytes_with_external_data_and_no_base_dir_ask_for_base_dir(ext):
    with pytest.raises(bp.ModelError, match="base_dir"):
        bp.load_model(ext.path.read_bytes())


def test_model_bytes_with_external_data_load_with_base_dir_and_run_correctly(ext):
    check_matmul(bp.Session(ext.path.read_bytes(), devices=["reference"], base_dir=ext.folder),
                 ext)


# --------------------------------------------------------------------------------------
# 7. Input validation in Session.run.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_add() -> "bp.Session":
    return reference_session(relu_add_model())


@pytest.fixture
def ab(seed) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return normal(rng, (4, 3)), normal(rng, (4, 3))


def test_a_missing_input_is_an_input_error_naming_it_and_its_type(relu_add, ab):
    with pytest.raises(bp.InputError) as err:
        relu_add.run({"a": ab[0]})
    message = str(err.value)
    assert "missing input 'b'" in message and "float32[batch,3]" in message


def test_an_extra_input_is_an_input_error_suggesting_the_near_name(relu_add, ab):
    a, b = ab
    with pytest.raises(bp.InputError) as err:
        relu_add.run({"a": a, "b": b, "bb": b})
    message = str(err.value)
    assert "unknown input 'bb'" in message
    assert "Did you mean 'b'" in message
    assert "a: float32[batch,3], b: float32[batch,3]" in message


def test_a_misspelt_input_name_is_an_input_error_naming_it_and_suggesting_the_right_one(
        relu_add, ab):
    a, b = ab
    with pytest.raises(bp.InputError) as err:
        relu_add.run({"a": a, "bx": b})
    assert "'bx'" in str(err.value) and "Did you mean 'b'" in str(err.value)


def test_an_input_name_in_the_wrong_case_is_suggested_in_the_right_one(relu_add, ab):
    a, b = ab
    with pytest.raises(bp.InputError) as err:  # one letter: no edit-distance match
        relu_add.run({"a": a, "B": b})
    assert "'B'" in str(err.value) and "Did you mean 'b'" in str(err.value)


def test_a_float64_array_for_a_float32_input_is_refused_suggesting_astype(relu_add, ab):
    a, b = ab
    with pytest.raises(bp.InputError) as err:
        relu_add.run({"a": a.astype(np.float64), "b": b})
    message = str(err.value)
    assert "input 'a'" in message and "float64" in message and "float32[batch,3]" in message
    assert ".astype(numpy.float32)" in message


def test_an_input_of_the_wrong_rank_is_an_input_error(relu_add, ab):
    a, b = ab
    with pytest.raises(bp.InputError) as err:
        relu_add.run({"a": a[0], "b": b})
    message = str(err.value)
    assert "input 'a'" in message and "(3,)" in message and "rank 1" in message
    assert "rank 2" in message and "float32[batch,3]" in message


def test_a_wrong_static_dimension_is_an_input_error(seed):
    rng = np.random.default_rng(seed)
    session = reference_session(static_add_model())
    with pytest.raises(bp.InputError) as err:
        session.run({"a": normal(rng, (2, 4)), "b": normal(rng, (2, 3))})
    message = str(err.value)
    assert "input 'a'" in message and "(2, 4)" in message and "float32[2,3]" in message
    assert "dimension 1 must be 3, got 4" in message


def test_a_symbolic_dimension_bound_differently_by_two_inputs_is_an_input_error(relu_add, ab):
    a, b = ab
    with pytest.raises(bp.InputError) as err:
        relu_add.run({"a": a, "b": b[:2]})
    message = str(err.value)
    assert "input 'b'" in message and "'batch'" in message
    assert "is 2" in message and "input 'a'" in message and "'batch' = 4" in message


def test_feeds_that_are_not_a_dict_are_an_input_error(relu_add, ab):
    with pytest.raises(bp.InputError) as err:
        relu_add.run(list(ab))
    message = str(err.value)
    assert "got a list" in message and "dict" in message
    assert "a: float32[batch,3], b: float32[batch,3]" in message


def test_a_python_list_of_floats_for_a_float32_input_is_converted(relu_add, ab, seed):
    a, b = ab
    y = relu_add.run({"a": a.tolist(), "b": b})["y"]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, relu_add_numpy(a, b), rtol=RTOL, atol=ATOL,
                               err_msg=f"seed {seed}")


def test_a_session_runs_correctly_after_refused_requests(seed):
    session = reference_session(relu_add_model())
    rng = np.random.default_rng(seed)
    a, b = normal(rng, (4, 3)), normal(rng, (4, 3))
    refused = [{"a": a}, {"a": a, "b": b, "c": b}, {"a": a.astype(np.float64), "b": b},
               {"a": a[0], "b": b}, {"a": a, "b": b[:2]}, [a, b]]
    for feeds in refused:
        with pytest.raises(bp.InputError):
            session.run(feeds)
    y = session.run({"a": a, "b": b})["y"]
    np.testing.assert_allclose(y, relu_add_numpy(a, b), rtol=RTOL, atol=ATOL,
                               err_msg=f"seed {seed}")


# --------------------------------------------------------------------------------------
# 8. The caller's arrays and the outputs.
# --------------------------------------------------------------------------------------


def aliasing_model() -> onnx.ModelProto:
    """x: float32[2,3] -> same = Identity(x), const = Identity(w), relu = Relu(x)."""
    w = numpy_helper.from_array(np.array([[1, 2, 3], [4, 5, 6]], np.float32), "w")
    return make_model(
        [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Identity", ["w"], ["const"]),
         helper.make_node("Relu", ["x"], ["relu"])],
        [tensor("x", TensorProto.FLOAT, [2, 3])],
        [tensor(n, TensorProto.FLOAT, [2, 3]) for n in ("same", "const", "relu")], [w])


def test_a_run_does_not_modify_the_callers_input_arrays(ab, seed):
    session = reference_session(relu_add_model())
    a, b = ab
    a_before, b_before = a.copy(), b.copy()
    session.run({"a": a, "b": b})
    np.testing.assert_array_equal(a, a_before, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(b, b_before, err_msg=f"seed {seed}")
    assert a.flags.writeable and b.flags.writeable


def test_outputs_are_fresh_writable_arrays_sharing_memory_with_nothing(seed):
    session = reference_session(aliasing_model())
    x = normal(np.random.default_rng(seed), (2, 3))
    first = session.run({"x": x})
    for name, value in first.items():
        assert value.flags.writeable, name
        assert not np.shares_memory(value, x), name
    names = list(first)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            assert not np.shares_memory(first[p], first[q]), (p, q)
    for value in first.values():
        value[...] = 7.0  # writing into outputs must not reach the model or the next run
    second = session.run({"x": x})
    np.testing.assert_array_equal(second["same"], x, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(second["const"], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(second["relu"], np.maximum(x, 0), err_msg=f"seed {seed}")


# --------------------------------------------------------------------------------------
# 8. Models as ONNX Runtime accepts them: negative dimensions, wrong output declarations,
#    initializers listed as inputs. (Models over 2 GiB: test_real_exports.py.)
# --------------------------------------------------------------------------------------


def backend_session(model, backend: str) -> "bp.Session":
    if not any(d.backend == backend for d in bp.registry().devices()):
        pytest.skip(f"{backend} has no device here")
    return bp.Session(model, devices=[backend])


def paddle_style_model() -> onnx.ModelProto:
    """x: float32[-1,3] -> y: float32[-1,3] = Relu(x): Paddle2ONNX writes -1 for dynamic."""
    return make_model([helper.make_node("Relu", ["x"], ["y"])],
                      [tensor("x", TensorProto.FLOAT, [-1, 3])],
                      [tensor("y", TensorProto.FLOAT, [-1, 3])])


def test_a_negative_declared_dimension_is_a_named_dynamic_dimension():
    graph = bp.load_model(paddle_style_model())
    assert graph.inputs[0].shape == ("x_dim0", 3)
    assert graph.outputs[0].shape == ("x_dim0", 3)
    assert any("x_dim0" in n for n in graph.notes)


@pytest.mark.parametrize("backend", ["reference", "onnxruntime", "openvino-cpu"])
def test_any_size_is_accepted_where_a_negative_dimension_is_declared(backend, seed):
    session = backend_session(paddle_style_model(), backend)
    for rows in (1, 5):
        x = normal(np.random.default_rng(seed + rows), (rows, 3))
        np.testing.assert_array_equal(session.run({"x": x})["y"], np.maximum(x, 0),
                                      err_msg=f"seed {seed}")


def test_a_zero_declared_dimension_stays_static_as_onnx_runtime_takes_it():
    session = reference_session(make_model([helper.make_node("Relu", ["x"], ["y"])],
                                           [tensor("x", TensorProto.FLOAT, [0, 3])],
                                           [tensor("y", TensorProto.FLOAT, [0, 3])]))
    assert session.run({"x": np.zeros((0, 3), np.float32)})["y"].shape == (0, 3)
    with pytest.raises(bp.InputError, match="dimension 0 must be 0"):
        session.run({"x": np.zeros((2, 3), np.float32)})


def transpose_declared(shape) -> onnx.ModelProto:
    """x: float32[2,3] -> y = Transpose(x), of shape [3,2], declared ``shape``."""
    return make_model([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])],
                      [tensor("x", TensorProto.FLOAT, [2, 3])],
                      [tensor("y", TensorProto.FLOAT, shape)])


def test_an_output_declaration_shape_inference_contradicts_loads_with_the_inferred_shape(
        caplog):
    with caplog.at_level("WARNING", logger="backplane"):
        graph = bp.load_model(transpose_declared([1, "seqlen", 5]))
    assert graph.outputs[0].shape == (3, 2)
    warnings = [r.getMessage() for r in caplog.records if "'y'" in r.getMessage()]
    assert len(warnings) == 1 and "[1,seqlen,5]" in warnings[0] and "[3,2]" in warnings[0]
    assert any("output 'y' is declared [1,seqlen,5]" in n for n in graph.notes)


def test_declared_intermediate_shapes_shape_inference_contradicts_are_dropped_with_a_note():
    model = transpose_declared([3, 2])
    model.graph.value_info.append(tensor("x", TensorProto.FLOAT, [7]))
    model.graph.node.insert(0, helper.make_node("Identity", ["x0"], ["x"]))
    model.graph.input[0].name = "x0"
    graph = bp.load_model(model)
    assert graph.values["x"].shape == (2, 3)
    assert any("intermediate values contradict shape inference" in n for n in graph.notes)


def reshape_declared_wrongly() -> onnx.ModelProto:
    """y = Reshape(x, s) with s of unknown length (inference cannot tell y's rank), y
    declared [1,seqlen]: the model runs (20,1,8) for s = [20,1,8]."""
    return make_model([helper.make_node("Reshape", ["x", "s"], ["y"])],
                      [tensor("x", TensorProto.FLOAT, [160]),
                       tensor("s", TensorProto.INT64, ["n"])],
                      [tensor("y", TensorProto.FLOAT, [1, "seqlen"])])


@pytest.mark.parametrize("backend", ["reference", "onnxruntime"])
def test_an_output_no_backend_produces_as_declared_is_one_warning_not_an_exclusion(
        backend, caplog, seed):
    session = backend_session(reshape_declared_wrongly(), backend)
    x = normal(np.random.default_rng(seed), (160,))
    with caplog.at_level("WARNING", logger="backplane"):
        for _ in range(3):
            y = session.run({"x": x, "s": np.array([20, 1, 8])})["y"]
            np.testing.assert_array_equal(y, x.reshape(20, 1, 8), err_msg=f"seed {seed}")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "'y'" in warnings[0] and "[1,seqlen]" in warnings[0] and "(20, 1, 8)" in warnings[0]
    assert session.plan.events == [] and session.plan.partitions[0].device.startswith(backend)


def old_style_model() -> onnx.ModelProto:
    """IR 3, opset 8: y = x + w, w an initializer also listed as a graph input."""
    w = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w")
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])],
                       [tensor("x", TensorProto.FLOAT, ["batch", 3]),
                        tensor("w", TensorProto.FLOAT, [3])],
                       [tensor("y", TensorProto.FLOAT, ["batch", 3])], [w], opset=8)
    model.ir_version = 3
    return model


def test_an_initializer_listed_as_an_input_is_a_constant_the_caller_need_not_feed(seed):
    session = reference_session(old_style_model())
    assert [vi.name for vi in session.inputs] == ["x"]
    x = normal(np.random.default_rng(seed), (2, 3))
    np.testing.assert_allclose(session.run({"x": x})["y"], x + [1, 2, 3], rtol=RTOL, atol=ATOL,
                               err_msg=f"seed {seed}")


def test_feeding_an_initializer_listed_as_an_input_replaces_it_for_that_run_only(seed):
    session = reference_session(old_style_model())
    rng = np.random.default_rng(seed)
    x, w = normal(rng, (2, 3)), normal(rng, (3,))
    np.testing.assert_allclose(session.run({"x": x, "w": w})["y"], x + w, rtol=RTOL, atol=ATOL,
                               err_msg=f"seed {seed}")
    np.testing.assert_allclose(session.run({"x": x})["y"], x + [1, 2, 3], rtol=RTOL, atol=ATOL,
                               err_msg=f"seed {seed}")


@pytest.mark.parametrize("w, phrase", [(np.zeros(4, np.float32), "dimension 0 must be 3"),
                                       (np.zeros(3, np.float64), "has dtype float64")],
                         ids=["shape", "dtype"])
def test_an_overriding_initializer_is_checked_like_an_input(w, phrase):
    session = reference_session(old_style_model())
    with pytest.raises(bp.InputError, match=phrase) as err:
        session.run({"x": np.zeros((2, 3), np.float32), "w": w})
    assert "'w'" in str(err.value)


def test_a_placeholder_dim_param_does_not_tie_the_axes_that_carry_it():
    """Paddle2ONNX writes '?' on every dynamic axis; an image of 48x192 must be accepted."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       [tensor("x", TensorProto.FLOAT, ["?", 3, "?", "?"])],
                       [tensor("y", TensorProto.FLOAT, ["?", 3, "?", "?"])])
    graph = bp.load_model(model)
    assert len({d for d in graph.inputs[0].shape if isinstance(d, str)}) == 3
    s = bp.Session(model, devices=["reference"])
    x = np.ones((1, 3, 48, 192), np.float32)
    assert s.run({"x": x})["y"].shape == (1, 3, 48, 192)


def _sequence_model():
    """Split x into a sequence, insert y at the front, return the sequence and its length;
    an optional input 'o' passed through when given."""
    nodes = [helper.make_node("SplitToSequence", ["x"], ["s"], axis=0, keepdims=0),
             helper.make_node("SequenceInsert", ["s", "y", "zero"], ["t"]),
             helper.make_node("SequenceLength", ["t"], ["n"])]
    model = make_model(nodes, [tensor("x", TensorProto.FLOAT, [3, 2]),
                               tensor("y", TensorProto.FLOAT, [2])],
                       [tensor("n", TensorProto.INT64, [])], opset=17)
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    model.graph.output.insert(0, helper.make_tensor_sequence_value_info(
        "t", TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("devices", [["reference"], ["onnxruntime"]])
def test_a_sequence_output_comes_back_as_a_list_of_arrays(devices):
    rng = np.random.default_rng()
    x, y = rng.standard_normal((3, 2), np.float32), rng.standard_normal(2, np.float32)
    if devices == ["onnxruntime"]:
        pytest.importorskip("onnxruntime")
    out = bp.Session(_sequence_model(), devices=devices).run({"x": x, "y": y})
    assert isinstance(out["t"], list) and len(out["t"]) == 4 and int(out["n"]) == 4
    for got, want in zip(out["t"], [y, *x]):
        np.testing.assert_array_equal(got, want)


def _sequence_input_model():
    nodes = [helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)]
    model = make_model(nodes, [], [tensor("y", TensorProto.FLOAT, ["n"])], opset=17)
    model.graph.input.append(helper.make_tensor_sequence_value_info(
        "s", TensorProto.FLOAT, [None]))
    return model


@pytest.mark.parametrize("devices", [["reference"], ["onnxruntime"]])
def test_a_sequence_input_is_fed_as_a_list(devices):
    if devices == ["onnxruntime"]:
        pytest.importorskip("onnxruntime")
    rng = np.random.default_rng()
    parts = [rng.standard_normal(k, np.float32) for k in (2, 3, 1)]
    session = bp.Session(_sequence_input_model(), devices=devices)
    assert session.inputs[0].dtype == "seq(float32)"
    np.testing.assert_array_equal(session.run({"s": parts})["y"], np.concatenate(parts))


@pytest.mark.parametrize("value, phrase", [
    (np.zeros(3, np.float32), "is a sequence .* pass a list of arrays, not a ndarray"),
    ([np.zeros(3, np.float64)], r"input 's\[0\]' has dtype float64")],
    ids=["not-a-list", "element-dtype"])
def test_a_wrong_sequence_input_is_named(value, phrase):
    session = bp.Session(_sequence_input_model(), devices=["reference"])
    with pytest.raises(bp.InputError, match=phrase):
        session.run({"s": value})


@pytest.mark.parametrize("devices", [["reference"], ["onnxruntime"]])
def test_an_optional_input_may_be_left_out(devices):
    if devices == ["onnxruntime"]:
        pytest.importorskip("onnxruntime")
    nodes = [helper.make_node("OptionalHasElement", ["o"], ["has"])]
    model = make_model(nodes, [], [tensor("has", TensorProto.BOOL, [])], opset=18)
    model.graph.input.append(helper.make_value_info("o", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))))
    session = bp.Session(model, devices=devices)
    assert not session.run({})["has"]
    assert session.run({"o": np.ones(2, np.float32)})["has"]


def test_strict_shape_inference_failing_in_onnx_own_function_body_is_lenient(caplog):
    """onnx's MeanVarianceNormalization function body fails strict inference at opset 13
    (ONNX's own test_mvn); ORT runs it."""
    model = make_model([helper.make_node("MeanVarianceNormalization", ["x"], ["y"])],
                       [tensor("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                       [tensor("y", TensorProto.FLOAT, [1, 2, 3, 3])], opset=13)
    model.ir_version = 7
    graph = bp.load_model(model)
    assert any("inferred leniently" in n for n in graph.notes)
    x = np.random.default_rng().standard_normal((1, 2, 3, 3), np.float32)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    want = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True) + 1e-9)
    got = bp.Session(model, devices=["reference"]).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_folded_constant_of_an_ir3_model_keeps_its_type():
    """An opset-6 model at IR 3 (PyTorch 0.4's export): its Constant folded into an
    initializer that is not a graph input must still be typed."""
    c = np.random.default_rng().standard_normal((2, 2)).astype(np.float32)
    model = make_model([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c)),
                        helper.make_node("Mul", ["c", "x"], ["y"])],
                       [tensor("x", TensorProto.FLOAT, [2, 2])],
                       [tensor("y", TensorProto.FLOAT, [2, 2])], opset=6)
    model.ir_version = 3
    x = np.random.default_rng().standard_normal((2, 2)).astype(np.float32)
    got = bp.Session(model, devices=["reference"]).run({"x": x})["y"]
    np.testing.assert_allclose(got, c * x, rtol=1e-6)

def test_a_run_after_an_accepted_one_is_still_checked_for_what_differs():
    """The session skips validate_inputs for plain arrays of a signature (names, dtypes,
    shapes) already accepted; anything else is checked as on the first run."""
    s = reference_session(relu_add_model())
    a = np.ones((2, 3), np.float32)
    assert s.run({"a": a, "b": a})["y"].shape == (2, 3)
    assert s.run({"a": a, "b": a})["y"].shape == (2, 3)  # the remembered signature
    with pytest.raises(bp.InputError, match="dtype float64"):
        s.run({"a": a.astype(np.float64), "b": a})
    with pytest.raises(bp.InputError, match="must agree"):
        s.run({"a": a, "b": np.ones((3, 3), np.float32)})
    masked = np.ma.masked_array(a, mask=np.eye(2, 3, dtype=bool))
    with pytest.raises(bp.InputError, match="masked array"):
        s.run({"a": masked, "b": a})
    with pytest.raises(bp.InputError, match="unknown input 'c'"):
        s.run({"a": a, "b": a, "c": a})
