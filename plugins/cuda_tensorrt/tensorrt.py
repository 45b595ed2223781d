"""The TensorRT path: a partition parsed by TensorRT's ONNX parser and built into an engine.

Written against TensorRT 10's Python API (8.6 and 9 are handled where they differ).
Engines are built at the session's precision: fp32 with TF32 off (TensorRT enables it by
default, and fp32 must mean fp32), fp16 or bf16 with that builder flag, int8 for explicitly
quantized (QDQ) models with fp16 allowed for the layers left unquantized. Dynamic
dimensions get one optimisation profile spanning ``[1, max]`` with the optimum at the sizes
met first (or given by the session); an input outside it makes a wider engine, built once
and cached. Engines are cached on disk keyed by the GPU (name and compute capability),
the TensorRT version, the model's bytes, the precision and the profile.

Untested here (no NVIDIA GPU and no TensorRT on the development machine): the pure parts,
profile choice and cache keys, are tested on the CPU; the builder and the execution
context run only on a GPU (docs/backends/cuda-tensorrt.md).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from backplane import CompileOptions, Device, Executable, OpSupport
from backplane.ops import all_ops
from backplane.ops.registrations import main_constraint
from backplane.sdk.cache import ArtifactCache, cache_key
from backplane.sdk.errors import CompileError, ExecutionError

BACKEND = "cuda-tensorrt"
#: Builder workspace, unless ``options={"cuda-tensorrt": {"workspace_bytes": N}}``.
DEFAULT_WORKSPACE_BYTES = 4 << 30
#: The upper end of a dynamic dimension's first profile: this many times the size met
#: first (at least ``MIN_PROFILE_MAX``); larger inputs rebuild with a wider profile.
PROFILE_GROWTH = 4
MIN_PROFILE_MAX = 64


def profile_for(shapes: Mapping[str, Sequence[int]], seen: Mapping[str, Sequence[int]],
                limit: Mapping[str, Sequence[int]] | None = None
                ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``{input: (min, opt, max)}`` for the inputs with dynamic dimensions.

    ``shapes`` are the network's input shapes (-1 where dynamic), ``seen`` the sizes to be
    optimal for (the first run's, or the session's ``dims``), ``limit`` the largest sizes
    met so far, when a wider engine is needed. A dynamic dimension spans 1 to
    ``max(PROFILE_GROWTH x opt, MIN_PROFILE_MAX, limit)``; static ones are fixed.
    """
    out = {}
    for name, shape in shapes.items():
        if all(d >= 0 for d in shape):
            continue
        opt = tuple(int(s) if d < 0 else int(d) for d, s in zip(shape, seen[name]))
        wide = (limit or {}).get(name, opt)
        lo = tuple(1 if d < 0 else int(d) for d in shape)
        hi = tuple(int(d) if d >= 0 else max(PROFILE_GROWTH * o, MIN_PROFILE_MAX, int(w))
                   for d, o, w in zip(shape, opt, wide))
        out[name] = (lo, tuple(max(1, o) for o in opt), hi)
    return out


def fits(profile: Mapping[str, tuple[Any, Any, Any]], shapes: Mapping[str, Sequence[int]]
         ) -> bool:
    """Whether every input's shape lies inside the profile's ``[min, max]``."""
    for name, (lo, _, hi) in profile.items():
        shape = tuple(shapes[name])
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            return False
    return True


def engine_key(gpu: Mapping[str, Any], trt_version: str, model: bytes, precision: str,
               profile: Mapping[str, Any]) -> str:
    """The engine cache key: GPU, TensorRT version, model bytes, precision and profile."""
    return cache_key(gpu.get("name"), gpu.get("compute_capability"), trt_version, model,
                     precision, sorted((k, [list(x) for x in v]) for k, v in profile.items()))


def flags_for(precision: str) -> tuple[list[str], list[str]]:
    """(builder flags to set, to clear) for a session precision."""
    return {"fp32": ([], ["TF32"]), "tf32": (["TF32"], []), "fp16": (["FP16"], []),
            "bf16": (["BF16"], []), "int8": (["INT8", "FP16"], [])}[precision]


class _Logger:
    """A TensorRT logger that keeps the warnings and errors of one build."""

    def __new__(cls, trt: Any) -> Any:
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    self.messages.append(str(msg))

        return Logger()


