// The GEMM building blocks shared by matmul.cu and conv.cu: a register-blocked SIMT tile
// (any type, any size) and a tensor-core tile (f16 in, f32 accumulators, sm_80+ mma.sync).
//
// Both compute one BM x BN tile of C = A B (A is M x K, B is K x N) and hand each
// accumulator to an epilogue, which applies bias and activation and stores: the SIMT tile
// calls epi.column(n) once per column and epi.store(column, m, value) per element, the
// tensor-core tile epi.pair(m, n, v0, v1) for two neighbouring columns. Operands reach the
// SIMT tile through loaders, which are only asked for elements inside the matrix:
//   a(m, k)                  element (m, k) of A;
//   b.column(n) -> ctx       whatever column n of B needs once (an address; for conv.cu's
//                            implicit im2col, the output pixel's image and window origin);
//   b.at(ctx, k)             element (k, n) of B.
// Each thread loads one fixed column of every B slice, so column() runs once per tile.
#pragma once
#include "common.cuh"

// ------------------------------------------------------------------ SIMT tile
//
// NT = (BM/TM) * (BN/TN) threads; thread (tr, tc) owns rows tr + i*(BM/TM) and columns
// tc + j*(BN/TN): neighbouring threads read neighbouring shared-memory words (no bank
// conflicts) and store neighbouring columns (coalesced). The next k-slice is fetched into
// registers while the current one is multiplied out of shared memory.
template <int BM, int BN, int BK, int TM, int TN, class LoadA, class LoadB, class Epi>
__device__ __forceinline__ void simt_tile(const LoadA& load_a, const LoadB& load_b, Epi& epi,
                                          int M, int N, int K, int m0, int n0) {
    constexpr int NT = (BM / TM) * (BN / TN);
    constexpr int A_PER = BM * BK / NT, A_STEP = NT / BK;  // A: a fixed k, rows a_m + i*A_STEP
    constexpr int B_PER = BK * BN / NT, B_STEP = NT / BN;  // B: a fixed n, rows b_k + i*B_STEP
    static_assert(NT % BK == 0 && NT % BN == 0 && BM * BK % NT == 0 && BK * BN % NT == 0,
                  "tile loads must divide evenly");
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int tid = threadIdx.x;
    const int tr = tid / (BN / TN), tc = tid % (BN / TN);
    const int a_k = tid % BK, a_m = tid / BK;
    const int b_n = tid % BN, b_k = tid / BN;
    const bool b_ok = n0 + b_n < N;
    const auto column = load_b.column(b_ok ? n0 + b_n : n0);
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    float ra[A_PER], rb[B_PER];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int m = m0 + a_m + i * A_STEP, k = k0 + a_k;
            ra[i] = (m < M && k < K) ? load_a(m, k) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            const int k = k0 + b_k + i * B_STEP;
            rb[i] = (b_ok && k < K) ? load_b.at(column, k) : 0.0f;
        }
    };
    fetch(0);
    for (int k0 = 0; k0 < K; k0 += BK) {
        __syncthreads();  // everyone is done reading the previous slice
#pragma unroll
        for (int i = 0; i < A_PER; ++i) As[a_k][a_m + i * A_STEP] = ra[i];
#pragma unroll
        for (int i = 0; i < B_PER; ++i) Bs[b_k + i * B_STEP][b_n] = rb[i];
        __syncthreads();
        if (k0 + BK < K) fetch(k0 + BK);
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float av[TM], bv[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) av[i] = As[k][tr + i * (BM / TM)];
#pragma unroll
            for (int j = 0; j < TN; ++j) bv[j] = Bs[k][tc + j * (BN / TN)];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int n = n0 + tc + j * (BN / TN);
        if (n >= N) continue;
        const auto out = epi.column(n);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int m = m0 + tr + i * (BM / TM);
            if (m < M) epi.store(out, m, acc[i][j]);
        }
    }
}

// ------------------------------------------------------------------ tensor-core tile
//
// 128 x 128 x 32 tiles, 8 warps as 2 (M) x 4 (N), each warp 64 x 32 = 4 x 4 mma tiles of
// 16 x 8; a 3-stage cp.async pipeline (48 KiB of shared memory, the static limit).
// A is row-major M x K with row stride lda, B row-major K x N with row stride ldb, both
// f16. Requirements (checked by the host wrapper): K, N, lda, ldb multiples of 8 and A, B
// 16-byte aligned, so every 16-byte chunk of a tile is wholly inside or outside the
// matrix, and the epilogue's column pairs are whole; M arbitrary. Rows, columns and k
// past the edges load as zeros and are not stored.
//
// Shared layout: A tiles [128][32] (64 B rows, 4 chunks of 16 B), chunk c of row r stored
// at c ^ ((r >> 1) & 3); B tiles [32][128] (256 B rows, 16 chunks), chunk c of row r at
// c ^ (r & 7). ldmatrix reads 8 rows of one chunk column at a time; the XOR spreads those
// 8 rows over the 8 distinct 16-byte bank groups, so neither the ldmatrix reads nor the
// cp.async writes conflict.
#define TC_BM 128
#define TC_BN 128
#define TC_BK 32
#define TC_STAGES 3
#define TC_THREADS 256

