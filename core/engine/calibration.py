"""Calibration: short microbenchmarks that measure a device's real ceilings.

For each device, through the backend that reaches it: a large element-wise product for
memory bandwidth, a square matrix product per supported element type for peak rate (the
size grows until one run takes long enough to time), a one-element op for launch
overhead, a chain of them for the overhead per node, and a 3x3 Conv and a depthwise one
for convolution rates (the scheduler's cost model reads each backend's own figures as its
efficiency on the device). The best of several timed runs is kept, and stored in the
overlay of :mod:`backplane.hardware.calibrate`.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

from backplane.engine.registry import registry
from backplane.hardware.calibrate import DeviceCalibration, Measurement, store
from backplane.hardware.probe import probe_all
from backplane.model.graph import DTYPE_CODES
from backplane.model.intake import load_model
from backplane.sdk.contract import CompileOptions
from backplane.sdk.errors import BackplaneError

#: Element types tried for the matrix-product peak, as (dtype name, numpy dtype, figure key).
PEAK_DTYPES = (("fp64", "float64", "fp64_tflops"), ("fp32", "float32", "fp32_tflops"),
               ("fp16", "float16", "fp16_tflops"))
BANDWIDTH_BYTES = 64 * 2**20
#: Size of the element-wise call that tells a backend's own element-wise and I/O speed.
ELEMENTWISE_BYTES = 4 * 2**20
MIN_RUN_S = 0.02
MAX_MATMUL_N = 2048
TIME_PER_FIGURE_S = 0.4
#: Nodes in the chain whose extra time over one node is the per-node overhead, and the
#: width of their square MatMuls (little arithmetic: the dispatch is most of the time).
NODE_CHAIN, NODE_WIDTH = 16, 64
#: Conv rate measurements: 3x3, padded, at this size (a ResNet stage), and channels.
CONV_SIZE, CONV_CHANNELS, DWCONV_CHANNELS = 56, 64, 128
#: Ops in the chains whose rate stands for a network's layers, and the dense layers'
#: activations x width.
OP_CHAIN, MATMUL_CHAIN = 3, (256, 1024)
#: Size of the quantized (QDQ) MatMul whose rate tells whether a backend runs int8 kernels.
QDQ_MATMUL_N = 1024
#: Longest one device's calibration may take.
CHILD_TIMEOUT_S = 300.0



# -- measuring -------------------------------------------------------------------------------


def calibrate(devices: list[str] | None = None, dtypes: list[str] | None = None,
              save: bool = True) -> list[DeviceCalibration]:
    """Measure every available device (or the named ones) and store the figures.

    Args:
        devices: device ids or backend names; default every device of every ready backend.
        dtypes: element types for the peak measurement (default fp64, fp32, fp16).
        save: write the results to the overlay.
    """
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.match import hardware_for, match_all

    reg = registry()
    chosen = ([d for spec in devices for d in reg.resolve(spec)] if devices else reg.devices())
    probed = probe_all().hardware
    matches = {id(m.hardware): m for m in match_all(probed)}
    results = []
    for device in chosen:
        hw = hardware_for(device, probed)
        if hw is None:
            raise BackplaneError(f"cannot tell which hardware device '{device.id}' runs on "
                                 f"(kind {device.kind}, name {device.name!r}); nothing to "
                                 "calibrate against")
        m = matches[id(hw)]
        backend = reg.backends[device.backend]
        result = DeviceCalibration(
            device.id, device.backend, hw.fingerprint, hw.name, m.entry_id,
            _versions(backend), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            datasheet=dict(m.figures))
        measured, skipped = _measure_alone(device.id, dtypes)
        result.measurements += [Measurement(*m) for m in measured]
        result.skipped += skipped
        if save:
            store(result)
        results.append(result)
    return results


def _measure_alone(device_id: str, dtypes: list[str] | None
                   ) -> tuple[list[tuple[str, float, str]], list[str]]:
    """Measure one device in a child process of its own: runtimes loaded into one process
    disturb each other (worker threads of one still spinning or holding cores while another
    runs), and an application that runs one backend never has the others loaded."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_measure_child, args=(device_id, dtypes, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(CHILD_TIMEOUT_S):
            raise BackplaneError(f"calibrating {device_id} took over {CHILD_TIMEOUT_S:.0f} s; "
                                 "stopped it")
        answer = receive.recv()
    except EOFError:
        answer = None
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
    if not isinstance(answer, tuple):
        raise BackplaneError(f"calibrating {device_id} failed in its child process: "
                             f"{answer or f'it exited with code {child.exitcode}'}")
    return answer


def _measure_child(device_id: str, dtypes: list[str] | None, send: Any) -> None:
    """The child of :func:`_measure_alone`: measure, send (measurements, skipped)."""
    try:
        reg = registry()
        device = reg.resolve(device_id)[0]
        result = DeviceCalibration(device_id, device.backend, "", "", None, {}, "")
        _measure(result, reg.backends[device.backend], device, dtypes)
        send.send(([(m.key, m.value, m.detail) for m in result.measurements],
                   result.skipped))
    except BaseException as exc:  # the parent reports it; nothing may escape silently
        send.send(f"{type(exc).__name__}: {exc}")


