/* f32 GEMM: packed panels and an 8x8 register tile (16 accumulators, FMLA by element),
 * with a fused epilogue (alpha, beta times a strided addend, Relu/Clip/Gelu). f16 operands
 * are widened while packing and the product accumulates in f32; the result is rounded
 * once when stored. Serves MatMul, Gemm, FusedMatMulBiasGelu and, through bp_gemm_run,
 * the convolutions. */
#include "bp_neon.h"

#define MR 8
#define NR 8
/* Packed B is kept under about 1 MiB, packed A under 256 KiB (per call, heap). */
#define B_PACK_FLOATS (256 * 1024)
#define A_PACK_FLOATS (64 * 1024)

/* Rows i0 .. i0+mc of A, all of K, as panels of MR rows: panel[k * MR + r]. */
static void pack_a(const bp_gemm_t *g, int64_t i0, int64_t mc, float *dst) {
    const int64_t K = g->K;
    for (int64_t p = 0; p < mc; p += MR) {
        float *d = dst + p * K;
        int64_t rows = mc - p < MR ? mc - p : MR;
        for (int64_t r = 0; r < MR; r++) {
            if (r >= rows) {
                for (int64_t k = 0; k < K; k++) d[k * MR + r] = 0.0f;
                continue;
            }
            int64_t base = (i0 + p + r) * g->a_rs;
            if (g->a_dt == BP_F32) {
                const float *s = (const float *)g->a + base;
                for (int64_t k = 0; k < K; k++) d[k * MR + r] = s[k * g->a_cs];
            } else {
                const bp_half *s = (const bp_half *)g->a + base;
                for (int64_t k = 0; k < K; k++) d[k * MR + r] = (float)s[k * g->a_cs];
            }
        }
    }
}

/* Columns j0 .. j0+nc of B, all of K, as panels of NR columns: panel[k * NR + c]. */
static void pack_b(const bp_gemm_t *g, int64_t j0, int64_t nc, float *dst) {
    const int64_t K = g->K;
    for (int64_t p = 0; p < nc; p += NR) {
        float *d = dst + p * K;
        int64_t cols = nc - p < NR ? nc - p : NR;
        if (cols == NR && g->b_cs == 1 && g->b_dt == BP_F32) {
            const float *s = (const float *)g->b + (j0 + p);
            for (int64_t k = 0; k < K; k++) {
                vst1q_f32(d + k * NR, vld1q_f32(s + k * g->b_rs));
                vst1q_f32(d + k * NR + 4, vld1q_f32(s + k * g->b_rs + 4));
            }
            continue;
        }
        if (cols == NR && g->b_cs == 1 && g->b_dt == BP_F16) {
            const bp_half *s = (const bp_half *)g->b + (j0 + p);
            for (int64_t k = 0; k < K; k++) {
                float16x8_t h = vld1q_f16((const float16_t *)(s + k * g->b_rs));
                vst1q_f32(d + k * NR, vcvt_f32_f16(vget_low_f16(h)));
                vst1q_f32(d + k * NR + 4, vcvt_high_f32_f16(h));
            }
            continue;
        }
        for (int64_t c = 0; c < NR; c++) {
            if (c >= cols) {
                for (int64_t k = 0; k < K; k++) d[k * NR + c] = 0.0f;
                continue;
            }
            int64_t col = (j0 + p + c) * g->b_cs;
            for (int64_t k = 0; k < K; k++)
                d[k * NR + c] = bp_get(g->b, g->b_dt, k * g->b_rs + col);
        }
    }
}

