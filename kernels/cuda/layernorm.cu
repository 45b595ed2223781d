// LayerNormalization over the trailing axes, float32 statistics (ONNX stash_type 1).
//
// The tensor is seen as [rows, N], N the product of the normalised axes. Per row:
// mean, then the variance as the mean of squared deviations (two passes over the values,
// which keeps the precision that a one-pass sum of squares loses when the mean is large),
// y = (x - mean) * rsqrt(var + epsilon) * scale + bias. scale and bias are dense [N]
// (the host wrapper expands a broadcast one); bias may be null. mean and inv_std, when
// not null, receive the row statistics (ONNX's optional outputs Mean and InvStdDev).
//   layernorm_warp_*   N <= 1024: one warp per row, values kept in registers, 8 rows per
//                      block of 256 threads.
//   layernorm_block_*  any N: one block of 256 threads per row, three reads of the row.
#include "common.cuh"

#define LN_MAX_PER_LANE 32

template <class T>
__device__ __forceinline__ void layernorm_warp(const T* __restrict__ x, const T* __restrict__ scale,
                                               const T* __restrict__ bias, T* __restrict__ y,
                                               float* __restrict__ mean_out,
                                               float* __restrict__ inv_std_out, i64 rows, int N,
                                               float eps) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const T* xr = x + row * N;
    float v[LN_MAX_PER_LANE];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_MAX_PER_LANE; ++i) {
        const int j = lane + 32 * i;
        v[i] = j < N ? to_float(xr[j]) : 0.0f;
        sum += v[i];
    }
    const float mean = warp_sum(sum) / (float)N;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_MAX_PER_LANE; ++i) {
        const int j = lane + 32 * i;
        const float d = j < N ? v[i] - mean : 0.0f;
        sq += d * d;
    }
    const float inv_std = 1.0f / sqrtf(warp_sum(sq) / (float)N + eps);
    T* yr = y + row * N;
#pragma unroll
    for (int i = 0; i < LN_MAX_PER_LANE; ++i) {
        const int j = lane + 32 * i;
        if (j < N) {
            float out = (v[i] - mean) * inv_std * to_float(scale[j]);
            if (bias) out += to_float(bias[j]);
            yr[j] = from_float<T>(out);
        }
    }
    if (lane == 0) {
        if (mean_out) mean_out[row] = mean;
        if (inv_std_out) inv_std_out[row] = inv_std;
    }
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read from the previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);  // every warp reduces the partial sums: all threads get the total
}

template <class T>
__device__ __forceinline__ void layernorm_block(const T* __restrict__ x, const T* __restrict__ scale,
                                                const T* __restrict__ bias, T* __restrict__ y,
                                                float* __restrict__ mean_out,
                                                float* __restrict__ inv_std_out, int N, float eps) {
    __shared__ float scratch[32];
    const i64 row = blockIdx.x;
    const T* xr = x + row * N;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < N; j += blockDim.x) sum += to_float(xr[j]);
    const float mean = block_sum(sum, scratch) / (float)N;
    float sq = 0.0f;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        const float d = to_float(xr[j]) - mean;
        sq += d * d;
    }
    const float inv_std = 1.0f / sqrtf(block_sum(sq, scratch) / (float)N + eps);
    T* yr = y + row * N;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float out = (to_float(xr[j]) - mean) * inv_std * to_float(scale[j]);
        if (bias) out += to_float(bias[j]);
        yr[j] = from_float<T>(out);
    }
    if (threadIdx.x == 0) {
        if (mean_out) mean_out[row] = mean;
        if (inv_std_out) inv_std_out[row] = inv_std;
    }
}

extern "C" {

__global__ void __launch_bounds__(256)
layernorm_warp_f32(const float* x, const float* scale, const float* bias, float* y, float* mean,
                   float* inv_std, i64 rows, int N, float eps) {
    layernorm_warp<float>(x, scale, bias, y, mean, inv_std, rows, N, eps);
}
__global__ void __launch_bounds__(256)
layernorm_warp_f16(const half_t* x, const half_t* scale, const half_t* bias, half_t* y,
                   float* mean, float* inv_std, i64 rows, int N, float eps) {
    layernorm_warp<half_t>(x, scale, bias, y, mean, inv_std, rows, N, eps);
}
__global__ void __launch_bounds__(256)
layernorm_block_f32(const float* x, const float* scale, const float* bias, float* y, float* mean,
                    float* inv_std, int N, float eps) {
    layernorm_block<float>(x, scale, bias, y, mean, inv_std, N, eps);
}
__global__ void __launch_bounds__(256)
layernorm_block_f16(const half_t* x, const half_t* scale, const half_t* bias, half_t* y,
                    float* mean, float* inv_std, int N, float eps) {
    layernorm_block<half_t>(x, scale, bias, y, mean, inv_std, N, eps);
}

}  // extern "C"
