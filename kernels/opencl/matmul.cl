/* GEMM: Y[b] = act(alpha * A[b] @ B[b] + beta * C[b]), float32, accumulation in float.
 * Prelude: TM TN (outputs per work-item, rows x columns), TK (k tile), WGX WGY (work-group
 * shape), ACT (epilogue, see common.h), HAS_C. A, B and C are read through strides, so
 * transposes, broadcast batch dimensions and broadcast C (bias rows/columns, scalars) cost
 * nothing; boff holds per batch the element offsets of A, B and C. Y is dense [b, M, N]. */

#define BM (WGY * TM)
#define BN (WGX * TN)

__kernel __attribute__((reqd_work_group_size(WGX, WGY, 1)))
void gemm(__global float* Y, __global const float* A, __global const float* B,
          __global const float* C, __global const long* boff, int M, int N, int K,
          long sam, long sak, long sbk, long sbn, long scm, long scn,
          float alpha, float beta, float lo, float hi) {
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int tid = ty * WGX + tx;
    const int n0 = get_group_id(0) * BN, m0 = get_group_id(1) * BM;
    const int bat = get_global_id(2);
    __global const float* Ab = A + boff[3 * bat];
    __global const float* Bb = B + boff[3 * bat + 1];
    __local float As[TK][BM];
    __local float Bs[TK][BN];
    float acc[TM][TN];
    for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TK) {
        for (int e = tid; e < TK * BM; e += WGX * WGY) {
            int kk = e / BM, mm = e % BM;
            int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? Ab[m * sam + k * sak] : 0.0f;
        }
        for (int e = tid; e < TK * BN; e += WGX * WGY) {
            int kk = e / BN, nn = e % BN;
            int n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < K) ? Bb[k * sbk + n * sbn] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TK; ++kk) {
            float a[TM], b[TN];
            for (int i = 0; i < TM; ++i) a[i] = As[kk][ty + i * WGY];
            for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx + j * WGX];
            for (int i = 0; i < TM; ++i)
                for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    __global float* Yb = Y + (long)bat * M * N;
    for (int i = 0; i < TM; ++i) {
        int m = m0 + ty + i * WGY;
        if (m >= M) continue;
        for (int j = 0; j < TN; ++j) {
            int n = n0 + tx + j * WGX;
            if (n >= N) continue;
            float v = alpha * acc[i][j];
#if HAS_C
            v += beta * C[boff[3 * bat + 2] + m * scm + n * scn];
#endif
            Yb[(long)m * N + n] = bp_act(v, lo, hi);
        }
    }
}
