"""PyTorch users: ``torch.compile(model, backend="backplane")`` and ``Session.from_torch``.

Real architectures with random weights (a transformers BERT encoder, a GPT-2 decoder
stepping through its KV cache, a ResNet-style CNN written in torch), each compared with
eager torch on fresh random inputs (the models: backplane.conformance.torch_models),
including after a change of batch size or sequence length. fp32 tolerance: 1e-4 of the
output's largest magnitude (both sides compute in fp32; the runtimes fuse and reorder
sums). The seed is printed and put in every assertion message (set
``BACKPLANE_TEST_SEED`` to replay one).
"""

from __future__ import annotations

import gc
import os
import secrets
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")

import backplane as bp  # noqa: E402
from backplane import pytorch as bpt  # noqa: E402
from backplane.conformance import torch_models  # noqa: E402

SEED = int(os.environ.get("BACKPLANE_TEST_SEED") or secrets.randbits(31))
#: Largest error allowed, relative to the output's largest magnitude.
FP32 = 1e-4


EARLIER: set[int] = set()  # ids of the graphs alive when the running test began


def graphs() -> list:
    """The graphs compiled by backend 'backplane' during the running test."""
    return [g for g in bpt.graphs() if id(g) not in EARLIER]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: dynamo's cache would otherwise carry a graph (and
    its sizes marked dynamic) from one test to the next."""
    torch._dynamo.reset()
    gc.collect()
    # dynamo keeps a graph as long as its code object's cache (a function nested in a test
    # lives with the module): each test counts the graphs it made
    EARLIER.clear()
    EARLIER.update(id(g) for g in bpt.graphs())
    torch.manual_seed(SEED)
    print(f"random seed: {SEED} (replay with BACKPLANE_TEST_SEED={SEED})")
    yield
    torch._dynamo.reset()


def close(got, want, what: str) -> None:
    assert isinstance(got, torch.Tensor), f"{what}: got a {type(got).__name__}, not a tensor"
    got, want = got.detach().numpy(), want.detach().numpy()
    assert got.shape == want.shape, f"{what}: shape {got.shape}, eager {want.shape}"
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
    assert err <= FP32, f"{what}: relative error {err:.2e} > {FP32} (seed {SEED})"


def ran_on_backplane(fn):
    """``fn()``, asserting that no graph fell back to eager."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    eager = [str(w.message) for w in caught if str(w.message).startswith("backplane:")]
    assert not eager, eager
    return out


# ------------------------------------------------------------------ the entry point


def test_torch_itself_finds_the_backend():
    assert "backplane" in torch._dynamo.list_backends()
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="torch_dynamo_backends") if e.name == "backplane"]
    assert ep.load() is bpt.backend


# ------------------------------------------------------------------ real architectures


