"""The custom CUDA kernels of cuda-tensorrt: kernels/cuda/*.cu, nvrtc.py, cudakernels.py.

a. Every source compiles with NVRTC for sm_80 and sm_90, and every kernel the host
   wrappers launch is in its module with the parameter list the wrappers pass (read from
   the PTX). Needs NVRTC (pip package nvidia-cuda-nvrtc-cu12), no GPU.
b. The compile cache: hits, misses on any change, corrupt entries, compile errors.
c. The dispatch logic, pure Python: which calls each kernel takes, launch geometry, the
   batch-broadcast strides (checked against numpy), and the fallback for CPU tensors.
d. Numerics on a CUDA GPU (skipped without one): each kernel against torch in float64 on
   fresh random inputs, float32 and float16, odd sizes, masks, groups. The seed is in every
   failure message; BACKPLANE_TEST_SEED replays one.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from backplane.sdk.errors import CompileError
from backplane.plugins.cuda_tensorrt import cudakernels as ck
from backplane.plugins.cuda_tensorrt import nvrtc

SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
NVRTC_PACKAGE = "nvidia-cuda-nvrtc-cu12"


def _nvrtc_missing() -> str | None:
    try:
        nvrtc.load()
    except nvrtc.NvrtcNotFound as exc:
        return f"{exc} (CI installs the pip package {NVRTC_PACKAGE})"
    return None


needs_nvrtc = pytest.mark.skipif(_nvrtc_missing() is not None,
                                 reason=_nvrtc_missing() or "")


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", str(root))
    return root

# --------------------------------------------------------------------------- a. compiling


@pytest.fixture(scope="module")
def cubins() -> dict[tuple[str, str], nvrtc.Compiled]:
    """(source, arch) -> every source compiled for sm_80 and sm_90, uncached, in parallel."""
    if _nvrtc_missing():
        pytest.skip(_nvrtc_missing())
    return {(c.name, arch): c for arch in ("8.0", "9.0")
            for c in nvrtc.compile_all(arch, use_cache=False)}


@needs_nvrtc
@pytest.mark.parametrize("arch", ["8.0", "9.0"])
@pytest.mark.parametrize("source", nvrtc.source_names())
def test_every_source_compiles_to_a_cubin(cubins, source, arch):
    compiled = cubins[source, arch]
    assert compiled.kind == "cubin" and compiled.target.endswith(arch.replace(".", ""))
    assert compiled.binary[:4] == b"\x7fELF"
    for kernel in ck.KERNELS[source]:
        assert kernel.encode() in compiled.binary, f"{kernel} missing from {source}"


@needs_nvrtc
@pytest.mark.parametrize("source", ["matmul.cu", "attention.cu"])
def test_sources_with_tensor_core_kernels_also_build_for_older_gpus(source):
    # Before sm_80 the tensor-core instructions compile to traps; the planners do not
    # launch those kernels there (tensor_cores=False).
    assert nvrtc.compile_source(source, "7.5", use_cache=False).kind == "cubin"


def test_without_sm80_tensor_cores_the_planners_use_simt_kernels():
    assert ck.plan_matmul((256, 256), (256, 256), "float16",
                          tensor_cores=False).launches[0].kernel.startswith("matmul_simt")
    assert ck.plan_attention((1, 1, 9, 64), (1, 1, 9, 64), (1, 1, 9, 64), "float16",
                             tensor_cores=False).launches[0].kernel == "attention_simt_f16"
    assert ck.plan_conv((1, 64, 8, 8), (64, 64, 1, 1), "float16", {},
                        tensor_cores=False).launches[0].kernel.startswith("matmul_simt")


def test_every_launched_source_is_shipped():
    assert set(ck.KERNELS) == set(nvrtc.source_names())


@needs_nvrtc
def test_nvrtc_reports_its_version_and_architectures():
    lib = nvrtc.load()
    assert lib.version >= (11, 2)
    assert nvrtc.version() == lib.version
    assert {80, 90} <= set(lib.archs)


_CODE = {"p": ".u64", "q": ".u64", "i": ".u32", "f": ".f32"}


def _ptx_params(ptx: str) -> dict[str, list[str]]:
    """kernel -> the PTX types of its parameters."""
    out = {}
    for name, params in re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx):
        out[name] = re.findall(r"\.param\s+(\.\w+)", params)
    return out


@pytest.fixture(scope="module")
def ptx_params() -> dict[str, list[str]]:
    if _nvrtc_missing():
        pytest.skip(_nvrtc_missing())
    out: dict[str, list[str]] = {}
    for source in nvrtc.source_names():
        compiled = nvrtc.compile_source(source, "8.0", use_cache=False, ptx=True)
        out.update(_ptx_params(compiled.binary.decode()))
    return out


def _sample_plans() -> list[ck.Plan]:
    """At least one plan for every kernel the wrappers launch."""
    plans = [
        ck.plan_matmul((4096, 4096), (4096, 4096), "float16"),
        ck.plan_matmul((7, 5), (5, 3), "float16"),
        ck.plan_matmul((7, 5), (5, 3), "float32"),
        ck.plan_matmul((4096, 4096), (4096, 4096), "float32"),
        ck.plan_matmul((4096, 4096), (4096, 4096), "float16", aligned=False),
        ck.plan_matmul((128, 768), (768, 3072), "float16", bias_shape=(3072,), act=3),
        ck.plan_layernorm((4, 3000), "float32", (3000,), "float32"),
    ]
    for dtype in ("float32", "float16"):
        plans += [ck.plan_softmax((4, 10), -1, dtype), ck.plan_softmax((4, 5000), -1, dtype),
                  ck.plan_softmax((4, 10, 3), 1, dtype),
                  ck.plan_layernorm((4, 10), dtype, (10,), dtype, (10,), dtype),
                  ck.plan_layernorm((4, 3000), dtype, (3000,), dtype),
                  ck.plan_attention((2, 4, 9, 48), (2, 4, 9, 48), (2, 4, 9, 48), dtype,
                                    mask_shape=(9, 9), mask_dtype="float32")]
        for cout in (256, 64, 16, 4):
            plans.append(ck.plan_conv((1, 4 if cout == 4 else 16, 9, 9), (cout, 1 if cout == 4
                                      else 16, 3, 3), dtype, {"group": 4 if cout == 4 else 1},
                                      bias=True))
    for d in (64, 128):
        plans.append(ck.plan_attention((1, 2, 9, d), (1, 2, 9, d), (1, 2, 9, d), "float16"))
    return plans


def test_the_sample_plans_cover_every_kernel():
    launched = {launch.kernel for plan in _sample_plans() for launch in plan.launches}
    assert launched == {k for names in ck.KERNELS.values() for k in names}


@needs_nvrtc
def test_every_launch_passes_the_parameters_its_kernel_declares(ptx_params):
    for plan in _sample_plans():
        for launch in plan.launches:
            want = ptx_params[launch.kernel]
            got = [_CODE[code] for code, _ in launch.args]
            assert got == want, f"{launch.kernel}: passes {got}, declares {want}"

# --------------------------------------------------------------------------- b. the cache


def _kernel_folder(tmp_path: Path, body: str = "y[0] = x[0] * 2.0f;") -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    (folder / "helper.cuh").write_text("#pragma once\n#define SCALE 2.0f\n")
    (folder / "tiny.cu").write_text('#include "helper.cuh"\nextern "C" __global__ void '
                                    f"tiny(const float* x, float* y) {{ {body} }}\n")
    return folder


@needs_nvrtc
def test_a_second_compile_reads_the_cache(tmp_path, cache_root):
    folder = _kernel_folder(tmp_path)
    first = nvrtc.compile_source("tiny.cu", "9.0", folder=folder)
    second = nvrtc.compile_source("tiny.cu", "9.0", folder=folder)
    assert not first.from_cache and second.from_cache
    assert second.binary == first.binary
    assert first.path is not None and first.path.parent == cache_root / nvrtc.CACHE_NAME


@needs_nvrtc
@pytest.mark.parametrize("change", ["source", "header", "options", "arch"])
def test_a_change_of_what_the_binary_depends_on_recompiles(tmp_path, cache_root, change):
    folder = _kernel_folder(tmp_path)
    first = nvrtc.compile_source("tiny.cu", "9.0", folder=folder)
    arch, options = "9.0", ()
    if change == "source":
        _kernel_folder(tmp_path, "y[0] = x[0] * 3.0f;")
    elif change == "header":
        (folder / "helper.cuh").write_text("#pragma once\n#define SCALE 3.0f\n")
    elif change == "options":
        options = ("-lineinfo",)
    else:
        arch = "8.0"
    again = nvrtc.compile_source("tiny.cu", arch, options, folder=folder)
    assert not again.from_cache and again.key != first.key


@needs_nvrtc
@pytest.mark.parametrize("damage", ["truncated binary", "altered binary", "missing sidecar",
                                    "garbled sidecar"])
def test_a_corrupt_cache_entry_is_compiled_again(tmp_path, cache_root, damage):
    folder = _kernel_folder(tmp_path)
    first = nvrtc.compile_source("tiny.cu", "9.0", folder=folder)
    sidecar = first.path.with_suffix(".json")
    if damage == "truncated binary":
        first.path.write_bytes(first.binary[:100])
    elif damage == "altered binary":
        first.path.write_bytes(first.binary[:-1] + bytes([first.binary[-1] ^ 1]))
    elif damage == "missing sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text("{not json")
    again = nvrtc.compile_source("tiny.cu", "9.0", folder=folder)
    assert not again.from_cache and again.binary == first.binary
    assert nvrtc.compile_source("tiny.cu", "9.0", folder=folder).from_cache


@needs_nvrtc
def test_caching_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPLANE_CACHE_DIR", "off")
    folder = _kernel_folder(tmp_path)
    compiled = nvrtc.compile_source("tiny.cu", "9.0", folder=folder)
    assert compiled.path is None and not compiled.from_cache and compiled.binary


@needs_nvrtc
def test_a_syntax_error_is_a_compile_error_with_nvrtcs_log(tmp_path, cache_root):
    folder = _kernel_folder(tmp_path, "y[0] = x[0] *;")
    with pytest.raises(CompileError) as info:
        nvrtc.compile_source("tiny.cu", "9.0", folder=folder)
    assert "tiny.cu" in str(info.value) and "error" in info.value.vendor_message
    assert info.value.backend == "cuda-tensorrt"
    assert not list((cache_root / nvrtc.CACHE_NAME).glob("tiny-*"))


@needs_nvrtc
def test_a_gpu_newer_than_nvrtc_gets_ptx_for_the_newest_architecture_it_knows(tmp_path,
                                                                               cache_root):
    newest = max(nvrtc.load().archs)
    compiled = nvrtc.compile_source("tiny.cu", newest + 1, folder=_kernel_folder(tmp_path))
    assert compiled.kind == "ptx" and compiled.target.endswith(f"compute_{newest}")
    assert b".entry tiny" in compiled.binary


def test_targets_are_cubins_for_known_architectures_and_ptx_past_them():
    assert nvrtc.target("9.0", (80, 90)) == ("--gpu-architecture=sm_90", "cubin")
    assert nvrtc.target((10, 0), (80, 90)) == ("--gpu-architecture=compute_90", "ptx")
    assert nvrtc.target("sm_86", (80, 86)) == ("--gpu-architecture=sm_86", "cubin")
    with pytest.raises(ValueError):
        nvrtc.target("5.0", (80, 90))


def test_sources_are_hashed_with_the_headers_they_include(tmp_path):
    folder = _kernel_folder(tmp_path)
    source, headers = nvrtc.read_sources("tiny.cu", folder)
    assert b"tiny" in source and list(headers) == ["helper.cuh"]
    _, shipped = nvrtc.read_sources("matmul.cu")
    assert set(shipped) == {"gemm.cuh", "common.cuh"}

# --------------------------------------------------------------------------- c. dispatch


def _offsets_numpy(shape: tuple[int, ...], out_batch: tuple[int, ...], per: int) -> list[int]:
    """Element offset of each matrix of an operand with batch dims ``shape`` (each matrix
    ``per`` elements), for every index of ``out_batch`` in row-major order."""
    ids = np.arange(math.prod(shape)).reshape(shape)
    return [int(i) * per for i in np.broadcast_to(ids, out_batch).ravel()]


BATCHES = [((), ()), ((3,), ()), ((), (4,)), ((2, 3), (3,)), ((2, 1), (1, 5)),
           ((2, 3, 4), (2, 3, 4)), ((1, 3, 1), (2, 3, 1)), ((5, 1, 1), (1, 1, 7)),
           ((2, 1, 3), (1, 1, 3))]


@pytest.mark.parametrize("a_batch,b_batch", BATCHES)
def test_batch_strides_address_the_matrices_numpy_broadcasting_pairs(a_batch, b_batch):
    M, K, N = 3, 5, 4
    plan = ck.plan_matmul((*a_batch, M, K), (*b_batch, K, N), "float32")
    assert isinstance(plan, ck.Plan), plan
    launch = plan.launches[0]
    args = [v for _, v in launch.args]
    n1, (sa0, sa1, sb0, sb1) = args[7], args[8:12]
    out_batch = np.broadcast_shapes(a_batch, b_batch)
    count = math.prod(out_batch)
    assert launch.grid[2] == count
    batch = ck.Batch(count // n1, n1, ((sa0, sa1), (sb0, sb1)))
    assert [batch.offset(z, 0) for z in range(count)] == _offsets_numpy(a_batch, out_batch, M * K)
    assert [batch.offset(z, 1) for z in range(count)] == _offsets_numpy(b_batch, out_batch, K * N)
    assert plan.outputs[0][1] == (*out_batch, M, N)


@pytest.mark.parametrize("a_batch,b_batch", [((2, 1, 3), (1, 7, 1)), ((2, 1, 3), (2, 4, 3))])
def test_batches_broadcast_on_interleaved_axes_fall_back(a_batch, b_batch):
    found = ck.plan_matmul((*a_batch, 4, 5), (*b_batch, 5, 6), "float32")
    assert isinstance(found, str) and "interleaved" in found


def test_collapse_merges_axes_that_are_contiguous_in_every_operand():
    batch = ck.collapse_batch((2, 3, 4), [(12, 4, 1), (0, 0, 0)])
    assert (batch.n0, batch.n1, batch.strides) == (1, 24, ((0, 1), (0, 0)))
    assert ck.collapse_batch((2, 3, 4), [(12, 0, 1), (0, 4, 0), (1, 0, 0)]) is None


def test_matmul_promotes_1d_operands_and_returns_numpys_shape():
    plan = ck.plan_matmul((5,), (2, 5, 3), "float32")
    assert plan.outputs[0][1] == (2, 1, 3) and plan.views == {"y": (2, 3)}
    assert ck.plan_matmul((5,), (5,), "float32").views == {"y": ()}


@pytest.mark.parametrize("shape_a,shape_b,dtype,aligned,kernel", [
    ((4096, 4096), (4096, 4096), "float16", True, "matmul_tc_f16"),
    ((127, 1024), (1024, 136), "float16", True, "matmul_tc_f16"),
    ((127, 1023), (1023, 136), "float16", True, "matmul_simt32_f16"),
    ((127, 1024), (1024, 137), "float16", True, "matmul_simt32_f16"),
    ((4096, 4096), (4096, 4096), "float16", False, "matmul_simt128_f16"),
    ((4096, 4096), (4096, 4096), "float32", True, "matmul_simt128_f32"),
    ((1, 768), (768, 3072), "float32", True, "matmul_simt32_f32"),
])
def test_matmul_picks_tensor_cores_where_its_limits_allow(shape_a, shape_b, dtype, aligned,
                                                           kernel):
    plan = ck.plan_matmul(shape_a, shape_b, dtype, aligned=aligned)
    assert plan.launches[0].kernel == kernel


def test_matmul_grid_covers_the_output_in_tiles():
    launch = ck.plan_matmul((3, 1025, 64), (64, 127), "float16").launches[0]
    assert launch.kernel == "matmul_simt32_f16"  # N = 127 is not a multiple of 8
    assert launch.grid == (math.ceil(127 / 64), math.ceil(1025 / 32), 3)
    assert launch.block == (128, 1, 1)
    tc = ck.plan_matmul((3, 1025, 64), (64, 128), "float16").launches[0]
    assert tc.grid == (1, math.ceil(1025 / 128), 3) and tc.block == (256, 1, 1)


@pytest.mark.parametrize("args,why", [
    (((4, 5), (5, 6), "float64"), "dtype float64"),
    (((4, 5), (6, 7), "float32"), "inner dimensions differ"),
    (((0, 5), (5, 6), "float32"), "zero-sized"),
    (((70000, 4, 5), (5, 6), "float32"), "matrices"),
])
def test_matmul_outside_its_limits_says_why(args, why):
    found = ck.plan_matmul(*args)
    assert isinstance(found, str) and why in found


def test_matmul_bias_gelu_takes_a_bias_over_rows_and_refuses_one_that_enlarges():
    plan = ck.plan_matmul((2, 7, 5), (5, 6), "float32", bias_shape=(6,), act=ck.ACT["gelu"])
    args = dict(enumerate(v for _, v in plan.launches[0].args))
    assert (args[14], args[15], args[16]) == (0, 1, ck.ACT["gelu"])  # sbm, sbn, act
    assert isinstance(ck.plan_matmul((7, 5), (5, 6), "float32", bias_shape=(3, 7, 6)), str)
    per_row = ck.plan_matmul((7, 5), (5, 6), "float32", bias_shape=(7, 1))
    assert [v for _, v in per_row.launches[0].args][14:16] == [1, 0]


@pytest.mark.parametrize("shape,axis,kernel,grid", [
    ((7, 1025), -1, "softmax_block_f32", (7, 1, 1)),
    ((7, 1024), 1, "softmax_warp_f32", (1, 1, 1)),
    ((127, 9), -1, "softmax_warp_f32", (16, 1, 1)),
    ((3, 127, 5), 1, "softmax_cols_f32", (1, 1, 1)),
    ((1,), 0, "softmax_warp_f32", (1, 1, 1)),
])
def test_softmax_kernel_and_grid_follow_the_axis(shape, axis, kernel, grid):
    launch = ck.plan_softmax(shape, axis, "float32").launches[0]
    assert (launch.kernel, launch.grid) == (kernel, grid)


def test_softmax_axis_out_of_range_falls_back():
    assert "axis" in ck.plan_softmax((3, 4), 2, "float32")


def test_layernorm_expands_broadcast_parameters_and_returns_the_statistics():
    plan = ck.plan_layernorm((2, 3, 5, 7), "float16", (7,), "float16", (5, 7), "float16", axis=2)
    assert plan.expand == {"scale": (5, 7)}
    assert [o[1:] for o in plan.outputs] == [((2, 3, 5, 7), "float16"),
                                            ((2, 3, 1, 1), "float32"), ((2, 3, 1, 1), "float32")]
    assert plan.launches[0].kernel == "layernorm_warp_f16"


@pytest.mark.parametrize("kwargs,why", [
    ({"stash_type": 11}, "stash_type"),
    ({"scale_shape": (3, 10)}, "does not broadcast"),
    ({"scale_dtype": "float32"}, "scale is float32"),
])
def test_layernorm_outside_its_limits_says_why(kwargs, why):
    args = {"shape": (3, 10), "dtype": "float16", "scale_shape": (10,), "scale_dtype": "float16"}
    args.update(kwargs)
    found = ck.plan_layernorm(**args)
    assert isinstance(found, str) and why in found


@pytest.mark.parametrize("x,w,attrs,kernel", [
    ((2, 64, 17, 17), (256, 64, 3, 3), {"pads": [1, 1, 1, 1]}, "conv_igemm128_f32"),
    ((2, 64, 17, 17), (64, 64, 3, 3), {}, "conv_igemm64_f32"),
    ((2, 64, 17, 17), (16, 64, 3, 3), {}, "conv_igemm32_f32"),
    ((2, 64, 17, 17), (64, 1, 3, 3), {"group": 64}, "conv_direct_f32"),
    ((2, 64, 17, 17), (64, 64, 1, 1), {}, "matmul_simt32_f32"),
    ((2, 64, 7, 7), (64, 64, 1, 1), {"strides": [2, 2]}, "conv_igemm64_f32"),
    ((2, 64, 33), (64, 32, 5), {"group": 2}, "conv_igemm32_f32"),
])
def test_conv_picks_its_kernel_by_shape(x, w, attrs, kernel):
    plan = ck.plan_conv(x, w, "float32", attrs)
    assert plan.launches[0].kernel == kernel


def test_a_pointwise_float16_conv_runs_on_tensor_cores_as_a_batched_matmul():
    plan = ck.plan_conv((2, 64, 16, 16), (128, 32, 1, 1), "float16", {"group": 2}, bias=True)
    launch = plan.launches[0]
    assert launch.kernel == "matmul_tc_f16" and launch.grid[2] == 4
    args = [v for _, v in launch.args]
    assert args[4:8] == [64, 256, 32, 2]  # M = Cout/G, N = H*W, K = C/G, nb1 = G
    assert args[8:16] == [0, 64 * 32, 64 * 256, 32 * 256, 0, 64, 1, 0]


def test_conv_output_size_follows_pads_strides_and_dilations():
    plan = ck.plan_conv((1, 3, 10, 11), (8, 3, 3, 2), "float32",
                        {"pads": [1, 0, 2, 1], "strides": [2, 3], "dilations": [2, 1]})
    # H: (10 + 1 + 2 - 5) // 2 + 1 = 5; W: (11 + 0 + 1 - 2) // 3 + 1 = 4
    assert plan.outputs[0][1] == (1, 8, 5, 4)
    one_d = ck.plan_conv((1, 3, 10), (8, 3, 3), "float32", {"pads": [1, 1]})
    assert one_d.outputs[0][1] == (1, 8, 10)


@pytest.mark.parametrize("x,w,attrs,why", [
    ((1, 3, 4, 4, 4), (8, 3, 1, 1, 1), {}, "rank 5"),
    ((1, 3, 8, 8), (8, 3, 3, 3), {"auto_pad": "SAME_UPPER"}, "auto_pad"),
    ((1, 4, 8, 8), (8, 3, 3, 3), {"group": 2}, "group"),
    ((1, 3, 2, 2), (8, 3, 3, 3), {}, "zero-sized"),
])
def test_conv_outside_its_limits_says_why(x, w, attrs, why):
    found = ck.plan_conv(x, w, "float32", attrs)
    assert isinstance(found, str) and why in found


def test_conv_activation_is_relu_or_clip_with_unset_bounds_open():
    assert ck.conv_activation({}) == (ck.ACT["relu"], 0.0, 0.0)
    assert ck.conv_activation({"clip_min": 0.0, "clip_max": 6.0}) == (ck.ACT["clip"], 0.0, 6.0)
    assert ck.conv_activation({"clip_max": 6.0}) == (ck.ACT["clip"], -math.inf, 6.0)


def test_attention_broadcasts_masks_and_kv_over_batch_and_heads():
    plan = ck.plan_attention((2, 8, 7, 64), (2, 1, 9, 64), (2, 1, 9, 64), "float16",
                             mask_shape=(2, 1, 1, 9), mask_dtype="bool")
    launch = plan.launches[0]
    args = [v for _, v in launch.args]
    assert launch.kernel == "attention_tc_f16_d64" and launch.grid == (1, 16, 1)
    assert args[5] == ck.MASK_KIND["bool"] and args[11] == 8  # nb1 = heads
    assert args[12:18] == [8 * 7 * 64, 7 * 64, 9 * 64, 0, 9 * 64, 0]
    assert args[18:22] == [9, 0, 0, 1]  # mask: per batch, broadcast over heads and queries
    assert args[10] == pytest.approx(1 / 8)


@pytest.mark.parametrize("q,k,v,dtype,kernel", [
    ((1, 2, 9, 128), (1, 2, 9, 128), (1, 2, 9, 128), "float16", "attention_tc_f16_d128"),
    ((1, 2, 9, 80), (1, 2, 9, 80), (1, 2, 9, 80), "float16", "attention_simt_f16"),
    ((1, 2, 9, 64), (1, 2, 9, 64), (1, 2, 9, 32), "float16", "attention_simt_f16"),
    ((1, 2, 9, 64), (1, 2, 9, 64), (1, 2, 9, 64), "float32", "attention_simt_f32"),
])
def test_attention_uses_tensor_cores_for_float16_head_dims_64_and_128(q, k, v, dtype, kernel):
    assert ck.plan_attention(q, k, v, dtype).launches[0].kernel == kernel


@pytest.mark.parametrize("kwargs,why", [
    ({"q_shape": (1, 2, 9, 256), "k_shape": (1, 2, 9, 256), "v_shape": (1, 2, 9, 256)},
     "head dims"),
    ({"mask_shape": (9, 4), "mask_dtype": "float32"}, "does not broadcast"),
    ({"mask_shape": (9, 9), "mask_dtype": "int64"}, "mask of dtype"),
    ({"k_shape": (1, 2, 0, 64), "v_shape": (1, 2, 0, 64)}, "zero-sized"),
])
def test_attention_outside_its_limits_says_why(kwargs, why):
    args = {"q_shape": (1, 2, 9, 64), "k_shape": (1, 2, 9, 64), "v_shape": (1, 2, 9, 64),
            "dtype": "float16"}
    args.update(kwargs)
    found = ck.plan_attention(**args)
    assert isinstance(found, str) and why in found


def test_launch_arguments_are_packed_as_the_kernels_c_types():
    packed = ck.pack_args([("p", "a"), ("p", None), ("i", 7), ("q", 2**40), ("f", 0.5)],
                          {"a": 4096})
    assert [type(v).__name__ for v in packed] == ["uint64", "uint64", "int32", "int64",
                                                  "float32"]
    assert [int(v) for v in packed[:4]] == [4096, 0, 7, 2**40]
    with pytest.raises(OverflowError):
        ck.pack_args([("i", 2**31)], {})


def test_every_op_has_a_custom_kernel_and_the_defaults_are_among_them():
    kernels = ck.custom_kernels(lambda key: None)
    assert set(kernels) == set(ck.OPS)
    assert set(ck.DEFAULT_CUSTOM) <= set(ck.OPS) and "MatMul" not in ck.DEFAULT_CUSTOM


def test_cpu_tensors_go_to_the_fallback_with_the_same_arguments():
    torch = pytest.importorskip("torch")
    calls = []

    def fallback(key):
        def fn(*inputs, **attrs):
            calls.append((key, len(inputs), attrs))
            return "fallback result"
        return fn

    kernels = ck.custom_kernels(fallback)
    x = torch.randn(2, 3, 4, 4)
    cases = {
        "MatMul": ((x, x), {}),
        "Softmax": ((x,), {"axis": 1}),
        "LayerNormalization": ((x, torch.ones(4), None), {"axis": -1, "epsilon": 1e-3}),
        "backplane::FusedConvRelu": ((x, torch.randn(5, 3, 3, 3), None), {"pads": [1] * 4}),
        "backplane::FusedMatMulBiasGelu": ((x, x, torch.ones(4)), {"approximate": "tanh"}),
        "backplane::Attention": ((x, x, x, None), {"scale": 0.5}),
    }
    for key, (inputs, attrs) in cases.items():
        assert kernels[key](*inputs, **attrs) == "fallback result"
        assert calls[-1] == (key, len(inputs), attrs)
        assert "not a torch CUDA tensor" in kernels[key].why_not(*inputs, **attrs)
        assert kernels[key].calls == {"custom": 0, "fallback": 1}


def test_the_fallback_is_looked_up_only_when_needed():
    asked = []
    ck.custom_kernels(lambda key: asked.append(key))
    assert asked == []


def test_availability_says_why_not_without_a_gpu():
    ok, why = ck.available()
    assert isinstance(ok, bool) and why
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert not ok and "CUDA" in why

# --------------------------------------------------------------------------- d. GPU numerics


def _cuda_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    ok, why = ck.available()
    return None if ok else why


needs_gpu = pytest.mark.skipif(_cuda_missing() is not None, reason=_cuda_missing() or "")

#: (rtol, atol) against float64 torch on the same inputs, outputs of order 1: float32
#: accumulates in float32 (errors ~ sqrt(K) eps); float16 rounds its result (2^-11) and,
#: in Attention, the probabilities before the P V product.
TOL = {"float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3)}
TOL_ATTENTION = {"float32": (1e-4, 1e-5), "float16": (5e-3, 5e-3)}


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    """(torch, kernels): strict custom kernels whose fallback fails the test; compiled
    modules cached in a temporary folder."""
    import torch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKPLANE_CACHE_DIR", str(tmp_path_factory.mktemp("cuda-cache")))

        def fallback(key):
            def fn(*inputs, **attrs):
                raise AssertionError(f"{key} fell back to torch: "
                                     f"{kernels[key].last_fallback}")
            return fn

        kernels = ck.custom_kernels(fallback, strict=True)
        yield torch, kernels


def _generator(torch):
    """A fresh generator per test, seeded by SEED: each test's draws replay alone."""
    return torch.Generator(device="cuda").manual_seed(SEED)


