"""The custom kernels at run time: availability, compiled modules, streams, dispatch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .. import nvrtc
from .common import ACT, OPS, Plan, pack_args
from .contraction import plan_attention, plan_conv, plan_matmul
from .normalisation import plan_layernorm, plan_softmax

log = logging.getLogger("backplane")

# --------------------------------------------------------------------------- runtime


_state_lock = threading.Lock()
_available: tuple[bool, str] | None = None


def available() -> tuple[bool, str]:
    """(whether the custom kernels can run here, why not / what they run with): torch
    with a CUDA device, CuPy, and NVRTC. Imports torch and CuPy (once)."""
    global _available
    with _state_lock:
        if _available is not None:
            return _available
    try:
        import torch
    except ImportError:
        found = (False, "torch is not installed")
    else:
        if not torch.cuda.is_available():
            found = (False, "torch has no CUDA device (torch.cuda.is_available() is False)")
        else:
            try:
                import cupy
            except Exception as exc:  # noqa: BLE001 - any import failure means no CuPy
                found = (False, f"CuPy cannot be imported ({type(exc).__name__}: {exc}); "
                                "pip install cupy-cuda12x")
            else:
                try:
                    lib = nvrtc.load()
                    cupy.cuda.runtime.getDeviceCount()  # CuPy finds its CUDA runtime
                except nvrtc.NvrtcNotFound as exc:
                    found = (False, str(exc))
                except Exception as exc:  # noqa: BLE001 - CuPy's CUDA runtime is missing
                    found = (False, f"CuPy {cupy.__version__} cannot reach the GPU "
                                    f"({type(exc).__name__}: {exc})")
                else:
                    found = (True, f"CuPy {cupy.__version__}, NVRTC "
                                   f"{'.'.join(map(str, lib.version))} ({lib.path})")
    with _state_lock:
        _available = found
    return found


class _Runtime:
    """Compiled modules per (source, device), CuPy streams per torch stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modules: dict[tuple[str, int], Any] = {}
        self._functions: dict[tuple[str, str, int], Any] = {}
        self._streams: dict[int, Any] = {}
        self._devices: dict[int, tuple[int, bool]] = {}

    def device(self, index: int) -> tuple[int, bool]:
        """(multiprocessors, whether it has sm_80 tensor cores) of GPU ``index``."""
        found = self._devices.get(index)
        if found is None:
            import torch

            props = torch.cuda.get_device_properties(index)
            found = (props.multi_processor_count, (props.major, props.minor) >= (8, 0))
            self._devices[index] = found
        return found

    def function(self, source: str, kernel: str, index: int) -> Any:
        key = (source, kernel, index)
        fn = self._functions.get(key)
        if fn is not None:
            return fn
        with self._lock:
            module = self._modules.get((source, index))
            if module is None:
                import cupy
                import torch

                major, minor = torch.cuda.get_device_capability(index)
                compiled = nvrtc.compile_source(source, (major, minor))
                with cupy.cuda.Device(index):
                    module = cupy.cuda.function.Module()
                    module.load(compiled.binary)
                self._modules[(source, index)] = module
            fn = module.get_function(kernel)
            self._functions[key] = fn
            return fn

    def stream(self, device: Any) -> Any:
        import cupy
        import torch

        ts = torch.cuda.current_stream(device)
        found = self._streams.get(ts.cuda_stream)
        if found is None:
            from_external = getattr(cupy.cuda.Stream, "from_external", None)
            found = (from_external(ts) if from_external is not None
                     else cupy.cuda.ExternalStream(ts.cuda_stream, device.index))
            self._streams[ts.cuda_stream] = found
        return found

    def run(self, plan: Plan, tensors: dict[str, Any], device: Any) -> list[Any]:
        """Allocate the plan's outputs, launch its kernels on torch's current stream of
        ``device``, and return the results."""
        import cupy
        import torch

        dtypes = {"float32": torch.float32, "float16": torch.float16}
        for name, shape in plan.expand.items():
            t = tensors[name]
            if t.dim() > len(shape):  # leading axes of size 1 (checked by the plan)
                t = t.reshape(tuple(t.shape)[t.dim() - len(shape):])
            tensors[name] = t.expand(shape).contiguous()
        for name, shape, dtype in plan.outputs:
            tensors[name] = torch.empty(shape, dtype=dtypes[dtype], device=device)
        pointers = {name: t.data_ptr() for name, t in tensors.items() if t is not None}
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = self.stream(device)
        with cupy.cuda.Device(index):
            for launch in plan.launches:
                fn = self.function(launch.source, launch.kernel, index)
                fn(launch.grid, launch.block, tuple(pack_args(launch.args, pointers)),
                   stream=stream)
        return [tensors[name].view(plan.views[name]) if name in plan.views else tensors[name]
                for name in plan.result]