def test_a_bert_encoder_matches_eager_across_batch_and_sequence_lengths():
    pytest.importorskip("transformers")
    model = torch_models.bert()
    compiled = torch.compile(model, backend="backplane")
    with torch.no_grad():
        for batch, length in ((2, 16), (3, 16), (4, 24), (5, 33)):
            ids = torch.randint(0, 1000, (batch, length))
            mask = torch.ones(batch, length, dtype=torch.int64)
            mask[0, length // 2:] = 0  # padding in one sequence
            got = ran_on_backplane(lambda: compiled(input_ids=ids, attention_mask=mask))
            want = model(input_ids=ids, attention_mask=mask)
            for key in ("last_hidden_state", "pooler_output"):
                close(got[key], want[key], f"bert {key} at batch {batch}, length {length}")
    # the sizes dynamo marked dynamic stayed dynamic: the last graph takes any batch and
    # length, with no further export or recompile
    declared = [vi.shape for g in graphs() for s in g.sessions_list() for vi in s.inputs]
    assert any(all(isinstance(d, str) for d in shape) for shape in declared), declared
    count = len(graphs())
    with torch.no_grad():
        ids, mask = torch.randint(0, 1000, (6, 40)), torch.ones(6, 40, dtype=torch.int64)
        close(compiled(input_ids=ids, attention_mask=mask)["last_hidden_state"],
              model(input_ids=ids, attention_mask=mask)["last_hidden_state"],
              "bert at batch 6, length 40")
    assert len(graphs()) == count
    assert sum(len(g.sessions_list()) for g in graphs()) == count


def test_a_gpt2_decoder_steps_through_its_kv_cache_like_eager():
    pytest.importorskip("transformers")
    model = torch_models.gpt2()
    compiled = torch.compile(model, backend="backplane")
    prompt = torch.randint(0, 1000, (2, 7))

    def generate(fn):
        logits, past, ids = [], None, prompt
        for _ in range(4):  # the prompt, then three tokens: the cache grows each step
            out = fn(input_ids=ids, past_key_values=past, use_cache=True)
            logits.append(out.logits)
            past = out.past_key_values
            ids = out.logits[:, -1:].argmax(-1)
        return logits, past

    with torch.no_grad():
        want, want_past = generate(model)
        got, got_past = ran_on_backplane(lambda: generate(compiled))
    for step, (g, w) in enumerate(zip(got, want)):
        close(g, w, f"gpt2 logits at step {step}")
    for layer in range(model.config.n_layer):
        close(got_past.layers[layer].keys, want_past.layers[layer].keys, f"layer {layer} keys")
        close(got_past.layers[layer].values, want_past.layers[layer].values,
              f"layer {layer} values")


def test_a_cnn_matches_eager_across_batch_sizes():
    model = torch_models.resnet()
    compiled = torch.compile(model, backend="backplane")
    with torch.no_grad():
        for batch in (1, 4, 8, 3):
            x = torch.randn(batch, 3, 96, 96)
            close(ran_on_backplane(lambda: compiled(x)), model(x), f"cnn at batch {batch}")


# ------------------------------------------------------------------ graphs and options


def test_a_dimension_marked_dynamic_is_one_session_for_every_size():
    net = torch.nn.Sequential(torch.nn.Linear(12, 6), torch.nn.LayerNorm(6)).eval()
    compiled = torch.compile(net, backend="backplane")
    with torch.no_grad():
        for batch in (2, 5, 9, 33):
            x = torch.randn(batch, 12)
            torch._dynamo.mark_dynamic(x, 0)
            close(ran_on_backplane(lambda: compiled(x)), net(x), f"batch {batch}")
    (graph,) = graphs()
    (session,) = graph.sessions_list()
    (declared,) = session.inputs
    assert isinstance(declared.shape[0], str) and declared.shape[1] == 12, declared.shape


def test_a_graph_break_gives_one_session_per_graph():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()

    def fn(x):
        y = net(x)
        torch._dynamo.graph_break()
        return net(y) * 2

    compiled = torch.compile(fn, backend="backplane")
    x = torch.randn(3, 8)
    with torch.no_grad():
        close(ran_on_backplane(lambda: compiled(x)), fn(x), "two graphs")
    assert len(graphs()) == 2
    assert all(len(g.sessions_list()) == 1 for g in graphs())
    assert bpt.explain().count("torch.compile graph") == 2


def test_an_op_onnx_cannot_express_runs_eager_with_one_warning_or_raises_when_strict():
    def fn(x):
        return torch.linalg.eigh(x @ x.mT)[0] + 1

    x = torch.randn(4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(fn, backend="backplane")(x)
    mine = [str(w.message) for w in caught if str(w.message).startswith("backplane:")]
    assert len(mine) == 1 and "runs eager" in mine[0] and "linalg_eigh" in mine[0], mine
    assert torch.allclose(out, fn(x))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="linalg_eigh"):
        torch.compile(fn, backend="backplane", options={"strict": True})(x)


def test_options_reach_the_session_and_unknown_ones_are_named():
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()).eval()
    x = torch.randn(4, 16)
    for backend in ("onnxruntime", "openvino-cpu"):
        if not any(d.backend == backend for d in bp.registry().devices()):
            continue
        torch._dynamo.reset()
        compiled = torch.compile(net, backend="backplane",
                                 options={"devices": [backend], "policy": "latency"})
        with torch.no_grad():
            close(ran_on_backplane(lambda: compiled(x)), net(x), f"pinned to {backend}")
        (session,) = graphs()[-1].sessions_list()
        assert {p.backend for p in session.plan.partitions} == {backend}
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="backplane",
                             options={"precision": "auto", "max_rel_error": 1e-2})
    with torch.no_grad():
        got = ran_on_backplane(lambda: compiled(x))
    (session,) = graphs()[-1].sessions_list()
    assert session.precision == "auto" and session.max_rel_error == 1e-2
    with torch.no_grad():
        want = net(x)
    assert float((got - want).abs().max()) <= 1e-2 * float(want.abs().max())  # the budget
    torch._dynamo.reset()
    with pytest.raises(Exception, match="unknown torch.compile option 'devcies'.*devices"):
        torch.compile(net, backend="backplane", options={"devcies": "auto"})(x)


