/* Reductions, Softmax, LayerNormalization and BatchNormalization.
 * reduce prelude: T (input), TA (accumulator), TO (output), MODE 0 sum, 1 mean, 2 max, INIT,
 * KAHAN (compensated float sums). */

#ifdef MODE
/* One accumulation step of the reduction: max (NaN wins), compensated (Kahan) float sum
 * (1024 terms near zero stay in tolerance; inf and NaN pass through), or a plain sum. */
#if MODE == 2
#define BP_STEP(v) (acc = ((v) > acc || (v) != (v)) ? (v) : acc)
#elif KAHAN
#define BP_STEP(v) do { TA yk = (v) - comp; TA tk = acc + yk; \
        comp = isfinite(tk) ? (tk - acc) - yk : 0.0f; acc = tk; } while (0)
#else
#define BP_STEP(v) (acc += (v))
#endif

/* L = [kept rank, kept dims[MAXR], kept strides[MAXR], red rank, red dims[MAXR],
 *      red strides[MAXR]] */
__kernel void reduce(__global TO* y, __global const T* x, __global const long* L,
                     long nout, long nred) {
    long i = get_global_id(0);
    if (i >= nout) return;
    long base = bp_offset(i, (int)L[0], L + 1, L + 1 + MAXR);
    int rr = (int)L[1 + 2 * MAXR];
    __global const long* rdims = L + 2 + 2 * MAXR;
    __global const long* rstr = L + 2 + 3 * MAXR;
    TA acc = INIT;
#if KAHAN
    TA comp = 0;
#endif
    if (rr == 1) {
        long s = rstr[0];
        for (long j = 0; j < nred; ++j) {
            TA v = (TA)x[base + j * s];
            BP_STEP(v);
        }
    } else {
        for (long j = 0; j < nred; ++j) {
            TA v = (TA)x[base + bp_offset(j, rr, rdims, rstr)];
            BP_STEP(v);
        }
    }
#if MODE == 1
    acc = acc / (TA)nred;
#endif
    y[i] = (TO)acc;
}
#endif

/* Softmax over the middle axis of [outer, axis_n, inner]; one work-item per (outer, inner). */
__kernel void softmax(__global float* y, __global const float* x, long rows, long axis_n,
                      long inner) {
    long i = get_global_id(0);
    if (i >= rows) return;
    long base = (i / inner) * axis_n * inner + i % inner;
    float m = -INFINITY;
    for (long j = 0; j < axis_n; ++j) m = fmax(m, x[base + j * inner]);
    float s = 0.0f;
    for (long j = 0; j < axis_n; ++j) {
        float e = exp(x[base + j * inner] - m);
        y[base + j * inner] = e;
        s += e;
    }
    for (long j = 0; j < axis_n; ++j) y[base + j * inner] = y[base + j * inner] / s;
}

/* LayerNormalization of [rows, n] rows; two passes (mean, then variance) for accuracy. */
__kernel void layernorm(__global float* y, __global float* mean_out, __global float* rstd_out,
                        __global const float* x, __global const float* scale,
                        __global const float* bias, long rows, long n, float eps,
                        int has_bias, int want_stats) {
    long r = get_global_id(0);
    if (r >= rows) return;
    __global const float* xr = x + r * n;
    float s = 0.0f;
    for (long j = 0; j < n; ++j) s += xr[j];
    float mean = s / (float)n;
    float v = 0.0f;
    for (long j = 0; j < n; ++j) {
        float d = xr[j] - mean;
        v += d * d;
    }
    float rstd = 1.0f / sqrt(v / (float)n + eps);
    for (long j = 0; j < n; ++j) {
        float o = (xr[j] - mean) * rstd * scale[j];
        y[r * n + j] = has_bias ? o + bias[j] : o;
    }
    if (want_stats) {
        mean_out[r] = mean;
        rstd_out[r] = rstd;
    }
}

/* BatchNormalization (inference) of [N, C, inner]. */
__kernel void batchnorm(__global float* y, __global const float* x, __global const float* scale,
                        __global const float* bias, __global const float* mean,
                        __global const float* var, long n, long channels, long inner,
                        float eps) {
    long i = get_global_id(0);
    if (i >= n) return;
    long c = (i / inner) % channels;
    y[i] = (x[i] - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c];
}
