/* Resize's interpolation along one axis (Resize is separable): y[o, j, i] =
 * sum_t w[j, t] x[o, idx[j, t], i]. The host computes the taps and weights of each output
 * position from the sizes alone (coordinate transformation, mode, antialiasing); the
 * weighted sums over the data are done here, 4 inner elements at a time. */
#include "bp_neon.h"

/* bufs x [outer, n_in, inner], idx (int64 [n_out, taps]), w (f32 [n_out, taps]),
 * y [outer, n_out, inner]. iv dt, outer, n_in, inner, n_out, taps. */
BP_KERNEL(resample) {
    int dt = (int)iv[0];
    int64_t outer = iv[1], n_in = iv[2], inner = iv[3], n_out = iv[4], taps = iv[5];
    const int64_t *idx = (const int64_t *)bufs[1];
    const float *w = (const float *)bufs[2];
    if (dt != BP_F32 && dt != BP_F16) return BP_EUNSUPPORTED;
    int64_t n = outer * n_out * inner;
    if (n == 0) return BP_OK;
    for (int64_t k = 0; k < n_out * taps; k++)
        if (idx[k] < 0 || idx[k] >= n_in) return BP_EINVAL;
    float *tin, *tout;
    const float *x = bp_as_f32(bufs[0], dt, outer * n_in * inner, &tin);
    float *y = bp_out_f32(bufs[3], dt, n, &tout);
    if (!x || !y) {
        free(tin);
        free(tout);
        return BP_ENOMEM;
    }
    for (int64_t o = 0; o < outer; o++) {
        const float *xo = x + o * n_in * inner;
        for (int64_t j = 0; j < n_out; j++) {
            float *yr = y + (o * n_out + j) * inner;
            const int64_t *ij = idx + j * taps;
            const float *wj = w + j * taps;
            int64_t i = 0;
            for (; i + 4 <= inner; i += 4) {
                float32x4_t acc = vdupq_n_f32(0.0f);
                for (int64_t t = 0; t < taps; t++)
                    acc = vfmaq_n_f32(acc, vld1q_f32(xo + ij[t] * inner + i), wj[t]);
                vst1q_f32(yr + i, acc);
            }
            for (; i < inner; i++) {
                float acc = 0.0f;
                for (int64_t t = 0; t < taps; t++) acc = fmaf(wj[t], xo[ij[t] * inner + i], acc);
                yr[i] = acc;
            }
        }
    }
    free(tin);
    bp_put_f32(bufs[3], dt, n, tout);
    return BP_OK;
}
