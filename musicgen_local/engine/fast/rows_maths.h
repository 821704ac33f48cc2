/* y = x @ w + bias for the few rows of a decode step, on CPU, in float32: the maths of the rows kernel.

   Why not the BLAS: with 2 to 16 rows a step is a stream of weights through a little arithmetic, and
   MKL's small-row sgemm reads them at about half the memory's rate; and its result for a row depends
   on how many rows it is given, while a request's output must not depend on the batch around it.

   Here every element of y is 0, then one fused multiply-add per k in increasing k, then + bias: the
   same operations whatever the number of rows, the row's place, the column's block or the thread
   that computes it. So a row's result depends on that row and the weights only.

   x: [M, K] (row stride ldx); w: [K, N] (row stride ldw), the transposed layout the CPU loader keeps;
   y: [M, N] (row stride ldy).

   Not compiled on its own: rows_linear.cpp includes it once per instruction set, inside a namespace and
   a `#pragma GCC target` region, after defining VW (floats a vector: 16 with AVX-512, 8 with AVX2) and
   FEW_NV. Hardware FMA is required (both targets include it) and the build passes -ffp-contract=fast:
   the vector columns' `acc += a * b` must round once, like the tail's fmaf, or a column would give
   other bits in a block than in the tail. */

typedef float vf __attribute__((vector_size(VW * 4), aligned(4), may_alias));

static inline vf load(const float *p) { return *(const vf *)p; }
static inline void store(float *p, vf v) { *(vf *)p = v; }
static inline vf splat(float a) { return (vf){0} + a; }

/* Two rows or fewer: memory-bound. A sweep reads FEW_KB whole weight rows as parallel sequential
   streams (FEW_NV vectors wide), prefetching one block ahead, while the partial sums wait in y (in L1). */
#define FEW_KB 8
/* More rows: compute-bound. Tiles of MANY_MR rows x MANY_NV vectors; a weight block of MANY_KB rows
   stays in L1 while every row group passes over it. */
#define MANY_NV 4
#define MANY_MR 6
#define MANY_KB 128
#define PREFETCH_AHEAD 64 /* floats */

#define TILE(NAME, R, NV)                                                                         \
    static void NAME(int kb, const float *x, ptrdiff_t ldx, const float *w, ptrdiff_t ldw,        \
                     float *y, ptrdiff_t ldy) {                                                   \
        vf acc[R][NV];                                                                            \
        for (int m = 0; m < R; m++)                                                               \
            for (int j = 0; j < NV; j++) acc[m][j] = load(y + m * ldy + j * VW);                  \
        for (int k = 0; k < kb; k++) {                                                            \
            const float *wk = w + (ptrdiff_t)k * ldw;                                             \
            vf a[R];                                                                              \
            for (int m = 0; m < R; m++) a[m] = splat(x[m * ldx + k]);                             \
            for (int j = 0; j < NV; j++) {                                                        \
                __builtin_prefetch(wk + PREFETCH_AHEAD + j * VW);                                 \
                vf b = load(wk + j * VW);                                                         \
                for (int m = 0; m < R; m++) acc[m][j] += a[m] * b;                                \
            }                                                                                     \
        }                                                                                         \
        for (int m = 0; m < R; m++)                                                               \
            for (int j = 0; j < NV; j++) store(y + m * ldy + j * VW, acc[m][j]);                  \
    }

TILE(many1, 1, MANY_NV)
TILE(many2, 2, MANY_NV)
TILE(many3, 3, MANY_NV)
TILE(many4, 4, MANY_NV)
TILE(many5, 5, MANY_NV)
TILE(many6, 6, MANY_NV)

typedef void (*tile_fn)(int, const float *, ptrdiff_t, const float *, ptrdiff_t, float *, ptrdiff_t);

/* Columns [lo, hi), a whole number of blocks. */
static void columns(int M, int K, const float *x, ptrdiff_t ldx, const float *w, ptrdiff_t ldw,
                    float *y, ptrdiff_t ldy, int lo, int hi) {
    static const tile_fn tiles[MANY_MR + 1] = {0, many1, many2, many3, many4, many5, many6};
    int nb = VW * (M <= 2 ? FEW_NV : MANY_NV), kb_max = M <= 2 ? FEW_KB : MANY_KB;
    for (int m = 0; m < M; m++) memset(y + m * ldy + lo, 0, (size_t)(hi - lo) * sizeof(float));
    for (int k0 = 0; k0 < K; k0 += kb_max) {
        int kb = K - k0 < kb_max ? K - k0 : kb_max;
        if (M <= 2) {
            /* Written out here: as a separate tile the compiler schedules it a third slower. */
            for (int n = lo; n < hi; n += nb) {
                vf a0[FEW_NV], a1[FEW_NV];
                for (int j = 0; j < FEW_NV; j++) {
                    a0[j] = load(y + n + j * VW);
                    a1[j] = M > 1 ? load(y + ldy + n + j * VW) : splat(0.f);
                }
                for (int k = k0; k < k0 + kb; k++) {
                    const float *wk = w + (ptrdiff_t)k * ldw + n;
                    vf x0 = splat(x[k]), x1 = splat(M > 1 ? x[ldx + k] : 0.f);
                    for (int j = 0; j < FEW_NV; j++) {
                        __builtin_prefetch(wk + PREFETCH_AHEAD + j * VW);
                        vf b = load(wk + j * VW);
                        a0[j] += x0 * b;
                        if (M > 1) a1[j] += x1 * b;
                    }
                }
                for (int j = 0; j < FEW_NV; j++) {
                    store(y + n + j * VW, a0[j]);
                    if (M > 1) store(y + ldy + n + j * VW, a1[j]);
                }
            }
            continue;
        }
        for (int n = lo; n < hi; n += nb)
            for (int m = 0; m < M; m += MANY_MR)
                tiles[M - m < MANY_MR ? M - m : MANY_MR](kb, x + m * ldx + k0, ldx, w + (ptrdiff_t)k0 * ldw + n, ldw,
                                               y + m * ldy + n, ldy);
    }
}

/* Columns past the last whole block, one element at a time in the same order. */
static void tail(int M, int K, const float *x, ptrdiff_t ldx, const float *w, ptrdiff_t ldw,
                 float *y, ptrdiff_t ldy, int lo, int hi) {
    for (int m = 0; m < M; m++)
        for (int n = lo; n < hi; n++) {
            float acc = 0.f;
            for (int k = 0; k < K; k++) acc = fmaf(x[m * ldx + k], w[(ptrdiff_t)k * ldw + n], acc);
            y[m * ldy + n] = acc;
        }
}
