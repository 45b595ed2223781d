"""The dynamic batcher: requests close together run as one batch, each answered with its own
rows or its own error, none lost; outputs equal the session's own (fp32, rtol 1e-5) on
fresh random inputs."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp
from backplane.engine.batcher import Batcher
from tests.models import batched_mlp

SEED = int(np.random.SeedSequence().entropy % 2**32)


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _dense() -> bytes:
    return batched_mlp(SEED).SerializeToString()


@pytest.fixture(scope="module")
def dense() -> bp.Session:
    return bp.Session(_dense())


def _rows(n: int, width: int = 16, seed: int = SEED) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, width)).astype(np.float32) for _ in range(n)]


def _same(session: bp.Session, x: np.ndarray, out: dict) -> None:
    np.testing.assert_allclose(out["y"], session.run({"x": x})["y"], rtol=1e-5, atol=1e-6,
                               err_msg=f"seed {SEED}")


def test_concurrent_requests_run_as_batches_and_each_gets_its_own_rows(dense):
    records = []
    with Batcher(dense, max_batch_size=8, max_delay_ms=50, observer=records.append) as b:
        assert b.batching and b.sizes == (1, 2, 4, 8), b.why
        xs = _rows(24)
        futures = [b.submit({"x": x}) for x in xs]
        for x, f in zip(xs, futures):
            _same(dense, x, f.result(timeout=30))
    assert sum(r.requests for r in records) == 24
    assert max(r.rows for r in records) == 8, records
    assert all(r.failed == 0 for r in records)
    assert {r.rows for r in records} <= {1, 2, 4, 8}


def test_a_bad_request_fails_alone_with_its_own_input_error(dense):
    with Batcher(dense, max_batch_size=8, max_delay_ms=50) as b:
        xs = _rows(6)
        good = [b.submit({"x": x}) for x in xs[:3]]
        bad = b.submit({"x": np.zeros((1, 15), np.float32)})
        good += [b.submit({"x": x}) for x in xs[3:]]
        assert isinstance(bad.exception(timeout=30), bp.InputError)
        assert "dimension 1 must be 16" in str(bad.exception())
        for x, f in zip(xs, good):
            _same(dense, x, f.result(timeout=30))


def test_a_request_that_fails_at_run_time_fails_alone_and_its_batch_mates_are_answered():
    # Gather's indices are checked only when it runs: index 50 is outside the table.
    table = np.random.default_rng(SEED).standard_normal((10, 4)).astype(np.float32)
    s = bp.Session(_model([helper.make_node("Gather", ["T", "i"], ["y"])],
                          [helper.make_tensor_value_info("i", TensorProto.INT64, ["batch"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                          [numpy_helper.from_array(table, "T")]))
    records = []
    with Batcher(s, max_batch_size=8, max_delay_ms=100, observer=records.append) as b:
        ids = [np.array([k], np.int64) for k in (1, 7, 3)]
        futures = [b.submit({"i": ids[0]}), b.submit({"i": np.array([50], np.int64)}),
                   b.submit({"i": ids[1]}), b.submit({"i": ids[2]})]
        assert isinstance(futures[1].exception(timeout=60), bp.BackplaneError)
        for k, f in zip(ids, futures[:1] + futures[2:]):
            np.testing.assert_array_equal(f.result(timeout=60)["y"], table[k])
    assert sum(r.failed for r in records) == 1


def test_a_full_queue_refuses_at_once_with_a_retry_hint_and_answers_everything_it_accepted(dense):
    # The first request waits up to 500 ms for a batch of 4 that a queue of 3 never holds.
    with Batcher(dense, max_batch_size=4, max_delay_ms=500, max_queue_size=3) as b:
        xs = _rows(12)
        futures = [b.submit({"x": x}) for x in xs]
        answered = refused = 0
        for x, f in zip(xs, futures):
            exc = f.exception(timeout=30)
            if exc is None:
                _same(dense, x, f.result())
                answered += 1
            else:
                assert isinstance(exc, bp.OverloadError), exc
                assert exc.retry_after_s > 0 and "max_queue_size 3" in str(exc)
                refused += 1
    assert answered == 3 and refused == 9


def test_a_request_past_its_deadline_is_not_run():
    with Batcher(bp.Session(_dense()), max_batch_size=4, max_delay_ms=20) as b:
        late = b.submit({"x": _rows(1)[0]}, timeout_s=1e-9)
        with pytest.raises(bp.DeadlineError, match="deadline"):
            late.result(timeout=30)
        assert isinstance(late.exception(), TimeoutError)


def test_a_model_without_a_batch_dimension_runs_requests_one_by_one():
    w = np.ones((16, 8), np.float32)
    s = bp.Session(_model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(w, "W")]))
    records = []
    with Batcher(s, max_batch_size=8, max_delay_ms=20, observer=records.append) as b:
        assert not b.batching and b.sizes == (1,)
        assert "fixed first dimension" in b.why and "'x'" in b.why
        xs = _rows(5)
        for x, f in zip(xs, [b.submit({"x": x}) for x in xs]):
            _same(s, x, f.result(timeout=30))
    assert all(r.requests == 1 for r in records)


def test_a_model_whose_rows_depend_on_each_other_is_not_batched():
    # y = x - mean over the batch: a declared batch dimension, but rows are not independent.
    s = bp.Session(_model(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
         helper.make_node("Sub", ["x", "m"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])]))
    with Batcher(s, max_batch_size=8) as b:
        assert not b.batching and "not independent" in b.why, b.why
        x = _rows(1)[0]
        _same(s, x, b.infer({"x": x}))


def test_preferred_sizes_pad_a_batch_up_and_only_those_sizes_run(dense):
    records = []
    with Batcher(dense, max_batch_size=8, max_delay_ms=100, preferred_batch_sizes=[4],
                 observer=records.append) as b:
        assert b.sizes == (4, 8)
        xs = _rows(3)
        for x, f in zip(xs, [b.submit({"x": x}) for x in xs]):
            out = f.result(timeout=30)
            assert out["y"].shape == (1, 8)
            _same(dense, x, out)
    assert {r.rows for r in records} <= {4, 8}
    assert sum(r.padded for r in records) == sum(r.rows for r in records) - 3


def test_single_row_requests_fill_the_largest_size_they_can_and_the_rest_wait(dense):
    records = []
    with Batcher(dense, max_batch_size=8, max_delay_ms=100, observer=records.append) as b:
        xs = _rows(7)
        for x, f in zip(xs, [b.submit({"x": x}) for x in xs]):
            _same(dense, x, f.result(timeout=30))
    assert sorted(r.rows for r in records) == [1, 2, 4], records
    assert not any(r.padded for r in records)


def test_warm_up_takes_a_request_for_the_sizes_of_its_other_dimensions():
    s = bp.Session(_model([helper.make_node("Relu", ["x"], ["y"])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])]))
    x = _rows(1, 5)[0]
    with Batcher(s, max_batch_size=4, warmup={"x": x}) as b:
        assert b.batching, b.why
        _same(s, x, b.infer({"x": x}))


def test_requests_of_different_inner_shapes_are_never_mixed():
    s = bp.Session(_model([helper.make_node("Relu", ["x"], ["y"])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])]))
    with Batcher(s, max_batch_size=8, max_delay_ms=50) as b:
        xs = _rows(4, 3) + _rows(4, 5)
        for x, f in zip(xs, [b.submit({"x": x}) for x in xs]):
            _same(s, x, f.result(timeout=30))


def test_many_threads_and_asyncio_share_one_batcher(dense):
    xs = _rows(64)
    wrong: list[str] = []

    def client(part: list[np.ndarray]) -> None:
        for x in part:
            out = b.infer({"x": x})
            if not np.allclose(out["y"], dense.run({"x": x})["y"], rtol=1e-5, atol=1e-6):
                wrong.append("mismatch")

    async def many() -> list[dict]:
        return await asyncio.gather(*[b.run({"x": x}) for x in xs[:16]])

    with Batcher(dense, max_batch_size=8, max_delay_ms=2, max_queue_size=64) as b:
        threads = [threading.Thread(target=client, args=(xs[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        outs = asyncio.run(many())
        for t in threads:
            t.join(60)
    assert not wrong, f"seed {SEED}"
    for x, out in zip(xs, outs):
        _same(dense, x, out)


def test_a_caller_that_gives_up_while_queued_harms_no_later_request(dense):
    async def scenario(b: Batcher) -> dict:
        waiting = asyncio.ensure_future(b.run({"x": _rows(1)[0]}))
        await asyncio.sleep(0)
        waiting.cancel()  # an asyncio caller gone while its request waits for batch-mates
        return await b.run({"x": x})

    x = _rows(2)[1]
    with Batcher(dense, max_batch_size=4, max_delay_ms=200) as b:
        _same(dense, x, asyncio.run(scenario(b)))
        _same(dense, x, b.infer({"x": x}))


def test_close_answers_every_accepted_request_then_refuses(dense):
    b = Batcher(dense, max_batch_size=4, max_delay_ms=50)
    xs = _rows(10)
    futures = [b.submit({"x": x}) for x in xs]
    b.close(drain=True, timeout_s=30)
    for x, f in zip(xs, futures):
        _same(dense, x, f.result(timeout=0))
    late = b.submit({"x": xs[0]}).exception(timeout=0)
    assert isinstance(late, bp.OverloadError) and late.retry_after_s is None


def test_a_broken_observer_never_breaks_batching(dense):
    def observer(record):
        raise RuntimeError("observer bug")

    with Batcher(dense, max_batch_size=4, observer=observer) as b:
        x = _rows(1)[0]
        _same(dense, x, b.infer({"x": x}))


@pytest.mark.parametrize("options, fragment", [
    ({"max_batch_size": 0}, "max_batch_size is a positive whole number"),
    ({"max_delay_ms": -1}, "max_delay_ms"),
    ({"preferred_batch_sizes": [16]}, "over max_batch_size"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"max_queue_size": 1.5}, "max_queue_size"),
])
def test_settings_that_make_no_sense_are_refused_with_what_to_give(dense, options, fragment):
    with pytest.raises(bp.UnsupportedError, match=fragment):
        Batcher(dense, **options)
