"""Models as real tools write them, run as ONNX Runtime would run them.

- ``torch.onnx.export(dynamo=True)`` writing its weights to ``model.onnx.data`` beside the
  model: loaded under the path confinement, run on each CPU backend, compared with torch.
- ``backplane run MODEL`` without inputs on such an export: the random inputs it draws
  (token ids inside the embedding table) are printed and the model runs.
- A model over 2 GiB (a float32 table just over 2 GiB, a sparse data file): its table stays
  in its file, and onnxruntime, openvino-cpu and the reference backend run it.

Numerical checks use fresh random inputs; the seed is printed and put in every assertion
message (set ``BACKPLANE_TEST_SEED`` to replay one).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import backplane as bp
from conftest import run_cli

SEED = int(os.environ.get("BACKPLANE_TEST_SEED") or secrets.randbits(32))
CPU = ["reference", "onnxruntime", "openvino-cpu"]
VOCAB, WIDTH = 512, 64


@pytest.fixture
def seed() -> int:
    print(f"random seed: {SEED} (replay with BACKPLANE_TEST_SEED={SEED})")
    return SEED


def session_on(model, backend: str) -> "bp.Session":
    if not any(d.backend == backend for d in bp.registry().devices()):
        pytest.skip(f"{backend} has no device here")
    return bp.Session(model, devices=[backend])


# ------------------------------------------------------------------ a torch dynamo export


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, object]:
    """A token classifier (embedding, linear, GELU) exported by the dynamo exporter with its
    weights in ``tagger.onnx.data``; and the torch module."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, WIDTH)
            self.head = torch.nn.Linear(WIDTH, 8)

        def forward(self, ids):
            return torch.nn.functional.gelu(self.head(self.embed(ids)))

    torch.manual_seed(SEED % 2**31)
    module = Tagger().eval()
    folder = tmp_path_factory.mktemp("export")
    with warnings.catch_warnings():  # torch.export's FutureWarnings about its own internals
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(module, (torch.zeros(2, 5, dtype=torch.int64),),
                                    dynamo=True, dynamic_shapes={"ids": {0: "batch", 1: "seq"}},
                                    verbose=False)
    program.save(str(folder / "tagger.onnx"), external_data=True)
    assert (folder / "tagger.onnx.data").is_file()
    return folder / "tagger.onnx", module


@pytest.mark.parametrize("backend", CPU)
def test_a_dynamo_export_with_external_data_runs_like_torch(exported, backend, seed):
    import torch

    path, module = exported
    session = session_on(path, backend)
    ids = np.random.default_rng(seed).integers(0, VOCAB, (3, 7))
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
    got = session.run({"ids": ids})
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-4, atol=1e-5,
                               err_msg=f"seed {seed}")


def test_a_dynamo_export_copied_without_its_data_file_names_the_missing_file(exported,
                                                                             tmp_path):
    path, _ = exported
    shutil.copy(path, tmp_path / "alone.onnx")
    with pytest.raises(bp.ModelError, match="tagger.onnx.data"):
        bp.load_model(tmp_path / "alone.onnx")


def test_backplane_run_without_inputs_prints_the_random_inputs_and_runs_the_export(exported):
    path, _ = exported
    result = run_cli("run", str(path), "--device", "reference", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    [spec] = data["random_input_specs"]
    assert spec["name"] == "ids" and spec["shape"] == [1, 16]
    assert (spec["low"], spec["high"], spec["sure"]) == (0, VOCAB, True)
    assert data["outputs"][0]["shape"] == [1, 16, 8]


# ------------------------------------------------------------------ a model over 2 GiB

#: A float32 table of this many rows of 1024 is 2 GiB and 4 KiB: more than protobuf holds.
BIG_ROWS, BIG_COLS = 2**19 + 1, 1024


def write_big_model(folder: Path, location: str = "big.onnx.data"
                    ) -> tuple[Path, dict[int, np.ndarray]]:
    """y = Gather(table, ids), the table in ``location``: a sparse file of zeros but for
    three rows of random values (written in no time), returned by row."""
    import onnx
    from onnx import TensorProto, helper

    nbytes = BIG_ROWS * BIG_COLS * 4
    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[BIG_ROWS, BIG_COLS],
                        data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        entry = table.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])], "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", BIG_COLS])],
        initializer=[table])
    path = folder / "big.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    str(path))
    rng = np.random.default_rng(SEED)
    rows = {r: rng.standard_normal(BIG_COLS).astype(np.float32)
            for r in (0, 1234, BIG_ROWS - 1)}
    with open((folder / location).resolve(), "wb") as f:
        f.truncate(nbytes)
        for r, values in rows.items():
            f.seek(r * BIG_COLS * 4)
            f.write(values.tobytes())
    return path, rows


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    return write_big_model(tmp_path_factory.mktemp("big"))


def test_a_model_over_2_gib_loads_with_its_table_left_in_its_file(big):
    from onnx import TensorProto

    path, _ = big
    graph = bp.load_model(path)
    assert graph.external_dir == path.parent.resolve()
    assert graph.model.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert graph.model.ByteSize() < 2**20
    assert graph.values["y"].shape == ("n", BIG_COLS)


def test_a_model_over_2_gib_is_refused_when_its_data_lies_outside_its_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path, _ = write_big_model(folder, location="../big.onnx.data")
    with pytest.raises(bp.ModelError, match="outside the model's folder"):
        bp.load_model(path)


@pytest.mark.parametrize("backend", CPU)
def test_a_model_over_2_gib_runs_with_its_table_left_in_its_file(big, backend, seed):
    path, rows = big
    session = session_on(path, backend)
    assert session.graph.external_dir == path.parent.resolve()
    ids = np.array(list(rows), np.int64)
    np.testing.assert_array_equal(session.run({"ids": ids})["y"], np.stack(list(rows.values())),
                                  err_msg=f"seed {seed}")