/* tile[8][8] = A panel (K x 8 rows) times B panel (K x 8 columns). */
static void kernel_8x8(int64_t K, const float *restrict a, const float *restrict b,
                       float *restrict tile) {
    float32x4_t c00 = vdupq_n_f32(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
                c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00,
                c61 = c00, c70 = c00, c71 = c00;
    for (int64_t k = 0; k < K; k++) {
        float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
        float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
        c00 = vfmaq_laneq_f32(c00, b0, a0, 0); c01 = vfmaq_laneq_f32(c01, b1, a0, 0);
        c10 = vfmaq_laneq_f32(c10, b0, a0, 1); c11 = vfmaq_laneq_f32(c11, b1, a0, 1);
        c20 = vfmaq_laneq_f32(c20, b0, a0, 2); c21 = vfmaq_laneq_f32(c21, b1, a0, 2);
        c30 = vfmaq_laneq_f32(c30, b0, a0, 3); c31 = vfmaq_laneq_f32(c31, b1, a0, 3);
        c40 = vfmaq_laneq_f32(c40, b0, a1, 0); c41 = vfmaq_laneq_f32(c41, b1, a1, 0);
        c50 = vfmaq_laneq_f32(c50, b0, a1, 1); c51 = vfmaq_laneq_f32(c51, b1, a1, 1);
        c60 = vfmaq_laneq_f32(c60, b0, a1, 2); c61 = vfmaq_laneq_f32(c61, b1, a1, 2);
        c70 = vfmaq_laneq_f32(c70, b0, a1, 3); c71 = vfmaq_laneq_f32(c71, b1, a1, 3);
        a += MR;
        b += NR;
    }
    vst1q_f32(tile + 0, c00); vst1q_f32(tile + 4, c01);
    vst1q_f32(tile + 8, c10); vst1q_f32(tile + 12, c11);
    vst1q_f32(tile + 16, c20); vst1q_f32(tile + 20, c21);
    vst1q_f32(tile + 24, c30); vst1q_f32(tile + 28, c31);
    vst1q_f32(tile + 32, c40); vst1q_f32(tile + 36, c41);
    vst1q_f32(tile + 40, c50); vst1q_f32(tile + 44, c51);
    vst1q_f32(tile + 48, c60); vst1q_f32(tile + 52, c61);
    vst1q_f32(tile + 56, c70); vst1q_f32(tile + 60, c71);
}

/* Y[i0.., j0..] = act(alpha tile + beta C) for the rows x cols inside the matrix. */
static void epilogue(const bp_gemm_t *g, const float *tile, int64_t i0, int64_t j0, int rows,
                     int cols) {
    for (int r = 0; r < rows; r++) {
        float32x4_t v0 = vld1q_f32(tile + r * NR), v1 = vld1q_f32(tile + r * NR + 4);
        if (g->alpha != 1.0f) {
            v0 = vmulq_n_f32(v0, g->alpha);
            v1 = vmulq_n_f32(v1, g->alpha);
        }
        if (g->c) {
            float t[NR] = {0};
            int64_t base = (i0 + r) * g->c_rs;
            for (int c = 0; c < cols; c++) t[c] = bp_get(g->c, g->c_dt, base + (j0 + c) * g->c_cs);
            v0 = vfmaq_n_f32(v0, vld1q_f32(t), g->beta);
            v1 = vfmaq_n_f32(v1, vld1q_f32(t + 4), g->beta);
        }
        v0 = bp_act4(v0, g->act, g->lo, g->hi);
        v1 = bp_act4(v1, g->act, g->lo, g->hi);
        int64_t at = (i0 + r) * g->y_rs + j0;
        if (g->y_dt == BP_F32) {
            float *y = (float *)g->y + at;
            if (cols == NR) {
                vst1q_f32(y, v0);
                vst1q_f32(y + 4, v1);
            } else {
                float t[NR];
                vst1q_f32(t, v0);
                vst1q_f32(t + 4, v1);
                memcpy(y, t, (size_t)cols * sizeof(float));
            }
        } else {
            bp_half *y = (bp_half *)g->y + at;
            float16x8_t h = vcvt_high_f16_f32(vcvt_f16_f32(v0), v1);
            if (cols == NR) {
                vst1q_f16((float16_t *)y, h);
            } else {
                bp_half t[NR];
                vst1q_f16((float16_t *)t, h);
                memcpy(y, t, (size_t)cols * sizeof(bp_half));
            }
        }
    }
}

int32_t bp_gemm_run(const bp_gemm_t *g) {
    const int64_t M = g->M, N = g->N, K = g->K;
    if (M <= 0 || N <= 0) return BP_OK;
    float tile[MR * NR];
    if (K <= 0) { /* an empty sum: only the addend and the epilogue */
        memset(tile, 0, sizeof(tile));
        for (int64_t i = 0; i < M; i += MR)
            for (int64_t j = 0; j < N; j += NR)
                epilogue(g, tile, i, j, (int)(M - i < MR ? M - i : MR),
                         (int)(N - j < NR ? N - j : NR));
        return BP_OK;
    }
    int64_t nc_max = (B_PACK_FLOATS / K) / NR * NR;
    if (nc_max < NR) nc_max = NR;
    int64_t n_round = (N + NR - 1) / NR * NR;
    if (nc_max > n_round) nc_max = n_round;
    int64_t mc_max = (A_PACK_FLOATS / K) / MR * MR;
    if (mc_max < MR) mc_max = MR;
    int64_t m_round = (M + MR - 1) / MR * MR;
    if (mc_max > m_round) mc_max = m_round;
    float *bp = (float *)aligned_alloc(64, (size_t)((nc_max * K * 4 + 63) / 64 * 64));
    float *ap = (float *)aligned_alloc(64, (size_t)((mc_max * K * 4 + 63) / 64 * 64));
    if (!bp || !ap) {
        free(bp);
        free(ap);
        return BP_ENOMEM;
    }
    for (int64_t jc = 0; jc < N; jc += nc_max) {
        int64_t nc = N - jc < nc_max ? N - jc : nc_max;
        pack_b(g, jc, nc, bp);
        for (int64_t ic = 0; ic < M; ic += mc_max) {
            int64_t mc = M - ic < mc_max ? M - ic : mc_max;
            pack_a(g, ic, mc, ap);
            for (int64_t jr = 0; jr < nc; jr += NR) {
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    kernel_8x8(K, ap + ir * K, bp + jr * K, tile);
                    epilogue(g, tile, ic + ir, jc + jr, (int)(mc - ir < MR ? mc - ir : MR),
                             (int)(nc - jr < NR ? nc - jr : NR));
                }
            }
        }
    }
    free(bp);
    free(ap);
    return BP_OK;
}

