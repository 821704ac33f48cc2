// The rows kernel as a torch operator: torch.ops.musicgen_rows.linear(x, w_t, bias, width), and the adapters'
// low-rank products beside it: torch.ops.musicgen_rows.lora_add_(y, x, a, b, slot, rank, group) (lora_maths.h).
// (Its own namespace: musicgen_local::rows_linear and musicgen_local::rows_lora_add are the Python custom ops
// engine/fast/batch.py wraps around them for torch.compile.)
//
// The maths are rows_maths.h, compiled here twice, each copy for one instruction set through
// `#pragma GCC target` (no -march flag), so one build runs on any x86-64 and picks the widest vectors
// this CPU has at run time (__builtin_cpu_supports). Threads: ATen's at::parallel_for over whole
// column blocks, i.e. torch's own thread pool (its OpenMP runtime; torch.set_num_threads governs it).
// The library is compiled with -fopenmp only for ATen's header and is not linked against any OpenMP
// runtime of its own: the GOMP symbols resolve to the libgomp that libtorch_cpu already loaded.
//
// A row's result does not depend on how the columns are split between threads: every element is
// computed by the same operations in the same order whichever block and thread it falls to.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <string.h>
#include <initializer_list>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define ROWS_X86 1

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace rows512 {
#define VW 16
#define FEW_NV 8
#include "rows_maths.h"
#include "lora_maths.h"
constexpr int nb_few = VW * FEW_NV, nb_many = VW * MANY_NV;
#undef LORA_MR
#undef LORA_NV
#undef VW
#undef FEW_NV
#undef FEW_KB
#undef MANY_NV
#undef MANY_MR
#undef MANY_KB
#undef PREFETCH_AHEAD
#undef TILE
}  // namespace rows512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace rows256 {
#define VW 8
#define FEW_NV 4
#include "rows_maths.h"
#include "lora_maths.h"
constexpr int nb_few = VW * FEW_NV, nb_many = VW * MANY_NV;
#undef LORA_MR
#undef LORA_NV
#undef VW
#undef FEW_NV
#undef FEW_KB
#undef MANY_NV
#undef MANY_MR
#undef MANY_KB
#undef PREFETCH_AHEAD
#undef TILE
}  // namespace rows256
#pragma GCC pop_options
#endif

namespace {

using columns_fn = void (*)(int, int, const float *, ptrdiff_t, const float *, ptrdiff_t, float *, ptrdiff_t, int,
                            int);
using lora_fn = void (*)(int64_t, int64_t, int, int, int, const float *, ptrdiff_t, const float *, ptrdiff_t,
                         const float *, ptrdiff_t, ptrdiff_t, float *, ptrdiff_t, const int64_t *, const int64_t *,
                         int64_t, float *);

struct Path {
    int width;          // floats a vector
    int nb_few, nb_many;  // columns a block, for two rows or fewer / more
    columns_fn columns, tail;
    lora_fn lora;
};

// The paths this CPU can run, widest first.
std::vector<Path> paths() {
    std::vector<Path> out;
#ifdef ROWS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        out.push_back({16, rows512::nb_few, rows512::nb_many, rows512::columns, rows512::tail, rows512::lora_rows});
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        out.push_back({8, rows256::nb_few, rows256::nb_many, rows256::columns, rows256::tail, rows256::lora_rows});
#endif
    return out;
}

const std::vector<Path> &supported() {
    static const std::vector<Path> all = paths();
    return all;
}

std::vector<int64_t> widths() {
    std::vector<int64_t> out;
    for (const Path &p : supported()) out.push_back(p.width);
    return out;
}

// width 0: the widest this CPU runs; 16 or 8: that one (an error where this CPU cannot run it).
at::Tensor rows_linear(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &bias,
                       int64_t width) {
    const auto &all = supported();
    TORCH_CHECK(!all.empty(), "rows_linear: this CPU has neither AVX-512 nor AVX2 with FMA");
    const Path *path = nullptr;
    for (const Path &p : all)
        if (width == 0 || p.width == width) {
            path = &p;
            break;
        }
    TORCH_CHECK(path != nullptr, "rows_linear: this CPU cannot run ", width, "-float vectors");
    TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "rows_linear: CPU tensors only");
    TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "rows_linear: float32 only");
    TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(0), "rows_linear: x [M, K] and w [K, N], not ",
                x.sizes(), " and ", w.sizes());
    TORCH_CHECK(x.stride(1) == 1 && w.stride(1) == 1, "rows_linear: x and w need unit column stride");
    const int64_t M = x.size(0), K = x.size(1), N = w.size(1);
    TORCH_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, "rows_linear: too large");
    const float *b = nullptr;
    if (bias.has_value() && bias->defined()) {
        TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->dim() == 1 &&
                        bias->size(0) == N && bias->stride(0) == 1,
                    "rows_linear: bias must be a float32 [N] CPU tensor with unit stride");
        b = bias->data_ptr<float>();
    }
    at::Tensor y = at::empty({M, N}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *yp = y.data_ptr<float>();
    const ptrdiff_t ldx = x.stride(0), ldw = w.stride(0), ldy = y.stride(0);
    const int m = (int)M, n = (int)N, k = (int)K;
    const int nb = M <= 2 ? path->nb_few : path->nb_many;
    const int64_t blocks = N / nb;
    // One task a column block at least; the block that ends the whole blocks also does the columns after them.
    at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
        path->columns(m, k, xp, ldx, wp, ldw, yp, ldy, (int)(lo * nb), (int)(hi * nb));
        if (hi == blocks) path->tail(m, k, xp, ldx, wp, ldw, yp, ldy, (int)(blocks * nb), n);
    });
    if (blocks == 0) path->tail(m, k, xp, ldx, wp, ldw, yp, ldy, 0, n);
    if (b)
        for (int r = 0; r < m; r++)
            for (int c = 0; c < n; c++) yp[r * ldy + c] += b[c];
    return y;
}

