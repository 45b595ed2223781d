"""The npu backend: it loads everywhere and says why it has no NPU; its limits are data
(static shapes, fp16 and int8); it fixes dynamic dimensions to the session's sizes or
refuses, naming them, before compiling; and its preparation (static shapes, fp16 weights,
int8 by NNCF or ONNX Runtime's quantizer with calibration inputs) keeps the outputs within
stated tolerances of the reference backend.

No NPU is reachable here. The preparation is checked by CPU emulation: the NPU-prepared
model compiled on OpenVINO's CPU device at f32, with every intermediate value rounded to
fp16 as the NPU's fp16 compute stores it (``prepare.fp16_activations``); the plugin's whole
compile path (prepare, ``query_model``, compile, blob cache, per-signature recompiles) runs
on a device whose ``ov_device`` names OpenVINO's CPU, and the ONNX Runtime path on ORT's
CPU provider. Sysfs trees with NPU nodes are built in ``tmp_path``; OpenVINO's and ONNX
Runtime's answers are injected as data where a test needs an NPU this machine lacks.

Tolerances (each error relative to the reference backend, onnx.reference):
- fp16: ``max |y - y_ref| / max |y_ref|`` (backplane.engine.accuracy.max_rel_error, the measure of
  ``precision="auto"``) at most :data:`FP16_TOLERANCE`, the default accuracy budget;
- int8: the relative RMS error ``||y - y_ref|| / ||y_ref||`` at most :data:`INT8_TOLERANCE`
  (see there). The int8 test also shows that a wrong preparation exceeds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="openvino is not installed")

from conftest import run_cli, run_python  # noqa: E402

from backplane import CompileOptions, Device  # noqa: E402
from backplane.engine.accuracy import max_rel_error  # noqa: E402
from backplane.conformance import zoo  # noqa: E402
from backplane.sdk.errors import CompileError, DeviceUnavailable  # noqa: E402
from backplane.model.intake import load_model  # noqa: E402
from backplane.plugins.npu import DECLARED_OPS, NpuBackend, devices, prepare  # noqa: E402
from backplane.plugins.reference import ReferenceBackend  # noqa: E402
from backplane.runtimes.openvino import ov_core  # noqa: E402

SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
#: fp16: the default accuracy budget of precision="auto" (and the conformance suite's
#: float16 rtol). Measured with fp16 weights and fp16-rounded intermediates on the zoo
#: models (docs/backends/npu.md): at most 2.3e-3, so 4x below it.
FP16_TOLERANCE = 1e-2
#: int8: a per-tensor int8 quantizer over a calibrated range of about 4 sigma adds noise of
#: RMS range / (255 * sqrt(12)), about 0.9% of an activation's sigma; L quantized tensors in
#: series add up to about sqrt(L) times that: 2.6% for the 8 of the zoo's conv nets. The
#: tolerance is 5% relative RMS (SQNR 26 dB), twice that estimate; measured on resnet and
#: depthwise-separable over 120 seeds: 1.0% to 3.6%. A calibration at 0.3x the real input
#: scale (activations clipped) measures 33% to 51%.
INT8_TOLERANCE = 0.05
#: OpenVINO's CPU device at f32: what the emulation compiles the prepared model on (its
#: default on CPUs with bf16 units would be bf16, which is not the NPU's numerics).
CPU_F32 = {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY"}


def seeded(msg: str) -> str:
    return f"{msg} (seed {SEED}; rerun with BACKPLANE_TEST_SEED={SEED})"


def feeds(rng: np.random.Generator, shapes: dict, n: int) -> list[dict[str, np.ndarray]]:
    return [{k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
            for _ in range(n)]


def reference(graph, inputs: list[dict]) -> list[dict]:
    exe = ReferenceBackend().compile(graph, Device("oracle", backend="reference", index=0),
                                     CompileOptions())
    return [exe.run(x) for x in inputs]


def rel_rms(got: list[dict], want: list[dict]) -> float:
    """||y - y_ref|| / ||y_ref|| over every output of every run."""
    a = np.concatenate([np.ravel(g[k]).astype(np.float64) for g in got for k in sorted(g)])
    b = np.concatenate([np.ravel(w[k]).astype(np.float64) for w in want for k in sorted(w)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def on_cpu(model, graph, inputs: list[dict]) -> list[dict]:
    """Run an OpenVINO model on the CPU device at f32, outputs named as the graph's."""
    compiled = ov_core().compile_model(model, "CPU", CPU_F32)
    names = [o.name for o in graph.outputs]
    return [{n: np.asarray(compiled(x)[i]) for i, n in enumerate(names)} for x in inputs]


