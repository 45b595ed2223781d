/* Shared by every backplane OpenCL program. The host prepends a prelude of #defines
 * (element types, tile sizes, the activation) to this header and one .cl file. */
#define MAXR 8

#ifndef ACT
#define ACT 0
#endif

/* The epilogue of GEMM and convolution kernels: 0 none, 1 Relu, 2 Clip(lo, hi),
 * 3 Gelu (erf), 4 Gelu (tanh). Computed in float; NaN propagates through 1 and 2. */
inline float bp_act(float v, float lo, float hi) {
#if ACT == 1
    return v < 0.0f ? 0.0f : v;
#elif ACT == 2
    return v < lo ? lo : (v > hi ? hi : v);
#elif ACT == 3
    return 0.5f * v * (1.0f + erf(v * 0.70710678118654752f));
#elif ACT == 4
    return 0.5f * v * (1.0f + tanh(0.79788456080286536f * (v + 0.044715f * v * v * v)));
#else
    return v;
#endif
}

/* Offset of element `i` (row-major over dims L[1..rank]) through strides S[0..rank). */
inline long bp_offset(long i, int rank, __global const long* dims, __global const long* strides) {
    long off = 0;
    for (int d = rank - 1; d >= 0; --d) {
        long q = i % dims[d];
        i /= dims[d];
        off += q * strides[d];
    }
    return off;
}
