// Softmax over one axis (ONNX opset 13: a single axis), float32 arithmetic.
//
// The tensor is seen as [outer, L, inner]: softmax runs along L. Three kernels:
//   softmax_warp_*  inner == 1, L <= 1024: one warp per row, 8 rows per block of 256.
//   softmax_block_* inner == 1, any L: one block of 256 threads per row.
//   softmax_cols_*  inner > 1: one thread per (outer, inner) column, walking L; threads of
//                   a warp read neighbouring columns, so every access is coalesced.
// Each reads a row twice: once for the running (max, sum of exp) and once to write.
// A row that is entirely -inf gives NaN, and a NaN anywhere in a row gives a NaN row, as
// in torch.softmax and the ONNX reference (exp(x - max) / sum with max = -inf or NaN).
#include "common.cuh"

__device__ __forceinline__ float softmax_value(float x, MaxSum r) {
    if (r.m == neg_inf()) return quiet_nan();
    return expf(x - r.m) / r.s;
}

template <class T>
__device__ __forceinline__ void softmax_warp(const T* __restrict__ x, T* __restrict__ y,
                                             i64 rows, int L) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const T* xr = x + row * L;
    T* yr = y + row * L;
    MaxSum r{neg_inf(), 0.0f};
    for (int j = lane; j < L; j += 32) r = maxsum_add(r, to_float(xr[j]));
    r = warp_maxsum(r);
    for (int j = lane; j < L; j += 32) yr[j] = from_float<T>(softmax_value(to_float(xr[j]), r));
}

template <class T>
__device__ __forceinline__ void softmax_block(const T* __restrict__ x, T* __restrict__ y, int L) {
    __shared__ float sm[32], ss[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const T* xr = x + (i64)blockIdx.x * L;
    T* yr = y + (i64)blockIdx.x * L;
    MaxSum r{neg_inf(), 0.0f};
    for (int j = threadIdx.x; j < L; j += blockDim.x) r = maxsum_add(r, to_float(xr[j]));
    r = warp_maxsum(r);
    if (lane == 0) {
        sm[warp] = r.m;
        ss[warp] = r.s;
    }
    __syncthreads();
    if (warp == 0) {
        MaxSum w = lane < warps ? MaxSum{sm[lane], ss[lane]} : MaxSum{neg_inf(), 0.0f};
        w = warp_maxsum(w);
        if (lane == 0) {
            sm[0] = w.m;
            ss[0] = w.s;
        }
    }
    __syncthreads();
    r = MaxSum{sm[0], ss[0]};
    for (int j = threadIdx.x; j < L; j += blockDim.x)
        yr[j] = from_float<T>(softmax_value(to_float(xr[j]), r));
}

template <class T>
__device__ __forceinline__ void softmax_cols(const T* __restrict__ x, T* __restrict__ y,
                                             i64 outer, int L, i64 inner) {
    const i64 col = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= outer * inner) return;
    const i64 o = col / inner, i = col - o * inner;
    const T* xc = x + o * L * inner + i;
    T* yc = y + o * L * inner + i;
    MaxSum r{neg_inf(), 0.0f};
    for (int j = 0; j < L; ++j) r = maxsum_add(r, to_float(xc[(i64)j * inner]));
    for (int j = 0; j < L; ++j)
        yc[(i64)j * inner] = from_float<T>(softmax_value(to_float(xc[(i64)j * inner]), r));
}

extern "C" {

__global__ void __launch_bounds__(256) softmax_warp_f32(const float* x, float* y, i64 rows, int L) {
    softmax_warp<float>(x, y, rows, L);
}
__global__ void __launch_bounds__(256) softmax_warp_f16(const half_t* x, half_t* y, i64 rows, int L) {
    softmax_warp<half_t>(x, y, rows, L);
}
__global__ void __launch_bounds__(256) softmax_block_f32(const float* x, float* y, int L) {
    softmax_block<float>(x, y, L);
}
__global__ void __launch_bounds__(256) softmax_block_f16(const half_t* x, half_t* y, int L) {
    softmax_block<half_t>(x, y, L);
}
__global__ void __launch_bounds__(256) softmax_cols_f32(const float* x, float* y, i64 outer, int L,
                                                        i64 inner) {
    softmax_cols<float>(x, y, outer, L, inner);
}
__global__ void __launch_bounds__(256) softmax_cols_f16(const half_t* x, half_t* y, i64 outer, int L,
                                                        i64 inner) {
    softmax_cols<half_t>(x, y, outer, L, inner);
}

}  // extern "C"
