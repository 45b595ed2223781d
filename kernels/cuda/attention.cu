// backplane::Attention: Y = softmax(Q K^T * scale + mask) V, flash style: the scores of
// a block of queries against a tile of keys live only in registers, with a running
// maximum and denominator per query row (the "online softmax"), so the [Sq, Sk] score
// matrix is never written to memory.
//
// Arguments common to both kernels:
//   Q [batch, Sq, D], K [batch, Sk, D], V [batch, Sk, Dv], Y [batch, Sq, Dv], dense per
//   matrix; batch index z = blockIdx.y split as (z / nb1, z % nb1), each operand's matrix
//   at z0*s?0 + z1*s?1 elements (0 broadcasts);
//   mask: kind 0 none, 1 additive float32, 2 additive float16, 3 boolean (bytes; false
//   gives -inf); element (z, q, k) at z0*sm0 + z1*sm1 + q*smq + k*smk.
// A query row whose every score is -inf (all keys masked) gives NaN, as the ONNX
// decomposition (Where -> Softmax -> MatMul) does; a NaN score gives a NaN row.
//   attention_simt_*      any D, Dv <= 128: one warp per query row, 8 rows per block,
//                         keys in tiles of 32 through shared memory; float32 arithmetic.
//   attention_tc_f16_d64, attention_tc_f16_d128
//                         tensor cores (mma.sync), D == Dv == 64 or 128: 4 warps of 16
//                         query rows, keys in tiles of 64; scores and running statistics in
//                         float32, probabilities rounded to f16 for the P V product. Needs
//                         16-byte aligned Q, K, V.
// Grid: (ceil(Sq / rows per block), batch).
#include "common.cuh"

struct Mask {
    const void* p;
    int kind;
    i64 sq, sk;
    __device__ __forceinline__ float at(i64 base, int q, int k) const {
        const i64 i = base + q * sq + k * sk;
        switch (kind) {
            case 1:
                return static_cast<const float*>(p)[i];
            case 2:
                return h2f(static_cast<const unsigned short*>(p)[i]);
            case 3:
                return static_cast<const unsigned char*>(p)[i] ? 0.0f : neg_inf();
            default:
                return 0.0f;
        }
    }
};

#define ATTENTION_ARGS                                                                       \
    const T *__restrict__ Q, const T *__restrict__ K, const T *__restrict__ V,              \
        T *__restrict__ Y, const void *__restrict__ mask, int mask_kind, int Sq, int Sk,     \
        int D, int Dv, float scale, int nb1, i64 sq0, i64 sq1, i64 sk0, i64 sk1, i64 sv0,     \
        i64 sv1, i64 sm0, i64 sm1, i64 smq, i64 smk

// ------------------------------------------------------------------ SIMT

#define SIMT_ROWS 8
#define SIMT_KEYS 32
#define SIMT_MAXD 128

