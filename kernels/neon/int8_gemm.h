/* The int8 GEMM driver shared by the MatMulInteger variants (matmul_int8*.c).
 *
 * Every operand is made signed by flipping the top bit of uint8 values (A' = A - 128), so
 * one signed product serves all four type pairs; the zero points and that offset come
 * back through row and column sums:
 *   sum_k (A - za)(B - zb) = sum A'B' + db sum_k A' + da sum_k B' + K da db,
 * with da = oa - za, db = ob - zb (oa, ob: 128 for uint8 operands, else 0).
 *
 * The including file defines BP_I8_KSTEP (4: a panel holds 8 rows x 4 k per 32 bytes, as
 * SDOT reads them; 8: pairs of rows x 8 k per 16 bytes, as SMMLA reads them) and
 * bp_i8_tile(a_panel, b_panel, k_groups, tile[64]): the 8x8 int32 tile of sum A'B'. */
#ifndef BP_INT8_GEMM_H
#define BP_INT8_GEMM_H

#include "bp_neon.h"

static inline int64_t bp_i8_offset(int64_t r, int64_t k) {
#if BP_I8_KSTEP == 4
    return (k / 4) * 32 + r * 4 + k % 4;
#else
    return (k / 8) * 64 + (r / 2) * 16 + (r % 2) * 8 + k % 8;
#endif
}

/* Lines (rows of A or columns of B) l0.. of a matrix whose element (line, k) is
 * src[line * ls + k * ks], into panels of 8 lines x Kp, flipped to signed; sums[line] is
 * the sum of the signed values. */
static void bp_i8_pack(const uint8_t *src, int64_t lines, int64_t ls, int64_t ks, int64_t K,
                       int64_t Kp, int flip, int8_t *dst, int32_t *sums) {
    for (int64_t p = 0; p < lines; p += 8) {
        int8_t *d = dst + p * Kp;
        memset(d, 0, (size_t)(8 * Kp));
        for (int64_t r = 0; r < 8 && p + r < lines; r++) {
            const uint8_t *s = src + (p + r) * ls;
            int32_t sum = 0;
            for (int64_t k = 0; k < K; k++) {
                int8_t v = (int8_t)(s[k * ks] ^ (flip ? 0x80 : 0));
                d[bp_i8_offset(r, k)] = v;
                sum += v;
            }
            sums[p + r] = sum;
        }
    }
}

/* bufs A, B, a_zero_point (int32 [M] or NULL), b_zero_point (int32 [N] or NULL), Y (int32).
 * iv M, N, K, a_signed, b_signed, batch, a_bs, b_bs (element strides; 0 repeats). */
static int32_t bp_i8_matmul(void *const *bufs, const int64_t *iv) {
    const int64_t M = iv[0], N = iv[1], K = iv[2], batch = iv[5];
    const int a_signed = (int)iv[3], b_signed = (int)iv[4];
    const int32_t *za = (const int32_t *)bufs[2], *zb = (const int32_t *)bufs[3];
    if (M == 0 || N == 0) return BP_OK;
    const int64_t Kp = (K + BP_I8_KSTEP - 1) / BP_I8_KSTEP * BP_I8_KSTEP;
    const int64_t Mr = (M + 7) / 8 * 8, Nr = (N + 7) / 8 * 8;
    int8_t *ap = (int8_t *)malloc((size_t)(Mr * Kp + 64));
    int8_t *bq = (int8_t *)malloc((size_t)(Nr * Kp + 64));
    int32_t *rows = (int32_t *)malloc((size_t)Mr * 4), *cols = (int32_t *)malloc((size_t)Nr * 4);
    if (!ap || !bq || !rows || !cols) {
        free(ap); free(bq); free(rows); free(cols);
        return BP_ENOMEM;
    }
    const int32_t oa = a_signed ? 0 : 128, ob = b_signed ? 0 : 128;
    int32_t tile[64];
    for (int64_t b = 0; b < batch; b++) {
        const uint8_t *A = (const uint8_t *)bufs[0] + b * iv[6];
        const uint8_t *B = (const uint8_t *)bufs[1] + b * iv[7];
        int32_t *Y = (int32_t *)bufs[4] + b * M * N;
        bp_i8_pack(A, M, K, 1, K, Kp, !a_signed, ap, rows);
        bp_i8_pack(B, N, 1, N, K, Kp, !b_signed, bq, cols);
        for (int64_t j = 0; j < N; j += 8) {
            for (int64_t i = 0; i < M; i += 8) {
                bp_i8_tile(ap + i * Kp, bq + j * Kp, Kp / BP_I8_KSTEP, tile);
                for (int64_t r = 0; r < 8 && i + r < M; r++) {
                    int32_t da = oa - (za ? za[i + r] : 0);
                    for (int64_t c = 0; c < 8 && j + c < N; c++) {
                        int32_t db = ob - (zb ? zb[j + c] : 0);
                        Y[(i + r) * N + j + c] = tile[r * 8 + c] + db * rows[i + r] +
                                                 da * cols[j + c] + (int32_t)K * da * db;
                    }
                }
            }
        }
    }
    free(ap); free(bq); free(rows); free(cols);
    return BP_OK;
}

#endif /* BP_INT8_GEMM_H */
