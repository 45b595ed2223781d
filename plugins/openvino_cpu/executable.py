"""openvino-cpu's executable: a partition's OpenVINO model, compiled per input-shape signature.

:class:`OpenVINOExecutable` keeps one compiled model per input-shape signature in an LRU
(:data:`SHAPE_CACHE_SIZE`) and its blobs on disk (``export_model``/``import_model``, at
most :data:`MAX_CACHED_BLOBS`), checks each compiled model's inference precision, and
refuses what OpenVINO's CPU plugin would get wrong or crash on: out-of-range Gather
indices (zeros instead of an error) and empty tensors in Gather and Broadcast (SIGFPE).

The backend (``backplane.plugins.openvino_cpu``) reads, checks and compiles the partition,
then hands it here; this module imports nothing of the backend's, so the constants both
use are defined here.
"""

from __future__ import annotations

import collections
from typing import Any

from backplane import Device, Executable
from backplane.runtimes.openvino import infer, outputs_of, ov, ov_core, wrap
from backplane.runtimes.shapecache import ShapeCache
from backplane.sdk.cache import ArtifactCache
from backplane.sdk.errors import CompileError, ExecutionError

#: The backend's name, in the errors raised here (``OpenVINOBackend.name``).
BACKEND = "openvino-cpu"
#: OpenVINO's name of the device this backend drives.
OV_DEVICE = "CPU"
#: CompileOptions.precision -> OpenVINO INFERENCE_PRECISION_HINT.
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
#: Compiled models kept per executable, one per input-shape signature.
SHAPE_CACHE_SIZE = 16
#: Compiled blobs kept on disk; the least recently used beyond this are deleted.
MAX_CACHED_BLOBS = 512


class _Compiled:
    """One compiled model (one input-shape signature) and its idle infer requests."""

    def __init__(self, compiled: Any, from_cache: bool):
        self.model = compiled
        self.from_cache = from_cache
        self.idle: collections.deque = collections.deque()


