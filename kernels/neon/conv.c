/* Convolutions over 1 to 3 spatial dimensions (the host passes three, leading ones of size
 * 1): im2col into f32 columns and the GEMM of gemm.c with the bias and the activation in
 * its epilogue; a direct kernel for depthwise 2-D convolutions; and the transposed
 * convolution as a GEMM followed by col2im.
 *
 * iv layout shared by conv and conv_transpose:
 *   0 dt, 1 N, 2 C (input channels), 3 M (output channels), 4 group,
 *   5..7 input D H W, 8..10 kernel, 11..13 output D H W, 14..16 strides,
 *   17..19 dilations, 20..22 pads at the beginning, 23 act (conv only).
 * fv: lo, hi (the Clip epilogue). */
#include "bp_neon.h"

typedef struct {
    int dt;
    int64_t N, C, M, G, in[3], k[3], out[3], s[3], d[3], p[3];
    int act;
    float lo, hi;
} conv_t;

static void conv_args(conv_t *c, const int64_t *iv, const double *fv, int with_act) {
    c->dt = (int)iv[0];
    c->N = iv[1]; c->C = iv[2]; c->M = iv[3]; c->G = iv[4];
    for (int i = 0; i < 3; i++) {
        c->in[i] = iv[5 + i]; c->k[i] = iv[8 + i]; c->out[i] = iv[11 + i];
        c->s[i] = iv[14 + i]; c->d[i] = iv[17 + i]; c->p[i] = iv[20 + i];
    }
    c->act = with_act ? (int)iv[23] : BP_ACT_NONE;
    c->lo = (float)fv[0];
    c->hi = (float)fv[1];
}

static size_t esize(int dt) { return dt == BP_F16 ? 2 : 4; }

/* Columns of one image and group: col[(c, kd, kh, kw), (od, oh, ow)], zero where the
 * window is in the padding. x points at the group's first channel. */
static void im2col(const conv_t *c, const void *x, int64_t cg, float *col) {
    const int64_t ID = c->in[0], IH = c->in[1], IW = c->in[2];
    const int64_t OD = c->out[0], OH = c->out[1], OW = c->out[2];
    const int64_t plane = OD * OH * OW;
    int64_t row = 0;
    for (int64_t ch = 0; ch < cg; ch++) {
        for (int64_t zd = 0; zd < c->k[0]; zd++)
            for (int64_t zh = 0; zh < c->k[1]; zh++)
                for (int64_t zw = 0; zw < c->k[2]; zw++, row++) {
                    float *dst = col + row * plane;
                    /* the output columns whose input column is inside the image */
                    int64_t off_w = zw * c->d[2] - c->p[2];
                    int64_t lo = off_w < 0 ? (-off_w + c->s[2] - 1) / c->s[2] : 0;
                    int64_t hi = (IW - 1 - off_w) < 0 ? 0 : (IW - 1 - off_w) / c->s[2] + 1;
                    if (hi > OW) hi = OW;
                    if (lo > hi) lo = hi;
                    for (int64_t od = 0; od < OD; od++) {
                        int64_t id = od * c->s[0] + zd * c->d[0] - c->p[0];
                        for (int64_t oh = 0; oh < OH; oh++) {
                            float *o = dst + (od * OH + oh) * OW;
                            int64_t ih = oh * c->s[1] + zh * c->d[1] - c->p[1];
                            if (id < 0 || id >= ID || ih < 0 || ih >= IH) {
                                memset(o, 0, (size_t)OW * sizeof(float));
                                continue;
                            }
                            int64_t base = ((ch * ID + id) * IH + ih) * IW + off_w;
                            for (int64_t ow = 0; ow < lo; ow++) o[ow] = 0.0f;
                            if (c->dt == BP_F32) {
                                const float *xs = (const float *)x + base;
                                if (c->s[2] == 1) memcpy(o + lo, xs + lo, (size_t)(hi - lo) * 4);
                                else
                                    for (int64_t ow = lo; ow < hi; ow++) o[ow] = xs[ow * c->s[2]];
                            } else {
                                const bp_half *xs = (const bp_half *)x + base;
                                if (c->s[2] == 1) bp_f16_to_f32(xs + lo, o + lo, hi - lo);
                                else
                                    for (int64_t ow = lo; ow < hi; ow++)
                                        o[ow] = (float)xs[ow * c->s[2]];
                            }
                            for (int64_t ow = hi; ow < OW; ow++) o[ow] = 0.0f;
                        }
                    }
                }
    }
}

