/* MatMulInteger with the ARMv8.2-A dot-product instructions (asimddp): SDOT by element,
 * an 8x8 int32 tile in 16 registers. */
#define BP_I8_KSTEP 4
#include "bp_neon.h"
static void bp_i8_tile(const int8_t *a, const int8_t *b, int64_t groups, int32_t *tile);
#include "int8_gemm.h"

static void bp_i8_tile(const int8_t *a, const int8_t *b, int64_t groups, int32_t *tile) {
    int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
              c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00,
              c61 = c00, c70 = c00, c71 = c00;
    for (int64_t g = 0; g < groups; g++, a += 32, b += 32) {
        int8x16_t a0 = vld1q_s8(a), a1 = vld1q_s8(a + 16);
        int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16);
        c00 = vdotq_laneq_s32(c00, b0, a0, 0); c01 = vdotq_laneq_s32(c01, b1, a0, 0);
        c10 = vdotq_laneq_s32(c10, b0, a0, 1); c11 = vdotq_laneq_s32(c11, b1, a0, 1);
        c20 = vdotq_laneq_s32(c20, b0, a0, 2); c21 = vdotq_laneq_s32(c21, b1, a0, 2);
        c30 = vdotq_laneq_s32(c30, b0, a0, 3); c31 = vdotq_laneq_s32(c31, b1, a0, 3);
        c40 = vdotq_laneq_s32(c40, b0, a1, 0); c41 = vdotq_laneq_s32(c41, b1, a1, 0);
        c50 = vdotq_laneq_s32(c50, b0, a1, 1); c51 = vdotq_laneq_s32(c51, b1, a1, 1);
        c60 = vdotq_laneq_s32(c60, b0, a1, 2); c61 = vdotq_laneq_s32(c61, b1, a1, 2);
        c70 = vdotq_laneq_s32(c70, b0, a1, 3); c71 = vdotq_laneq_s32(c71, b1, a1, 3);
    }
    vst1q_s32(tile + 0, c00); vst1q_s32(tile + 4, c01);
    vst1q_s32(tile + 8, c10); vst1q_s32(tile + 12, c11);
    vst1q_s32(tile + 16, c20); vst1q_s32(tile + 20, c21);
    vst1q_s32(tile + 24, c30); vst1q_s32(tile + 28, c31);
    vst1q_s32(tile + 32, c40); vst1q_s32(tile + 36, c41);
    vst1q_s32(tile + 40, c50); vst1q_s32(tile + 44, c51);
    vst1q_s32(tile + 48, c60); vst1q_s32(tile + 52, c61);
    vst1q_s32(tile + 56, c70); vst1q_s32(tile + 60, c71);
}

BP_KERNEL(matmul_int8) { (void)fv; return bp_i8_matmul(bufs, iv); }
