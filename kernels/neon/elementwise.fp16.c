/* Element-wise kernels with ARMv8.2-A half-precision arithmetic (asimdhp). Only the ops
 * whose half-precision result is the f32 result rounded once run in half precision
 * (+ - * /, sqrt, abs, neg, max/min: f32 carries more than 2p + 2 bits of an f16's p), so
 * this variant gives the base variant's bits; the others go through f32 as there. */
#include "elementwise.h"

#define BP_MAP16(EXPR)                                                        \
    do {                                                                      \
        int64_t i_ = 0;                                                       \
        for (; i_ + 8 <= n; i_ += 8) {                                        \
            float16x8_t v = vld1q_f16((const float16_t *)(x + i_));           \
            vst1q_f16((float16_t *)(y + i_), (EXPR));                         \
        }                                                                     \
        if (i_ < n) {                                                         \
            bp_half t_[8] = {0};                                              \
            memcpy(t_, x + i_, (size_t)(n - i_) * sizeof(bp_half));           \
            float16x8_t v = vld1q_f16((const float16_t *)t_);                 \
            vst1q_f16((float16_t *)t_, (EXPR));                               \
            memcpy(y + i_, t_, (size_t)(n - i_) * sizeof(bp_half));           \
        }                                                                     \
    } while (0)

BP_KERNEL(unary) {
    int op = (int)iv[0], dt = (int)iv[1];
    int64_t n = iv[2];
    float p0 = (float)fv[0], p1 = (float)fv[1];
    if (dt == BP_F32)
        return bp_unary_row_f32(op, (const float *)bufs[0], (float *)bufs[1], n, p0, p1);
    if (dt == BP_BF16)
        return bp_unary_row_bf16_via_f32(op, (const uint16_t *)bufs[0], (uint16_t *)bufs[1], n,
                                         p0, p1);
    if (dt != BP_F16) return BP_EUNSUPPORTED;
    const bp_half *x = (const bp_half *)bufs[0];
    bp_half *y = (bp_half *)bufs[1];
    switch (op) {
    case BP_RELU: BP_MAP16(vmaxq_f16(v, vdupq_n_f16(0))); return BP_OK;
    case BP_ABS: BP_MAP16(vabsq_f16(v)); return BP_OK;
    case BP_NEG: BP_MAP16(vnegq_f16(v)); return BP_OK;
    case BP_SQRT: BP_MAP16(vsqrtq_f16(v)); return BP_OK;
    case BP_CLIP:
        /* the bounds are f16 values (ONNX gives them in the input's type); one that is not
         * goes through f32 */
        if ((float)(bp_half)p0 == p0 && (float)(bp_half)p1 == p1) {
            float16x8_t lo = vdupq_n_f16((bp_half)p0), hi = vdupq_n_f16((bp_half)p1);
            BP_MAP16(vminq_f16(vmaxq_f16(v, lo), hi));
            return BP_OK;
        }
        break;
    default: break;
    }
    return bp_unary_row_f16_via_f32(op, x, y, n, p0, p1);
}

#define BP_ROW16(OPV)                                                               \
    do {                                                                            \
        int64_t i_ = 0;                                                             \
        const float16_t *a16_ = (const float16_t *)a, *b16_ = (const float16_t *)b; \
        float16_t *y16_ = (float16_t *)y;                                           \
        if (sa && sb) {                                                             \
            for (; i_ + 8 <= n; i_ += 8)                                            \
                vst1q_f16(y16_ + i_, OPV(vld1q_f16(a16_ + i_), vld1q_f16(b16_ + i_))); \
        } else if (sa) {                                                            \
            float16x8_t vb_ = vdupq_n_f16(b16_[0]);                                 \
            for (; i_ + 8 <= n; i_ += 8)                                            \
                vst1q_f16(y16_ + i_, OPV(vld1q_f16(a16_ + i_), vb_));               \
        } else if (sb) {                                                            \
            float16x8_t va_ = vdupq_n_f16(a16_[0]);                                 \
            for (; i_ + 8 <= n; i_ += 8)                                            \
                vst1q_f16(y16_ + i_, OPV(va_, vld1q_f16(b16_ + i_)));               \
        }                                                                           \
        for (; i_ < n; i_ += 8) {                                                   \
            float16_t ta_[8], tb_[8], ty_[8];                                       \
            int64_t m_ = n - i_ < 8 ? n - i_ : 8;                                   \
            for (int64_t k_ = 0; k_ < 8; k_++) {                                    \
                ta_[k_] = k_ < m_ ? a16_[sa ? i_ + k_ : 0] : (float16_t)1;          \
                tb_[k_] = k_ < m_ ? b16_[sb ? i_ + k_ : 0] : (float16_t)1;          \
            }                                                                       \
            vst1q_f16(ty_, OPV(vld1q_f16(ta_), vld1q_f16(tb_)));                    \
            memcpy(y16_ + i_, ty_, (size_t)m_ * sizeof(float16_t));                 \
        }                                                                           \
    } while (0)

static void bp_binary_row_f16_native(int op, const bp_half *a, int sa, const bp_half *b, int sb,
                                     bp_half *y, int64_t n) {
    switch (op) {
    case BP_ADD: BP_ROW16(vaddq_f16); break;
    case BP_SUB: BP_ROW16(vsubq_f16); break;
    case BP_MUL: BP_ROW16(vmulq_f16); break;
    case BP_DIV: BP_ROW16(vdivq_f16); break;
    default: bp_binary_row_f16_via_f32(op, a, sa, b, sb, y, n); break;
    }
}

BP_KERNEL(binary) {
    int dt = (int)iv[1];
    if (dt == BP_F32) BP_WALK(float, bp_binary_row_f32);
    else if (dt == BP_BF16) BP_WALK(uint16_t, bp_binary_row_bf16_via_f32);
    else if (dt == BP_F16) BP_WALK(bp_half, bp_binary_row_f16_native);
    else return BP_EUNSUPPORTED;
    return BP_OK;
}
