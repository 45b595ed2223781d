"""Small inconsistencies at the edges of the API, each refused with a clear backplane error
(issue 18, point 9): negative sizes for random inputs, another library's float64 tensor,
a masked array, a model without outputs, the calibration overlay's temporary file."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from onnx import TensorProto, helper

import backplane as bp
from backplane.sdk.errors import InputError, ModelError


def _relu(outputs=True):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])]
                          if outputs else [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("size", [-1, 2.5, "4", True])
def test_random_inputs_refuse_a_size_that_is_not_one(size):
    session = bp.Session(_relu(), devices=["reference"])
    with pytest.raises(InputError, match="'n' must be a size"):
        session.random_inputs(dims={"n": size})
    assert session.random_inputs(dims={"n": np.int64(2)})["x"].shape == (2, 3)


def test_a_float64_tensor_of_another_library_is_refused_like_a_numpy_array():
    torch = pytest.importorskip("torch")
    session = bp.Session(_relu(), devices=["reference"])
    with pytest.raises(InputError, match=r"float64.*torch.float32"):
        session.run({"x": torch.ones(2, 3, dtype=torch.float64)})
    with pytest.raises(InputError, match=r"astype\(numpy.float32\)"):
        session.run({"x": np.ones((2, 3))})
    # a list has no dtype of its own: it takes the input's
    assert session.run({"x": [[1.0, -2.0, 3.0]]})["y"].tolist() == [[1.0, 0.0, 3.0]]


def test_a_masked_array_with_masked_elements_is_refused_and_one_without_runs():
    session = bp.Session(_relu(), devices=["reference"])
    x = np.ma.masked_array(np.array([[1, -2, 3]], np.float32), mask=[[0, 1, 0]])
    with pytest.raises(InputError, match=r"1 masked element.*x.filled"):
        session.run({"x": x})
    assert session.run({"x": np.ma.masked_array(x.data)})["y"].tolist() == [[1.0, 0.0, 3.0]]


def test_a_model_without_outputs_is_refused_at_load():
    with pytest.raises(ModelError, match="no outputs"):
        bp.Session(_relu(outputs=False), devices=["reference"])


def test_the_calibration_overlay_is_written_privately_through_a_unique_temporary_file(
        tmp_path, monkeypatch):
    from backplane.hardware import calibrate

    target = tmp_path / "data" / "calibration.json"
    monkeypatch.setattr(calibrate, "overlay_path", lambda: target)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "calibration.tmp").symlink_to(tmp_path / "elsewhere")
    calibrate._write_overlay([{"fingerprint": "f", "backend": "b", "versions": {}}])
    assert calibrate.read_overlay() == [{"fingerprint": "f", "backend": "b", "versions": {}}]
    assert not (tmp_path / "elsewhere").exists()  # the old fixed name is not followed
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["calibration.json",
                                                                "calibration.tmp"]


@pytest.mark.parametrize("backend", ["openvino-cpu", "onnxruntime", "opencl", "reference"])
def test_a_batch_of_zero_gives_empty_outputs_on_every_backend(backend):
    """An empty batch is a valid request: every backend answers it with empty outputs of the
    right shape, as the reference does (openvino-cpu once failed where the rest ran)."""
    from backplane.conformance import zoo

    if not [d for d in bp.registry().devices() if d.backend == backend]:
        pytest.skip(f"{backend} has no device here")
    for model in zoo.models():
        if model.name not in ("mlp", "resnet", "transformer-encoder"):
            continue
        session = bp.Session(model.model, devices=[backend])
        shapes = {k: [0, *v[1:]] for k, v in model.input_shapes[0].items()}
        feeds = {i.name: np.zeros(shapes[i.name], dtype=i.dtype) for i in session.inputs}
        out = session.run(feeds)
        assert [v.shape[0] for v in out.values()] == [0] * len(out), model.name
        assert all(v.dtype == np.float32 for v in out.values())


def test_an_overridable_initializer_that_is_also_an_output_comes_back_stored_or_given():
    """IR < 4: an initializer listed as a graph input (a default the caller may override)
    and as a graph output is returned as stored, or as given (a KeyError before; found by
    fuzzing)."""
    from onnx import numpy_helper

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    w = numpy_helper.from_array(np.array([1.5, 2.5], np.float32), "w")
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [vi("x"), vi("w")], [vi("y"), vi("w")], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=3)
    session = bp.Session(model, devices=["reference"])
    x = np.ones(2, np.float32)
    out = session.run({"x": x})
    assert out["w"].tolist() == [1.5, 2.5] and out["y"].tolist() == [2.5, 3.5]
    given = session.run({"x": x, "w": np.zeros(2, np.float32)})
    assert given["w"].tolist() == [0.0, 0.0] and given["y"].tolist() == [1.0, 1.0]