def emulated_npu(**props) -> Device:
    """A device that takes the plugin's OpenVINO path on OpenVINO's CPU device."""
    return Device("NPU emulated on OpenVINO's CPU", kind="npu", backend="npu", index=0,
                  properties={"path": "openvino", "ov_device": "CPU", "openvino": ov.get_version(),
                              "precisions": ["fp16", "int8"], **props})


def options(precision: str = "fp16", cache_dir: str | None = "off", **npu) -> CompileOptions:
    return CompileOptions(precision=precision, cache_dir=cache_dir,
                          extra={"npu": {"config": CPU_F32, **npu}})


def accel_tree(root: Path, driver: str = "intel_vpu", device_id: str = "0x7d1d") -> str:
    """A /sys/class/accel tree with one node driven by ``driver``."""
    pci = root / "devices" / "0000:00:0b.0"
    pci.mkdir(parents=True)
    (pci / "vendor").write_text("0x8086\n" if driver == "intel_vpu" else "0x1022\n")
    (pci / "device").write_text(device_id + "\n")
    (root / "drivers" / driver).mkdir(parents=True)
    (pci / "driver").symlink_to(root / "drivers" / driver)
    node = root / "accel" / "accel0"
    node.mkdir(parents=True)
    (node / "device").symlink_to(pci)
    return str(root / "accel")


def never(*_):
    raise AssertionError("this runtime must not be asked")


# ---------------------------------------------------------------------- loading, devices

def test_the_plugin_is_listed_with_no_device_and_the_reason():
    done = run_cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    [npu] = [r for r in json.loads(done.stdout) if r["name"] == "npu"]
    assert npu["state"] == "no-device", npu
    assert "no Intel NPU: no /dev/accel node driven by intel_vpu" in npu["reason"]
    assert "no QNN or VitisAI build of onnxruntime" in npu["reason"]


def test_loading_and_probing_without_an_npu_imports_no_runtime():
    code = ("import sys, backplane; [r] = [r for r in backplane.plugin_records() "
            "if r.name == 'npu']; print(r.state, [m for m in ('openvino', 'onnxruntime', "
            "'nncf', 'numpy') if m in sys.modules])")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["no-device", "[]"]


def test_without_a_node_openvino_is_not_asked_and_each_path_says_why(tmp_path):
    backend = NpuBackend(sys_accel=str(tmp_path), openvino=never, ort=dict, platform="linux")
    with pytest.raises(DeviceUnavailable) as info:
        backend.probe()
    assert "no Intel NPU: no /dev/accel node driven by intel_vpu" in str(info.value)
    assert "no QNN or VitisAI build of onnxruntime (installed: onnxruntime " in str(info.value)


def test_a_node_that_openvino_does_not_list_is_no_device_with_openvinos_reason(tmp_path):
    why = "OpenVINO 2026.4 does not list an NPU device (it lists CPU): the driver is missing"
    backend = NpuBackend(sys_accel=accel_tree(tmp_path), ort=dict,
                         openvino=lambda: {"ok": False, "reason": why})
    with pytest.raises(DeviceUnavailable) as info:
        backend.probe()
    assert f"the Intel NPU at /dev/accel/accel0: {why}" in str(info.value)


