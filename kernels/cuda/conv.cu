// backplane::FusedConvRelu: Y = act(Conv(X, W) + B), act Relu or Clip(lo, hi); 2-D, NCHW
// (the host wrapper views a 1-D convolution as 2-D with height 1).
//
// X [Nb, C, H, Wd], W [Cout, C/G, KH, KW], B [Cout] or null, Y [Nb, Cout, OH, OW], all
// dense; strides (sh, sw), leading pads (ph, pw), dilations (dh, dw), G groups.
//   conv_igemm{128,64,32}_*  implicit GEMM per group: A = the group's weights
//       [Cout/G, C/G*KH*KW], B = the im2col matrix [C/G*KH*KW, Nb*OH*OW], gathered from X
//       on the fly (padding reads as 0), never stored. Tiles of 128x128, 64x128 or 32x64
//       (rows = output channels of the group): the host picks by Cout/G.
//       Grid: (ceil(Nb*OH*OW / BN), ceil(Cout/G / BM), G).
//   conv_direct_*  one thread per output element: for groups of few output channels
//       (depthwise convolutions), where a GEMM tile would be mostly empty.
//       Grid: ceil(Nb*Cout*OH*OW / 256) blocks of 256.
// 1x1 convolutions of stride 1 without padding go to matmul.cu instead (tensor cores).
#include "gemm.cuh"

struct ConvShape {
    int Nb, C, H, Wd, Cout, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, G;
};

#define CONV_ARGS                                                                           \
    const T *__restrict__ X, const T *__restrict__ W, const T *__restrict__ bias,          \
        T *__restrict__ Y, int Nb, int C, int H, int Wd, int Cout, int OH, int OW, int KH,  \
        int KW, int sh, int sw, int ph, int pw, int dh, int dw, int G, int act, float lo,   \
        float hi
#define CONV_SHAPE ConvShape{Nb, C, H, Wd, Cout, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, G}

template <class T>
struct ConvWeights {  // A(m, k): weight of output channel g*Mg + m, reduction index k
    const T* w;
    int kg;
    __device__ __forceinline__ float operator()(int m, int k) const {
        return to_float(w[(i64)m * kg + k]);
    }
};

template <class T>
struct Im2col {  // B(k, n): k = (c, kh, kw) of the group, n = (image, oh, ow)
    const T* x;
    ConvShape s;
    int c0;  // the group's first input channel
    struct Column {
        const T* image;  // the group's first channel of the pixel's image
        int ih0, iw0;    // the window's top-left corner, padding included
    };
    __device__ __forceinline__ Column column(int n) const {
        const int ohw = s.OH * s.OW, b = n / ohw, p = n - b * ohw, oh = p / s.OW, ow = p - oh * s.OW;
        return Column{x + ((i64)b * s.C + c0) * s.H * s.Wd, oh * s.sh - s.ph, ow * s.sw - s.pw};
    }
    __device__ __forceinline__ float at(const Column& col, int k) const {
        const int khw = s.KH * s.KW;
        const int c = k / khw, r = k - c * khw, kh = r / s.KW, kw = r - kh * s.KW;
        const int ih = col.ih0 + kh * s.dh, iw = col.iw0 + kw * s.dw;
        if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.Wd) return 0.0f;
        return to_float(col.image[((i64)c * s.H + ih) * s.Wd + iw]);
    }
};

template <class T>
struct ConvEpi {
    T* y;
    const T* bias;
    ConvShape s;
    int co0, act;
    float lo, hi;
    __device__ __forceinline__ T* column(int n) const {  // pixel n of channel 0 of its image
        const int ohw = s.OH * s.OW, b = n / ohw;
        return y + (i64)b * s.Cout * ohw + (n - b * ohw);
    }
    __device__ __forceinline__ void store(T* out, int m, float v) {
        const int co = co0 + m;
        if (bias) v += to_float(bias[co]);
        out[(i64)co * s.OH * s.OW] = from_float<T>(activate(v, act, lo, hi));
    }
};

template <class T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void conv_igemm(CONV_ARGS) {
    const ConvShape s = CONV_SHAPE;
    const int g = blockIdx.z, cg = C / G, mg = Cout / G, kg = cg * KH * KW;
    ConvWeights<T> a{W + (i64)g * mg * kg, kg};
    Im2col<T> b{X, s, g * cg};
    ConvEpi<T> epi{Y, bias, s, g * mg, act, lo, hi};
    simt_tile<BM, BN, BK, TM, TN>(a, b, epi, mg, Nb * OH * OW, kg, blockIdx.y * BM, blockIdx.x * BN);
}

template <class T>
__device__ __forceinline__ void conv_direct(CONV_ARGS) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 total = (i64)Nb * Cout * OH * OW;
    if (i >= total) return;
    const int ow = i % OW, oh = (i / OW) % OH, co = (i / ((i64)OW * OH)) % Cout;
    const int b = i / ((i64)OW * OH * Cout);
    const int cg = C / G, mg = Cout / G, g = co / mg;
    float acc = bias ? to_float(bias[co]) : 0.0f;
    const T* wp = W + (i64)co * cg * KH * KW;
    for (int c = 0; c < cg; ++c) {
        const T* xp = X + ((i64)b * C + g * cg + c) * H * Wd;
        for (int kh = 0; kh < KH; ++kh) {
            const int ih = oh * sh - ph + kh * dh;
            if (ih < 0 || ih >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int iw = ow * sw - pw + kw * dw;
                if (iw < 0 || iw >= Wd) continue;
                acc = fmaf(to_float(wp[(c * KH + kh) * KW + kw]), to_float(xp[(i64)ih * Wd + iw]), acc);
            }
        }
    }
    Y[i] = from_float<T>(activate(acc, act, lo, hi));
}

#define CONV_CALL X, W, bias, Y, Nb, C, H, Wd, Cout, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, G, act, lo, hi

extern "C" {

#define T float
__global__ void __launch_bounds__(256) conv_igemm128_f32(CONV_ARGS) {
    conv_igemm<T, 128, 128, 8, 8, 8>(CONV_CALL);
}
__global__ void __launch_bounds__(256) conv_igemm64_f32(CONV_ARGS) {
    conv_igemm<T, 64, 128, 8, 4, 8>(CONV_CALL);
}
__global__ void __launch_bounds__(128) conv_igemm32_f32(CONV_ARGS) {
    conv_igemm<T, 32, 64, 16, 4, 4>(CONV_CALL);
}
__global__ void __launch_bounds__(256) conv_direct_f32(CONV_ARGS) { conv_direct<T>(CONV_CALL); }
#undef T

#define T half_t
__global__ void __launch_bounds__(256) conv_igemm128_f16(CONV_ARGS) {
    conv_igemm<T, 128, 128, 8, 8, 8>(CONV_CALL);
}
__global__ void __launch_bounds__(256) conv_igemm64_f16(CONV_ARGS) {
    conv_igemm<T, 64, 128, 8, 4, 8>(CONV_CALL);
}
__global__ void __launch_bounds__(128) conv_igemm32_f16(CONV_ARGS) {
    conv_igemm<T, 32, 64, 16, 4, 4>(CONV_CALL);
}
__global__ void __launch_bounds__(256) conv_direct_f16(CONV_ARGS) { conv_direct<T>(CONV_CALL); }
#undef T

}  // extern "C"