def compile_engine(graph: Any, device: Device, options: CompileOptions, gpu: Mapping[str, Any],
                   seen: Mapping[str, Sequence[int]] | None = None) -> "TensorRTExecutable":
    """Parse the partition, and build or load its engine; raise CompileError with
    TensorRT's own messages when the parser or the builder refuses."""
    import tensorrt as trt

    model = graph.model.SerializeToString()
    parsed = _parse(trt, model, _Logger(trt))
    network = parsed[1]
    network_shapes = {network.get_input(i).name: tuple(network.get_input(i).shape)
                      for i in range(network.num_inputs)}
    opt = dict(seen or {})
    for name, shape in network_shapes.items():
        opt.setdefault(name, tuple(1 if d < 0 else d for d in shape))
    return TensorRTExecutable(trt, model, device, options, gpu, network_shapes,
                              profile_for(network_shapes, opt), parsed)


def _parse(trt: Any, model: bytes, logger: Any) -> tuple[Any, Any, Any, Any]:
    """(builder, network, parser, logger) of ``model``; CompileError with the parser's
    messages when it refuses."""
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() if hasattr(e, "node_name") else e.node()
            errors.append(f"node {node}: {e.desc()}")
        raise CompileError(f"TensorRT {trt.__version__}'s ONNX parser refused the partition: "
                           + "; ".join(errors or logger.messages[-3:]), backend=BACKEND,
                           vendor_message="; ".join(errors))
    for i in range(network.num_inputs):
        if network.get_input(i).is_shape_tensor:
            raise CompileError(f"input '{network.get_input(i).name}' is a shape tensor, which "
                               "this path does not bind", backend=BACKEND)
    return builder, network, parser, logger


def _build(trt: Any, model: bytes, options: CompileOptions, profile: Mapping[str, Any],
           parsed: tuple[Any, Any, Any, Any] | None = None) -> bytes:
    """The serialized engine of ``model`` (its network ``parsed`` already, or parsed now)."""
    builder, network, _parser, logger = parsed or _parse(trt, model, _Logger(trt))
    config = builder.create_builder_config()
    extra = dict(options.extra.get(BACKEND, {})) if options.extra else {}
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                 int(extra.get("workspace_bytes", DEFAULT_WORKSPACE_BYTES)))
    on, off = flags_for(options.precision)
    for flag in on:
        if not hasattr(trt.BuilderFlag, flag):
            raise CompileError(f"TensorRT {trt.__version__} has no {flag} mode for precision "
                               f"{options.precision}", backend=BACKEND)
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in off:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if profile:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompileError(f"TensorRT {trt.__version__} could not build an engine: "
                           + ("; ".join(logger.messages[-5:]) or "no message"), backend=BACKEND)
    return bytes(serialized)


#: TensorRT data types by name, as torch dtype names.
_TORCH_TYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


