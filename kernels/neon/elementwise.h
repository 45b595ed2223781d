/* Element-wise drivers shared by elementwise.c (base) and elementwise.fp16.c (native half
 * arithmetic): f32 rows, f16 through f32 chunks, and the strided broadcast walk. */
#ifndef BP_ELEMENTWISE_H
#define BP_ELEMENTWISE_H

#include "bp_neon.h"

#define BP_CHUNK 1024

/* y = OP(x) over n elements, 4 lanes at a time; the tail goes through a 4-lane buffer so
 * that every element sees the same vector code. */
#define BP_MAP(EXPR)                                                          \
    do {                                                                      \
        int64_t i_ = 0;                                                       \
        for (; i_ + 4 <= n; i_ += 4) {                                        \
            float32x4_t v = vld1q_f32(x + i_);                                \
            vst1q_f32(y + i_, (EXPR));                                        \
        }                                                                     \
        if (i_ < n) {                                                         \
            float t_[4] = {0.0f, 0.0f, 0.0f, 0.0f};                           \
            memcpy(t_, x + i_, (size_t)(n - i_) * sizeof(float));             \
            float32x4_t v = vld1q_f32(t_);                                    \
            vst1q_f32(t_, (EXPR));                                            \
            memcpy(y + i_, t_, (size_t)(n - i_) * sizeof(float));             \
        }                                                                     \
    } while (0)

static inline int bp_unary_row_f32(int op, const float *x, float *y, int64_t n, float p0,
                                   float p1) {
    const float32x4_t zero = vdupq_n_f32(0.0f), one = vdupq_n_f32(1.0f);
    switch (op) {
    case BP_RELU: BP_MAP(vmaxq_f32(v, zero)); break;
    case BP_LEAKY_RELU:
        BP_MAP(vbslq_f32(vcltq_f32(v, zero), vmulq_n_f32(v, p0), v));
        break;
    case BP_SIGMOID: BP_MAP(bp_sigmoid4(v)); break;
    case BP_TANH: BP_MAP(bp_tanh4(v)); break;
    case BP_EXP: BP_MAP(bp_exp4(v)); break;
    case BP_LOG: BP_MAP(bp_log4(v)); break;
    case BP_SQRT: BP_MAP(vsqrtq_f32(v)); break;
    case BP_ABS: BP_MAP(vabsq_f32(v)); break;
    case BP_NEG: BP_MAP(vnegq_f32(v)); break;
    case BP_ERF: BP_MAP(bp_erf4(v)); break;
    case BP_GELU: BP_MAP(bp_gelu4(v)); break;
    case BP_GELU_TANH: BP_MAP(bp_gelu_tanh4(v)); break;
    case BP_HARD_SIGMOID:
        BP_MAP(vminq_f32(vmaxq_f32(vfmaq_n_f32(vdupq_n_f32(p1), v, p0), zero), one));
        break;
    case BP_HARD_SWISH:
        BP_MAP(vmulq_f32(v, vminq_f32(vmaxq_f32(vfmaq_n_f32(vdupq_n_f32(0.5f), v,
                                                               1.0f / 6.0f), zero), one)));
        break;
    case BP_CLIP:
        BP_MAP(vminq_f32(vmaxq_f32(v, vdupq_n_f32(p0)), vdupq_n_f32(p1)));
        break;
    default: return BP_EUNSUPPORTED;
    }
    return BP_OK;
}

/* f16 through f32 chunks: the same vector code, rounded once on the way out. */
static inline int bp_unary_row_f16_via_f32(int op, const bp_half *x, bp_half *y, int64_t n,
                                           float p0, float p1) {
    float a[BP_CHUNK], r[BP_CHUNK];
    for (int64_t i = 0; i < n; i += BP_CHUNK) {
        int64_t m = n - i < BP_CHUNK ? n - i : BP_CHUNK;
        bp_f16_to_f32(x + i, a, m);
        int rc = bp_unary_row_f32(op, a, r, m, p0, p1);
        if (rc) return rc;
        bp_f32_to_f16(r, y + i, m);
    }
    return BP_OK;
}