/* Depthwise 2-D (one input channel per group, D = 1): each output channel is a K x K
 * stencil over a zero-padded f32 copy of its input channel, 4 output columns at a time. */
static int32_t depthwise(const conv_t *c, const void *x, const void *w, const void *bias, void *y) {
    const int64_t IH = c->in[1], IW = c->in[2], OH = c->out[1], OW = c->out[2];
    const int64_t KH = c->k[1], KW = c->k[2], SH = c->s[1], SW = c->s[2];
    const int64_t DH = c->d[1], DW = c->d[2], mult = c->M / c->G;
    /* padded plane: rows cover every window, columns too plus 4 lanes of slack */
    const int64_t PH = (OH - 1) * SH + (KH - 1) * DH + 1;
    const int64_t PW = ((OW + 3) / 4 * 4 - 1) * SW + (KW - 1) * DW + 1;
    float *pad = (float *)malloc((size_t)(PH * PW) * sizeof(float));
    float *out = (float *)malloc((size_t)(OH * ((OW + 3) / 4 * 4)) * sizeof(float));
    if (!pad || !out) {
        free(pad);
        free(out);
        return BP_ENOMEM;
    }
    const int64_t OWr = (OW + 3) / 4 * 4;
    for (int64_t n = 0; n < c->N; n++) {
        for (int64_t g = 0; g < c->G; g++) {
            memset(pad, 0, (size_t)(PH * PW) * sizeof(float));
            for (int64_t ih = 0; ih < IH; ih++) {
                int64_t r = ih + c->p[1];
                if (r < 0 || r >= PH) continue;
                for (int64_t iw = 0; iw < IW; iw++) {
                    int64_t col = iw + c->p[2];
                    if (col < 0 || col >= PW) continue;
                    pad[r * PW + col] = bp_get(x, c->dt, ((n * c->C + g) * IH + ih) * IW + iw);
                }
            }
            for (int64_t q = 0; q < mult; q++) {
                int64_t m = g * mult + q;
                float b = bias ? bp_get(bias, c->dt, m) : 0.0f;
                for (int64_t oh = 0; oh < OH; oh++) {
                    float *o = out + oh * OWr;
                    for (int64_t ow = 0; ow < OWr; ow += 4) {
                        float32x4_t acc = vdupq_n_f32(b);
                        for (int64_t kh = 0; kh < KH; kh++) {
                            const float *row = pad + (oh * SH + kh * DH) * PW + ow * SW;
                            for (int64_t kw = 0; kw < KW; kw++) {
                                float wv = bp_get(w, c->dt, (m * KH + kh) * KW + kw);
                                const float *p = row + kw * DW;
                                float32x4_t v;
                                if (SW == 1) v = vld1q_f32(p);
                                else if (SW == 2) v = vld2q_f32(p).val[0];
                                else {
                                    float t[4] = {p[0], p[SW], p[2 * SW], p[3 * SW]};
                                    v = vld1q_f32(t);
                                }
                                acc = vfmaq_n_f32(acc, v, wv);
                            }
                        }
                        vst1q_f32(o + ow, bp_act4(acc, c->act, c->lo, c->hi));
                    }
                }
                int64_t ybase = (n * c->M + m) * OH * OW;
                for (int64_t oh = 0; oh < OH; oh++) {
                    const float *row = out + oh * OWr;
                    if (c->dt == BP_F32) memcpy((float *)y + ybase + oh * OW, row, (size_t)OW * 4);
                    else bp_f32_to_f16(row, (bp_half *)y + ybase + oh * OW, OW);
                }
            }
        }
    }
    free(pad);
    free(out);
    return BP_OK;
}

