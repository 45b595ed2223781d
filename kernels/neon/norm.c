/* Softmax, LayerNormalization and BatchNormalization (inference), f32 and f16 (computed in
 * f32). The host lays the data out as [outer, R, inner]: the axis to normalise is R. */
#include "bp_neon.h"

static float hmax(float32x4_t v) { return vmaxvq_f32(v); }

/* Softmax of rows (inner = 1): max, exp(x - max) summed, scaled by the reciprocal. */
static void softmax_rows(const float *x, float *y, int64_t rows, int64_t R) {
    for (int64_t r = 0; r < rows; r++, x += R, y += R) {
        float32x4_t m4 = vdupq_n_f32(-INFINITY);
        int64_t i = 0;
        for (; i + 4 <= R; i += 4) m4 = vmaxq_f32(m4, vld1q_f32(x + i));
        float m = hmax(m4);
        for (; i < R; i++) m = x[i] > m || x[i] != x[i] ? x[i] : m;
        float32x4_t mv = vdupq_n_f32(m), s4 = vdupq_n_f32(0.0f);
        for (i = 0; i + 4 <= R; i += 4) {
            float32x4_t e = bp_exp4(vsubq_f32(vld1q_f32(x + i), mv));
            vst1q_f32(y + i, e);
            s4 = vaddq_f32(s4, e);
        }
        float s = vaddvq_f32(s4);
        if (i < R) {
            float t[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
            memcpy(t, x + i, (size_t)(R - i) * 4);
            float32x4_t e = bp_exp4(vsubq_f32(vld1q_f32(t), mv));
            vst1q_f32(t, e);
            for (int64_t k = 0; k < R - i; k++) {
                y[i + k] = t[k];
                s += t[k];
            }
        }
        float32x4_t inv = vdupq_n_f32(1.0f / s);
        for (i = 0; i + 4 <= R; i += 4) vst1q_f32(y + i, vmulq_f32(vld1q_f32(y + i), inv));
        for (; i < R; i++) y[i] *= 1.0f / s;
    }
}

/* Softmax along the middle axis of [outer, R, inner]: 4 columns at a time. */
static void softmax_strided(const float *x, float *y, int64_t outer, int64_t R, int64_t inner) {
    for (int64_t o = 0; o < outer; o++) {
        const float *xo = x + o * R * inner;
        float *yo = y + o * R * inner;
        for (int64_t j = 0; j < inner; j += 4) {
            int64_t w = inner - j < 4 ? inner - j : 4;
            float t[4];
            float32x4_t m = vdupq_n_f32(-INFINITY), s = vdupq_n_f32(0.0f);
#define LOAD(r) (w == 4 ? vld1q_f32(xo + (r) * inner + j) : \
                 (memcpy(t, xo + (r) * inner + j, (size_t)w * 4), vld1q_f32(t)))
            for (int64_t r = 0; r < R; r++) m = vmaxq_f32(m, LOAD(r));
            for (int64_t r = 0; r < R; r++) {
                float32x4_t e = bp_exp4(vsubq_f32(LOAD(r), m));
                s = vaddq_f32(s, e);
                vst1q_f32(t, e);
                memcpy(yo + r * inner + j, t, (size_t)w * 4);
            }
#undef LOAD
            float32x4_t inv = vdivq_f32(vdupq_n_f32(1.0f), s);
            for (int64_t r = 0; r < R; r++) {
                float *p = yo + r * inner + j;
                memcpy(t, p, (size_t)w * 4);
                vst1q_f32(t, vmulq_f32(vld1q_f32(t), inv));
                memcpy(p, t, (size_t)w * 4);
            }
        }
    }
}

/* bufs x, y; iv dt, outer, R, inner. */
BP_KERNEL(softmax) {
    int dt = (int)iv[0];
    int64_t outer = iv[1], R = iv[2], inner = iv[3], n = outer * R * inner;
    if (dt != BP_F32 && dt != BP_F16) return BP_EUNSUPPORTED;
    if (n == 0) return BP_OK;
    float *tin, *tout;
    const float *x = bp_as_f32(bufs[0], dt, n, &tin);
    float *y = bp_out_f32(bufs[1], dt, n, &tout);
    if (!x || !y) {
        free(tin);
        free(tout);
        return BP_ENOMEM;
    }
    if (inner == 1) softmax_rows(x, y, outer, R);
    else softmax_strided(x, y, outer, R, inner);
    free(tin);
    bp_put_f32(bufs[1], dt, n, tout);
    return BP_OK;
}

/* Sum of n floats, four lanes of four accumulators. */
static float sum_f32(const float *x, int64_t n) {
    float32x4_t a = vdupq_n_f32(0), b = a, c = a, d = a;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a = vaddq_f32(a, vld1q_f32(x + i));
        b = vaddq_f32(b, vld1q_f32(x + i + 4));
        c = vaddq_f32(c, vld1q_f32(x + i + 8));
        d = vaddq_f32(d, vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= n; i += 4) a = vaddq_f32(a, vld1q_f32(x + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a, b), vaddq_f32(c, d)));
    for (; i < n; i++) s += x[i];
    return s;
}

