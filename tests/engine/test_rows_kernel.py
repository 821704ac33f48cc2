"""The CPU rows kernel (`engine/fast/rows_linear.c`): the values of torch's product, and a row's result
that depends on that row alone, to the bit, whatever rows, threads or column blocks surround it.

The shapes cover both of its paths (two rows or fewer; more), whole column blocks and the columns
past them, weight sweeps that do not divide K, and a weight that is a column slice of a wider
matrix (how cross-attention's query projection reads `in_proj_weight`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from musicgen_local.engine.fast import rows_kernel

pytestmark = pytest.mark.skipif(not rows_kernel.available(), reason="no C compiler to build the rows kernel")

SHAPES = [(1000, 1000), (1024, 3 * 1024), (40, 96), (1001, 200)]  # (in, out): blocks, tails, odd K


def transposed(out_features: int, in_features: int, generator) -> torch.Tensor:
    """A weight as `lay_out_for_cpu` stores it: the usual [out, in] view over [in, out] storage."""
    return torch.randn(in_features, out_features, generator=generator).t()


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 16])
def test_it_computes_torchs_product(k, n, rows):
    g = torch.Generator().manual_seed(k + n + rows)
    weight, bias, x = transposed(n, k, g), torch.randn(n, generator=g), torch.randn(rows, 1, k, generator=g)
    ours = rows_kernel.linear(x, weight, bias)
    assert ours.shape == (rows, 1, n)
    torch.testing.assert_close(ours, F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows_kernel.linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_a_column_slice_of_a_wider_weight_reads_only_its_columns():
    g = torch.Generator().manual_seed(3)
    packed = transposed(3 * 256, 256, g)  # like in_proj_weight: q, k, v stacked
    x = torch.randn(4, 256, generator=g)
    for part in (packed[:256], packed[256:512], packed[512:]):
        torch.testing.assert_close(rows_kernel.linear(x, part), F.linear(x, part), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,n", SHAPES)
def test_a_rows_result_is_the_same_bits_whatever_rows_and_threads_surround_it(k, n, threads):
    g = torch.Generator().manual_seed(7)
    weight, bias, x = transposed(n, k, g), torch.randn(n, generator=g), torch.randn(16, k, generator=g)
    threads(1)
    all_rows = rows_kernel.linear(x, weight, bias)
    for count in range(1, 17):
        for start in {0, 16 - count, (16 - count) // 2}:
            part = rows_kernel.linear(x[start:start + count], weight, bias)
            assert torch.equal(part, all_rows[start:start + count]), (count, start)
    threads(2)
    assert torch.equal(rows_kernel.linear(x, weight, bias), all_rows)
    assert torch.equal(rows_kernel.linear(x[:2], weight, bias), all_rows[:2])


def test_torchs_product_serves_where_the_kernel_does_not_apply():
    g = torch.Generator().manual_seed(5)
    usual = torch.randn(64, 32, generator=g)  # [out, in] contiguous: not the transposed layout
    x = torch.randn(2, 32, generator=g)
    assert torch.equal(rows_kernel.linear(x, usual), F.linear(x, usual))
    half = transposed(64, 32, g).to(torch.bfloat16)
    assert torch.equal(rows_kernel.linear(x.to(torch.bfloat16), half), F.linear(x.to(torch.bfloat16), half))


@pytest.mark.skipif(bool(os.environ.get("CFLAGS")), reason="already a build of its own")
def test_the_avx2_build_passes_these_tests_too():
    """On a machine with AVX-512, build the 8-float kernel (what AVX2-only CPUs get) and run this file on it."""
    env = {**os.environ, "CFLAGS": "-mno-avx512f"}
    code = "from musicgen_local.engine.fast import rows_kernel as r; print(r.vector_width())"
    width = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                           check=True)
    assert width.stdout.strip() == "8", width.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert " passed" in run.stdout and "skipped" in run.stdout  # this test itself, in there


def test_without_a_c_compiler_the_decoder_says_so_and_uses_torchs_products():
    code = ("import logging; logging.basicConfig()\n"
            "from musicgen_local.engine.fast import rows_kernel\n"
            "print('available', rows_kernel.available())\n")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CC": "/bin/false"},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout
    assert "building the CPU rows kernel failed" in result.stderr