def _versions(backend: Any) -> dict[str, str]:
    import numpy
    import onnx

    versions = {"backend": str(getattr(backend, "version", "") or "unknown"),
                "numpy": numpy.__version__, "onnx": onnx.__version__}
    extra = getattr(backend, "runtime_versions", None)
    if callable(extra):
        try:
            versions.update({str(k): str(v) for k, v in extra().items()})
        except Exception:
            pass
    return versions


def _model(op: str, inputs: list[tuple[str, str, list[int]]], consts: dict[str, Any],
           chain: int = 1, **attrs: Any) -> Any:
    """A model of ``chain`` ``op`` nodes in a row, each reading the previous output (and
    the other inputs); every op used keeps the shape of its first input."""
    from onnx import helper, numpy_helper


    out_dtype, out_shape = inputs[0][1], inputs[0][2]
    rest = [n for n, _, _ in inputs[1:]] + list(consts)
    names = [inputs[0][0]] + [f"t{i}" for i in range(1, chain)] + ["y"]
    nodes = [helper.make_node(op, [names[i]] + rest, [names[i + 1]], name=f"{op.lower()}{i}",
                              **attrs) for i in range(chain)]
    graph = helper.make_graph(
        nodes, f"calibrate-{op.lower()}",
        [helper.make_tensor_value_info(n, DTYPE_CODES[d], s) for n, d, s in inputs],
        [helper.make_tensor_value_info("y", DTYPE_CODES[out_dtype], out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _best_time(exe: Any, feeds: dict[str, Any], budget_s: float = TIME_PER_FIGURE_S
               ) -> tuple[float, int]:
    exe.run(feeds)  # warm up: first-run allocation, lazy compilation
    best, runs, start = float("inf"), 0, time.perf_counter()
    while runs < 3 or (time.perf_counter() - start < budget_s and runs < 200):
        t0 = time.perf_counter()
        exe.run(feeds)
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best, runs


def _measure(result: DeviceCalibration, backend: Any, device: Any,
             dtypes: list[str] | None) -> None:
    import numpy as np


    rng = np.random.default_rng(0)
    options = CompileOptions()

    def compiled(graph: Any) -> Any:
        verdict = backend.capabilities.check(graph.nodes[0])
        if not verdict:
            result.skipped.append(f"{graph.nodes[0].op_type} "
                                  f"{graph.nodes[0].primary_dtype}: {verdict.detail}")
            return None
        try:
            return backend.compile(graph, device, options)
        except Exception as exc:
            result.skipped.append(f"{graph.name}: compile failed: {type(exc).__name__}: {exc}")
            return None

    for name, np_dtype, key in PEAK_DTYPES:
        if dtypes is not None and name not in dtypes:
            continue
        n, seconds, runs = 128, 0.0, 0
        while True:
            exe = compiled(_model("MatMul", [("a", np_dtype, [n, n]), ("b", np_dtype, [n, n])], {}))
            if exe is None:
                break
            a = rng.standard_normal((n, n)).astype(np_dtype)
            seconds, runs = _best_time(exe, {"a": a, "b": a}, budget_s=0.0)
            if seconds >= MIN_RUN_S or n >= MAX_MATMUL_N:
                seconds, runs = _best_time(exe, {"a": a, "b": a})
                break
            n *= 2
        if exe is not None:
            rate = 2 * n**3 / seconds / 1e12
            result.measurements.append(Measurement(
                key, round(rate, 6), f"MatMul {n}x{n}x{n} {name}, best of {runs}: "
                                     f"{seconds * 1e3:.2f} ms"))
    # Memory bandwidth streams 64 MiB; the element-wise rate of an activation-sized call
    # (4 MiB, the call's own copies included) is the backend's own figure.
    for key, nbytes, what in (("memory_bandwidth_gb_s", BANDWIDTH_BYTES, ""),
                              ("elementwise_gb_s", ELEMENTWISE_BYTES,
                               ", an activation's size, the call's copies included")):
        exe = compiled(_model("Mul", [("x", "float32", [nbytes // 4])],
                              {"c": np.array(1.0001, np.float32)}))
        if exe is None:
            continue
        x = rng.standard_normal(nbytes // 4).astype(np.float32)
        seconds, runs = _best_time(exe, {"x": x})
        result.measurements.append(Measurement(
            key, round(2 * x.nbytes / seconds / 1e9, 3),
            f"Mul by a scalar over {x.nbytes // 2**20} MiB{what} (read + write), best of "
            f"{runs}"))
    exe = compiled(_model("Add", [("x", "float32", [1]), ("z", "float32", [1])], {}))
    if exe is not None:
        one = np.ones(1, np.float32)
        seconds, runs = _best_time(exe, {"x": one, "z": one})
        result.measurements.append(Measurement(
            "launch_overhead_us", round(seconds * 1e6, 3),
            f"one-element Add, best of {runs}"))
    # Per node: a chain of small MatMuls (ops no runtime fuses into one) against a single
    # one; what each adds is mostly the runtime dispatching a kernel over its threads.
    n = NODE_WIDTH
    w = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    single = compiled(_model("MatMul", [("x", "float32", [n, n])], {"w": w}))
    chain = compiled(_model("MatMul", [("x", "float32", [n, n])], {"w": w}, chain=NODE_CHAIN))
    if single is not None and chain is not None:
        x = rng.standard_normal((n, n)).astype(np.float32)
        seconds, _ = _best_time(single, {"x": x})
        longer, runs = _best_time(chain, {"x": x})
        # Less the arithmetic, at the rate this backend's large MatMul reached.
        rate = next((m.value for m in result.measurements if m.key == "fp32_tflops"), 0.0)
        arithmetic = 2 * n**3 / (rate * 1e12) if rate else 0.0
        per_node = max(0.0, (longer - seconds) / (NODE_CHAIN - 1) - arithmetic)
        result.measurements.append(Measurement(
            "node_overhead_us", round(per_node * 1e6, 3),
            f"{NODE_CHAIN} MatMuls [{n},{n}]x[{n},{n}] in a row against one, less their "
            f"arithmetic at this backend's MatMul rate, best of {runs}"))
    for key, channels, group in (("conv_fp32_tflops", CONV_CHANNELS, 1),
                                 ("dwconv_fp32_tflops", DWCONV_CHANNELS, DWCONV_CHANNELS)):
        size = CONV_SIZE
        w = (rng.standard_normal((channels, channels // group, 3, 3)) * 0.1).astype(np.float32)
        # A chain, as in a network: a graph compiler keeps its own layout between the
        # convolutions and pays the conversions once, as it does in a model.
        exe = compiled(_model("Conv", [("x", "float32", [1, channels, size, size])], {"w": w},
                              chain=OP_CHAIN, pads=[1, 1, 1, 1], group=group))
        if exe is None:
            continue
        x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
        seconds, runs = _best_time(exe, {"x": x})
        flops = OP_CHAIN * 2 * channels * (channels // group) * 9 * size * size
        result.measurements.append(Measurement(
            key, round(flops / seconds / 1e12, 6),
            f"{OP_CHAIN} Conv 3x3 {channels} channels{' depthwise' if group > 1 else ''} at "
            f"{size}x{size} in a row, best of {runs}: {seconds * 1e3:.2f} ms"))
    rows, width = MATMUL_CHAIN
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    exe = compiled(_model("MatMul", [("x", "float32", [rows, width])], {"w": w},
                          chain=OP_CHAIN))
    if exe is not None:
        x = rng.standard_normal((rows, width)).astype(np.float32)
        seconds, runs = _best_time(exe, {"x": x})
        result.measurements.append(Measurement(
            "matmul_layers_tflops", round(OP_CHAIN * 2 * rows * width * width / seconds / 1e12, 6),
            f"{OP_CHAIN} MatMuls [{rows},{width}]x[{width},{width}] in a row (dense layers), "
            f"best of {runs}: {seconds * 1e3:.2f} ms"))
    graph = _qdq_matmul_model(QDQ_MATMUL_N, rng)
    verdicts = [backend.capabilities.check(node) for node in graph.nodes]
    if not all(verdicts):
        result.skipped.append("QDQ MatMul: " + "; ".join(v.detail for v in verdicts if not v))
        return
    try:
        exe = backend.compile(graph, device, options)
    except Exception as exc:
        result.skipped.append(f"QDQ MatMul: compile failed: {type(exc).__name__}: {exc}")
        return
    n = QDQ_MATMUL_N
    x = rng.standard_normal((n, n)).astype(np.float32)
    seconds, runs = _best_time(exe, {"x": x})
    result.measurements.append(Measurement(
        "qdq_matmul_tops", round(2 * n**3 / seconds / 1e12, 6),
        f"int8 QDQ MatMul {n}x{n}x{n} (quantize, dequantize, MatMul), best of {runs}: "
        f"{seconds * 1e3:.2f} ms"))


def _qdq_matmul_model(n: int, rng: Any) -> Any:
    """x -> QuantizeLinear -> DequantizeLinear, int8 weights -> DequantizeLinear, MatMul:
    the pattern a quantized model presents, which int8-capable runtimes fuse."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper


    w = rng.integers(-127, 128, (n, n)).astype(np.int8)
    consts = [numpy_helper.from_array(w, "w"),
              numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
              numpy_helper.from_array(np.array(0, np.int8), "zx"),
              numpy_helper.from_array(np.array(0.01, np.float32), "sw"),
              numpy_helper.from_array(np.array(0, np.int8), "zw")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dqx"),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], name="dqw"),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="matmul")]
    spec = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])]
    graph = helper.make_graph(nodes, "calibrate-qdq-matmul", spec, out, initializer=consts)
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