template <class T>
__device__ __forceinline__ void attention_simt(ATTENTION_ARGS) {
    __shared__ float ks[SIMT_KEYS][SIMT_MAXD + 1];
    __shared__ float vs[SIMT_KEYS][SIMT_MAXD + 1];
    __shared__ float qs[SIMT_ROWS][SIMT_MAXD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int z = blockIdx.y, z0 = z / nb1, z1 = z % nb1;
    const int q = blockIdx.x * SIMT_ROWS + warp;
    const bool row_ok = q < Sq;
    const T* qp = Q + z0 * sq0 + z1 * sq1;
    const T* kp = K + z0 * sk0 + z1 * sk1;
    const T* vp = V + z0 * sv0 + z1 * sv1;
    const Mask m{mask, mask_kind, smq, smk};
    const i64 mbase = z0 * sm0 + z1 * sm1;
    for (int d = lane; d < D; d += 32) qs[warp][d] = row_ok ? to_float(qp[(i64)q * D + d]) * scale : 0.0f;

    float acc[SIMT_MAXD / 32];
#pragma unroll
    for (int i = 0; i < SIMT_MAXD / 32; ++i) acc[i] = 0.0f;
    float run_max = neg_inf(), run_sum = 0.0f;

    for (int k0 = 0; k0 < Sk; k0 += SIMT_KEYS) {
        __syncthreads();  // the previous tile is consumed (and qs is written, first time)
        for (int e = threadIdx.x; e < SIMT_KEYS * D; e += blockDim.x) {
            const int j = e / D, d = e % D;
            ks[j][d] = k0 + j < Sk ? to_float(kp[(i64)(k0 + j) * D + d]) : 0.0f;
        }
        for (int e = threadIdx.x; e < SIMT_KEYS * Dv; e += blockDim.x) {
            const int j = e / Dv, d = e % Dv;
            vs[j][d] = k0 + j < Sk ? to_float(vp[(i64)(k0 + j) * Dv + d]) : 0.0f;
        }
        __syncthreads();
        // Lane j scores key k0 + j.
        const int key = k0 + lane;
        float s = neg_inf();
        if (key < Sk && row_ok) {
            s = 0.0f;
            for (int d = 0; d < D; ++d) s = fmaf(qs[warp][d], ks[lane][d], s);
            if (mask_kind) s += m.at(mbase, q, key);
        }
        const float tile_max = warp_max(s);
        const float new_max = fmaxf(run_max, tile_max);
        const float ref = new_max == neg_inf() ? 0.0f : new_max;  // all -inf so far: p = 0
        const float p = __expf(s - ref);
        const float alpha = __expf(run_max - ref);
        run_sum = run_sum * alpha + warp_sum(p);
        run_max = new_max;
#pragma unroll
        for (int i = 0; i < SIMT_MAXD / 32; ++i) acc[i] *= alpha;
        const int keys = min(SIMT_KEYS, Sk - k0);
        for (int j = 0; j < keys; ++j) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int i = 0; i < SIMT_MAXD / 32; ++i) {
                const int d = lane + 32 * i;
                if (d < Dv) acc[i] = fmaf(pj, vs[j][d], acc[i]);
            }
        }
    }
    if (!row_ok) return;
    T* yp = Y + (i64)z * Sq * Dv + (i64)q * Dv;
    const float inv = 1.0f / run_sum;  // 0 when every key was masked: NaN, as ONNX
#pragma unroll
    for (int i = 0; i < SIMT_MAXD / 32; ++i) {
        const int d = lane + 32 * i;
        if (d < Dv) yp[d] = from_float<T>(run_sum == 0.0f ? quiet_nan() : acc[i] * inv);
    }
}

// ------------------------------------------------------------------ tensor cores

#define TC_ROWS 64   // query rows per block: 4 warps x 16
#define TC_KEYS 64   // keys per tile

// Row r, 16-byte chunk c of a [rows][HD] f16 tile: chunks XOR-swizzled by the row's low
// three bits, so that the 8 rows an ldmatrix reads fall in 8 different bank groups.
template <int HD>
__device__ __forceinline__ unsigned short* tile_at(unsigned short (*t)[HD], int r, int c) {
    return &t[r][(c ^ (r & 7)) * 8];
}

template <int HD>
__device__ __forceinline__ void load_tile(unsigned short (*t)[HD], const unsigned short* src, int row0,
                                          int rows, int tid) {
    constexpr int CHUNKS = HD / 8;
    for (int c = tid; c < TC_KEYS * CHUNKS; c += 128) {
        const int r = c / CHUNKS, ch = c % CHUNKS;
        const bool ok = row0 + r < rows;
        cp_async16(tile_at<HD>(t, r, ch), ok ? src + (i64)(row0 + r) * HD + ch * 8 : src, ok ? 16 : 0);
    }
}

