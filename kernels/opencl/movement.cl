/* Data movement on raw element bits (RT: uchar, ushort, uint or ulong by element size). */

/* Copy a dense input into a strided region of the output (Concat).
 * L = [rank, dims[MAXR], out strides[MAXR], out base]. */
__kernel void scatter_copy(__global RT* y, __global const RT* x, __global const long* L, long n) {
    long i = get_global_id(0);
    if (i >= n) return;
    int rank = (int)L[0];
    y[L[1 + 2 * MAXR] + bp_offset(i, rank, L + 1, L + 1 + MAXR)] = x[i];
}

/* Pad: L = [rank, out dims[MAXR], in dims[MAXR], in strides[MAXR], pad begins[MAXR]].
 * MODE 0 constant, 1 reflect, 2 edge, 3 wrap. */
__kernel void pad(__global RT* y, __global const RT* x, __global const long* L, long n, RT value) {
    long i = get_global_id(0);
    if (i >= n) return;
    int rank = (int)L[0];
    long rem = i, off = 0;
    for (int d = rank - 1; d >= 0; --d) {
        long od = L[1 + d], dim = L[1 + MAXR + d];
        long q = rem % od;
        rem /= od;
        long s = q - L[1 + 3 * MAXR + d];
        if (s < 0 || s >= dim) {
#if MODE == 0
            y[i] = value;
            return;
#elif MODE == 1
            if (dim == 1) {
                s = 0;
            } else {
                long period = 2 * (dim - 1);
                s = s % period;
                if (s < 0) s += period;
                if (s >= dim) s = period - s;
            }
#elif MODE == 2
            s = s < 0 ? 0 : dim - 1;
#else
            s = s % dim;
            if (s < 0) s += dim;
#endif
        }
        off += s * L[1 + 2 * MAXR + d];
    }
    y[i] = x[off];
}

/* Gather along one axis: data viewed as [outer, axis_n, inner], indices already in range. */
__kernel void gather(__global RT* y, __global const RT* x, __global const long* idx,
                     long n, long nidx, long axis_n, long inner) {
    long i = get_global_id(0);
    if (i >= n) return;
    long in = i % inner;
    long t = i / inner;
    long j = t % nidx;
    long o = t / nidx;
    y[i] = x[(o * axis_n + idx[j]) * inner + in];
}
