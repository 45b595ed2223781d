/* MatMulInteger, base ARMv8-A: signed 8-bit products widened to 16 bits (SMULL) and
 * pairwise accumulated into 32 bits (SADALP). */
#define BP_I8_KSTEP 4
#include "bp_neon.h"
static void bp_i8_tile(const int8_t *a, const int8_t *b, int64_t groups, int32_t *tile);
#include "int8_gemm.h"

static void bp_i8_tile(const int8_t *a, const int8_t *b, int64_t groups, int32_t *tile) {
    int32x4_t acc[8][4];
    for (int r = 0; r < 8; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_s32(0);
    for (int64_t g = 0; g < groups; g++, a += 32, b += 32) {
        int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16);
        for (int r = 0; r < 8; r++) {
            int32_t word;
            memcpy(&word, a + 4 * r, 4);
            int8x16_t rep = vreinterpretq_s8_s32(vdupq_n_s32(word));
            acc[r][0] = vpadalq_s16(acc[r][0], vmull_s8(vget_low_s8(b0), vget_low_s8(rep)));
            acc[r][1] = vpadalq_s16(acc[r][1], vmull_high_s8(b0, rep));
            acc[r][2] = vpadalq_s16(acc[r][2], vmull_s8(vget_low_s8(b1), vget_low_s8(rep)));
            acc[r][3] = vpadalq_s16(acc[r][3], vmull_high_s8(b1, rep));
        }
    }
    for (int r = 0; r < 8; r++) {
        vst1q_s32(tile + r * 8, vpaddq_s32(acc[r][0], acc[r][1]));
        vst1q_s32(tile + r * 8 + 4, vpaddq_s32(acc[r][2], acc[r][3]));
    }
}

BP_KERNEL(matmul_int8) { (void)fv; return bp_i8_matmul(bufs, iv); }