def test_openvino_here_lists_no_npu_and_says_so():
    answer = devices.openvino_npu()  # the real child process
    assert answer["ok"] is False
    assert "does not list an NPU device (it lists CPU" in answer["reason"], answer


def test_a_ready_openvino_npu_is_an_npu_device_with_its_facts(tmp_path):
    info = {"ok": True, "name": "Intel(R) AI Boost", "openvino": "2026.4.1",
            "architecture": "3720", "driver_version": 1688, "compiler_version": 458752,
            "memory_bytes": 2**31, "optimization_capabilities": ["FP16", "INT8"]}
    backend = NpuBackend(sys_accel=accel_tree(tmp_path), openvino=lambda: info, ort=dict)
    [device] = backend.probe()
    assert (device.name, device.kind, device.vendor, device.memory_bytes) == (
        "Intel(R) AI Boost", "npu", "Intel", 2**31)
    props = device.properties
    assert props["path"] == "openvino" and props["ov_device"] == "NPU"
    assert (props["driver_version"], props["pci_device_id"], props["pci_bus_id"]) == (
        1688, "0x7d1d", "0000:00:0b.0")
    assert props["precisions"] == ["fp16", "int8"]


def test_an_amd_xdna_node_without_vitisai_is_named_in_the_reason(tmp_path):
    backend = NpuBackend(sys_accel=accel_tree(tmp_path, "amdxdna", "0x17f0"),
                         openvino=never, ort=dict, platform="linux")
    with pytest.raises(DeviceUnavailable, match="an AMD XDNA NPU node is present at "
                                                "/dev/accel/accel0"):
        backend.probe()


# ---------------------------------------------------------------------- limits as data

def test_limits_are_static_shapes_and_fp16_int8(tmp_path):
    caps = NpuBackend(sys_accel=str(tmp_path), openvino=never, ort=dict,
                      platform="linux").capabilities
    assert caps.precisions == {"fp16", "int8"}
    assert dict(caps.ops) == DECLARED_OPS
    assert all(not s.dynamic_shapes for s in caps.ops.values())
    dynamic = load_model(zoo.mlp().model)  # x[batch, 64]
    verdict = caps.check(dynamic.nodes[0])
    assert (verdict.ok, verdict.code) == (False, "capability:dynamic-shape")
    from backplane.model.intake import with_dims

    assert caps.check(with_dims(dynamic, {"batch": 4}).nodes[0]).ok


# ---------------------------------------------------------------------- shapes

def test_dynamic_dims_take_the_sessions_sizes():
    graph = load_model(zoo.mlp().model)
    exe = NpuBackend().compile(graph, emulated_npu(), options(dims={"batch": 4}))
    assert "static x[4, 64]" in exe.path, exe.path
    [y] = exe.run({"x": np.ones((4, 64), np.float32)}).values()
    assert y.shape == (4, 10)


def test_dims_passed_by_the_session_in_compile_options_win():
    @dataclasses.dataclass(frozen=True)
    class WithDims(CompileOptions):  # what a Session passing its dims= would give
        dims: dict = dataclasses.field(default_factory=dict)

    graph = load_model(zoo.mlp().model)
    opts = WithDims(precision="fp16", cache_dir="off", extra={"npu": {"config": CPU_F32,
                                                                      "dims": {"batch": 2}}},
                    dims={"batch": 3})
    assert "static x[3, 64]" in NpuBackend().compile(graph, emulated_npu(), opts).path


def test_an_unknown_dim_is_refused_before_compiling_naming_input_and_dimension():
    graph = load_model(zoo.transformer_encoder().model)  # x[batch, seq, 32]
    with pytest.raises(CompileError) as info:
        NpuBackend().compile(graph, emulated_npu(), options(dims={"batch": 1}))
    text = str(info.value)
    assert "input 'x' dimension 1 ('seq') has no size: NPUs compile static shapes only" in text
    assert "Session(dims={'seq': N})" in text and info.value.device == "npu:0"


