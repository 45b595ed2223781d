/* Element-wise kernels, f32, f16 and bfloat16 (the last two computed in f32), base ARMv8-A
 * Advanced SIMD. */
#include "elementwise.h"

/* y = op(x): bufs x, y; iv op, dt, n; fv p0, p1 (alpha and beta, or the clip bounds). */
BP_KERNEL(unary) {
    int op = (int)iv[0], dt = (int)iv[1];
    int64_t n = iv[2];
    float p0 = (float)fv[0], p1 = (float)fv[1];
    if (dt == BP_F32)
        return bp_unary_row_f32(op, (const float *)bufs[0], (float *)bufs[1], n, p0, p1);
    if (dt == BP_F16)
        return bp_unary_row_f16_via_f32(op, (const bp_half *)bufs[0], (bp_half *)bufs[1], n,
                                        p0, p1);
    if (dt == BP_BF16)
        return bp_unary_row_bf16_via_f32(op, (const uint16_t *)bufs[0], (uint16_t *)bufs[1], n,
                                         p0, p1);
    return BP_EUNSUPPORTED;
}

/* y = a op b with broadcasting: bufs a, b, y; iv op, dt, rank, shape, a strides, b strides. */
BP_KERNEL(binary) {
    int dt = (int)iv[1];
    if (dt == BP_F32) BP_WALK(float, bp_binary_row_f32);
    else if (dt == BP_BF16) BP_WALK(uint16_t, bp_binary_row_bf16_via_f32);
    else if (dt == BP_F16) BP_WALK(bp_half, bp_binary_row_f16_via_f32);
    else return BP_EUNSUPPORTED;
    return BP_OK;
}
