// MatMul (numpy semantics, batched) and FusedMatMulBiasGelu: C = act(A B + bias).
//
// Every kernel takes the same arguments:
//   A [batch, M, K], B [batch, K, N] dense row-major per matrix, C [batch, M, N] dense;
//   batch index z = blockIdx.z split as (z / nb1, z % nb1), the operands' matrices at
//   z0*sa0 + z1*sa1 and z0*sb0 + z1*sb1 elements (0 strides broadcast an operand; the
//   host wrapper collapses numpy batch broadcasting into these two levels);
//   bias: null, or element (z, m, n) at z0*sc0 + z1*sc1 + m*sbm + n*sbn (0 strides
//   broadcast it);
//   act: an ACT_* of common.cuh (lo, hi: ACT_CLIP's bounds). A 1x1 convolution of stride 1
//   without padding is this product too (conv.cu's host wrapper sends it here).
// Kernels:
//   matmul_tc_f16       tensor cores (mma.sync m16n8k16), 128x128 tiles; K and N multiples
//                       of 8, operands 16-byte aligned, batch strides multiples of 8.
//   matmul_simt128_*    SIMT, 128x128 tiles of 8x8 per thread, 256 threads: large outputs.
//   matmul_simt32_*     SIMT, 32x64 tiles of 4x4 per thread, 128 threads: small outputs
//                       (few 128x128 tiles would leave most multiprocessors idle).
// Grid: (ceil(N / BN), ceil(M / BM), batch).
#include "gemm.cuh"

template <class T>
struct RowMajor {  // A as a(m, k), and B as column(n) = &B[0][n], at(col, k) = B[k][n]
    const T* p;
    i64 ld;
    __device__ __forceinline__ float operator()(int r, int c) const {
        return to_float(p[(i64)r * ld + c]);
    }
    __device__ __forceinline__ const T* column(int n) const { return p + n; }
    __device__ __forceinline__ float at(const T* col, int k) const { return to_float(col[(i64)k * ld]); }
};

template <class T>
struct MatmulEpi {
    T* c;
    const T* bias;
    i64 sbm, sbn;
    int N, act;
    float lo, hi;
    __device__ __forceinline__ float finish(int m, int n, float v) const {
        if (bias) v += to_float(bias[m * sbm + n * sbn]);
        return activate(v, act, lo, hi);
    }
    __device__ __forceinline__ int column(int n) const { return n; }
    __device__ __forceinline__ void store(int n, int m, float v) {
        c[(i64)m * N + n] = from_float<T>(finish(m, n, v));
    }
    __device__ __forceinline__ void pair(int m, int n, float v0, float v1);
};

template <>
__device__ __forceinline__ void MatmulEpi<half_t>::pair(int m, int n, float v0, float v1) {
    // n is even and N a multiple of 8 on the tensor-core path: a 4-byte aligned store.
    *reinterpret_cast<u32*>(c + (i64)m * N + n) = pack_half2(finish(m, n, v0), finish(m, n + 1, v1));
}

#define MATMUL_ARGS                                                                        \
    const T *__restrict__ A, const T *__restrict__ B, T *__restrict__ C,                  \
        const T *__restrict__ bias, int M, int N, int K, int nb1, i64 sa0, i64 sa1, i64 sb0, \
        i64 sb1, i64 sc0, i64 sc1, i64 sbm, i64 sbn, int act, float lo, float hi

#define MATMUL_CALL A, B, C, bias, M, N, K, nb1, sa0, sa1, sb0, sb1, sc0, sc1, sbm, sbn, act, lo, hi

template <class T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void matmul_simt(MATMUL_ARGS) {
    const int z = blockIdx.z, z0 = z / nb1, z1 = z % nb1;
    RowMajor<T> a{A + z0 * sa0 + z1 * sa1, K};
    RowMajor<T> b{B + z0 * sb0 + z1 * sb1, N};
    MatmulEpi<T> epi{C + (i64)z * M * N, bias ? bias + z0 * sc0 + z1 * sc1 : bias, sbm, sbn, N,
                     act, lo, hi};
    simt_tile<BM, BN, BK, TM, TN>(a, b, epi, M, N, K, blockIdx.y * BM, blockIdx.x * BN);
}

template <class T>
__device__ __forceinline__ void matmul_tc(MATMUL_ARGS) {
    const int z = blockIdx.z, z0 = z / nb1, z1 = z % nb1;
    int bm, bn;
    grouped_block(bm, bn);
    MatmulEpi<T> epi{C + (i64)z * M * N, bias ? bias + z0 * sc0 + z1 * sc1 : bias, sbm, sbn, N,
                     act, lo, hi};
    tc_tile(A + z0 * sa0 + z1 * sa1, B + z0 * sb0 + z1 * sb1, epi, M, N, K, K, N, bm * TC_BM,
            bn * TC_BN);
}

extern "C" {

#define T float
__global__ void __launch_bounds__(256) matmul_simt128_f32(MATMUL_ARGS) {
    matmul_simt<T, 128, 128, 8, 8, 8>(MATMUL_CALL);
}
__global__ void __launch_bounds__(128) matmul_simt32_f32(MATMUL_ARGS) {
    matmul_simt<T, 32, 64, 16, 4, 4>(MATMUL_CALL);
}
#undef T

#define T half_t
__global__ void __launch_bounds__(256) matmul_simt128_f16(MATMUL_ARGS) {
    matmul_simt<T, 128, 128, 8, 8, 8>(MATMUL_CALL);
}
__global__ void __launch_bounds__(128) matmul_simt32_f16(MATMUL_ARGS) {
    matmul_simt<T, 32, 64, 16, 4, 4>(MATMUL_CALL);
}
__global__ void __launch_bounds__(TC_THREADS) matmul_tc_f16(MATMUL_ARGS) {
    matmul_tc<T>(MATMUL_CALL);
}
#undef T

}  // extern "C"