def test_an_output_whose_size_depends_on_the_data_is_refused():
    from onnx import TensorProto, helper

    node = helper.make_node("NonZero", ["x"], ["y"])
    model = helper.make_model(helper.make_graph(
        [node], "nz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, "n"])]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(prepare.PrepareError, match="depends on the data"):
        prepare.static_graph(load_model(model), {})


def test_a_run_at_another_size_compiles_that_static_signature_once():
    graph = load_model(zoo.mlp().model)
    exe = NpuBackend().compile(graph, emulated_npu(), options(dims={"batch": 4}))
    rng = np.random.default_rng(SEED)
    for batch in (2, 4, 2):
        x = {"x": rng.standard_normal((batch, 64)).astype(np.float32)}
        [want] = reference(graph, [x])
        assert max_rel_error(exe.run(x), want) <= FP16_TOLERANCE, seeded(f"batch {batch}")
    assert len(exe._compiled) == 2


# ---------------------------------------------------------------------- CPU emulation

FP16_MODELS = [zoo.mlp, zoo.resnet, zoo.depthwise_separable, zoo.transformer_encoder]


@pytest.mark.parametrize("family", FP16_MODELS, ids=lambda f: f.__name__)
def test_fp16_preparation_keeps_outputs_within_tolerance_in_cpu_emulation(family):
    zm = family()
    graph = load_model(zm.model)
    shapes = zm.input_shapes[0]
    inputs = feeds(np.random.default_rng(SEED), shapes, 4)
    prepared = prepare.prepare_openvino(graph, shapes, "fp16")
    assert all(p.get_partial_shape().is_static for p in prepared.model.inputs)
    got = on_cpu(prepare.fp16_activations(prepared.model), graph, inputs)
    want = reference(graph, inputs)
    error = max(max_rel_error(g, w) for g, w in zip(got, want))
    assert 0 < error <= FP16_TOLERANCE, seeded(f"{zm.name}: fp16 error {error:.3g}")


def test_fp16_activation_rounding_is_exactly_fp16s():
    import openvino.opset13 as ops

    x = ops.parameter([4096], ov.Type.f32, name="x")
    model = prepare.fp16_activations(ov.Model([ops.multiply(x, ops.constant(np.float32(1)))],
                                              [x]))
    data = (np.random.default_rng(SEED).standard_normal(4096) * 300).astype(np.float32)
    got = ov_core().compile_model(model, "CPU", CPU_F32)({0: data})[0]
    assert np.array_equal(got, data.astype(np.float16).astype(np.float32)), seeded("rounding")


INT8_MODELS = [zoo.resnet, zoo.depthwise_separable]


@pytest.mark.parametrize("family", INT8_MODELS, ids=lambda f: f.__name__)
def test_int8_preparation_keeps_outputs_within_tolerance_in_cpu_emulation(family):
    pytest.importorskip("nncf", reason="int8 preparation needs nncf")
    zm = family()
    graph = load_model(zm.model)
    shapes = zm.input_shapes[0]
    rng = np.random.default_rng(SEED)
    calibration, inputs = feeds(rng, shapes, 32), feeds(rng, shapes, 8)
    prepared = prepare.prepare_openvino(graph, shapes, "int8", calibration)
    assert any(op.get_type_name() == "FakeQuantize" for op in prepared.model.get_ops())
    want = reference(graph, inputs)
    got = on_cpu(prepare.fp16_activations(prepared.model), graph, inputs)
    fp16 = on_cpu(prepare.prepare_openvino(graph, shapes, "fp16").model, graph, inputs)
    error = rel_rms(got, want)
    assert error <= INT8_TOLERANCE, seeded(f"{zm.name}: int8 relative RMS error {error:.3g}")
    # quantization happened: int8 is measurably further from the reference than fp16
    assert error > 4 * rel_rms(fp16, want), seeded(f"{zm.name}: int8 error {error:.3g}")


def test_a_wrong_calibration_exceeds_the_int8_tolerance():
    pytest.importorskip("nncf", reason="int8 preparation needs nncf")
    zm = zoo.resnet()
    graph = load_model(zm.model)
    shapes = zm.input_shapes[0]
    rng = np.random.default_rng(SEED)
    inputs = feeds(rng, shapes, 8)
    clipped = [{k: v * 0.3 for k, v in f.items()} for f in feeds(rng, shapes, 32)]
    prepared = prepare.prepare_openvino(graph, shapes, "int8", clipped)
    error = rel_rms(on_cpu(prepared.model, graph, inputs), reference(graph, inputs))
    assert error > 2 * INT8_TOLERANCE, seeded(f"wrong calibration error only {error:.3g}")


def test_int8_without_calibration_is_refused_with_what_to_pass():
    graph = load_model(zoo.mlp().model)
    with pytest.raises(CompileError) as info:
        NpuBackend().compile(graph, emulated_npu(), options("int8", dims={"batch": 1}))
    assert "options={'npu': {'calibration': [feeds, ...]}}" in str(info.value)
    assert "precision='fp16'" in str(info.value)


def test_calibration_that_misses_a_partition_input_is_refused():
    graph = load_model(zoo.mlp().model)
    with pytest.raises(CompileError, match=r"calibration sample 0 lacks \['x'\]"):
        NpuBackend().compile(graph, emulated_npu(), options(
            "int8", calibration=[{"image": np.zeros((1, 64), np.float32)}]))


def test_fp32_is_refused_since_the_npu_computes_fp16():
    graph = load_model(zoo.mlp().model)
    with pytest.raises(CompileError, match=r"computes at \['fp16', 'int8'\], not fp32"):
        NpuBackend().compile(graph, emulated_npu(), options("fp32", dims={"batch": 1}))


# ---------------------------------------------------------------------- the plugin's path

def test_the_plugins_compile_path_runs_the_prepared_model_and_caches_the_blob(tmp_path):
    pytest.importorskip("nncf", reason="int8 preparation needs nncf")
    zm = zoo.depthwise_separable()
    graph = load_model(zm.model)
    shapes = zm.input_shapes[0]
    rng = np.random.default_rng(SEED)
    calibration, inputs = feeds(rng, shapes, 16), feeds(rng, shapes, 4)
    want = reference(graph, inputs)
    opts = options("int8", cache_dir=str(tmp_path), calibration=calibration)
    first = NpuBackend().compile(graph, emulated_npu(), opts)
    assert "int8 (NNCF, NPU target), static x[1, 3, 32, 32], compiled" in first.path
    assert len(list((tmp_path / "npu" / "compiled").glob("*.blob"))) == 1
    again = NpuBackend().compile(graph, emulated_npu(), opts)
    assert again.path.endswith("from the blob cache"), again.path
    for exe in (first, again):
        error = rel_rms([exe.run(x) for x in inputs], want)
        assert error <= INT8_TOLERANCE, seeded(f"{exe.path}: {error:.3g}")


def test_the_blob_key_changes_with_shapes_precision_calibration_device_and_versions():
    base = dict(model=b"onnx", shapes={"x": (1, 64)}, precision="fp16", calibration="",
                quantization={}, device={"name": "Intel(R) AI Boost", "openvino": "2026.4.1",
                                         "driver_version": "1688", "compiler_version": "7"},
                config={"PERFORMANCE_HINT": "LATENCY"})
    changes = [{"model": b"other"}, {"shapes": {"x": (2, 64)}}, {"precision": "int8"},
               {"calibration": "abc"}, {"quantization": {"preset": "mixed"}},
               {"config": {"PERFORMANCE_HINT": "THROUGHPUT"}}]
    for key, value in [("name", "Intel(R) AI Boost 4000"), ("openvino", "2026.5.0"),
                       ("driver_version", "1700"), ("compiler_version", "8")]:
        changes.append({"device": {**base["device"], key: value}})
    keys = {prepare.blob_key(**{**base, **c}) for c in changes}
    assert len(keys) == len(changes) and prepare.blob_key(**base) not in keys
    assert prepare.blob_key(**base) == prepare.blob_key(**dict(base))


def test_an_npu_that_is_not_there_fails_to_compile_with_openvinos_message():
    graph = load_model(zoo.mlp().model)
    device = emulated_npu(ov_device="NPU")
    with pytest.raises(CompileError) as info:
        NpuBackend().compile(graph, device, options(dims={"batch": 1}))
    assert info.value.device == "npu:0" and info.value.vendor_message, str(info.value)


@pytest.fixture
def emulated_npu_registered(monkeypatch):
    """The registry with the npu backend listing one device that compiles on OpenVINO's
    CPU (its discovery replaced; the plugin is loaded through its real entry point)."""
    import backplane as bp

    monkeypatch.setattr(NpuBackend, "find", lambda self: ([Device(
        "NPU emulated on OpenVINO's CPU", kind="npu", properties={
            "path": "openvino", "ov_device": "CPU", "precisions": ["fp16", "int8"]})], []))
    monkeypatch.setenv("BACKPLANE_LOAD", "off")
    bp.registry(refresh=True)
    yield
    monkeypatch.undo()
    bp.registry(refresh=True)


def test_a_session_at_auto_precision_measures_the_npus_int8_and_fp16_paths(
        emulated_npu_registered):
    pytest.importorskip("nncf", reason="int8 preparation needs nncf")
    import backplane as bp

    zm = zoo.resnet()
    rng = np.random.default_rng(SEED)
    calibration = feeds(rng, {"x": (1, 3, 32, 32)}, 16)
    session = bp.Session(zm.model, precision="auto", dims={"batch": 1}, device_class="npu",
                         options={"npu": {"dims": {"batch": 1}, "calibration": calibration,
                                          "config": CPU_F32}})
    checks = {c["paths"]: c["kept"] for c in session.plan.precision_checks}
    assert "npu:0 at int8" in checks, checks  # the cheapest path was measured first
    [part] = session.plan.partitions
    assert part.device == "npu:0" and checks[f"npu:0 at {part.precision}"], seeded(str(checks))
    assert "static x[1, 3, 32, 32]" in part.path
    x = feeds(rng, {"x": (1, 3, 32, 32)}, 4)
    got, want = [session.run(f) for f in x], reference(load_model(zm.model), x)
    # int8 is kept now and then: when it keeps the budget on the session's one sample
    if part.precision == "fp16":
        error = max(max_rel_error(g, w) for g, w in zip(got, want))
        assert error <= FP16_TOLERANCE, seeded(f"fp16 error {error:.3g}")
    else:
        assert rel_rms(got, want) <= INT8_TOLERANCE, seeded("int8 error")


def test_an_npu_that_refuses_int8_without_calibration_keeps_its_fp16_path(
        emulated_npu_registered):
    """precision="auto" tries the cheapest path first; the NPU refuses int8 (no calibration
    data) at compile, and the session bans that (device, precision) path only."""
    import backplane as bp

    zm = zoo.resnet()
    session = bp.Session(zm.model, precision="auto", dims={"batch": 1}, device_class="npu",
                         options={"npu": {"dims": {"batch": 1}, "config": CPU_F32}})
    [part] = session.plan.partitions
    assert part.device == "npu:0" and part.precision == "fp16", session.plan.explain()
    assert any("re-planned without npu:0 at int8" in e for e in session.plan.events), \
        session.plan.events
    rejected = {(r.device, r.code) for p in session.plan.placements for r in p.rejected}
    assert ("npu:0", "excluded") in rejected
    rng = np.random.default_rng(SEED)
    x = feeds(rng, {"x": (1, 3, 32, 32)}, 2)
    got, want = [session.run(f) for f in x], reference(load_model(zm.model), x)
    error = max(max_rel_error(g, w) for g, w in zip(got, want))
    assert error <= FP16_TOLERANCE, seeded(f"fp16 error {error:.3g}")



def test_this_onnxruntime_has_no_npu_provider():
    installed, providers = devices.ort_builds()
    assert providers == [] and installed.startswith("onnxruntime ")


def test_the_provider_check_says_this_build_lacks_qnn_and_vitisai():
    done = run_python("from backplane.plugins.npu.devices import _ort_child; "
                      "_ort_child(['QNNExecutionProvider', 'VitisAIExecutionProvider'])")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["provider"], r["ready"]) for r in rows] == [
        ("QNNExecutionProvider", False), ("VitisAIExecutionProvider", False)]
    assert all("has no " + r["provider"] in r["reason"] for r in rows)


