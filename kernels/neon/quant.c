/* QuantizeLinear and DequantizeLinear, per tensor or per axis, on [outer, C, inner] with
 * one scale (and zero point) per C. */
#include "bp_neon.h"

/* y = saturate(round_half_even(x / scale) + zero_point).
 * bufs x (f32 or f16), scale (f32 [C]), zero point (int32 [C] or NULL), y (u8 or s8).
 * iv xdt, ydt (0 uint8, 1 int8), outer, C, inner. */
BP_KERNEL(quantize) {
    int xdt = (int)iv[0], sgn = (int)iv[1];
    int64_t outer = iv[2], C = iv[3], inner = iv[4], n = outer * C * inner;
    if (xdt != BP_F32 && xdt != BP_F16) return BP_EUNSUPPORTED;
    const float *scale = (const float *)bufs[1];
    const int32_t *zp = (const int32_t *)bufs[2];
    if (n == 0) return BP_OK;
    float *tin;
    const float *x = bp_as_f32(bufs[0], xdt, n, &tin);
    if (!x) return BP_ENOMEM;
    uint8_t *yu = (uint8_t *)bufs[3];
    int8_t *ys = (int8_t *)bufs[3];
    const float lo = sgn ? -128.0f : 0.0f, hi = sgn ? 127.0f : 255.0f;
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t c = 0; c < C; c++) {
            float32x4_t s = vdupq_n_f32(scale[c]);
            float32x4_t z = vdupq_n_f32(zp ? (float)zp[c] : 0.0f);
            int64_t base = (o * C + c) * inner, i = 0;
            for (; i < inner; i += 8) {
                float t[8] = {0};
                int64_t w = inner - i < 8 ? inner - i : 8;
                memcpy(t, x + base + i, (size_t)w * 4);
                float32x4_t q0 = vaddq_f32(vrndnq_f32(vdivq_f32(vld1q_f32(t), s)), z);
                float32x4_t q1 = vaddq_f32(vrndnq_f32(vdivq_f32(vld1q_f32(t + 4), s)), z);
                q0 = vminq_f32(vmaxq_f32(q0, vdupq_n_f32(lo)), vdupq_n_f32(hi));
                q1 = vminq_f32(vmaxq_f32(q1, vdupq_n_f32(lo)), vdupq_n_f32(hi));
                int16x8_t h = vcombine_s16(vmovn_s32(vcvtq_s32_f32(q0)),
                                           vmovn_s32(vcvtq_s32_f32(q1)));
                uint8_t b[8];
                if (sgn) vst1_s8((int8_t *)b, vmovn_s16(h));
                else vst1_u8(b, vmovn_u16(vreinterpretq_u16_s16(h)));
                memcpy(sgn ? (void *)(ys + base + i) : (void *)(yu + base + i), b, (size_t)w);
            }
        }
    }
    free(tin);
    return BP_OK;
}

/* y = (x - zero_point) * scale.
 * bufs x (u8, s8 or s32), scale (f32 [C]), zero point (int32 [C] or NULL), y.
 * iv xdt (0 uint8, 1 int8, 2 int32), ydt (0 f32, 1 f16, 2 bf16), outer, C, inner. */
BP_KERNEL(dequantize) {
    int xdt = (int)iv[0], ydt = (int)iv[1];
    int64_t outer = iv[2], C = iv[3], inner = iv[4];
    const float *scale = (const float *)bufs[1];
    const int32_t *zp = (const int32_t *)bufs[2];
    float t[8];
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t c = 0; c < C; c++) {
            float32x4_t s = vdupq_n_f32(scale[c]);
            int32x4_t z = vdupq_n_s32(zp ? zp[c] : 0);
            int64_t base = (o * C + c) * inner;
            for (int64_t i = 0; i < inner; i += 8) {
                int64_t w = inner - i < 8 ? inner - i : 8;
                int32_t v[8] = {0};
                for (int64_t k = 0; k < w; k++) {
                    int64_t at = base + i + k;
                    v[k] = xdt == 0 ? ((const uint8_t *)bufs[0])[at]
                         : xdt == 1 ? ((const int8_t *)bufs[0])[at]
                                    : ((const int32_t *)bufs[0])[at];
                }
                float32x4_t f0 = vmulq_f32(vcvtq_f32_s32(vsubq_s32(vld1q_s32(v), z)), s);
                float32x4_t f1 = vmulq_f32(vcvtq_f32_s32(vsubq_s32(vld1q_s32(v + 4), z)), s);
                vst1q_f32(t, f0);
                vst1q_f32(t + 4, f1);
                if (ydt == BP_F32) memcpy((float *)bufs[3] + base + i, t, (size_t)w * 4);
                else if (ydt == BP_F16) bp_f32_to_f16(t, (bp_half *)bufs[3] + base + i, w);
                else
                    for (int64_t k = 0; k < w; k++)
                        ((uint16_t *)bufs[3])[base + i + k] = bp_f32_to_bf16(t[k]);
            }
        }
    }
    return BP_OK;
}
