"""The scheduler zoo: every family at a small and a large size and at batch 1 and 32; each
model is valid ONNX, keeps a symbolic batch and loads; the small ones give the reference
backend's outputs on ONNX Runtime.

Weights and inputs are drawn from BACKPLANE_TEST_SEED (random unless set; printed on failure).
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import onnx
import pytest

import backplane as bp
from backplane.conformance import compare
from backplane.conformance.zoo import (QDQ_ACTIVATION_SCALE, SCHEDULER_BATCHES, SCHEDULER_SIZES,
                                       SchedulerModel, scheduler_zoo)
from backplane.model.intake import load_model

SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
NAMES = [f"{family}-{size}-b{batch}" for family, size in SCHEDULER_SIZES
         for batch in SCHEDULER_BATCHES]
SMALL = [name for name in NAMES if "-small-" in name]
#: Small models against the oracle: float32 whole-model tolerance.
RTOL, ATOL = 1e-3, 1e-4


@functools.lru_cache(maxsize=1)
def zoo() -> dict[str, SchedulerModel]:
    """The whole scheduler zoo, built once for the module (about two seconds)."""
    return {entry.name: entry for entry in scheduler_zoo(SEED % 2**16)}


def inputs(entry: SchedulerModel) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([SEED, NAMES.index(entry.name)])
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in entry.input_shapes.items()}


def test_the_zoo_has_every_family_at_each_size_and_batch():
    assert list(zoo()) == NAMES
    assert {size for _, size in SCHEDULER_SIZES} == {"small", "large"}
    assert SCHEDULER_BATCHES == (1, 32)


def test_the_default_conformance_models_are_the_small_sizes():
    from backplane.conformance.zoo import models

    small = {e.name.rsplit("-", 2)[0]: e.model for e in scheduler_zoo(3, sizes=["small"])}
    for default in models(3):
        assert small[default.name].SerializeToString() == default.model.SerializeToString()


def test_an_unknown_size_is_refused():
    with pytest.raises(ValueError, match="medium"):
        scheduler_zoo(sizes=["medium"])


@pytest.mark.parametrize("name", NAMES)
def test_every_model_passes_the_onnx_checker(name):
    onnx.checker.check_model(zoo()[name].model)


@pytest.mark.parametrize("name", NAMES)
def test_every_model_loads_with_a_symbolic_batch_and_takes_its_input_shapes(name):
    entry = zoo()[name]
    graph = load_model(entry.model)
    assert {vi.name for vi in graph.inputs} == set(entry.input_shapes)
    for vi in graph.inputs:
        assert isinstance(vi.shape[0], str), f"{name}: input {vi.name} has a fixed batch"
        shape = entry.input_shapes[vi.name]
        assert len(vi.shape) == len(shape)
        assert all(isinstance(d, str) or d == s for d, s in zip(vi.shape, shape))
        assert shape[0] == int(name.rsplit("-b", 1)[1])


@pytest.mark.parametrize("name", SMALL)
def test_every_small_model_on_onnxruntime_matches_the_reference_backend(name):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    entry = zoo()[name]
    feeds = inputs(entry)
    reference = bp.Session(entry.model, devices=["reference"], strict=True)
    ort = bp.Session(entry.model, devices=["onnxruntime"], strict=True)
    assert {p.device for p in ort.plan.partitions} == {"onnxruntime:0"}
    want, got = reference.run(feeds), ort.run(feeds)
    # A QDQ activation on a rounding tie may land one step apart: allow one activation step.
    rtol, atol = (RTOL, QDQ_ACTIVATION_SCALE) if name.startswith("qdq-") else (RTOL, ATOL)
    assert set(got) == set(want)
    for out, ref in want.items():
        result = compare(got[out], ref, rtol, atol)
        assert result.ok, (f"{name} {out}: {result.detail}, max abs {result.max_abs_error:.3g} "
                           f"(seed {SEED}; rerun with BACKPLANE_TEST_SEED={SEED})")
