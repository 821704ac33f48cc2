"""The CPU rows kernel (`engine/fast/rows_linear.cpp`) against torch's product (MKL), at the matrix shapes of
one `small` decode step (dim 1024, feed-forward 4096, 2048-way heads), for 2 rows (batch 1 with
guidance) and 16 rows (batch 8). Each shape cycles through 8 distinct weights so that, as in a step,
they come from memory and not from cache.

    PYTHONPATH=. .venv/bin/python -m bench.rows_kernel [--threads 1] [--width 8]

`--width 8` times the AVX2 path on a CPU that has AVX-512 too (16: AVX-512; 0, the default: the widest).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from musicgen_local.engine.fast import rows_kernel

SHAPES = {
    "qkv": (1024, 3072),
    "attention out": (1024, 1024),
    "ff in": (1024, 4096),
    "ff out": (4096, 1024),
    "head": (1024, 2048),
}  # (in, out)


def per_call_ms(fn, weights, repeats: int = 20) -> float:
    for w in weights:
        fn(w)
    start = time.perf_counter()
    for _ in range(repeats):
        for w in weights:
            fn(w)
    return (time.perf_counter() - start) / (repeats * len(weights)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=0, choices=(0, 8, 16), help="floats a vector: 0 = widest here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not rows_kernel.available():
        raise SystemExit("the rows kernel is not available here (see the warning above)")
    width = args.width or rows_kernel.vector_width()
    print(f"{args.threads} thread(s), float32, {width}-float vectors; GFLOPS = 2 x rows x in x out per second\n")
    print("| rows | matrix (in x out) | torch ms | kernel ms | torch GFLOPS | kernel GFLOPS | kernel / torch speed |")
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for rows in (2, 16):
        for name, (k, n) in SHAPES.items():
            weights = [torch.randn(k, n, generator=g).t() for _ in range(8)]  # transposed storage
            bias, x = torch.randn(n, generator=g), torch.randn(rows, k, generator=g)
            ours = per_call_ms(lambda w, x=x, bias=bias: rows_kernel.linear(x, w, bias, width), weights)
            theirs = per_call_ms(lambda w, x=x, bias=bias: F.linear(x, w, bias), weights)
            flops = 2 * rows * k * n / 1e9
            print(
                f"| {rows} | {name} ({k} x {n}) | {theirs:.3f} | {ours:.3f} | {flops / theirs * 1e3:.1f} | "
                f"{flops / ours * 1e3:.1f} | {theirs / ours:.2f}x |"
            )


if __name__ == "__main__":
    main()
