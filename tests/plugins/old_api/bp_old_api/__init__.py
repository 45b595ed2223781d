"""Backends written against older backend API versions, as a third party shipped them.

- ``old-api``: written for API 1 (inside the window, deprecated). Its device kind is the
  free text API 1 allowed ("GPU"), it declares a precision backplane does not know, and it
  has a working Relu kernel: it must load, warn, and still run.
- ``ancient-api``: written for API 0, outside the window: refused with the reason.
- ``odd-kind``: written for API 2, with a device kind outside DEVICE_KINDS: its probe is
  refused, since API 2 holds it to the rule.
"""

from backplane import Backend, Device, KernelTable

kernels = KernelTable(precisions=frozenset({"fp32", "fp24"}))


@kernels.register("Relu", dtypes=["float32"])
def relu(x):
    import numpy as np

    return np.maximum(x, 0)


class OldApi(Backend):
    name = "old-api"
    api_version = 1
    version = "1.2.0"
    kernels = kernels

    def probe(self):
        return [Device(name="Old accelerator", kind="GPU")]


class AncientApi(Backend):
    name = "ancient-api"
    api_version = 0
    kernels = kernels

    def probe(self):
        return [Device(name="never listed")]


class OddKind(Backend):
    name = "odd-kind"
    api_version = 2
    kernels = KernelTable()

    def probe(self):
        return [Device(name="A DSP", kind="dsp")]