class TensorRTExecutable(Executable):
    """An engine and its execution context, on one GPU; inputs and outputs are torch CUDA
    tensors (host arrays are uploaded), handed on by DLPack. Calls are serialised (one
    execution context)."""

    dlpack = True

    def __init__(self, trt: Any, model: bytes, device: Device, options: CompileOptions,
                 gpu: Mapping[str, Any], network_shapes: Mapping[str, Sequence[int]],
                 profile: Mapping[str, Any], parsed: tuple[Any, Any, Any, Any] | None = None):
        self._trt, self._model, self._device = trt, model, device
        self._parsed = parsed  # the network compile_engine parsed, for the first build
        self._options, self._gpu = options, gpu
        self._shapes = dict(network_shapes)
        self._lock = threading.Lock()
        self._torch_device = str(device.properties.get("torch_device", "cuda:0"))
        self.cached = False
        self._load(profile)
        self.path = (f"TensorRT {trt.__version__} engine at {options.precision}"
                     + (", from the engine cache" if self.cached else ", built now")
                     + (f", dynamic inputs profiled {_profile_text(profile)}" if profile else ""))

    def _load(self, profile: Mapping[str, Any]) -> None:
        trt = self._trt
        key = engine_key(self._gpu, trt.__version__, self._model, self._options.precision,
                         profile)
        engines = ArtifactCache(BACKEND, self._options, prefix="engine-", suffix=".plan")
        logger = _Logger(trt)
        runtime = trt.Runtime(logger)
        engine = None
        blob = engines.get(key)  # checked against its hash
        if blob is not None:
            engine = runtime.deserialize_cuda_engine(blob)
            self.cached = engine is not None  # a foreign file is rebuilt
        if engine is None:
            blob = _build(trt, self._model, self._options, profile, self._parsed)
            engines.put(key, blob)
            engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise CompileError("TensorRT could not load the engine it built: "
                               + "; ".join(logger.messages[-3:]), backend=BACKEND,
                               device=self._device.id)
        self._parsed = None  # a wider profile later builds from a fresh parse
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        self._profile = dict(profile)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: _TORCH_TYPES.get(engine.get_tensor_dtype(n).name, "")
                        for n in names}

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        import torch

        with self._lock:
            try:
                feeds = {n: _on_device(torch, inputs[n], self._torch_device, self._dtypes[n])
                         for n in self._inputs}
                shapes = {n: tuple(t.shape) for n, t in feeds.items()}
                if self._profile and not fits(self._profile, shapes):
                    widest = {n: tuple(max(a, b) for a, b in zip(self._profile[n][2],
                                                                  shapes[n]))
                              for n in self._profile}
                    self._load(profile_for(self._shapes, shapes, widest))
                ctx = self._context
                for n, t in feeds.items():
                    ctx.set_input_shape(n, tuple(t.shape))
                    ctx.set_tensor_address(n, t.data_ptr())
                outs = {}
                for n in self._outputs:
                    shape = tuple(ctx.get_tensor_shape(n))
                    if any(d < 0 for d in shape):
                        raise ExecutionError(
                            f"output '{n}' has a data-dependent shape {shape}, which this "
                            "path does not allocate", backend=BACKEND, device=self._device.id)
                    outs[n] = torch.empty(shape, dtype=getattr(torch, self._dtypes[n]),
                                          device=self._torch_device)
                    ctx.set_tensor_address(n, outs[n].data_ptr())
                stream = torch.cuda.current_stream(self._torch_device)
                if not ctx.execute_async_v3(stream.cuda_stream):
                    raise ExecutionError("TensorRT's execute_async_v3 failed", backend=BACKEND,
                                         device=self._device.id)
                stream.synchronize()
                return outs
            except ExecutionError:
                raise
            except Exception as exc:
                raise ExecutionError.wrap(exc, backend=BACKEND, device=self._device.id) from exc


def _on_device(torch: Any, value: Any, device: str, dtype: str) -> Any:
    """A value as a contiguous torch tensor of ``dtype`` on ``device``."""
    if not isinstance(value, torch.Tensor):
        value = torch.from_dlpack(value) if hasattr(value, "__dlpack__") else \
            torch.as_tensor(value)
    if dtype:
        value = value.to(device=device, dtype=getattr(torch, dtype))
    return value.contiguous()


def _profile_text(profile: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {list(lo)}..{list(hi)} (opt {list(opt)})"
                     for n, (lo, opt, hi) in profile.items())


#: The element types TensorRT's network takes (what its ONNX parser imports).
TRT_DTYPES = frozenset({"float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64",
                        "bool", "float8e4m3fn", "int4"})


def supported_ops() -> dict[str, Any]:
    """What TensorRT's ONNX parser says it supports (``OnnxParser.supports_operator``), per
    default-domain op of the registry, at every version, in the types its network takes.
    Empty when no builder can be made (TensorRT needs a GPU to make one): the other paths
    then declare what they run.

    Not run on a GPU yet (docs/backends/cuda-tensorrt.md): written against TensorRT 10's
    Python API."""
    try:
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.ERROR)
        parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
    except Exception:  # no GPU, no driver: the parser cannot be asked
        return {}
    out = {}
    for definition in all_ops():
        if definition.domain != "" or not parser.supports_operator(definition.name):
            continue
        versions = {}
        for schema in definition.schemas:
            allowed = schema.type_constraints.get(main_constraint(schema) or "", frozenset())
            if allowed & TRT_DTYPES:
                versions[schema.since] = frozenset(allowed & TRT_DTYPES)
        if versions:
            out[definition.key] = OpSupport(dtypes=frozenset().union(*versions.values()),
                                            versions=versions)
    return out
