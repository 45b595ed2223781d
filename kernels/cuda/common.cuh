// Shared device code of the cuda-tensorrt kernels (kernels/cuda/*.cu).
//
// The sources are compiled at run time by NVRTC with no CUDA headers on the include path
// (the nvidia-cuda-nvrtc wheel ships none), so everything a kernel needs beyond NVRTC's
// built-in declarations (intrinsics, math functions) is here: a 16-bit float storage
// type, conversions, and the few PTX instructions the tensor-core kernels use (cp.async,
// ldmatrix, mma.sync), each written as inline PTX for sm_80 and newer.
//
// Conventions of every kernel: tensors are dense (the host wrapper makes them so), indices
// that can pass 2^31 are 64-bit, arithmetic is in float32 whatever the storage type.
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// IEEE binary16 storage. A struct rather than a bare unsigned short, so that templates
// over the storage type (float or half_t) dispatch on it.
struct __align__(2) half_t {
    unsigned short bits;
};

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(half_t v) { return h2f(v.bits); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ half_t from_float<half_t>(float v) {
    half_t h;
    h.bits = f2h(v);
    return h;
}

// Two floats as the packed f16x2 register the tensor-core instructions take: lo in the
// low 16 bits (the lower column / k index), hi in the high ones.
__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fffffff); }

// ------------------------------------------------------------------ reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// A running softmax denominator: the maximum seen so far and the sum of exp(x - max).
// Merging keeps -inf maxima exact: a partial state whose max is -inf contributes nothing,
// so a row that starts with -inf entries (masked positions) is not poisoned by
// exp(-inf - -inf) = NaN. NaN inputs still give NaN sums, as in torch and ONNX.
struct MaxSum {
    float m;
    float s;
};

__device__ __forceinline__ MaxSum maxsum_merge(MaxSum a, MaxSum b) {
    float m = fmaxf(a.m, b.m);
    // A NaN anywhere makes the whole row NaN (torch's and ONNX's max propagates it).
    if (a.s != a.s || b.s != b.s) return MaxSum{m, quiet_nan()};
    if (m == neg_inf()) return MaxSum{m, 0.0f};
    float s = (a.m == neg_inf() ? 0.0f : a.s * expf(a.m - m)) +
              (b.m == neg_inf() ? 0.0f : b.s * expf(b.m - m));
    return MaxSum{m, s};
}

__device__ __forceinline__ MaxSum maxsum_add(MaxSum a, float x) {
    return maxsum_merge(a, MaxSum{x, x == neg_inf() ? 0.0f : (x != x ? quiet_nan() : 1.0f)});
}

__device__ __forceinline__ MaxSum warp_maxsum(MaxSum v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum w{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
        v = maxsum_merge(v, w);
    }
    return v;
}

// ------------------------------------------------------------------ activations

// Epilogue activations, numbered as the host wrappers pass them.
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_CLIP 2
#define ACT_GELU_ERF 3
#define ACT_GELU_TANH 4

// Out of line: inlined into every accumulator of a 128x128 tile's epilogue, erff and tanhf
// multiply the code (and compile time) of kernels that mostly run Relu or nothing.
__device__ __noinline__ float gelu(float x, int act) {
    if (act == ACT_GELU_ERF) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

__device__ __forceinline__ float activate(float x, int act, float lo, float hi) {
    switch (act) {
        case ACT_RELU:
            return x > 0.0f ? x : (x != x ? x : 0.0f);  // NaN stays NaN, as in torch.relu
        case ACT_CLIP:
            return x != x ? x : fminf(fmaxf(x, lo), hi);
        case ACT_GELU_ERF:
        case ACT_GELU_TANH:
            return gelu(x, act);
        default:
            return x;
    }
}

// ------------------------------------------------------------------ PTX for sm_80+
//
// The tensor-core kernels need sm_80 (cp.async, mma.sync m16n8k16). Compiled for an older
// GPU the instructions below become traps: the modules still build, and the host wrappers
// launch only the SIMT kernels there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define BACKPLANE_SM80 1
#else
#define BACKPLANE_SM80 0
#endif

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronously; src_bytes 0 fills the 16 bytes with zeros
// (how tiles are padded at the matrix edges without a branch).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if BACKPLANE_SM80
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes));
#else
    __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if BACKPLANE_SM80
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N> __device__ __forceinline__ void cp_async_wait() {
#if BACKPLANE_SM80
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 b16 matrices from shared memory; lanes 8i..8i+7 give the row addresses of
// matrix i, and register i receives matrix i in the mma fragment layout (lane l holds row
// l/4, columns 2*(l%4) and 2*(l%4)+1).
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* smem) {
#if BACKPLANE_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
#else
    r[0] = r[1] = r[2] = r[3] = 0;
    __trap();
#endif
}

// The same, each matrix transposed: lane l holds column l/4, rows 2*(l%4) and 2*(l%4)+1.
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* smem) {
#if BACKPLANE_SM80
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem)));
#else
    r[0] = r[1] = r[2] = r[3] = 0;
    __trap();
#endif
}

// D = A B + D for a 16x16 (row-major) f16 A, a 16x8 (column-major) f16 B and 16x8 f32
// accumulators. Fragment layouts, with g = lane/4 and t = lane%4:
//   a[0]: A[g][2t..2t+1]   a[1]: A[g+8][2t..]   a[2]: A[g][2t+8..]   a[3]: A[g+8][2t+8..]
//   b[0]: B[2t..2t+1][g]   b[1]: B[2t+8..2t+9][g]
//   d[0], d[1]: D[g][2t], D[g][2t+1]      d[2], d[3]: D[g+8][2t], D[g+8][2t+1]
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], u32 b0, u32 b1) {
#if BACKPLANE_SM80
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}