@pytest.mark.parametrize("provider", list(devices.ORT_PROVIDERS))
def test_readiness_models_run_on_the_cpu_provider(provider):
    import onnx
    import onnxruntime as ort

    model, fed, want = devices.readiness_model(provider)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, fed)[0], want)


@pytest.mark.filterwarnings("ignore:Specified provider 'QNNExecutionProvider' is not in")
def test_a_ready_qnn_provider_is_a_device_and_compiling_without_it_fails_loudly(tmp_path):
    answers = {"QNNExecutionProvider": {"ready": True, "reason": "", "onnxruntime": "1.32.0"},
               "VitisAIExecutionProvider": {"ready": False, "onnxruntime": "1.32.0",
                                            "reason": "XRT cannot open the NPU"}}
    backend = NpuBackend(sys_accel=str(tmp_path), openvino=never, ort=lambda: answers,
                         platform="linux")
    [qnn] = backend.probe()
    assert (qnn.kind, qnn.vendor, qnn.properties["provider"]) == (
        "npu", "Qualcomm", "QNNExecutionProvider")
    assert "VitisAIExecutionProvider: XRT cannot open the NPU" in backend.find()[1]
    qnn = dataclasses.replace(qnn, backend="npu", index=0)
    with pytest.raises(CompileError, match="QNNExecutionProvider"):
        backend.compile(load_model(zoo.mlp().model), qnn, options(dims={"batch": 1}))