/* LayerNormalization over the last R values of each row.
 * bufs x, scale, bias (or NULL), y, mean (or NULL), inv_std_dev (or NULL).
 * iv dt (x, y), pdt (scale, bias), rows, R. fv epsilon. Mean and InvStdDev are f32. */
BP_KERNEL(layer_norm) {
    int dt = (int)iv[0], pdt = (int)iv[1];
    int64_t rows = iv[2], R = iv[3], n = rows * R;
    float eps = (float)fv[0];
    if ((dt != BP_F32 && dt != BP_F16) || (pdt != BP_F32 && pdt != BP_F16)) return BP_EUNSUPPORTED;
    if (rows == 0) return BP_OK;
    float *tin, *tout, *ts, *tb;
    const float *x = bp_as_f32(bufs[0], dt, n, &tin);
    const float *scale = bp_as_f32(bufs[1], pdt, R, &ts);
    const float *bias = bufs[2] ? bp_as_f32(bufs[2], pdt, R, &tb) : (tb = NULL, NULL);
    float *y = bp_out_f32(bufs[3], dt, n, &tout);
    float *mean_out = (float *)bufs[4], *inv_out = (float *)bufs[5];
    if (!x || !scale || (bufs[2] && !bias) || !y) {
        free(tin); free(tout); free(ts); free(tb);
        return BP_ENOMEM;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * R;
        float *yr = y + r * R;
        float mean = R ? sum_f32(xr, R) / (float)R : 0.0f;
        float32x4_t mv = vdupq_n_f32(mean), v4 = vdupq_n_f32(0.0f);
        int64_t i = 0;
        for (; i + 4 <= R; i += 4) {
            float32x4_t d = vsubq_f32(vld1q_f32(xr + i), mv);
            v4 = vfmaq_f32(v4, d, d);
        }
        float var = vaddvq_f32(v4);
        for (; i < R; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var = R ? var / (float)R : 0.0f;
        float inv = 1.0f / sqrtf(var + eps);
        float32x4_t iv4 = vdupq_n_f32(inv);
        for (i = 0; i + 4 <= R; i += 4) {
            float32x4_t d = vmulq_f32(vsubq_f32(vld1q_f32(xr + i), mv), iv4);
            float32x4_t o = vmulq_f32(d, vld1q_f32(scale + i));
            if (bias) o = vaddq_f32(o, vld1q_f32(bias + i));
            vst1q_f32(yr + i, o);
        }
        for (; i < R; i++) yr[i] = (xr[i] - mean) * inv * scale[i] + (bias ? bias[i] : 0.0f);
        if (mean_out) mean_out[r] = mean;
        if (inv_out) inv_out[r] = inv;
    }
    free(tin); free(ts); free(tb);
    bp_put_f32(bufs[3], dt, n, tout);
    return BP_OK;
}

/* BatchNormalization (inference) on [N, C, inner]: y = (x - mean) / sqrt(var + eps) * scale
 * + bias per channel. bufs x, scale, bias, mean, var (f32), y. iv dt, N, C, inner. fv eps. */
BP_KERNEL(batch_norm) {
    int dt = (int)iv[0];
    int64_t N = iv[1], C = iv[2], inner = iv[3], n = N * C * inner;
    float eps = (float)fv[0];
    if (dt != BP_F32 && dt != BP_F16) return BP_EUNSUPPORTED;
    if (n == 0) return BP_OK;
    const float *scale = (const float *)bufs[1], *bias = (const float *)bufs[2];
    const float *mean = (const float *)bufs[3], *var = (const float *)bufs[4];
    float *tin, *tout;
    const float *x = bp_as_f32(bufs[0], dt, n, &tin);
    float *y = bp_out_f32(bufs[5], dt, n, &tout);
    if (!x || !y) {
        free(tin);
        free(tout);
        return BP_ENOMEM;
    }
    for (int64_t b = 0; b < N; b++) {
        for (int64_t ch = 0; ch < C; ch++) {
            float a = scale[ch] / sqrtf(var[ch] + eps);
            float32x4_t av = vdupq_n_f32(a), mv = vdupq_n_f32(mean[ch]), bv = vdupq_n_f32(bias[ch]);
            const float *xs = x + (b * C + ch) * inner;
            float *ys = y + (b * C + ch) * inner;
            int64_t i = 0;
            for (; i + 4 <= inner; i += 4)
                vst1q_f32(ys + i, vfmaq_f32(bv, vsubq_f32(vld1q_f32(xs + i), mv), av));
            for (; i < inner; i++) ys[i] = (xs[i] - mean[ch]) * a + bias[ch];
        }
    }
    free(tin);
    bp_put_f32(bufs[5], dt, n, tout);
    return BP_OK;
}
