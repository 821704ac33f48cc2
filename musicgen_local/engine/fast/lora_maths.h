/* y[m] += B_s (A_s x[m]) for the rows of a decode step that use an adapter, on CPU, in float32: each row
   reads its own slot's low-rank pair (the way punica's BGMV does on GPU); nothing is gathered or copied.

   Every element is computed by the same operations in the same order whatever the other rows, the slot
   the adapter sits in, the vector width or the thread: low[j] = 0, then one fused multiply-add per k in
   increasing k; then, per output column, d = 0, one fused multiply-add per j < the slot's rank in
   increasing j, and y += d. So a row's result depends on its x, its y and its slot's contents only; a row
   whose slot is negative is not touched. Consecutive rows of one slot (a request's two rows, a prompt's
   positions) share each load of the slot's tables: that changes which loads happen, not the arithmetic.

   x: [M, K] (row stride ldx); a: slots of [K, R] (slot stride sa); b: slots of [R, N] (slot stride sb,
   row stride ldb); y: [M, N] (row stride ldy); row m uses slot[m / group], whose rank is rank[slot].

   Not compiled on its own: rows_linear.cpp includes it after rows_maths.h (its vector type), once per
   instruction set; the build's -ffp-contract=fast makes each `acc += a * b` one fused multiply-add, like
   the tails' fmaf. */

#define LORA_MR 4 /* rows of one slot done together */
#define LORA_NV 4 /* vectors of output columns a pass */

/* low[r][j] (row stride R) = x[r] . a[:, j], for the RUN rows. */
template <int RUN>
static void lora_down(int K, int R, const float *x, ptrdiff_t ldx, const float *a, float *low) {
    int j = 0;
    for (; j + 2 * VW <= R; j += 2 * VW) {
        vf acc[RUN][2];
        for (int r = 0; r < RUN; r++) acc[r][0] = acc[r][1] = splat(0.f);
        for (int k = 0; k < K; k++) {
            const float *ak = a + (ptrdiff_t)k * R + j;
            const vf a0 = load(ak), a1 = load(ak + VW);
            for (int r = 0; r < RUN; r++) {
                const vf xr = splat(x[r * ldx + k]);
                acc[r][0] += xr * a0;
                acc[r][1] += xr * a1;
            }
        }
        for (int r = 0; r < RUN; r++) {
            store(low + r * R + j, acc[r][0]);
            store(low + r * R + j + VW, acc[r][1]);
        }
    }
    for (; j < R; j++)
        for (int r = 0; r < RUN; r++) {
            float acc = 0.f;
            for (int k = 0; k < K; k++) acc = fmaf(x[r * ldx + k], a[(ptrdiff_t)k * R + j], acc);
            low[r * R + j] = acc;
        }
}

/* y[r] += low[r] . b[:rank] for the RUN rows. */
template <int RUN>
static void lora_up(int R, int rank, int N, const float *low, const float *b, ptrdiff_t ldb, float *y,
                    ptrdiff_t ldy) {
    int n = 0;
    for (; n + LORA_NV * VW <= N; n += LORA_NV * VW) {
        vf acc[RUN][LORA_NV];
        for (int r = 0; r < RUN; r++)
            for (int v = 0; v < LORA_NV; v++) acc[r][v] = splat(0.f);
        for (int j = 0; j < rank; j++) {
            const float *bj = b + (ptrdiff_t)j * ldb + n;
            vf bv[LORA_NV];
            for (int v = 0; v < LORA_NV; v++) bv[v] = load(bj + v * VW);
            for (int r = 0; r < RUN; r++) {
                const vf l = splat(low[r * R + j]);
                for (int v = 0; v < LORA_NV; v++) acc[r][v] += l * bv[v];
            }
        }
        for (int r = 0; r < RUN; r++)
            for (int v = 0; v < LORA_NV; v++) {
                float *yp = y + r * ldy + n + v * VW;
                store(yp, load(yp) + acc[r][v]);
            }
    }
    for (; n < N; n++)
        for (int r = 0; r < RUN; r++) {
            float acc = 0.f;
            for (int j = 0; j < rank; j++) acc = fmaf(low[r * R + j], b[(ptrdiff_t)j * ldb + n], acc);
            y[r * ldy + n] += acc;
        }
}

template <int RUN>
static void lora_run(int K, int R, int rank, int N, const float *x, ptrdiff_t ldx, const float *a, const float *b,
                     ptrdiff_t ldb, float *y, ptrdiff_t ldy, float *low) {
    lora_down<RUN>(K, R, x, ldx, a, low);
    lora_up<RUN>(R, rank, N, low, b, ldb, y, ldy);
}

/* Rows [lo, hi); `low` holds LORA_MR x R floats. */
static void lora_rows(int64_t lo, int64_t hi, int K, int R, int N, const float *x, ptrdiff_t ldx, const float *a,
                      ptrdiff_t sa, const float *b, ptrdiff_t sb, ptrdiff_t ldb, float *y, ptrdiff_t ldy,
                      const int64_t *slot, const int64_t *rank, int64_t group, float *low) {
    for (int64_t m = lo; m < hi;) {
        const int64_t s = slot[m / group];
        int run = 1;
        while (run < LORA_MR && m + run < hi && slot[(m + run) / group] == s) run++;
        if (s >= 0) {
            const float *xm = x + m * ldx, *as = a + s * sa, *bs = b + s * sb;
            float *ym = y + m * ldy;
            const int r = (int)rank[s];
            switch (run) {
                case 1: lora_run<1>(K, R, r, N, xm, ldx, as, bs, ldb, ym, ldy, low); break;
                case 2: lora_run<2>(K, R, r, N, xm, ldx, as, bs, ldb, ym, ldy, low); break;
                case 3: lora_run<3>(K, R, r, N, xm, ldx, as, bs, ldb, ym, ldy, low); break;
                default: lora_run<4>(K, R, r, N, xm, ldx, as, bs, ldb, ym, ldy, low); break;
            }
        }
        m += run;
    }
}