def _rand(g, shape, dtype, scale=1.0, offset=0.0):
    import torch

    x = torch.randn(*shape, generator=g, device="cuda", dtype=torch.float64) * scale + offset
    return x.to(getattr(torch, dtype))


def _check(torch, got, want, tol, what):
    rtol, atol = tol
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol,
                               equal_nan=True, msg=lambda m: f"{what}, seed {SEED}: {m}")


MATMUL_SHAPES = [((1, 1), (1, 1)), ((7, 7), (7, 7)), ((127, 1025), (1025, 7)),
                 ((1025, 127), (127, 1)), ((1, 1025), (1025, 1025)),
                 ((127, 1024), (1024, 136)), ((1025, 64), (64, 1024)), ((1, 1024), (1024, 1024)),
                 ((2, 3, 127, 64), (3, 64, 1025)), ((5, 1, 7, 8), (1, 4, 8, 16)),
                 ((7,), (2, 7, 9)), ((3, 9, 7), (7,)), ((513, 4096), (4096, 264))]


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("a_shape,b_shape", MATMUL_SHAPES)
def test_matmul_matches_torch(gpu, dtype, a_shape, b_shape):
    torch, kernels = gpu
    g = _generator(torch)
    K = a_shape[-1]
    a = _rand(g, a_shape, dtype)
    b = _rand(g, b_shape, dtype, scale=1 / math.sqrt(K))
    got = kernels["MatMul"](a, b)
    assert got.dtype == a.dtype and got.shape == torch.matmul(a, b).shape
    _check(torch, got, torch.matmul(a.double(), b.double()), TOL[dtype],
           f"MatMul {a_shape} x {b_shape} {dtype}")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("a_shape,b_shape,bias_shape", [
    ((1, 768), (768, 3072), (3072,)), ((127, 1024), (1024, 1032), (1032,)),
    ((2, 7, 127), (127, 1025), (1025,)), ((1025, 64), (64, 8), (1025, 1)),
    ((3, 64, 64), (3, 64, 64), (3, 1, 64))])