_runtime = _Runtime()


def prepare(index: int = 0) -> list[nvrtc.Compiled]:
    """Compile every kernel source for GPU ``index`` now (through the cache, in parallel)
    rather than at each source's first call; returns what was compiled or read."""
    import torch

    return nvrtc.compile_all(torch.cuda.get_device_capability(index))

# --------------------------------------------------------------------------- the kernels


def _on_cuda(*tensors: Any) -> str | None:
    """Why the tensors cannot go to a custom kernel (not torch CUDA tensors, or on
    different devices), or None."""
    device = None
    for t in tensors:
        if t is None:
            continue
        dev = getattr(t, "device", None)
        if getattr(dev, "type", None) != "cuda":
            return f"an input is not a torch CUDA tensor ({type(t).__name__} on {dev})"
        if device is not None and dev != device:
            return f"inputs on {device} and {dev}"
        device = dev
    return None


def _aligned(*tensors: Any) -> bool:
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


class CustomKernel:
    """One op's custom kernel with the ONNX signature; calls outside its limits go to
    ``fallback(key)``.

    ``why_not(*inputs, **attributes)`` says why a call would fall back (None when the
    custom kernel takes it); ``calls`` counts the calls taken and passed on."""

    def __init__(self, key: str, planner: Callable[..., Plan | str],
                 fallback: Callable[[str], Callable[..., Any]], strict: bool = False):
        self.key = key
        self._planner = planner
        self._fallback_for = fallback
        self._fallback: Callable[..., Any] | None = None
        self.strict = strict
        self.broken: str | None = None
        self.calls = {"custom": 0, "fallback": 0}
        self.last_fallback: str | None = None
        self._plans: dict[Any, Plan | str] = {}

    def fallback(self) -> Callable[..., Any]:
        """The torch op table's kernel for this op."""
        if self._fallback is None:
            self._fallback = self._fallback_for(self.key)
        return self._fallback

    def why_not(self, *inputs: Any, **attributes: Any) -> str | None:
        """Why this call would not run on the custom kernel, or None."""
        found = self._plan(inputs, attributes)
        return found if isinstance(found, str) else None

    def _plan(self, inputs: tuple[Any, ...], attributes: dict[str, Any]) -> Plan | str:
        if self.broken:
            return f"the custom kernel failed before: {self.broken}"
        where = _on_cuda(*inputs)
        if where:
            return where
        key = _plan_key(inputs, attributes)
        found = self._plans.get(key) if key is not None else None
        if found is None:
            try:
                found = self._planner(*inputs, **attributes)
            except TypeError as exc:  # an input or attribute the ONNX op does not have
                found = f"unexpected arguments ({exc})"
            if key is not None:
                if len(self._plans) >= PLAN_CACHE_SIZE:
                    self._plans.clear()
                self._plans[key] = found
        return found

    def __call__(self, *inputs: Any, **attributes: Any) -> Any:
        plan = self._plan(inputs, attributes)
        if isinstance(plan, Plan):
            tensors = {name: t for name, t in zip(_INPUT_NAMES[self.key], inputs)}
            tensors = {n: (t.contiguous() if t is not None else None)
                       for n, t in tensors.items()}
            device = next(t.device for t in inputs if t is not None)
            try:
                results = _runtime.run(plan, tensors, device)
            except Exception as exc:
                if self.strict or "out of memory" in str(exc).lower():
                    raise  # the torch kernel would not fit either
                first = (str(exc).splitlines() or [""])[0]
                self.broken = f"{type(exc).__name__}: {first}"
                log.warning("custom CUDA kernel for %s failed (%s); using the torch kernel "
                            "from now on", self.key, self.broken)
            else:
                self.calls["custom"] += 1
                return results[0] if len(results) == 1 else tuple(results)
            plan = self.broken or "failed"
        self.calls["fallback"] += 1
        self.last_fallback = plan
        return self.fallback()(*inputs, **attributes)


