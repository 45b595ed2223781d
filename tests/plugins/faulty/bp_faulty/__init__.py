"""Backends that fail in each way backplane must survive. Each claims Relu, so that a
session on a Relu model would pick it first if it worked."""

import os
import time

from backplane import (API_VERSION, Backend, Capabilities, Device, DeviceUnavailable,
                       Executable, OpSupport)

#: Cost hints of a device that would be the cheapest anywhere, so that automatic plans
#: choose the failing backends first.
FAST = {"launch_us": 0.5, "node_us": 0.1, "compute_efficiency": 1.0, "memory_efficiency": 1.0}

RELU = Capabilities(ops={"Relu": OpSupport(dtypes=frozenset({"float32"}))})


class RaisingProbe(Backend):
    name = "raising-probe"
    api_version = API_VERSION
    capabilities = RELU

    def probe(self):
        raise RuntimeError("driver exploded: CUDA_ERROR_UNKNOWN (999)")


class NoDevice(Backend):
    name = "no-device"
    api_version = API_VERSION
    capabilities = RELU

    def probe(self):
        raise DeviceUnavailable("no accelerator found: /dev/accel0 does not exist")


class FutureApi(Backend):
    name = "future-api"
    api_version = 99
    capabilities = RELU

    def probe(self):
        return [Device(name="never listed")]


class FailingCompile(Backend):
    name = "failing-compile"
    api_version = API_VERSION
    priority = 100
    capabilities = RELU
    cost_hints = FAST

    def probe(self):
        return [Device(name="compiler that crashes")]

    def compile(self, graph, device, options):
        raise RuntimeError("vendor compiler crashed: internal error 0xdead")


class _ExplodingExecutable(Executable):
    def run(self, inputs):
        raise MemoryError("device out of memory while running")


class FailingRun(Backend):
    name = "failing-run"
    api_version = API_VERSION
    priority = 90
    capabilities = RELU
    cost_hints = FAST

    def probe(self):
        return [Device(name="device that fails at run time")]

    def compile(self, graph, device, options):
        return _ExplodingExecutable()


class InjectedFaults(Backend):
    """A pretend accelerator that computes correctly (through backplane's reference
    backend) in its own memory domain, and fails where the environment says, so tests can
    inject real compile and run failures into automatic plans.

    It declares cost hints that make it the cheapest device for every op it admits, so the
    scheduler picks it first. ``BP_INJECT_OPS`` (comma-separated) limits the ops it admits;
    ``BP_INJECT`` (comma-separated) lists the faults:

    OP matches any op type that contains it (``Conv`` matches the fused ``FusedConvRelu``
    that the fusion pass makes of a Conv and its Relu):

    - ``compile:OP``: compiling a subgraph with an OP node raises;
    - ``run:OP``: running a subgraph with an OP node raises a MemoryError;
    - ``run-after:N``: every executable fails from its (N+1)-th run on;
    - ``wrong-shape:OP``: a subgraph with an OP node returns outputs of the wrong shape;
    - ``wrong-values:OP``: a subgraph with an OP node returns its outputs plus one;
    - ``crash:OP``: running a subgraph with an OP node kills the process (SIGABRT);
    - ``slow-compile:S``: every compile takes S seconds more;
    - ``flaky:N``: the N-th run of each executable fails (a transient device fault).
    """

    name = "injected-faults"
    api_version = API_VERSION
    priority = 50
    cost_hints = {"launch_us": 1.0, "node_us": 0.1, "compute_efficiency": 1.0,
                  "memory_efficiency": 1.0}

    def __init__(self):
        from backplane.plugins.reference import ReferenceBackend

        self._reference = ReferenceBackend()

    @property
    def capabilities(self):
        ops = [o for o in os.environ.get("BP_INJECT_OPS", "").split(",") if o]
        if not ops:
            return self._reference.capabilities
        return Capabilities(ops={op: OpSupport() for op in ops},
                            precisions=frozenset({"fp32"}))

    def probe(self):
        return [Device(name="fault-injection accelerator", kind="accelerator",
                       memory_bytes=8 * 2**30, properties={"pci_bus_id": "0000:fa:00.0"})]

    def compile(self, graph, device, options):
        faults = _faults()
        ops = " ".join(n.op_type for n in graph.nodes)
        for op in faults.get("compile", ()):
            if op in ops:
                raise RuntimeError(f"injected: vendor compiler crashed on {op}")
        for seconds in faults.get("slow-compile", ()):
            time.sleep(float(seconds))
        return _Injected(self._reference.compile(graph, device, options), ops, faults)


def _faults():
    out = {}
    for item in os.environ.get("BP_INJECT", "").split(","):
        kind, _, arg = item.partition(":")
        if kind:
            out.setdefault(kind, []).append(arg)
    return out


class _Injected(Executable):
    thread_safe = True

    def __init__(self, inner, ops, faults):
        self._inner, self._ops, self._faults = inner, ops, faults
        self._runs = 0

    def run(self, inputs):
        self._runs += 1
        for op in self._faults.get("run", ()):
            if op in self._ops:
                raise MemoryError(f"injected: device out of memory running {op}")
        for n in self._faults.get("flaky", ()):
            if self._runs == int(n):
                raise RuntimeError(f"injected: transient device fault on run {n}")
        for n in self._faults.get("run-after", ()):
            if self._runs > int(n):
                raise RuntimeError(f"injected: device lost after {n} runs")
        for op in self._faults.get("crash", ()):
            if op in self._ops:
                os.abort()
        out = self._inner.run(inputs)
        for op in self._faults.get("wrong-shape", ()):
            if op in self._ops:
                out = {k: v.reshape(-1)[:1] for k, v in out.items()}
        for op in self._faults.get("wrong-values", ()):
            if op in self._ops:
                out = {k: v + 1 for k, v in out.items()}
        return out