def test_matmul_bias_gelu_matches_the_unfused_sequence(gpu, dtype, approximate, a_shape,
                                                       b_shape, bias_shape):
    torch, kernels = gpu
    g = _generator(torch)
    K = a_shape[-1]
    a, b = _rand(g, a_shape, dtype), _rand(g, b_shape, dtype, scale=1 / math.sqrt(K))
    bias = _rand(g, bias_shape, dtype)
    got = kernels["backplane::FusedMatMulBiasGelu"](a, b, bias, approximate=approximate)
    want = torch.nn.functional.gelu(a.double() @ b.double() + bias.double(),
                                    approximate=approximate)
    _check(torch, got, want, TOL[dtype],
           f"FusedMatMulBiasGelu {a_shape} {b_shape} {bias_shape} {approximate} {dtype}")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape,axis", [((1,), 0), ((7, 1025), -1), ((127, 7), 1),
                                        ((3, 127, 5), 1), ((2, 4097), -1), ((4, 1, 1025), 0),
                                        ((9, 1024), -1)])
def test_softmax_matches_torch(gpu, dtype, shape, axis):
    torch, kernels = gpu
    g = _generator(torch)
    x = _rand(g, shape, dtype, scale=3.0)
    got = kernels["Softmax"](x, axis=axis)
    _check(torch, got, torch.softmax(x.double(), axis), TOL[dtype],
           f"Softmax {shape} axis {axis} {dtype}")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("length", [7, 1025])
