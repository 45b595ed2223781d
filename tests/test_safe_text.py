"""Text from models is safe to print: names escaped and cut short in every message and in
``plan.explain()``, error messages bounded, and a short explanation by default whatever the
model's size (the per-node detail behind ``verbose=True`` / ``--verbose``)."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import backplane as bp
from backplane.engine.plan import LINE_LIMIT, Partition, Placement, Plan, Rejection
from backplane.sdk.text import MESSAGE_LIMIT, NAME_LIMIT, shown
from conftest import run_cli
from models import save

#: An escape sequence (colour), an OSC (terminal title), CR, NUL, a bidi override, DEL, a C1
#: CSI, a zero-width space, a BOM, a line separator, a newline and a tab.
HOSTILE = "\x1b[31mred\x1b]0;title\x07\r\x00\u202eevil\x7f\x9b\u200b\ufeff\u2028\n\t"
BIG = "n" * 10_000_000  # ten megabytes
#: Longest a message built around one shown name may be (the name is cut at NAME_LIMIT).
SHORT_MESSAGE = 1000


def unsafe(text: str, allowed: str = "") -> set[str]:
    """The characters of ``text`` that would act on a terminal, or reorder or hide text."""
    return {c for c in text if c not in allowed
            and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")}


def hostile_model(big_node: bool = True) -> onnx.ModelProto:
    """Relu then Abs, every name hostile: graph, input, output, nodes (one ten megabytes
    long), the symbolic batch dimension."""
    nodes = [helper.make_node("Relu", ["x" + HOSTILE], ["mid" + HOSTILE],
                              name=HOSTILE + (BIG if big_node else "")),
             helper.make_node("Abs", ["mid" + HOSTILE], ["y" + HOSTILE], name="abs" + HOSTILE)]
    graph = helper.make_graph(
        nodes, "g" + HOSTILE,
        [helper.make_tensor_value_info("x" + HOSTILE, TensorProto.FLOAT, ["b" + HOSTILE, 3])],
        [helper.make_tensor_value_info("y" + HOSTILE, TensorProto.FLOAT, ["b" + HOSTILE, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shown_escapes_controls_bidi_and_format_characters_as_python_does():
    assert shown("\x1b[31mred") == "\\x1b[31mred"
    assert shown("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert shown("a\rb\x00c\nd\te") == "a\\rb\\x00c\\nd\\te"
    assert shown("\x7f\x9b\u202e\u2066\u200b\ufeff\u2028") == \
        "\\x7f\\x9b\\u202e\\u2066\\u200b\\ufeff\\u2028"
    assert shown("Größe_中文_µ") == "Größe_中文_µ"  # printable text stays as it is
    assert not unsafe(shown(HOSTILE))


def test_shown_cuts_a_long_name_and_says_how_much_is_left_out():
    assert shown(BIG) == "n" * NAME_LIMIT + f"…(+{len(BIG) - NAME_LIMIT} chars)"
    assert shown("\x1b" * 100, limit=10).startswith("\\x1b\\x1b…(+98 chars)")
    assert shown("n" * NAME_LIMIT) == "n" * NAME_LIMIT


def test_every_error_message_is_escaped_and_bounded_wherever_it_was_built():
    error = bp.InputError("head \x1b[31m" + BIG + " tail\r")
    text = str(error)
    assert len(text) <= MESSAGE_LIMIT and len(repr(error)) <= 2 * MESSAGE_LIMIT
    assert text.startswith("head \\x1b[31mnnn") and text.endswith("nnn tail\\r")
    assert " chars cut)…" in text
    assert not unsafe(text) and not unsafe(str(bp.ModelError(HOSTILE)), allowed="\n\t")
    assert str(bp.ModelError("line one\nline two")) == "line one\nline two"


def test_explain_of_a_model_with_hostile_names_is_escaped_and_bounded():
    plan = bp.Session(hostile_model(), devices=["reference"]).plan
    text, verbose = plan.explain(), plan.explain(verbose=True)
    assert len(text) < 3000 and len(verbose) < 3000
    assert not unsafe(text, allowed="\n") and not unsafe(verbose, allowed="\n")
    assert shown(HOSTILE + BIG) in text and "g\\x1b[31mred" in text
    assert "abs\\x1b[31mred" in verbose
    # The data keeps the names as they are.
    assert plan.to_dict()["placements"][0]["node"] == HOSTILE + BIG


@pytest.fixture(scope="module")
def hostile_session():
    return bp.Session(hostile_model(big_node=False), devices=["reference"])


@pytest.mark.parametrize("feeds", [
    {},                                                          # missing
    {"x" + HOSTILE: np.ones((2, 3), np.float64)},                # dtype
    {"x" + HOSTILE: np.ones((2, 4), np.float32)},                # shape
    {"x" + HOSTILE: np.ones((2, 3, 1), np.float32)},             # rank
    {HOSTILE + BIG: np.ones((2, 3), np.float32)},                # unknown, ten megabytes
    {"x" + HOSTILE: np.ones((2, 3), np.float32), "x" + HOSTILE[:5]: 1},  # unknown, close
], ids=["missing", "dtype", "shape", "rank", "unknown-big", "unknown-close"])
def test_input_errors_name_hostile_inputs_escaped_and_short(hostile_session, feeds):
    with pytest.raises(bp.InputError) as err:
        hostile_session.run(feeds)
    message = str(err.value)
    assert len(message) <= SHORT_MESSAGE and not unsafe(message), message
    assert "x\\x1b[31mred" in message or shown(HOSTILE + BIG) in message


@pytest.mark.parametrize("node", [HOSTILE + BIG, HOSTILE.replace("\x00", "") + BIG],
                         ids=["with-nul", "without-nul"])
def test_the_shape_check_names_a_hostile_node_escaped_and_short(node):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a" + HOSTILE, "w"], ["y"], name=node)], "mm",
        [helper.make_tensor_value_info("a" + HOSTILE, TensorProto.FLOAT, ["n", "k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    session = bp.Session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                         devices=["reference"])
    with pytest.raises(bp.InputError, match="do not fit the model together") as err:
        session.run({"a" + HOSTILE: np.ones((2, 5), np.float32)})  # K = 5 against 4
    message = str(err.value)
    assert len(message) <= SHORT_MESSAGE and not unsafe(message), message
    assert "'a\\x1b[31mred" in message
    if "\x00" in node:  # ONNX's own message ends the name at its NUL, and says no more
        assert "node name: \\x1b[31mred" in message
    else:
        assert f"node '{shown(node)}' (MatMul): " in message


def test_a_model_error_names_a_hostile_model_escaped_and_short():
    model = hostile_model(big_node=False)
    model.graph.name = HOSTILE + BIG
    del model.graph.output[:]
    with pytest.raises(bp.ModelError, match="has no outputs") as err:
        bp.load_model(model)
    message = str(err.value)
    assert len(message) <= SHORT_MESSAGE and not unsafe(message), message
    assert message.startswith(shown(HOSTILE + BIG) + ": ")


def chain(length: int = 300, matmuls: int = 10, width: int = 128) -> onnx.ModelProto:
    """A chain of Relu nodes with ``matmuls`` MatMuls spread along it, the costliest nodes."""
    every = length // matmuls
    nodes, weights, value = [], [], "x"
    for i in range(length):
        out = "y" if i == length - 1 else f"v{i}"
        if i % every == every // 2:
            weights.append(numpy_helper.from_array(
                np.full((width, width), 0.01, np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [value, f"w{i}"], [out], name=f"mm{i}"))
        else:
            nodes.append(helper.make_node("Relu", [value], [out], name=f"relu{i}"))
        value = out
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, width])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_explain_of_a_big_model_is_a_short_summary_naming_the_ten_costliest_nodes():
    plan = bp.Session(chain(300), devices=["reference"]).plan
    text = plan.explain()
    lines = text.splitlines()
    assert len(text) < 4000, text
    assert lines[0].startswith("plan for 'chain'") and lines[1].startswith("300 nodes in 1 ")
    assert lines[2].startswith("costliest nodes by predicted time (10 of 300")
    named = [line.split()[0] for line in lines[3:13]]
    by_cost = sorted(plan.to_dict()["placements"], key=lambda p: -p["predicted_s"])
    assert named == [p["node"] for p in by_cost[:10]]
    assert set(named) == {n.name for n in chain(300).graph.node if n.op_type == "MatMul"}
    assert "relu7 " not in text and "partition 0 on reference:0 at fp32 (300 nodes)" in text
    verbose = plan.explain(verbose=True)
    assert all(f"  {p.node} ({p.op}) -> reference:0 " in verbose for p in plan.placements)


def test_default_explain_is_bounded_for_ten_thousand_nodes_in_five_thousand_partitions():
    devices = ["a:0", "b:0"]
    placements = [Placement(f"n{i}", "Relu", devices[i // 2 % 2], devices[i // 2 % 2][0],
                            "lowest predicted cost",
                            rejected=[Rejection(devices[1 - i // 2 % 2], "capability:op",
                                                "op Relu is not implemented")],
                            predicted_s=1e-6 * (i % 97))
                  for i in range(10_000)]
    partitions = [Partition(k, devices[k % 2], devices[k % 2][0], [f"n{2 * k}", f"n{2 * k + 1}"],
                            [2 * k, 2 * k + 1], [f"v{2 * k - 1}"], [f"v{2 * k + 1}"],
                            transfers_in=[f"v{2 * k - 1}"] if k else [], predicted_s=1e-6 * k)
                  for k in range(5_000)]
    plan = Plan("big", "latency", "fp32", False, devices, placements, partitions,
                events=[f"event {k}" for k in range(100)], notes=[f"note {k}" for k in range(100)])
    text = plan.explain()
    assert len(text) < 8000 and all(len(line) <= LINE_LIMIT for line in text.splitlines())
    assert text.splitlines()[1].startswith("10000 nodes in 5000 partitions on 2 devices")
    assert "... 4980 other partitions" in text and "... 90 more events" in text
    assert "partition 4999 on b:0" in text and "partition 0 on" not in text  # the costliest
    verbose = plan.explain(verbose=True)
    placed = {line.split()[0] for line in verbose.splitlines() if " (Relu) -> " in line}
    assert placed == {f"n{i}" for i in range(10_000)}
    assert "partition 0 on a:0" in verbose and "event 99" in verbose


@pytest.mark.slow
def test_the_cli_prints_hostile_names_escaped_and_bounded(tmp_path):
    model = hostile_model()
    model.graph.output.append(
        helper.make_tensor_value_info("../escaped", TensorProto.FLOAT, ["b" + HOSTILE, 3]))
    model.graph.output.append(
        helper.make_tensor_value_info("[bold]kept", TensorProto.FLOAT, ["b" + HOSTILE, 3]))
    model.graph.node.extend([helper.make_node("Neg", ["mid" + HOSTILE], ["../escaped"]),
                             helper.make_node("Sigmoid", ["mid" + HOSTILE], ["[bold]kept"])])
    path = save(model, tmp_path / "hostile.onnx")
    wide = {"COLUMNS": "250"}
    planned = run_cli("plan", path, "--device", "reference", **wide)
    verbose = run_cli("plan", path, "--device", "reference", "--verbose", **wide)
    ran = run_cli("run", path, "--device", "reference", "--output", str(tmp_path / "out"),
                  **wide)
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    failed = run_cli("run", path, "--device", "reference", "--input",
                     f"x={tmp_path / 'x.npy'}", **wide)
    for result in (planned, verbose, ran):
        assert result.returncode == 0, result.stderr
        assert len(result.stdout) < 5000 and not unsafe(result.stdout, allowed="\n"), \
            result.stdout
    assert "Relu) -> reference:0" not in planned.stdout
    assert "(Relu) -> reference:0" in verbose.stdout
    assert "[bold]kept" in ran.stdout  # a name, not rich markup
    assert "random inputs" in ran.stdout and "x\\x1b[31mred" in ran.stdout
    assert (tmp_path / "out" / "output_1.npy").exists() and not (tmp_path / "escaped.npy").exists()
    assert failed.returncode == 2 and "missing input 'x\\x1b[31mred" in failed.stderr
    assert len(failed.stderr) < SHORT_MESSAGE and not unsafe(failed.stderr, allowed="\n")
    data = json.loads(run_cli("plan", path, "--device", "reference", "--json").stdout)
    assert data["placements"][0]["node"] == HOSTILE + BIG  # --json keeps the data whole