def test_a_graph_only_the_reference_backend_would_run_runs_eager_unless_named():
    """The reference backend is pure Python: slower than eager, so it is no target unless
    the caller names it."""
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Softsign()).eval()
    x = torch.randn(2, 8)
    fast = sorted({d.backend for d in bp.registry().devices()} - {"reference"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            got = torch.compile(net, backend="backplane", options={"exclude": fast})(x)
    mine = [str(w.message) for w in caught if str(w.message).startswith("backplane:")]
    assert len(mine) == 1 and "reference backend" in mine[0] and "Abs" in mine[0], mine
    close(got, net(x), "eager")
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="backplane", options={"devices": ["reference"]})
    with torch.no_grad():
        close(ran_on_backplane(lambda: compiled(x)), net(x), "on the reference, as named")
    (session,) = graphs()[-1].sessions_list()
    assert {p.backend for p in session.plan.partitions} == {"reference"}


def test_weights_changed_in_place_are_seen():
    net = torch.nn.Linear(8, 4).eval()
    compiled = torch.compile(net, backend="backplane")
    x = torch.randn(2, 8)
    with torch.no_grad():
        close(compiled(x), net(x), "before")
        net.weight.mul_(-2.0)
        net.bias.add_(1.0)
        close(compiled(x), net(x), "after the weights changed in place")


def test_inputs_that_require_grad_run_eager_so_that_backward_works():
    net = torch.nn.Linear(8, 4).eval()
    compiled = torch.compile(net, backend="backplane")
    x = torch.randn(2, 8, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled(x).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, net.weight.sum(0).expand(2, 8))
    assert any("backward" in str(w.message) for w in caught)


# ------------------------------------------------------------------ Session.from_torch


def test_from_torch_keeps_the_export_and_takes_dynamic_sizes(tmp_path):
    model = torch_models.resnet(widths=(16, 32), classes=10)
    batch = torch.export.Dim("batch", min=1, max=64)
    session = bp.Session.from_torch(model, (torch.randn(2, 3, 64, 64),),
                                    dynamic_shapes={"x": {0: batch}},
                                    export_dir=tmp_path / "resnet")
    assert session.model_path == tmp_path / "resnet" / "model.onnx"
    assert session.model_path.is_file()
    assert (tmp_path / "resnet" / "model.onnx.data").is_file()
    (declared,) = session.inputs
    assert declared.name == "x" and isinstance(declared.shape[0], str)
    for size in (1, 5):
        x = torch.randn(size, 3, 64, 64)
        (out,) = session.run({"x": x}).values()
        with torch.no_grad():
            close(torch.from_numpy(out), model(x), f"from_torch at batch {size}")


def test_from_torch_takes_keyword_inputs():
    class Mix(torch.nn.Module):
        def forward(self, image, scale):
            return torch.sigmoid(image) * scale

    image, scale = torch.randn(2, 3), torch.randn(2, 1)
    session = bp.Session.from_torch(Mix(), {"image": image, "scale": scale})
    assert [vi.name for vi in session.inputs] == ["image", "scale"]
    (out,) = session.run({"image": image, "scale": scale}).values()
    close(torch.from_numpy(out), Mix()(image, scale), "keyword inputs")


def test_from_torch_says_why_a_module_cannot_be_exported():
    class Training(torch.nn.Module):  # batch norm in training mode updates its statistics
        def __init__(self) -> None:
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(x)

    with pytest.raises(bp.ModelError, match="in place.*eval"):
        bp.Session.from_torch(Training().train(), (torch.randn(3, 4),))
    default = bp.Session.from_torch(torch.nn.ReLU(), (torch.randn(3),))
    assert default.model_path.is_file() and "backplane-torch-" in str(default.model_path)
    folder = default.model_path.parent
    del default
    gc.collect()
    assert not folder.exists(), "a temporary export outlived its session"


def test_a_graph_that_writes_into_its_input_runs_eager():
    def fn(x):
        x.add_(1)  # the caller sees x change: an ONNX model cannot do that
        return x * 2

    x = torch.randn(3)
    want = x.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(fn, backend="backplane")(x)
    assert torch.allclose(x, want + 1) and torch.allclose(out, (want + 1) * 2)
    mine = [str(w.message) for w in caught if str(w.message).startswith("backplane:")]
    assert len(mine) == 1 and "in place" in mine[0], mine


def test_a_module_copied_under_inference_mode_runs_on_backplane():
    """Its weights are inference tensors, which have no version counter."""
    import copy

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
    x = torch.randn(2, 8)
    with torch.inference_mode():
        copied = copy.deepcopy(net)
        assert copied[0].weight.is_inference()
        got = ran_on_backplane(lambda: torch.compile(copied, backend="backplane")(x))
        close(got, net(x), "inference-mode copy")


def test_python_numbers_select_a_session_each():
    def fn(x, n):
        return torch.tanh(x * n) + n

    compiled = torch.compile(fn, backend="backplane")
    x = torch.randn(3, 5)
    with torch.no_grad():
        for n in (2, 3, 4, 3):  # from the second value on, dynamo passes n as a number
            close(ran_on_backplane(lambda: compiled(x, n)), fn(x, n), f"n = {n}")


def test_dynamic_true_runs_module_and_argument_numbers_as_constants():
    """Under ``dynamic=True`` dynamo passes a module's float (LayerNorm's eps) and a float
    argument as 0-d tensors read back with ``.item()``: each is baked into the model."""
    net = torch.nn.Sequential(torch.nn.Linear(12, 6), torch.nn.LayerNorm(6)).eval()

    def fn(x, scale):
        return net(x) * scale

    compiled = torch.compile(fn, backend="backplane", dynamic=True)
    with torch.no_grad():
        for batch, scale in ((2, 0.5), (7, 1.5), (3, 0.5)):
            x = torch.randn(batch, 12)
            close(ran_on_backplane(lambda: compiled(x, scale)), fn(x, scale),
                  f"batch {batch}, scale {scale}")
    sessions = [s for g in graphs() for s in g.sessions_list()]
    assert len(sessions) <= 2, "one session per value of scale, whatever the batch"