def test_softmax_of_minus_infinity_rows_is_nan_and_masked_entries_zero_like_torch(gpu, dtype,
                                                                                  length):
    torch, kernels = gpu
    g = _generator(torch)
    x = _rand(g, (4, length), dtype)
    x[0] = -math.inf                  # all -inf: NaN
    x[1, : length // 2] = -math.inf   # leading -inf: zeros there
    x[2, 1::2] = -math.inf
    x[3, length - 1] = math.nan       # a NaN: a NaN row
    got = kernels["Softmax"](x, axis=-1)
    _check(torch, got, torch.softmax(x.double(), -1), TOL[dtype], f"Softmax -inf rows {dtype}")
    assert torch.isnan(got[0]).all() and torch.isnan(got[3]).all()
    assert (got[1, : length // 2] == 0).all()


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape,axis,param_shape", [
    ((3, 127), -1, (127,)), ((7, 1025), 1, (1025,)), ((2, 3, 5, 7), 2, (5, 7)),
    ((2, 3, 5, 7), 1, (7,)), ((1, 1), 0, (1,)), ((4, 4096), -1, (4096,))])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_matches_torch(gpu, dtype, shape, axis, param_shape, with_bias):
    torch, kernels = gpu
    g = _generator(torch)
    x = _rand(g, shape, dtype, offset=3.0)  # a mean far from 0 tests the two passes
    scale = _rand(g, param_shape, dtype)
    bias = _rand(g, param_shape, dtype) if with_bias else None
    y, mean, inv_std = kernels["LayerNormalization"](x, scale, bias, axis=axis, epsilon=1e-5)
    ax = axis % len(shape)
    dims = tuple(range(ax, len(shape)))
    xd = x.double()
    want_mean = xd.mean(dim=dims, keepdim=True)
    want_inv = 1 / torch.sqrt(((xd - want_mean) ** 2).mean(dim=dims, keepdim=True) + 1e-5)
    want = (xd - want_mean) * want_inv * scale.double()
    if bias is not None:
        want = want + bias.double()
    what = f"LayerNormalization {shape} axis {axis} {dtype}"
    _check(torch, y, want, TOL[dtype], what)
    _check(torch, mean, want_mean, (1e-5, 1e-4), what + " Mean")
    _check(torch, inv_std, want_inv, (1e-4, 1e-5), what + " InvStdDev")
    assert mean.dtype == inv_std.dtype == torch.float32


CONVS = [  # x shape, w shape, attributes, bias
    ((1, 3, 7, 7), (8, 3, 3, 3), {"pads": [1, 1, 1, 1]}, True),
    ((2, 16, 17, 15), (32, 8, 3, 3), {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1]}, True),
    ((2, 32, 9, 9), (32, 1, 3, 3), {"group": 32, "pads": [1, 1, 1, 1]}, True),
    ((1, 64, 16, 16), (128, 64, 1, 1), {}, True),
    ((3, 64, 16, 16), (128, 32, 1, 1), {"group": 2}, False),
    ((1, 5, 7, 7), (127, 5, 1, 1), {}, True),
    ((1, 8, 13, 13), (200, 8, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, True),
    ((2, 3, 1025), (64, 3, 5), {"pads": [2, 2], "strides": [2]}, True),
    ((1, 4, 11, 11), (48, 4, 5, 5), {"clip_min": 0.0, "clip_max": 6.0}, True),
    ((1, 4, 11, 11), (48, 4, 3, 3), {"clip_max": 0.5}, False),
]


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("x_shape,w_shape,attrs,with_bias", CONVS)
def test_conv_relu_matches_the_unfused_sequence(gpu, dtype, x_shape, w_shape, attrs,
                                                with_bias):
    torch, kernels = gpu
    g = _generator(torch)
    F = torch.nn.functional
    fan_in = math.prod(w_shape[1:])
    x = _rand(g, x_shape, dtype)
    w = _rand(g, w_shape, dtype, scale=1 / math.sqrt(fan_in))
    b = _rand(g, (w_shape[0],), dtype) if with_bias else None
    got = kernels["backplane::FusedConvRelu"](x, w, b, **attrs)
    sp = len(x_shape) - 2
    pads = attrs.get("pads", [0] * 2 * sp)
    torch_pad = [p for i in reversed(range(sp)) for p in (pads[i], pads[i + sp])]
    conv = (F.conv1d, F.conv2d)[sp - 1]
    want = conv(F.pad(x.double(), torch_pad), w.double(),
                b.double() if b is not None else None, stride=attrs.get("strides", 1),
                dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1))
    if "clip_min" in attrs or "clip_max" in attrs:
        want = want.clamp(attrs.get("clip_min"), attrs.get("clip_max"))
    else:
        want = want.relu()
    _check(torch, got, want, TOL[dtype], f"FusedConvRelu {x_shape} {w_shape} {attrs} {dtype}")