template <int HD>
__device__ __forceinline__ void attention_tc(const half_t* __restrict__ Qh, const half_t* __restrict__ Kh,
                                             const half_t* __restrict__ Vh, half_t* __restrict__ Yh,
                                             const void* __restrict__ mask, int mask_kind, int Sq, int Sk,
                                             float scale, int nb1, i64 sq0, i64 sq1, i64 sk0, i64 sk1,
                                             i64 sv0, i64 sv1, i64 sm0, i64 sm1, i64 smq, i64 smk) {
    static_assert(HD == 64 || HD == 128, "head dims 64 and 128");
    __shared__ __align__(128) unsigned short qs[TC_ROWS][HD];
    __shared__ __align__(128) unsigned short ks[TC_KEYS][HD];
    __shared__ __align__(128) unsigned short vs[TC_KEYS][HD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int z = blockIdx.y, z0 = z / nb1, z1 = z % nb1;
    const int q0 = blockIdx.x * TC_ROWS;
    const unsigned short* qp = reinterpret_cast<const unsigned short*>(Qh) + z0 * sq0 + z1 * sq1;
    const unsigned short* kp = reinterpret_cast<const unsigned short*>(Kh) + z0 * sk0 + z1 * sk1;
    const unsigned short* vp = reinterpret_cast<const unsigned short*>(Vh) + z0 * sv0 + z1 * sv1;
    const Mask m{mask, mask_kind, smq, smk};
    const i64 mbase = z0 * sm0 + z1 * sm1;
    // A mask that does not vary with (q, k) (the zero scalar the fusion pass passes when
    // the pattern has none) is read once.
    const bool mask_const = mask_kind && smq == 0 && smk == 0;
    const float mask_value = mask_const ? m.at(mbase, 0, 0) : 0.0f;

    load_tile<HD>(qs, qp, q0, Sq, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qf[HD / 16][4];  // this warp's 16 query rows as mma A fragments, per 16 dims
#pragma unroll
    for (int kd = 0; kd < HD / 16; ++kd)
        ldmatrix_x4(qf[kd], tile_at<HD>(qs, warp * 16 + (lane & 15), kd * 2 + (lane >> 4)));

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) o[i][r] = 0.0f;
    float row_max[2] = {neg_inf(), neg_inf()}, row_sum[2] = {0.0f, 0.0f};
    const int rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    for (int k0 = 0; k0 < Sk; k0 += TC_KEYS) {
        __syncthreads();  // every warp is done with the previous K and V tiles
        load_tile<HD>(ks, kp, k0, Sk, tid);
        cp_async_commit();
        load_tile<HD>(vs, vp, k0, Sk, tid);
        cp_async_commit();
        cp_async_wait<1>();  // K has landed; V may still be in flight
        __syncthreads();

        float s[TC_KEYS / 8][4];
#pragma unroll
        for (int i = 0; i < TC_KEYS / 8; ++i)
#pragma unroll
            for (int r = 0; r < 4; ++r) s[i][r] = 0.0f;
#pragma unroll
        for (int kd = 0; kd < HD / 16; ++kd)
#pragma unroll
            for (int nt = 0; nt < TC_KEYS / 8; nt += 2) {
                // keys nt*8 .. nt*8+15 as two n-tiles; dims kd*16 .. kd*16+15 as b0, b1
                const int key = nt * 8 + (lane & 7) + ((lane >> 4) << 3);
                u32 r[4];
                ldmatrix_x4(r, tile_at<HD>(ks, key, kd * 2 + ((lane >> 3) & 1)));
                mma_16816(s[nt], qf[kd], r[0], r[1]);
                mma_16816(s[nt + 1], qf[kd], r[2], r[3]);
            }

        // scale, mask, and the running maximum of each of this thread's two rows
        float tile_max[2] = {neg_inf(), neg_inf()};
#pragma unroll
        for (int nt = 0; nt < TC_KEYS / 8; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int h = r >> 1, key = k0 + nt * 8 + 2 * t + (r & 1);
                float v = s[nt][r] * scale;
                if (key >= Sk) {
                    v = neg_inf();
                } else if (mask_const) {
                    v += mask_value;
                } else if (mask_kind) {
                    v += rows[h] < Sq ? m.at(mbase, rows[h], key) : 0.0f;
                }
                s[nt][r] = v;
                tile_max[h] = fmaxf(tile_max[h], v);
            }
        float ref[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
            const float new_max = fmaxf(row_max[h], tile_max[h]);
            ref[h] = new_max == neg_inf() ? 0.0f : new_max;
            const float alpha = __expf(row_max[h] - ref[h]);
            row_max[h] = new_max;
            row_sum[h] *= alpha;
#pragma unroll
            for (int i = 0; i < HD / 8; ++i) {
                o[i][2 * h] *= alpha;
                o[i][2 * h + 1] *= alpha;
            }
        }
        u32 pf[TC_KEYS / 16][4];  // probabilities as A fragments of P V, per 16 keys
#pragma unroll
        for (int nt = 0; nt < TC_KEYS / 8; ++nt) {
            const float p0 = __expf(s[nt][0] - ref[0]), p1 = __expf(s[nt][1] - ref[0]);
            const float p2 = __expf(s[nt][2] - ref[1]), p3 = __expf(s[nt][3] - ref[1]);
            row_sum[0] += p0 + p1;  // this thread's share; the quad is summed at the end
            row_sum[1] += p2 + p3;
            pf[nt >> 1][(nt & 1) * 2] = pack_half2(p0, p1);
            pf[nt >> 1][(nt & 1) * 2 + 1] = pack_half2(p2, p3);
        }

        cp_async_wait<0>();  // V has landed
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TC_KEYS / 16; ++kk)
#pragma unroll
            for (int dn = 0; dn < HD / 16; ++dn) {
                u32 r[4];
                ldmatrix_x4_trans(r, tile_at<HD>(vs, kk * 16 + (lane & 15), dn * 2 + (lane >> 4)));
                mma_16816(o[2 * dn], pf[kk], r[0], r[1]);
                mma_16816(o[2 * dn + 1], pf[kk], r[2], r[3]);
            }
    }

    unsigned short* yp = reinterpret_cast<unsigned short*>(Yh) + (i64)z * Sq * HD;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = row_sum[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (rows[h] >= Sq) continue;
        const float inv = sum == 0.0f ? quiet_nan() : 1.0f / sum;  // all masked: NaN
#pragma unroll
        for (int i = 0; i < HD / 8; ++i) {
            const int d = i * 8 + 2 * t;
            *reinterpret_cast<u32*>(yp + (i64)rows[h] * HD + d) =
                pack_half2(o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
        }
    }
}

extern "C" {

#define T float
__global__ void __launch_bounds__(256) attention_simt_f32(ATTENTION_ARGS) {
    attention_simt<T>(Q, K, V, Y, mask, mask_kind, Sq, Sk, D, Dv, scale, nb1, sq0, sq1, sk0, sk1,
                      sv0, sv1, sm0, sm1, smq, smk);
}
#undef T
#define T half_t
__global__ void __launch_bounds__(256) attention_simt_f16(ATTENTION_ARGS) {
    attention_simt<T>(Q, K, V, Y, mask, mask_kind, Sq, Sk, D, Dv, scale, nb1, sq0, sq1, sk0, sk1,
                      sv0, sv1, sm0, sm1, smq, smk);
}
__global__ void __launch_bounds__(128) attention_tc_f16_d64(ATTENTION_ARGS) {
    attention_tc<64>(Q, K, V, Y, mask, mask_kind, Sq, Sk, scale, nb1, sq0, sq1, sk0, sk1, sv0, sv1,
                     sm0, sm1, smq, smk);
}
__global__ void __launch_bounds__(128) attention_tc_f16_d128(ATTENTION_ARGS) {
    attention_tc<128>(Q, K, V, Y, mask, mask_kind, Sq, Sk, scale, nb1, sq0, sq1, sk0, sk1, sv0, sv1,
                      sm0, sm1, smq, smk);
}
#undef T

}  // extern "C"