#: Plans kept per kernel (a model's shapes are few; the cache is emptied when full).
PLAN_CACHE_SIZE = 256


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plan_key(inputs: Sequence[Any], attributes: dict[str, Any]) -> Any:
    """What a plan depends on: each input's shape, dtype, alignment and device, and the
    attributes; None when an attribute cannot be hashed (then nothing is cached)."""
    key = (tuple(None if t is None else (tuple(t.shape), t.dtype, t.data_ptr() % 16 == 0,
                                         t.device) for t in inputs),
           tuple(sorted((k, _frozen(v)) for k, v in attributes.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


_INPUT_NAMES = {
    "MatMul": ("a", "b"),
    "backplane::FusedMatMulBiasGelu": ("a", "b", "bias"),
    "Softmax": ("x",),
    "LayerNormalization": ("x", "scale", "bias"),
    "backplane::FusedConvRelu": ("x", "w", "b"),
    "backplane::Attention": ("q", "k", "v", "mask"),
}


def _gpu(t: Any) -> dict[str, Any]:
    """The planners' device arguments for tensor ``t``'s GPU."""
    sm_count, tensor_cores = _runtime.device(t.device.index if t.device.index is not None else 0)
    return {"sm_count": sm_count, "tensor_cores": tensor_cores}


def _matmul(a: Any, b: Any) -> Plan | str:
    if a.dtype != b.dtype:
        return f"operands of dtypes {a.dtype} and {b.dtype}"
    return plan_matmul(tuple(a.shape), tuple(b.shape), a.dtype, aligned=_aligned(a, b),
                       **_gpu(a))


def _matmul_bias_gelu(a: Any, b: Any, bias: Any, approximate: str = "none") -> Plan | str:
    if approximate not in ("none", "tanh"):
        return f"approximate={approximate!r}"
    if not (a.dtype == b.dtype == bias.dtype):
        return "operands of different dtypes"
    return plan_matmul(tuple(a.shape), tuple(b.shape), a.dtype, bias_shape=tuple(bias.shape),
                       act=ACT["gelu" if approximate == "none" else "gelu_tanh"],
                       aligned=_aligned(a, b), **_gpu(a))


def _softmax(x: Any, axis: int = -1) -> Plan | str:
    return plan_softmax(tuple(x.shape), axis, x.dtype)


def _layernorm(x: Any, scale: Any, bias: Any = None, axis: int = -1, epsilon: float = 1e-5,
               stash_type: int = 1) -> Plan | str:
    return plan_layernorm(tuple(x.shape), x.dtype, tuple(scale.shape), scale.dtype,
                          tuple(bias.shape) if bias is not None else None,
                          bias.dtype if bias is not None else None, axis, epsilon, stash_type)


def _conv_relu(x: Any, w: Any, b: Any = None, **attrs: Any) -> Plan | str:
    return plan_conv(tuple(x.shape), tuple(w.shape), x.dtype, attrs, w_dtype=w.dtype,
                     bias=b is not None, bias_shape=tuple(b.shape) if b is not None else None,
                     bias_dtype=b.dtype if b is not None else None, aligned=_aligned(x, w),
                     **_gpu(x))


def _attention(q: Any, k: Any, v: Any, mask: Any = None, scale: float | None = None
               ) -> Plan | str:
    return plan_attention(tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype,
                          k_dtype=k.dtype, v_dtype=v.dtype,
                          mask_shape=tuple(mask.shape) if mask is not None else None,
                          mask_dtype=mask.dtype if mask is not None else None, scale=scale,
                          aligned=_aligned(q, k, v), tensor_cores=_gpu(q)["tensor_cores"])


_PLANNERS: dict[str, Callable[..., Plan | str]] = {
    "MatMul": _matmul, "Softmax": _softmax, "LayerNormalization": _layernorm,
    "backplane::FusedConvRelu": _conv_relu, "backplane::FusedMatMulBiasGelu": _matmul_bias_gelu,
    "backplane::Attention": _attention,
}


def custom_kernels(fallback: Callable[[str], Callable[..., Any]], *,
                   strict: bool = False) -> dict[str, CustomKernel]:
    """Op key -> custom kernel (a :class:`CustomKernel`, called ``fn(*inputs,
    **attributes)``) for every key of :data:`OPS`.

    Args:
        fallback: op key -> the torch op table's kernel, called for inputs outside a
            custom kernel's limits (looked up on first use).
        strict: raise when a custom kernel fails to compile or launch, instead of logging
            a warning and using the fallback from then on (tests use it).
    """
    return {key: CustomKernel(key, _PLANNERS[key], fallback, strict) for key in OPS}