struct TcSmem {
    unsigned short a[TC_STAGES][TC_BM][TC_BK];
    unsigned short b[TC_STAGES][TC_BK][TC_BN];
};

__device__ __forceinline__ int tc_a_chunk(int row, int chunk) { return chunk ^ ((row >> 1) & 3); }
__device__ __forceinline__ int tc_b_chunk(int row, int chunk) { return chunk ^ (row & 7); }

template <class Epi>
__device__ __forceinline__ void tc_tile(const half_t* __restrict__ A, const half_t* __restrict__ B,
                                        Epi& epi, int M, int N, int K, i64 lda, i64 ldb, int m0,
                                        int n0) {
    __shared__ __align__(128) TcSmem sm;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;  // warp tile: rows wm*64.., columns wn*32..
    const unsigned short* a_bits = reinterpret_cast<const unsigned short*>(A);
    const unsigned short* b_bits = reinterpret_cast<const unsigned short*>(B);

    auto load_stage = [&](int stage, int k0) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {  // A: 128 rows x 4 chunks = 512 chunks
            const int c = tid + i * TC_THREADS, row = c >> 2, chunk = c & 3;
            const int m = m0 + row, k = k0 + chunk * 8;
            const bool ok = m < M && k < K;
            const unsigned short* src = ok ? a_bits + (i64)m * lda + k : a_bits;
            cp_async16(&sm.a[stage][row][tc_a_chunk(row, chunk) * 8], src, ok ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {  // B: 32 rows x 16 chunks = 512 chunks
            const int c = tid + i * TC_THREADS, row = c >> 4, chunk = c & 15;
            const int k = k0 + row, n = n0 + chunk * 8;
            const bool ok = k < K && n < N;
            const unsigned short* src = ok ? b_bits + (i64)k * ldb + n : b_bits;
            cp_async16(&sm.b[stage][row][tc_b_chunk(row, chunk) * 8], src, ok ? 16 : 0);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    const int ktiles = (K + TC_BK - 1) / TC_BK;
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, s * TC_BK);
        cp_async_commit();  // an empty group when there is no tile keeps the count uniform
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<TC_STAGES - 2>();  // tile kt has landed (for this thread) ...
        __syncthreads();                 // ... for every thread, and stage kt-1 is free
        const int next = kt + TC_STAGES - 1;
        if (next < ktiles) load_stage(next % TC_STAGES, next * TC_BK);
        cp_async_commit();
        const int stage = kt % TC_STAGES;
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            u32 af[4][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                const int row = wm * 64 + mi * 16 + (lane & 15);
                const int chunk = (kk >> 3) + (lane >> 4);
                ldmatrix_x4(af[mi], &sm.a[stage][row][tc_a_chunk(row, chunk) * 8]);
            }
#pragma unroll
            for (int nj = 0; nj < 2; ++nj) {
                const int row = kk + (lane & 15);
                const int chunk = ((wn * 32 + nj * 16) >> 3) + (lane >> 4);
                u32 r[4];
                ldmatrix_x4_trans(r, &sm.b[stage][row][tc_b_chunk(row, chunk) * 8]);
                bf[2 * nj][0] = r[0];
                bf[2 * nj][1] = r[1];
                bf[2 * nj + 1][0] = r[2];
                bf[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
        }
    }
    cp_async_wait<0>();

    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int n = n0 + wn * 32 + ni * 8 + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + wm * 64 + mi * 16 + g + 8 * h;
                if (m < M && n < N) epi.pair(m, n, acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
            }
        }
}

// Block (x, y) of a grid of gridDim.x column tiles by gridDim.y row tiles, re-ordered in
// groups of 8 row tiles: consecutive blocks then share A rows and B columns, so the
// operands a wave of blocks reads stay in L2.
__device__ __forceinline__ void grouped_block(int& bm, int& bn) {
    const int group = 8;
    const int pid = blockIdx.y * gridDim.x + blockIdx.x;
    const int per_group = group * gridDim.x;
    const int first = (pid / per_group) * group;
    const int rows = min((int)gridDim.y - first, group);
    bm = first + (pid % per_group) % rows;
    bn = (pid % per_group) / rows;
}
