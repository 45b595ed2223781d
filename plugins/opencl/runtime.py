"""The device state the opencl kernels run on, as they import it (``from ..runtime import``).

It lives in :mod:`backplane.runtimes.opencl` (one context, queue, buffer pool and program
cache per device and process), shared with rocm's OpenCL path.
"""

from __future__ import annotations

from backplane.runtimes.opencl import (CL_TYPES, MAXR, RAW_NUMPY, RAW_TYPES, DeviceState,
                                       gemm_cpu_prelude, mirror, state_for, state_of)

__all__ = ["CL_TYPES", "MAXR", "RAW_NUMPY", "RAW_TYPES", "DeviceState", "gemm_cpu_prelude",
           "mirror", "state_for", "state_of"]