def _attention_reference(torch, q, k, v, mask, scale):
    s = q.double() @ k.double().transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.double()
    return torch.softmax(s, -1) @ v.double()


ATTENTIONS = [  # q, k, v shapes, mask shape or None, mask kind
    ((1, 1, 1, 64), (1, 1, 1, 64), (1, 1, 1, 64), None, None),
    ((2, 4, 127, 64), (2, 4, 127, 64), (2, 4, 127, 64), (127, 127), "additive"),
    ((1, 2, 7, 128), (1, 2, 1025, 128), (1, 2, 1025, 128), (1, 1, 1, 1025), "bool"),
    ((2, 3, 1025, 64), (2, 3, 7, 64), (2, 3, 7, 64), (), "additive"),
    ((2, 8, 65, 64), (2, 1, 130, 64), (2, 1, 130, 64), (2, 1, 65, 130), "bool"),
    ((1, 2, 33, 80), (1, 2, 47, 80), (1, 2, 47, 48), (33, 47), "additive"),
    ((3, 127, 32), (3, 127, 32), (3, 127, 32), None, None),
]


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("q_shape,k_shape,v_shape,mask_shape,kind", ATTENTIONS)
def test_attention_matches_the_unfused_sequence(gpu, dtype, q_shape, k_shape, v_shape,
                                                mask_shape, kind):
    torch, kernels = gpu
    g = _generator(torch)
    q, k, v = (_rand(g, s, dtype) for s in (q_shape, k_shape, v_shape))
    mask = None
    if kind == "additive":
        mask = _rand(g, mask_shape, "float32", scale=2.0)
    elif kind == "bool":
        mask = torch.rand(*mask_shape, generator=g, device="cuda") > 0.3
        mask[..., 0] = True  # every row keeps a key
    scale = 1 / math.sqrt(q_shape[-1])
    got = kernels["backplane::Attention"](q, k, v, mask, scale=scale)
    want = _attention_reference(torch, q, k, v, mask, scale)
    _check(torch, got, want, TOL_ATTENTION[dtype],
           f"Attention {q_shape} {k_shape} {v_shape} mask {mask_shape} {kind} {dtype}")