// y [M, N] += each row's low-rank product, in place: row m uses slot[m / group] of a [S, K, R] and b [S, R, N]
// (b may be a column slice of a wider table: unit column stride, any row and slot stride), the first rank[slot]
// rows of b (the rest are zero padding); a negative slot leaves the row as it is. The widest path this CPU runs
// (every path computes the same bits).
void lora_add(const at::Tensor &y, const at::Tensor &x, const at::Tensor &a, const at::Tensor &b,
              const at::Tensor &slot, const at::Tensor &rank, int64_t group) {
    const auto &all = supported();
    TORCH_CHECK(!all.empty(), "lora_add: this CPU has neither AVX-512 nor AVX2 with FMA");
    for (const at::Tensor *t : std::initializer_list<const at::Tensor *>{&y, &x, &a, &b})
        TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat, "lora_add: float32 CPU tensors only");
    TORCH_CHECK(slot.device().is_cpu() && slot.scalar_type() == at::kLong && slot.dim() == 1,
                "lora_add: slot [groups] int64");
    TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && a.dim() == 3 && b.dim() == 3, "lora_add: x, y 2-d; a, b 3-d");
    const int64_t M = x.size(0), K = x.size(1), N = y.size(1), R = a.size(2);
    TORCH_CHECK(y.size(0) == M && a.size(1) == K && b.size(1) == R && b.size(2) == N && a.size(0) == b.size(0),
                "lora_add: shapes x ", x.sizes(), ", y ", y.sizes(), ", a ", a.sizes(), ", b ", b.sizes());
    TORCH_CHECK(x.stride(1) == 1 && y.stride(1) == 1 && b.stride(2) == 1 && a.stride(2) == 1 && a.stride(1) == R,
                "lora_add: unit column strides (a contiguous per slot)");
    TORCH_CHECK(group > 0 && slot.size(0) * group == M && slot.stride(0) == 1, "lora_add: slot per group of rows");
    TORCH_CHECK(K <= INT32_MAX && N <= INT32_MAX && R <= INT32_MAX, "lora_add: too large");
    const int64_t S = a.size(0);
    TORCH_CHECK(rank.device().is_cpu() && rank.scalar_type() == at::kLong && rank.dim() == 1 && rank.size(0) == S &&
                    rank.stride(0) == 1,
                "lora_add: rank [slots] int64");
    const int64_t *sp = slot.data_ptr<int64_t>(), *rp = rank.data_ptr<int64_t>();
    for (int64_t g = 0; g < slot.size(0); g++) TORCH_CHECK(sp[g] < S, "lora_add: slot ", sp[g], " of ", S);
    for (int64_t s = 0; s < S; s++) TORCH_CHECK(rp[s] >= 0 && rp[s] <= R, "lora_add: rank ", rp[s], " of ", R);
    const Path &path = all.front();
    const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
    float *yp = y.data_ptr<float>();
    at::parallel_for(0, M, 4, [&](int64_t lo, int64_t hi) {
        std::vector<float> low((size_t)(4 * R));  // LORA_MR rows
        path.lora(lo, hi, (int)K, (int)R, (int)N, xp, x.stride(0), ap, a.stride(0), bp, b.stride(0), b.stride(1), yp,
                  y.stride(0), sp, rp, group, low.data());
    });
}

}  // namespace

TORCH_LIBRARY(musicgen_rows, lib) {
    lib.def("linear(Tensor x, Tensor w_t, Tensor? bias=None, int width=0) -> Tensor");
    lib.def("lora_add_(Tensor(a!) y, Tensor x, Tensor a, Tensor b, Tensor slot, Tensor rank, int group) -> ()");
    lib.def("widths() -> int[]", &widths);
}

TORCH_LIBRARY_IMPL(musicgen_rows, CPU, lib) {
    lib.impl("linear", &rows_linear);
    lib.impl("lora_add_", &lora_add);
}