@pytest.mark.parametrize("provider", list(devices.ORT_PROVIDERS))
def test_ort_int8_preparation_keeps_outputs_within_tolerance_on_the_cpu_provider(provider):
    import onnxruntime as ort

    zm = zoo.resnet()
    graph = load_model(zm.model)
    shapes = zm.input_shapes[0]
    rng = np.random.default_rng(SEED)
    calibration, inputs = feeds(rng, shapes, 16), feeds(rng, shapes, 4)
    quantized = prepare.quantize_onnx(graph.model, calibration, provider)
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) > 4
    session = ort.InferenceSession(quantized.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in graph.outputs]
    got = [dict(zip(names, session.run(names, x))) for x in inputs]
    error = rel_rms(got, reference(graph, inputs))
    assert 0 < error <= INT8_TOLERANCE, seeded(f"{provider} recipe: {error:.3g}")


def test_the_plugins_ort_path_prepares_static_int8_sessions():
    zm = zoo.depthwise_separable()
    graph = load_model(zm.model)
    shapes = zm.input_shapes[0]
    rng = np.random.default_rng(SEED)
    calibration, inputs = feeds(rng, shapes, 16), feeds(rng, shapes, 4)
    device = Device("ORT path on the CPU provider", kind="npu", backend="npu", index=0,
                    properties={"path": "onnxruntime", "provider": "CPUExecutionProvider",
                                "precisions": ["fp16", "int8"]})
    exe = NpuBackend().compile(graph, device, options("int8", calibration=calibration))
    assert "int8 QDQ (ORT quantizer), static x[1, 3, 32, 32]" in exe.path, exe.path
    error = rel_rms([exe.run(x) for x in inputs], reference(graph, inputs))
    assert error <= INT8_TOLERANCE, seeded(f"ORT path: {error:.3g}")



