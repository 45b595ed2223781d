/* GEMM for CPU devices (PoCL): no local memory and no barriers, which a CPU device pays
 * for by spilling each work-item's registers across every barrier. Each work-item computes
 * an RM x (2*VW) block of Y in 2*RM vector registers, reading A through its strides and B
 * from a packed copy ([batch][N/(2*VW)][K][2*VW], zero-padded), so that the inner loop is two
 * aligned vector loads, RM broadcasts and 2*RM fused multiply-adds per k.
 * Prelude: RM (rows per work-item), KB (k block, 0: none), VW (vector width), VT (floatVW), VLOAD (vloadVW), VSTORE (vstoreVW), ACT,
 * HAS_C. Y = act(alpha * A @ B + beta * C), dense [batch, M, N]. */

#define NB (2 * VW)

__kernel void pack_b(__global float* Bp, __global const float* B, __global const long* boff,
                     int N, int K, long sbk, long sbn, int nblk, long per_batch) {
    long i = get_global_id(0);
    int bat = get_global_id(1);
    if (i >= per_batch) return;
    int j = (int)(i % NB);
    long t = i / NB;
    int k = (int)(t % K);
    int n = (int)(t / K) * NB + j;
    Bp[bat * per_batch + i] = n < N ? B[boff[3 * bat + 1] + k * sbk + n * sbn] : 0.0f;
}

/* ROWS(X) expands X(0) ... X(RM-1) (the host defines it): every row's accumulators are
 * named variables, so the compiler keeps them in registers (a private array indexed in a
 * loop is not reliably unrolled by every OpenCL compiler). */
#define BP_DECL(r) \
    VT c0_##r = (VT)(0.0f), c1_##r = (VT)(0.0f); \
    __global const float* a_##r = Ab + (long)min(m0 + r, M - 1) * sam;
#define BP_STEP(r) { \
    VT a = (VT)(a_##r[ak]); \
    c0_##r = a * b0 + c0_##r; \
    c1_##r = a * b1 + c1_##r; }
/* The epilogue on whole vectors where the block is complete and C is a row, a column
 * (scn == 0) or absent: activations then run as vector code, not per-element calls. */
#define BP_STORE(r) if (m0 + r < M) { \
    int m = m0 + r; \
    __global float* yrow = Yb + (long)m * N; \
    if (n0 + NB <= N && (!HAS_C || scn <= 1)) { \
        VT v0 = alpha * c0_##r, v1 = alpha * c1_##r; \
        if (HAS_C) { \
            __global const float* crow = C + boff[3 * bat + 2] + m * scm; \
            if (scn == 1) { \
                v0 += beta * VLOAD(0, crow + n0); \
                v1 += beta * VLOAD(0, crow + n0 + VW); \
            } else { \
                v0 += (VT)(beta * crow[0]); \
                v1 += (VT)(beta * crow[0]); \
            } \
        } \
        VSTORE(bp_actv(v0, lo, hi), 0, yrow + n0); \
        VSTORE(bp_actv(v1, lo, hi), 0, yrow + n0 + VW); \
    } else { \
        float row[NB]; \
        VSTORE(c0_##r, 0, row); \
        VSTORE(c1_##r, 0, row + VW); \
        for (int j = 0; j < NB && n0 + j < N; ++j) { \
            int n = n0 + j; \
            float v = alpha * row[j]; \
            if (HAS_C) v += beta * C[boff[3 * bat + 2] + m * scm + n * scn]; \
            yrow[n] = bp_act(v, lo, hi); \
        } \
    } }

inline VT bp_actv(VT v, float lo, float hi) {
#if ACT == 1
    return select(v, (VT)(0.0f), v < (VT)(0.0f));
#elif ACT == 2
    return select(select(v, (VT)(lo), v < (VT)(lo)), (VT)(hi), v > (VT)(hi));
#elif ACT == 3
    return 0.5f * v * (1.0f + erf(v * 0.70710678118654752f));
#elif ACT == 4
    return 0.5f * v * (1.0f + tanh(0.79788456080286536f * (v + 0.044715f * v * v * v)));
#else
    return v;
#endif
}

__kernel void gemm_cpu(__global float* Y, __global const float* A, __global const float* Bp,
                       __global const float* C, __global const long* boff, int M, int N,
                       int K, long sam, long sak, long scm, long scn, float alpha, float beta,
                       float lo, float hi, int nblk) {
    const int m0 = get_global_id(0) * RM;
    const int nb = get_global_id(1);
    const int bat = get_global_id(2);
    __global const float* Ab = A + boff[3 * bat];
    __global const float* bp = Bp + ((long)bat * nblk + nb) * (long)K * NB;
    ROWS(BP_DECL)
#if KB
    /* k blocks separated by barriers: a CPU device runs every work-item of the group
     * through one block before the next, so the block of packed B stays in L1. */
    for (int k0 = 0; k0 < K; k0 += KB) {
        int k1 = min(k0 + KB, K);
        for (int k = k0; k < k1; ++k) {
#else
    {
        for (int k = 0; k < K; ++k) {
#endif
            VT b0 = VLOAD(0, bp + (long)k * NB);
            VT b1 = VLOAD(0, bp + (long)k * NB + VW);
            long ak = (long)k * sak;
            ROWS(BP_STEP)
        }
#if KB
        barrier(CLK_LOCAL_MEM_FENCE);
#endif
    }
    __global float* Yb = Y + (long)bat * M * N;
    const int n0 = nb * NB;
    ROWS(BP_STORE)
}
