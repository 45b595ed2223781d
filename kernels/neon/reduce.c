/* Reductions (ReduceSum, ReduceMean, ReduceMax, GlobalAveragePool) over the middle axis of
 * [outer, R, inner], and the window reductions of MaxPool and AveragePool. f32 and f16
 * (accumulated in f32). */
#include "bp_neon.h"

enum { RED_SUM = 0, RED_MEAN = 1, RED_MAX = 2 };

static float32x4_t combine(int op, float32x4_t a, float32x4_t b) {
    return op == RED_MAX ? vmaxq_f32(a, b) : vaddq_f32(a, b);
}

/* One row of R values. */
static float reduce_row(int op, const float *x, int64_t R) {
    float32x4_t init = vdupq_n_f32(op == RED_MAX ? -INFINITY : 0.0f);
    float32x4_t a = init, b = init, c = init, d = init;
    int64_t i = 0;
    for (; i + 16 <= R; i += 16) {
        a = combine(op, a, vld1q_f32(x + i));
        b = combine(op, b, vld1q_f32(x + i + 4));
        c = combine(op, c, vld1q_f32(x + i + 8));
        d = combine(op, d, vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= R; i += 4) a = combine(op, a, vld1q_f32(x + i));
    float32x4_t all = combine(op, combine(op, a, b), combine(op, c, d));
    if (op == RED_MAX) {
        float m = vmaxvq_f32(all);
        for (; i < R; i++) m = x[i] > m || x[i] != x[i] ? x[i] : m;
        return m;
    }
    float s = vaddvq_f32(all);
    for (; i < R; i++) s += x[i];
    return op == RED_MEAN ? s / (float)R : s;
}

/* bufs x, y; iv dt, op (0 sum, 1 mean, 2 max), outer, R, inner; y is [outer, inner]. */
BP_KERNEL(reduce) {
    int dt = (int)iv[0], op = (int)iv[1];
    int64_t outer = iv[2], R = iv[3], inner = iv[4];
    if (dt != BP_F32 && dt != BP_F16) return BP_EUNSUPPORTED;
    int64_t n = outer * R * inner, m = outer * inner;
    if (m == 0) return BP_OK;
    float *tin, *tout;
    const float *x = bp_as_f32(bufs[0], dt, n, &tin);
    float *y = bp_out_f32(bufs[1], dt, m, &tout);
    if (!x || !y) {
        free(tin);
        free(tout);
        return BP_ENOMEM;
    }
    if (inner == 1) {
        for (int64_t o = 0; o < outer; o++) y[o] = reduce_row(op, x + o * R, R);
    } else {
        float32x4_t init = vdupq_n_f32(op == RED_MAX ? -INFINITY : 0.0f);
        for (int64_t o = 0; o < outer; o++) {
            const float *xo = x + o * R * inner;
            float *yo = y + o * inner;
            for (int64_t j = 0; j < inner; j += 4) {
                int64_t w = inner - j < 4 ? inner - j : 4;
                float t[4] = {0, 0, 0, 0};
                float32x4_t acc = init;
                for (int64_t r = 0; r < R; r++) {
                    const float *p = xo + r * inner + j;
                    float32x4_t v;
                    if (w == 4) v = vld1q_f32(p);
                    else {
                        memcpy(t, p, (size_t)w * 4);
                        v = vld1q_f32(t);
                    }
                    acc = combine(op, acc, v);
                }
                if (op == RED_MEAN) acc = vdivq_f32(acc, vdupq_n_f32((float)R));
                vst1q_f32(t, acc);
                memcpy(yo + j, t, (size_t)w * 4);
            }
        }
    }
    free(tin);
    bp_put_f32(bufs[1], dt, m, tout);
    return BP_OK;
}

/* Pooling windows gathered by the host, one row of K values per output element.
 * bufs windows [rows, K], counts (f32 [P], average only; NULL: divide by K), y [rows],
 * indices (int64 [rows], max only, or NULL: the position of the first largest value).
 * iv dt, op (0 max, 1 average), rows, K, P (the count of row r is counts[r % P]). */
BP_KERNEL(pool_windows) {
    int dt = (int)iv[0], op = (int)iv[1];
    int64_t rows = iv[2], K = iv[3], P = iv[4];
    if (dt != BP_F32 && dt != BP_F16) return BP_EUNSUPPORTED;
    if (rows == 0) return BP_OK;
    const float *counts = (const float *)bufs[1];
    int64_t *idx = (int64_t *)bufs[3];
    float *tin, *tout;
    const float *x = bp_as_f32(bufs[0], dt, rows * K, &tin);
    float *y = bp_out_f32(bufs[2], dt, rows, &tout);
    if (!x || !y) {
        free(tin);
        free(tout);
        return BP_ENOMEM;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *w = x + r * K;
        if (op == 0) {
            float best = reduce_row(RED_MAX, w, K);
            y[r] = best;
            if (idx) {
                int64_t at = 0;
                while (at < K - 1 && !(w[at] == best || (best != best && w[at] != w[at]))) at++;
                idx[r] = at;
            }
        } else {
            float s = reduce_row(RED_SUM, w, K);
            y[r] = s / (counts ? counts[r % P] : (float)K);
        }
    }
    free(tin);
    bp_put_f32(bufs[2], dt, rows, tout);
    return BP_OK;
}
