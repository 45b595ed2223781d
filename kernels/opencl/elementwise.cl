/* Element-wise maps of up to three inputs, generated per op and dtype.
 * Prelude: T0 T1 T2 (input element types), TO (output), PT (parameter type) and
 *   inline TO bp_op(T0 a, T1 b, T2 c, PT p0, PT p1)
 * Unused inputs are bound to the first buffer and never change the result. */

/* Same-shape inputs, or inputs of one element (n? == 1) broadcast to all. */
__kernel void map_contig(__global TO* y, __global const T0* a, __global const T1* b,
                         __global const T2* c, long n, long na, long nb, long nc,
                         PT p0, PT p1) {
    long i = get_global_id(0);
    if (i >= n) return;
    y[i] = bp_op(a[na == 1 ? 0 : i], b[nb == 1 ? 0 : i], c[nc == 1 ? 0 : i], p0, p1);
}

/* Any broadcast or view: L = [rank, dims[MAXR], strides a/b/c [MAXR] each, base a/b/c].
 * The output is dense row-major over dims. */
__kernel void map_strided(__global TO* y, __global const T0* a, __global const T1* b,
                          __global const T2* c, __global const long* L, long n,
                          PT p0, PT p1) {
    long i = get_global_id(0);
    if (i >= n) return;
    int rank = (int)L[0];
    __global const long* dims = L + 1;
    long oa = L[1 + 4 * MAXR], ob = L[2 + 4 * MAXR], oc = L[3 + 4 * MAXR];
    long rem = i;
    for (int d = rank - 1; d >= 0; --d) {
        long q = rem % dims[d];
        rem /= dims[d];
        oa += q * L[1 + MAXR + d];
        ob += q * L[1 + 2 * MAXR + d];
        oc += q * L[1 + 3 * MAXR + d];
    }
    y[i] = bp_op(a[oa], b[ob], c[oc], p0, p1);
}