/* Y = act(conv(X, W) + B): bufs X, W, B (or NULL), Y. */
BP_KERNEL(conv) {
    conv_t c;
    conv_args(&c, iv, fv, 1);
    if (c.dt != BP_F32 && c.dt != BP_F16) return BP_EUNSUPPORTED;
    if (c.G <= 0 || c.C % c.G || c.M % c.G) return BP_EINVAL;
    const void *x = bufs[0], *w = bufs[1], *bias = bufs[2];
    void *y = bufs[3];
    const int64_t cg = c.C / c.G, mg = c.M / c.G;
    const int64_t kprod = c.k[0] * c.k[1] * c.k[2];
    const int64_t plane_in = c.in[0] * c.in[1] * c.in[2];
    const int64_t plane = c.out[0] * c.out[1] * c.out[2];
    if (c.N == 0 || c.M == 0 || plane == 0) return BP_OK;
    if (cg == 1 && c.in[0] == 1 && c.k[0] == 1) return depthwise(&c, x, w, bias, y);
    /* a 1x1 convolution with unit strides and no padding reads X as it is */
    int direct = kprod == 1 && c.dt == BP_F32 && c.s[0] == 1 && c.s[1] == 1 && c.s[2] == 1 &&
                 c.p[0] == 0 && c.p[1] == 0 && c.p[2] == 0 && plane == plane_in;
    float *col = direct ? NULL : (float *)malloc((size_t)(cg * kprod * plane) * sizeof(float));
    if (!direct && !col) return BP_ENOMEM;
    size_t es = esize(c.dt);
    int32_t rc = BP_OK;
    for (int64_t n = 0; n < c.N && rc == BP_OK; n++) {
        for (int64_t g = 0; g < c.G && rc == BP_OK; g++) {
            const char *xg = (const char *)x + (size_t)((n * c.C + g * cg) * plane_in) * es;
            bp_gemm_t gm = {0};
            gm.M = mg; gm.N = plane; gm.K = cg * kprod;
            gm.a = (const char *)w + (size_t)(g * mg * cg * kprod) * es;
            gm.a_rs = cg * kprod; gm.a_cs = 1; gm.a_dt = c.dt;
            if (direct) {
                gm.b = xg; gm.b_dt = BP_F32;
            } else {
                im2col(&c, xg, cg, col);
                gm.b = col; gm.b_dt = BP_F32;
            }
            gm.b_rs = plane; gm.b_cs = 1;
            if (bias) {
                gm.c = (const char *)bias + (size_t)(g * mg) * es;
                gm.c_rs = 1; gm.c_cs = 0; gm.c_dt = c.dt; gm.beta = 1.0f;
            }
            gm.y = (char *)y + (size_t)((n * c.M + g * mg) * plane) * es;
            gm.y_rs = plane; gm.y_dt = c.dt;
            gm.alpha = 1.0f; gm.act = c.act; gm.lo = c.lo; gm.hi = c.hi;
            rc = bp_gemm_run(&gm);
        }
    }
    free(col);
    return rc;
}

/* Transposed convolution: bufs X [N, C, in], W [C, M/group, k], B (or NULL), Y [N, M, out].
 * Per image and group, cols = W_g^T X_g ((m, kd, kh, kw) x input pixels) by the GEMM, then
 * each column is added at its output position (col2im) onto the bias. */
