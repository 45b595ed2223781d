/* Convolution helpers, float32. Spatial dimensions are always three (D, H, W): 1-D and 2-D
 * convolutions arrive with leading spatial dimensions of size 1.
 * P (int32): N G Cg ID IH IW OD OH OW KD KH KW SD SH SW PD PH PW DD DH DW Mg */

/* im2col: one work-item per (output position, n*G+g), looping over k = (c, kd, kh, kw), in
 * 32-bit index arithmetic so that a CPU device vectorises it along the positions (and pays
 * its per-work-group cost once per 64 positions, not per element). Writes
 * col[(n*G+g)][k][p], or with PACK > 0 the packed layout of matmul_cpu.cl's B
 * ([n*G+g][p / PACK][k][p % PACK], zero beyond the last position) so no second copy is made.
 * Zero where the window is padding. */
__kernel void im2col(__global float* col, __global const float* x, __global const int* P,
                     int npos) {
    const int p = get_global_id(0), bat = get_global_id(1);
    if (p >= npos) return;
    const int G = P[1], Cg = P[2], ID = P[3], IH = P[4], IW = P[5];
    const int OD = P[6], OH = P[7], OW = P[8], KD = P[9], KH = P[10], KW = P[11];
    const int ohw = OD * OH * OW, kdim = Cg * KD * KH * KW;
    const int g = bat % G, n = bat / G;
    const bool live = p < ohw;
    const int ow = p % OW, oh = (p / OW) % OH, od = p / (OW * OH);
    __global const float* xg = x + ((long)n * G * Cg + (long)g * Cg) * ID * IH * IW;
#if PACK
    __global float* dst = col + (((long)bat * (npos / PACK) + p / PACK) * kdim) * PACK + p % PACK;
    const int step = PACK;
#else
    __global float* dst = col + (long)bat * kdim * ohw + p;
    const int step = ohw;
#endif
    int k = 0;
    for (int c = 0; c < Cg; ++c)
        for (int kd = 0; kd < KD; ++kd) {
            int id = od * P[12] - P[15] + kd * P[18];
            for (int kh = 0; kh < KH; ++kh) {
                int ih = oh * P[13] - P[16] + kh * P[19];
                for (int kw = 0; kw < KW; ++kw, ++k) {
                    int iw = ow * P[14] - P[17] + kw * P[20];
                    float v = 0.0f;
                    if (live && id >= 0 && id < ID && ih >= 0 && ih < IH && iw >= 0 && iw < IW)
                        v = xg[(((long)c * ID + id) * IH + ih) * IW + iw];
                    dst[(long)k * step] = v;
                }
            }
        }
}

/* Direct convolution for one input channel per group (depthwise, any multiplier):
 * y[n][co][od][oh][ow], co in group co / Mg (Mg = output channels per group). */
__kernel void depthwise(__global float* y, __global const float* x, __global const float* w,
                        __global const float* bias, __global const int* P, long total,
                        int has_bias, float lo, float hi) {
    long i = get_global_id(0);
    if (i >= total) return;
    const int G = P[1], ID = P[3], IH = P[4], IW = P[5];
    const int OD = P[6], OH = P[7], OW = P[8], KD = P[9], KH = P[10], KW = P[11];
    const int Mg = P[21];
    int ow = (int)(i % OW);
    long t = i / OW;
    int oh = (int)(t % OH);
    t /= OH;
    int od = (int)(t % OD);
    t /= OD;
    int co = (int)(t % (G * Mg));
    long n = t / (G * Mg);
    int g = co / Mg;
    __global const float* xc = x + (n * G + g) * (long)ID * IH * IW;
    __global const float* wc = w + (long)co * KD * KH * KW;
    float acc = 0.0f;
    for (int kd = 0; kd < KD; ++kd) {
        int id = od * P[12] - P[15] + kd * P[18];
        if (id < 0 || id >= ID) continue;
        for (int kh = 0; kh < KH; ++kh) {
            int ih = oh * P[13] - P[16] + kh * P[19];
            if (ih < 0 || ih >= IH) continue;
            for (int kw = 0; kw < KW; ++kw) {
                int iw = ow * P[14] - P[17] + kw * P[20];
                if (iw < 0 || iw >= IW) continue;
                acc = fma(xc[((long)id * IH + ih) * IW + iw], wc[(kd * KH + kh) * KW + kw], acc);
            }
        }
    }
    if (has_bias) acc += bias[co];
    y[i] = bp_act(acc, lo, hi);
}
