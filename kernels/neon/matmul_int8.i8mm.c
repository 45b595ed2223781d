/* MatMulInteger with the ARMv8.6-A int8 matrix multiply (i8mm): SMMLA multiplies 2x8 by
 * 8x2 blocks into 2x2 int32; sixteen of them make the 8x8 tile. */
#define BP_I8_KSTEP 8
#include "bp_neon.h"
static void bp_i8_tile(const int8_t *a, const int8_t *b, int64_t groups, int32_t *tile);
#include "int8_gemm.h"

static void bp_i8_tile(const int8_t *a, const int8_t *b, int64_t groups, int32_t *tile) {
    int32x4_t acc[4][4];
    for (int p = 0; p < 4; p++)
        for (int q = 0; q < 4; q++) acc[p][q] = vdupq_n_s32(0);
    for (int64_t g = 0; g < groups; g++, a += 64, b += 64) {
        int8x16_t av[4] = {vld1q_s8(a), vld1q_s8(a + 16), vld1q_s8(a + 32), vld1q_s8(a + 48)};
        int8x16_t bv[4] = {vld1q_s8(b), vld1q_s8(b + 16), vld1q_s8(b + 32), vld1q_s8(b + 48)};
        for (int p = 0; p < 4; p++)
            for (int q = 0; q < 4; q++) acc[p][q] = vmmlaq_s32(acc[p][q], av[p], bv[q]);
    }
    for (int p = 0; p < 4; p++) {
        for (int q = 0; q < 4; q++) {
            int32_t v[4];
            vst1q_s32(v, acc[p][q]);
            tile[(2 * p) * 8 + 2 * q] = v[0];
            tile[(2 * p) * 8 + 2 * q + 1] = v[1];
            tile[(2 * p + 1) * 8 + 2 * q] = v[2];
            tile[(2 * p + 1) * 8 + 2 * q + 1] = v[3];
        }
    }
}

BP_KERNEL(matmul_int8) { (void)fv; return bp_i8_matmul(bufs, iv); }