BP_KERNEL(conv_transpose) {
    conv_t c;
    conv_args(&c, iv, fv, 0);
    if (c.dt != BP_F32 && c.dt != BP_F16) return BP_EUNSUPPORTED;
    if (c.G <= 0 || c.C % c.G || c.M % c.G) return BP_EINVAL;
    const int64_t cg = c.C / c.G, mg = c.M / c.G;
    const int64_t kprod = c.k[0] * c.k[1] * c.k[2];
    const int64_t plane_in = c.in[0] * c.in[1] * c.in[2];
    const int64_t plane = c.out[0] * c.out[1] * c.out[2];
    if (c.N == 0 || c.M == 0 || plane == 0) return BP_OK;
    float *cols = (float *)malloc((size_t)(mg * kprod * (plane_in ? plane_in : 1)) * sizeof(float));
    float *acc = (float *)malloc((size_t)(mg * plane) * sizeof(float));
    if (!cols || !acc) {
        free(cols);
        free(acc);
        return BP_ENOMEM;
    }
    size_t es = esize(c.dt);
    int32_t rc = BP_OK;
    for (int64_t n = 0; n < c.N && rc == BP_OK; n++) {
        for (int64_t g = 0; g < c.G && rc == BP_OK; g++) {
            for (int64_t m = 0; m < mg; m++) {
                float b = bufs[2] ? bp_get(bufs[2], c.dt, g * mg + m) : 0.0f;
                for (int64_t i = 0; i < plane; i++) acc[m * plane + i] = b;
            }
            if (plane_in > 0 && cg > 0) {
                bp_gemm_t gm = {0};
                gm.M = mg * kprod; gm.N = plane_in; gm.K = cg;
                gm.a = (const char *)bufs[1] + (size_t)(g * cg * mg * kprod) * es;
                gm.a_rs = 1; gm.a_cs = mg * kprod; gm.a_dt = c.dt;
                gm.b = (const char *)bufs[0] + (size_t)((n * c.C + g * cg) * plane_in) * es;
                gm.b_rs = plane_in; gm.b_cs = 1; gm.b_dt = c.dt;
                gm.y = cols; gm.y_rs = plane_in; gm.y_dt = BP_F32;
                gm.alpha = 1.0f; gm.act = BP_ACT_NONE;
                rc = bp_gemm_run(&gm);
                if (rc) break;
            }
            for (int64_t m = 0; m < mg; m++)
                for (int64_t zd = 0; zd < c.k[0]; zd++)
                    for (int64_t zh = 0; zh < c.k[1]; zh++)
                        for (int64_t zw = 0; zw < c.k[2]; zw++) {
                            int64_t tap = ((m * c.k[0] + zd) * c.k[1] + zh) * c.k[2] + zw;
                            const float *src = cols + tap * plane_in;
                            float *dst = acc + m * plane;
                            for (int64_t id = 0; id < c.in[0]; id++) {
                                int64_t od = id * c.s[0] + zd * c.d[0] - c.p[0];
                                if (od < 0 || od >= c.out[0]) continue;
                                for (int64_t ih = 0; ih < c.in[1]; ih++) {
                                    int64_t oh = ih * c.s[1] + zh * c.d[1] - c.p[1];
                                    if (oh < 0 || oh >= c.out[1]) continue;
                                    const float *s = src + (id * c.in[1] + ih) * c.in[2];
                                    float *o = dst + (od * c.out[1] + oh) * c.out[2];
                                    for (int64_t iw = 0; iw < c.in[2]; iw++) {
                                        int64_t ow = iw * c.s[2] + zw * c.d[2] - c.p[2];
                                        if (ow >= 0 && ow < c.out[2]) o[ow] += s[iw];
                                    }
                                }
                            }
                        }
            void *yg = (char *)bufs[3] + (size_t)((n * c.M + g * mg) * plane) * es;
            if (c.dt == BP_F32) memcpy(yg, acc, (size_t)(mg * plane) * 4);
            else bp_f32_to_f16(acc, (bp_half *)yg, mg * plane);
        }
    }
    free(cols);
    free(acc);
    return rc;
}