/* bfloat16 the same way. */
static inline int bp_unary_row_bf16_via_f32(int op, const uint16_t *x, uint16_t *y, int64_t n,
                                            float p0, float p1) {
    float a[BP_CHUNK], r[BP_CHUNK];
    for (int64_t i = 0; i < n; i += BP_CHUNK) {
        int64_t m = n - i < BP_CHUNK ? n - i : BP_CHUNK;
        bp_bf16_to_f32(x + i, a, m);
        int rc = bp_unary_row_f32(op, a, r, m, p0, p1);
        if (rc) return rc;
        bp_f32_to_bf16_n(r, y + i, m);
    }
    return BP_OK;
}

static inline float32x4_t bp_binary4(int op, float32x4_t a, float32x4_t b) {
    switch (op) {
    case BP_ADD: return vaddq_f32(a, b);
    case BP_SUB: return vsubq_f32(a, b);
    case BP_MUL: return vmulq_f32(a, b);
    case BP_DIV: return vdivq_f32(a, b);
    default: return bp_pow4(a, b);
    }
}

/* One row: sa, sb are 1 (a vector) or 0 (one value repeated). */
#define BP_ROW(OPV)                                                                 \
    do {                                                                            \
        if (!sa && !sb) {                                                           \
            float r_ = vgetq_lane_f32(OPV(vdupq_n_f32(a[0]), vdupq_n_f32(b[0])), 0); \
            for (int64_t i_ = 0; i_ < n; i_++) y[i_] = r_;                          \
            break;                                                                  \
        }                                                                           \
        int64_t i_ = 0;                                                             \
        if (sa && sb) {                                                             \
            for (; i_ + 4 <= n; i_ += 4)                                            \
                vst1q_f32(y + i_, OPV(vld1q_f32(a + i_), vld1q_f32(b + i_)));       \
        } else if (sa) {                                                            \
            float32x4_t vb_ = vdupq_n_f32(b[0]);                                    \
            for (; i_ + 4 <= n; i_ += 4) vst1q_f32(y + i_, OPV(vld1q_f32(a + i_), vb_)); \
        } else {                                                                    \
            float32x4_t va_ = vdupq_n_f32(a[0]);                                    \
            for (; i_ + 4 <= n; i_ += 4) vst1q_f32(y + i_, OPV(va_, vld1q_f32(b + i_))); \
        }                                                                           \
        if (i_ < n) {                                                               \
            float ta_[4] = {1, 1, 1, 1}, tb_[4] = {1, 1, 1, 1}, ty_[4];             \
            int64_t m_ = n - i_;                                                    \
            for (int64_t k_ = 0; k_ < m_; k_++) {                                   \
                ta_[k_] = a[sa ? i_ + k_ : 0];                                      \
                tb_[k_] = b[sb ? i_ + k_ : 0];                                      \
            }                                                                       \
            vst1q_f32(ty_, OPV(vld1q_f32(ta_), vld1q_f32(tb_)));                    \
            memcpy(y + i_, ty_, (size_t)m_ * sizeof(float));                        \
        }                                                                           \
    } while (0)

#define BP_OPV_ADD(a, b) vaddq_f32(a, b)
#define BP_OPV_SUB(a, b) vsubq_f32(a, b)
#define BP_OPV_MUL(a, b) vmulq_f32(a, b)
#define BP_OPV_DIV(a, b) vdivq_f32(a, b)
#define BP_OPV_POW(a, b) bp_pow4(a, b)

static inline void bp_binary_row_f32(int op, const float *a, int sa, const float *b, int sb,
                                     float *y, int64_t n) {
    switch (op) {
    case BP_ADD: BP_ROW(BP_OPV_ADD); break;
    case BP_SUB: BP_ROW(BP_OPV_SUB); break;
    case BP_MUL: BP_ROW(BP_OPV_MUL); break;
    case BP_DIV: BP_ROW(BP_OPV_DIV); break;
    default: BP_ROW(BP_OPV_POW); break;
    }
}