/* Batched Y = act(alpha op(A) op(B) + beta C).
 * bufs: A, B, C (or NULL), Y.
 * iv: M, N, K, a_rs, a_cs, b_rs, b_cs, c_rs, c_cs, dt, act, batch, a_bs, b_bs, c_bs.
 * fv: alpha, beta, lo, hi.
 * Strides in elements; a batch stride of 0 repeats that operand; Y is dense [batch, M, N]. */
BP_KERNEL(gemm) {
    bp_gemm_t g;
    int dt = (int)iv[9];
    size_t es = dt == BP_F16 ? 2 : 4;
    g.M = iv[0]; g.N = iv[1]; g.K = iv[2];
    g.a_rs = iv[3]; g.a_cs = iv[4]; g.b_rs = iv[5]; g.b_cs = iv[6];
    g.c_rs = iv[7]; g.c_cs = iv[8];
    g.a_dt = g.b_dt = g.c_dt = g.y_dt = dt;
    g.act = (int)iv[10];
    g.y_rs = g.N;
    g.alpha = (float)fv[0]; g.beta = (float)fv[1]; g.lo = (float)fv[2]; g.hi = (float)fv[3];
    if (dt != BP_F32 && dt != BP_F16) return BP_EUNSUPPORTED;
    int64_t batch = iv[11];
    for (int64_t b = 0; b < batch; b++) {
        g.a = (const char *)bufs[0] + (size_t)(b * iv[12]) * es;
        g.b = (const char *)bufs[1] + (size_t)(b * iv[13]) * es;
        g.c = bufs[2] ? (const char *)bufs[2] + (size_t)(b * iv[14]) * es : NULL;
        g.y = (char *)bufs[3] + (size_t)(b * g.M * g.N) * es;
        int32_t rc = bp_gemm_run(&g);
        if (rc) return rc;
    }
    return BP_OK;
}
