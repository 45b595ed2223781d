"""Backends that fail in each way backplane must survive. Each claims Relu, so that a
session on a Relu model would pick it first if it worked."""

from backplane import (API_VERSION, Backend, Capabilities, Device, DeviceUnavailable,
                       Executable, OpSupport)

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

    def probe(self):
        return [Device(name="device that fails at run time")]

    def compile(self, graph, device, options):
        return _ExplodingExecutable()