/* A row of f16 through f32 chunks. */
static inline void bp_binary_row_f16_via_f32(int op, const bp_half *a, int sa, const bp_half *b,
                                             int sb, bp_half *y, int64_t n) {
    float ta[BP_CHUNK], tb[BP_CHUNK], ty[BP_CHUNK];
    for (int64_t i = 0; i < n; i += BP_CHUNK) {
        int64_t m = n - i < BP_CHUNK ? n - i : BP_CHUNK;
        if (sa) bp_f16_to_f32(a + i, ta, m); else ta[0] = (float)a[0];
        if (sb) bp_f16_to_f32(b + i, tb, m); else tb[0] = (float)b[0];
        bp_binary_row_f32(op, ta, sa, tb, sb, ty, m);
        bp_f32_to_f16(ty, y + i, m);
    }
}

static inline void bp_binary_row_bf16_via_f32(int op, const uint16_t *a, int sa, const uint16_t *b,
                                              int sb, uint16_t *y, int64_t n) {
    float ta[BP_CHUNK], tb[BP_CHUNK], ty[BP_CHUNK];
    for (int64_t i = 0; i < n; i += BP_CHUNK) {
        int64_t m = n - i < BP_CHUNK ? n - i : BP_CHUNK;
        bp_bf16_to_f32(sa ? a + i : a, ta, sa ? m : 1);
        bp_bf16_to_f32(sb ? b + i : b, tb, sb ? m : 1);
        bp_binary_row_f32(op, ta, sa, tb, sb, ty, m);
        bp_f32_to_bf16_n(ty, y + i, m);
    }
}

/* The broadcast walk: iv = op, dt, rank, shape[rank], sa[rank], sb[rank] (element strides
 * of a and b, 0 where broadcast; the innermost ones 0 or 1). The output is dense. ROW is
 * called per innermost row as ROW(op, a_ptr, sa_inner, b_ptr, sb_inner, y_ptr, len). */
#define BP_MAX_RANK 8
#define BP_WALK(T, ROW)                                                               \
    do {                                                                              \
        int op_ = (int)iv[0];                                                         \
        int64_t rank_ = iv[2];                                                        \
        if (rank_ < 1 || rank_ > BP_MAX_RANK) return BP_EINVAL;                       \
        const int64_t *shape_ = iv + 3, *sa_ = iv + 3 + rank_, *sb_ = iv + 3 + 2 * rank_; \
        const T *a_ = (const T *)bufs[0], *b_ = (const T *)bufs[1];                   \
        T *y_ = (T *)bufs[2];                                                         \
        int64_t inner_ = shape_[rank_ - 1], rows_ = 1, idx_[BP_MAX_RANK] = {0};       \
        for (int64_t d_ = 0; d_ < rank_ - 1; d_++) rows_ *= shape_[d_];               \
        if (inner_ == 0) return BP_OK;                                                \
        int64_t oa_ = 0, ob_ = 0;                                                     \
        for (int64_t r_ = 0; r_ < rows_; r_++) {                                      \
            ROW(op_, a_ + oa_, (int)sa_[rank_ - 1], b_ + ob_, (int)sb_[rank_ - 1],    \
                y_ + r_ * inner_, inner_);                                            \
            for (int64_t d_ = rank_ - 2; d_ >= 0; d_--) {                             \
                idx_[d_]++;                                                           \
                oa_ += sa_[d_];                                                       \
                ob_ += sb_[d_];                                                       \
                if (idx_[d_] < shape_[d_]) break;                                     \
                oa_ -= sa_[d_] * shape_[d_];                                          \
                ob_ -= sb_[d_] * shape_[d_];                                          \
                idx_[d_] = 0;                                                         \
            }                                                                         \
        }                                                                             \
    } while (0)

#endif /* BP_ELEMENTWISE_H */