@needs_gpu
@pytest.mark.parametrize("dtype,d", [("float16", 64), ("float16", 128), ("float32", 64)])
def test_attention_rows_with_every_key_masked_are_nan_as_the_decomposition(gpu, dtype, d):
    torch, kernels = gpu
    g = _generator(torch)
    q, k, v = (_rand(g, (1, 2, 70, d), dtype) for _ in range(3))
    mask = torch.ones(70, 70, dtype=torch.bool, device="cuda")
    mask[3] = False
    mask[5, :66] = False  # only keys in the second tile of 64 remain
    got = kernels["backplane::Attention"](q, k, v, mask, scale=0.125)
    want = _attention_reference(torch, q, k, v, mask, 0.125)
    assert torch.isnan(got[:, :, 3]).all()
    _check(torch, got, want, TOL_ATTENTION[dtype], f"Attention masked rows {dtype}")


@needs_gpu
def test_kernels_run_on_torchs_current_stream(gpu):
    torch, kernels = gpu
    g = _generator(torch)
    a, b = _rand(g, (512, 512), "float16"), _rand(g, (512, 512), "float16", scale=512 ** -0.5)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = kernels["MatMul"](a, b)
        got = kernels["Softmax"](got, axis=-1)
    side.synchronize()
    want = torch.softmax(a.double() @ b.double(), -1)
    _check(torch, got, want, (1e-2, 1e-3), "MatMul then Softmax on a side stream")


@needs_gpu
def test_non_contiguous_inputs_are_made_dense_first(gpu):
    torch, kernels = gpu
    g = _generator(torch)
    a = _rand(g, (64, 96), "float32")
    b = _rand(g, (80, 64), "float32")
    got = kernels["MatMul"](a.t(), b.t())  # both transposed views
    _check(torch, got, a.double().t() @ b.double().t(), TOL["float32"], "MatMul of views")


@needs_gpu
def test_unsupported_calls_on_the_gpu_fall_back(gpu):
    torch, _ = gpu
    seen = []
    kernels = ck.custom_kernels(lambda key: lambda *a, **kw: seen.append(key) or "torch")
    x = torch.ones(4, 4, dtype=torch.float64, device="cuda")
    assert kernels["Softmax"](x, axis=-1) == "torch"
    assert "float64" in kernels["Softmax"].last_fallback and seen == ["Softmax"]
