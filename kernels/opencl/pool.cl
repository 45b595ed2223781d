/* MaxPool and AveragePool over three spatial dimensions (1-D and 2-D arrive padded with
 * leading dimensions of size 1). Prelude: T (element type), IS_MAX, IS_FLOAT, LOWEST.
 * P (long): ID IH IW OD OH OW KD KH KW SD SH SW PD PH PW DD DH DW ED EH EW
 *           count_include_pad storage_order (E*: end pads) */
__kernel void pool(__global T* y, __global long* ind, __global const T* x,
                   __global const long* P, long total, int want_ind) {
    long i = get_global_id(0);
    if (i >= total) return;
    const long ID = P[0], IH = P[1], IW = P[2], OD = P[3], OH = P[4], OW = P[5];
    long ow = i % OW, t = i / OW;
    long oh = t % OH;
    t /= OH;
    long od = t % OD;
    long nc = t / OD;
    long image = ID * IH * IW;
    __global const T* xc = x + nc * image;
    long d0 = od * P[9] - P[12], h0 = oh * P[10] - P[13], w0 = ow * P[11] - P[14];
#if IS_MAX
    T best = LOWEST;
    long where = -1;
#else
    float sum = 0.0f;
    long count = 0;
#endif
    for (long kd = 0; kd < P[6]; ++kd) {
        long id = d0 + kd * P[15];
        for (long kh = 0; kh < P[7]; ++kh) {
            long ih = h0 + kh * P[16];
            for (long kw = 0; kw < P[8]; ++kw) {
                long iw = w0 + kw * P[17];
                bool inside = id >= 0 && id < ID && ih >= 0 && ih < IH && iw >= 0 && iw < IW;
#if IS_MAX
                if (inside) {
                    T v = xc[(id * IH + ih) * IW + iw];
                    /* strictly greater, as the reference; for integers the first
                     * element also counts (no value is below LOWEST) */
#if IS_FLOAT
                    if (v > best) {
#else
                    if (v > best || where < 0) {
#endif
                        best = v;
                        where = P[22] ? (iw * IH + ih) * ID + id : (id * IH + ih) * IW + iw;
                    }
                }
#else
                if (inside) {
                    sum += xc[(id * IH + ih) * IW + iw];
                    count += 1;
                } else if (P[21] && id >= -P[12] && id < ID + P[18] && ih >= -P[13] &&
                           ih < IH + P[19] && iw >= -P[14] && iw < IW + P[20]) {
                    count += 1;
                }
#endif
            }
        }
    }
#if IS_MAX
    y[i] = best;
    if (want_ind) ind[i] = where + nc * image;
#else
    y[i] = sum / (float)count;
#endif
}
