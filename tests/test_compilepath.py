"""The compile-path mechanism (backplane.sdk.compilepath) by itself: paths are tried in the
declared order, a path that is not ready is passed over with its reason, a forced path is
tried alone or refused loudly, and a CompileError hands over to the next path unless the
path was forced; other errors propagate. The backends' own path tests (cuda-tensorrt, rocm,
npu) check their wording on top of it."""

from __future__ import annotations

import pytest

from backplane.sdk.compilepath import CompilePaths, PathUnavailable
from backplane.sdk.errors import CompileError, ExecutionError

PATHS = CompilePaths("demo", {"fast": "fast path", "mid": "middle path", "slow": "slow path"})


def ready(**reasons):
    """A readiness check: every path ready but those given a reason."""
    return lambda path: reasons.get(path, "")


def compiled(*failing, error=CompileError):
    """An attempt that fails with ``error`` on the ``failing`` paths, else names the path;
    ``tried`` lists the paths attempted."""
    tried = []

    def attempt(path):
        tried.append(path)
        if path in failing:
            raise error(f"{path} refused node 'n'", backend="demo", op="Relu",
                        vendor_message="vendor says no")
        return path

    attempt.tried = tried
    return attempt


def test_ready_paths_are_tried_in_the_declared_order():
    assert PATHS.order(ready()) == (["fast", "mid", "slow"], [])
    made, choice = PATHS.compile(ready(), compiled())
    assert (made, choice.path, choice.forced, choice.passed) == ("fast", "fast", False, [])


def test_a_path_that_is_not_ready_is_passed_over_with_its_reason():
    order, passed = PATHS.order(ready(fast="no driver", slow="no package"))
    assert order == ["mid"]
    assert [str(p) for p in passed] == ["fast path: no driver", "slow path: no package"]
    _, choice = PATHS.compile(ready(fast="no driver", slow="no package"), compiled())
    assert choice.explain("mid on GPU 0") == "mid on GPU 0; fast path passed over: no driver"


def test_no_ready_path_is_refused_with_every_reason():
    with pytest.raises(PathUnavailable) as err:
        PATHS.order(ready(fast="a", mid="b", slow="c"), device="demo:0", precision="fp16")
    assert str(err.value) == ("compile failed in backend 'demo' on device 'demo:0': no demo "
                              "path can compile at fp16: fast path: a; middle path: b; "
                              "slow path: c")
    assert isinstance(err.value, CompileError) and len(err.value.reasons) == 3


def test_a_forced_path_is_tried_alone_even_after_a_ready_one():
    attempt = compiled()
    made, choice = PATHS.compile(ready(), attempt, "slow")
    assert (made, attempt.tried, choice.forced, choice.passed) == ("slow", ["slow"], True, [])
    assert choice.explain("slow on GPU 0") == "slow on GPU 0 (forced by options demo.path)"


def test_a_forced_path_that_is_not_ready_or_unknown_is_refused_naming_why():
    with pytest.raises(PathUnavailable, match=r"the middle path was asked for \(options "
                                              r"demo.path='mid'\) but cannot be taken: gone"):
        PATHS.compile(ready(mid="gone"), compiled(), "mid")
    with pytest.raises(PathUnavailable, match="must be one of fast, mid, slow, not 'slwo'. "
                                              "Did you mean 'slow'"):
        PATHS.order(ready(), "slwo")


def test_a_compile_error_falls_through_to_the_next_path_and_is_explained():
    attempt = compiled("fast")
    made, choice = PATHS.compile(ready(mid="no package"), attempt)
    assert (made, attempt.tried) == ("slow", ["fast", "slow"])
    assert [(p.path, p.reason) for p in choice.passed] == [
        ("fast", "failed at compile: fast refused node 'n'"), ("mid", "no package")]
    assert isinstance(choice.passed[0].error, CompileError)


def test_a_forced_paths_compile_error_propagates_unchanged():
    attempt = compiled("fast")
    with pytest.raises(CompileError, match="fast refused") as err:
        PATHS.compile(ready(), attempt, "fast")
    assert not isinstance(err.value, PathUnavailable) and attempt.tried == ["fast"]


def test_an_error_that_is_not_declared_to_fall_through_propagates():
    attempt = compiled("fast", error=ExecutionError)
    with pytest.raises(ExecutionError):
        PATHS.compile(ready(), attempt)
    assert attempt.tried == ["fast"]
    wider = CompilePaths("demo", PATHS.labels, falls_through=(CompileError, ExecutionError))
    assert wider.compile(ready(), compiled("fast", error=ExecutionError))[0] == "mid"


def test_when_every_ready_path_fails_the_refusal_lists_them_and_keeps_the_last_error():
    with pytest.raises(PathUnavailable) as err:
        PATHS.compile(ready(mid="no package"), compiled("fast", "slow"), device="demo:0")
    assert "fast path: failed at compile: fast refused" in str(err.value)
    assert "middle path: no package; slow path: failed at compile: slow" in str(err.value)
    assert (err.value.op, err.value.vendor_message) == ("Relu", "vendor says no")
    assert isinstance(err.value.__cause__, CompileError)


def test_a_survey_lists_every_ready_path_and_leaves_out_those_not_offered():
    ready_paths, passed = PATHS.survey(lambda p: {"fast": "", "mid": None}.get(p, "broken"))
    assert ready_paths == ["fast"] and [str(p) for p in passed] == ["slow path: broken"]


def test_a_backend_keeps_its_own_wording():
    worded = CompilePaths("demo", PATHS.labels, messages={"none": "nothing fits: {reasons}"})
    with pytest.raises(PathUnavailable, match="nothing fits: fast path: a; middle path: b"):
        worded.order(ready(fast="a", mid="b", slow="c"))