def test_the_ort_paths_run_errors_name_this_backend_and_its_device():
    """The ONNX Runtime adapter's executable runs for npu: its errors say so as they are."""
    from backplane.sdk.errors import ExecutionError

    device = Device("ORT path on the CPU provider", kind="npu", backend="npu", index=0,
                    properties={"path": "onnxruntime", "provider": "CPUExecutionProvider",
                                "precisions": ["fp16", "int8"]})
    exe = NpuBackend().compile(load_model(zoo.mlp().model), device, options(dims={"batch": 1}))
    with pytest.raises(ExecutionError) as err:
        exe.run({"x": np.ones((1, 64), np.float64)})  # the graph declares float32
    assert (err.value.backend, err.value.device) == ("npu", "npu:0")
    assert str(err.value).startswith("run failed in backend 'npu' on device 'npu:0': ")


def test_openvino_refusals_name_this_backend_and_its_device():
    """The OpenVINO adapter translates OpenVINO's errors for npu: no text is rewritten."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap")], "pad-wrap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 6])],
        [helper.make_tensor("pads", TensorProto.INT64, [4], [1, 1, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    with pytest.raises(CompileError) as err:
        NpuBackend().compile(load_model(model), emulated_npu(), options())
    assert (err.value.backend, err.value.device) == ("npu", "npu:0")
    assert str(err.value).startswith("compile failed in backend 'npu' on device 'npu:0'")
    assert "openvino-cpu" not in str(err.value)

# ---------------------------------------------------------------------- measurements

def measure(seeds: int = 10) -> None:
    """Print the emulation's errors over ``seeds`` seeds, per zoo model (the table in
    docs/backends/npu.md): ``python tests/test_backend_npu.py [SEEDS]``."""
    print(f"{'model':22} {'fp16 w':>8} {'fp16 w+a':>9} {'int8 rms':>15} {'int8 max':>15} "
          f"{'0.3x calib':>11}")
    for family in FP16_MODELS:
        zm = family()
        graph = load_model(zm.model)
        shapes = zm.input_shapes[0]
        fp16 = prepare.prepare_openvino(graph, shapes, "fp16")
        rows: dict[str, list[float]] = {k: [] for k in ("w", "wa", "rms", "max", "bad")}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            calibration, inputs = feeds(rng, shapes, 32), feeds(rng, shapes, 8)
            want = reference(graph, inputs)
            worst = lambda got: max(max_rel_error(g, w) for g, w in zip(got, want))  # noqa
            rows["w"].append(worst(on_cpu(fp16.model, graph, inputs)))
            rows["wa"].append(worst(on_cpu(prepare.fp16_activations(fp16.model), graph,
                                           inputs)))
            int8 = prepare.fp16_activations(prepare.prepare_openvino(
                graph, shapes, "int8", calibration).model)
            got = on_cpu(int8, graph, inputs)
            rows["rms"].append(rel_rms(got, want))
            rows["max"].append(worst(got))
            if seed < 3:
                clipped = [{k: v * 0.3 for k, v in f.items()} for f in calibration]
                bad = prepare.prepare_openvino(graph, shapes, "int8", clipped).model
                rows["bad"].append(rel_rms(on_cpu(bad, graph, inputs), want))
        span = lambda v: f"{min(v):.3f}-{max(v):.3f}"  # noqa: E731
        print(f"{zm.name:22} {max(rows['w']):8.1e} {max(rows['wa']):9.1e} "
              f"{span(rows['rms']):>15} {span(rows['max']):>15} {span(rows['bad']):>11}")


if __name__ == "__main__":
    import sys

    measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
