// The rows kernel as a torch operator: torch.ops.musicgen_rows.linear(x, w_t, bias, width). (Its own
// namespace: musicgen_local::rows_linear is the Python custom op engine/fast/batch.py wraps around it for
// torch.compile.)
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
constexpr int nb_few = VW * FEW_NV, nb_many = VW * MANY_NV;
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
constexpr int nb_few = VW * FEW_NV, nb_many = VW * MANY_NV;
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

struct Path {
    int width;          // floats a vector
    int nb_few, nb_many;  // columns a block, for two rows or fewer / more
    columns_fn columns, tail;
};

// The paths this CPU can run, widest first.
std::vector<Path> paths() {
    std::vector<Path> out;
#ifdef ROWS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        out.push_back({16, rows512::nb_few, rows512::nb_many, rows512::columns, rows512::tail});
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        out.push_back({8, rows256::nb_few, rows256::nb_many, rows256::columns, rows256::tail});
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

}  // namespace

TORCH_LIBRARY(musicgen_rows, lib) {
    lib.def("linear(Tensor x, Tensor w_t, Tensor? bias=None, int width=0) -> Tensor");
    lib.def("widths() -> int[]", &widths);
}

TORCH_LIBRARY_IMPL(musicgen_rows, CPU, lib) { lib.impl("linear", &rows_linear); }