class OpenVINOExecutable(Executable):
    """Compiled models per input-shape signature; each ``run`` borrows an idle infer request
    (or makes one), so concurrent calls never share a request: thread-safe."""

    thread_safe = True

    def __init__(self, ov_model: Any, graph: Any, device: Device, config: dict[str, Any],
                 precision: str, blobs: ArtifactCache | None, key: tuple):
        self._model, self._graph, self._device = ov_model, graph, device
        self._config, self._precision, self._blobs, self._key = config, precision, blobs, key
        self._folder = blobs.folder if blobs is not None else None  # None: no disk cache
        self._cache = ShapeCache(SHAPE_CACHE_SIZE)
        self.compiles = self.disk_hits = 0
        declared = {vi.name: vi for vi in graph.inputs}
        self._inputs = [(p.get_any_name(), declared.get(p.get_any_name())) for p in ov_model.inputs]
        self._dtypes = [declared[n].dtype if declared.get(n) else None for n, _ in self._inputs]
        self._outputs = outputs_of(ov_model.outputs, graph, backend=BACKEND, device=device.id)
        self._gather_checks = _gather_checks(graph, device)
        shapes = [vi.shape if vi is not None else None for _, vi in self._inputs]
        static = all(s is not None and all(isinstance(d, int) for d in s) for s in shapes)
        self.static_signature = (tuple(tuple(s) for s in shapes)  # type: ignore[arg-type]
                                 if static else None)

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run once; outputs are fresh arrays in exactly the dtypes the graph declares."""
        import numpy as np

        arrays = [np.asarray(inputs[name]) for name, _ in self._inputs]
        for indices, data, axis in self._gather_checks:
            _check_indices(np, inputs[indices], data if isinstance(data, int)
                           else np.shape(inputs[data])[axis], self._device)
        signature = tuple(a.shape for a in arrays)
        entry = self.compiled_for(signature)
        try:
            request = entry.idle.popleft()
        except IndexError:  # every request is busy in another thread: one more
            request = entry.model.create_infer_request()
        try:
            out = infer(request, arrays, self._dtypes, self._outputs)
        except Exception as exc:
            raise wrap(ExecutionError, exc, self._graph, backend=BACKEND,
                       device=self._device.id) from exc
        entry.idle.append(request)
        return out

    def compiled_for(self, signature: tuple) -> _Compiled:
        """The compiled model for one input-shape signature: from the LRU, from the disk
        cache, or compiled now (then kept in both)."""
        return self._cache.get(signature, self._compile)

    def _check_signature(self, signature: tuple) -> None:
        for (name, vi), shape in zip(self._inputs, signature):
            if vi is None or vi.shape is None:
                continue
            if len(vi.shape) != len(shape) or any(isinstance(d, int) and d != g
                                                  for d, g in zip(vi.shape, shape)):
                raise ExecutionError(
                    f"input {name!r} has shape {tuple(shape)}, the graph declares "
                    f"{vi.describe()}", backend=BACKEND, device=self._device.id,
                    located=True)

    def _compile(self, signature: tuple) -> _Compiled:
        self._check_signature(signature)
        core = ov_core()
        key = (*self._key, signature)
        blobs = self._blobs if self._folder is not None else None  # None: nothing cached
        blob = blobs.get(key) if blobs is not None else None  # checked against its hash
        if blob is not None:
            try:
                compiled = core.import_model(blob, OV_DEVICE, self._config)
                self.disk_hits += 1
                return _Compiled(self._checked(compiled), from_cache=True)
            except CompileError:
                raise
            except Exception:  # a blob from a broken write or another build: recompile
                pass
        model = self._model
        if self.static_signature is None:
            model = self._model.clone()
            try:
                model.reshape({i: ov().PartialShape(list(s)) for i, s in enumerate(signature)})
            except Exception:  # the graph pins a shape reshape cannot change: stay dynamic
                model = self._model
        self._refuse_empty(model)
        try:
            compiled = core.compile_model(model, OV_DEVICE, self._config)
        except Exception as exc:
            err = CompileError if self.compiles == 0 and not self._cache else ExecutionError
            raise wrap(err, exc, self._graph, backend=BACKEND,
                       device=self._device.id) from exc
        self.compiles += 1
        self._checked(compiled)
        if blobs is not None:
            try:
                blobs.put(key, compiled.export_model().getvalue())
            except Exception:  # caching is an optimisation; a failed export loses nothing
                pass
        return _Compiled(compiled, from_cache=False)

    def _refuse_empty(self, model: Any) -> None:
        """OpenVINO's CPU Gather and Broadcast kernels die of SIGFPE on an empty tensor:
        refuse such a model rather than let it take the process down."""
        for op in model.get_ops():
            if op.get_type_name() not in _CRASH_ON_EMPTY:
                continue
            shapes = [op.get_input_partial_shape(i) for i in range(op.get_input_size())] + [
                op.get_output_partial_shape(i) for i in range(op.get_output_size())]
            if any(s.rank.is_static and any(d.is_static and d.get_length() == 0 for d in s)
                   for s in shapes):
                err = CompileError if self.compiles == 0 and not self._cache else ExecutionError
                raise err(f"backend 'openvino-cpu' refuses an empty tensor in OpenVINO "
                          f"{op.get_type_name()} '{op.get_friendly_name()}': the CPU plugin "
                          "crashes the process (SIGFPE) on it", backend=BACKEND,
                          device=self._device.id, op=_ONNX_OF.get(op.get_type_name()))

    def _checked(self, compiled: Any) -> Any:
        """Refuse a compiled model whose inference precision is not the one asked for."""
        got = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        want = PRECISION_HINTS[self._precision]
        if got != want:
            raise CompileError(f"OpenVINO compiled at {got}, not the {want} asked for",
                               backend=BACKEND, device=self._device.id, located=True)
        return compiled


#: OpenVINO operations whose CPU kernels crash on an empty input or output, and the ONNX
#: op they come from (found by the conformance suite's empty-tensor cases).
_CRASH_ON_EMPTY = frozenset({"Gather", "Broadcast"})
_ONNX_OF = {"Gather": "Gather", "Broadcast": "Expand"}


def _gather_checks(graph: Any, device: Device) -> list[tuple[str, Any, int]]:
    """OpenVINO's Gather returns zeros for an out-of-range index where ONNX makes it an
    error. Indices that are initializers are checked now; indices fed by the caller are
    checked at each run: ``(indices input, data input name or static dim, axis)``."""
    import numpy as np
    from onnx import numpy_helper

    fed = {vi.name for vi in graph.inputs}
    consts = {t.name: t for t in graph.model.graph.initializer}
    checks = []
    for node in graph.nodes:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        data, indices = node.inputs[0], node.inputs[1]
        vi = graph.values.get(data)
        axis = int(node.attributes.get("axis", 0))
        rank = len(vi.shape) if vi is not None and vi.shape is not None else None
        if rank is None:
            continue
        axis = axis + rank if axis < 0 else axis
        dim = vi.shape[axis] if data not in fed else data
        if not isinstance(dim, (int, str)) or (isinstance(dim, str) and dim not in fed):
            continue
        if indices in consts and isinstance(dim, int):
            _check_indices(np, numpy_helper.to_array(consts[indices]), dim, device, at_compile=True)
        elif indices in fed:
            checks.append((indices, dim if isinstance(dim, int) else data, axis))
    return checks


def _check_indices(np: Any, indices: Any, dim: int, device: Device,
                   at_compile: bool = False) -> None:
    indices = np.asarray(indices)
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        bad = indices[(indices < -dim) | (indices >= dim)].reshape(-1)[0]
        cls = CompileError if at_compile else ExecutionError
        raise cls(f"index {int(bad)} is out of range for an axis of size {dim} (ONNX makes it "
                  "an error; OpenVINO would return zeros)", backend=BACKEND,
                  device=device.id, op="Gather", located=True)
