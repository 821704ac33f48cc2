"""The CPU rows kernel (`engine/fast/rows_linear.cpp`, its maths in `rows_maths.h`): the values of
torch's product, and a row's result that depends on that row alone, to the bit, whatever rows, threads
or column blocks surround it; on both of its paths (AVX-512 and AVX2, forced through `width`); loaded
without a compiler; and torch's products, with the reason logged, where there is no library.

The shapes cover both of its paths (two rows or fewer; more), whole column blocks and the columns
past them, weight sweeps that do not divide K, and a weight that is a column slice of a wider
matrix (how cross-attention's query projection reads `in_proj_weight`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from musicgen_local.engine.fast import build, rows_kernel

pytestmark = pytest.mark.skipif(not rows_kernel.available(), reason="no rows kernel library (see the log)")

SHAPES = [(1000, 1000), (1024, 3 * 1024), (40, 96), (1001, 200)]  # (in, out): blocks, tails, odd K
# 16 floats a vector: AVX-512; 8: AVX2 with FMA. A CPU without AVX-512 runs the 8-float path only.
WIDTHS = [
    pytest.param(
        w, marks=pytest.mark.skipif(w not in rows_kernel.widths(), reason=f"no {w}-float path here"), id=f"{w}-float"
    )
    for w in (16, 8)
]
ROOT = Path(__file__).resolve().parents[2]


def transposed(out_features: int, in_features: int, generator) -> torch.Tensor:
    """A weight as `lay_out_for_cpu` stores it: the usual [out, in] view over [in, out] storage."""
    return torch.randn(in_features, out_features, generator=generator).t()


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 16])
def test_it_computes_torchs_product(k, n, rows, width):
    g = torch.Generator().manual_seed(k + n + rows)
    weight, bias, x = transposed(n, k, g), torch.randn(n, generator=g), torch.randn(rows, 1, k, generator=g)
    ours = rows_kernel.linear(x, weight, bias, width=width)
    assert ours.shape == (rows, 1, n)
    torch.testing.assert_close(ours, F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows_kernel.linear(x, weight, width=width), F.linear(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_column_slice_of_a_wider_weight_reads_only_its_columns(width):
    g = torch.Generator().manual_seed(3)
    packed = transposed(3 * 256, 256, g)  # like in_proj_weight: q, k, v stacked
    x = torch.randn(4, 256, generator=g)
    for part in (packed[:256], packed[256:512], packed[512:]):
        torch.testing.assert_close(rows_kernel.linear(x, part, width=width), F.linear(x, part), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("k,n", SHAPES)
def test_a_rows_result_is_the_same_bits_whatever_rows_and_threads_surround_it(k, n, width, threads):
    g = torch.Generator().manual_seed(7)
    weight, bias, x = transposed(n, k, g), torch.randn(n, generator=g), torch.randn(16, k, generator=g)
    threads(1)
    all_rows = rows_kernel.linear(x, weight, bias, width=width)
    for count in range(1, 17):
        for start in {0, 16 - count, (16 - count) // 2}:
            part = rows_kernel.linear(x[start : start + count], weight, bias, width=width)
            assert torch.equal(part, all_rows[start : start + count]), (count, start)
    threads(2)
    assert torch.equal(rows_kernel.linear(x, weight, bias, width=width), all_rows)
    assert torch.equal(rows_kernel.linear(x[:2], weight, bias, width=width), all_rows[:2])


@pytest.mark.skipif(len(rows_kernel.widths()) < 2, reason="one vector width on this CPU")
@pytest.mark.parametrize("k,n", SHAPES)
def test_both_paths_compute_the_same_bits(k, n):
    """Each element is the same FMAs in the same order in a 16-float lane, an 8-float lane or the tail."""
    g = torch.Generator().manual_seed(11)
    weight, bias, x = transposed(n, k, g), torch.randn(n, generator=g), torch.randn(16, k, generator=g)
    for rows in (1, 2, 16):
        assert torch.equal(
            rows_kernel.linear(x[:rows], weight, bias, width=16), rows_kernel.linear(x[:rows], weight, bias, width=8)
        )


def test_the_default_path_is_the_widest():
    assert rows_kernel.vector_width() == max(rows_kernel.widths())
    g = torch.Generator().manual_seed(13)
    weight, x = transposed(200, 64, g), torch.randn(3, 64, generator=g)
    assert torch.equal(rows_kernel.linear(x, weight), rows_kernel.linear(x, weight, width=rows_kernel.vector_width()))


def test_a_path_this_cpu_lacks_is_an_error():
    missing = next((w for w in (16, 8) if w not in rows_kernel.widths()), 4)
    with pytest.raises(RuntimeError, match="cannot run"):
        rows_kernel.linear(torch.randn(2, 64), torch.randn(64, 128).t(), width=missing)


def test_torchs_product_serves_where_the_kernel_does_not_apply():
    g = torch.Generator().manual_seed(5)
    usual = torch.randn(64, 32, generator=g)  # [out, in] contiguous: not the transposed layout
    x = torch.randn(2, 32, generator=g)
    assert torch.equal(rows_kernel.linear(x, usual), F.linear(x, usual))
    half = transposed(64, 32, g).to(torch.bfloat16)
    assert torch.equal(rows_kernel.linear(x.to(torch.bfloat16), half), F.linear(x.to(torch.bfloat16), half))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, with this checkout first on the path and `env` over ours."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.skipif(not build.prebuilt().exists(), reason="`make install` has not built the library here")
@pytest.mark.slow
def test_the_installed_library_loads_without_a_compiler_and_one_openmp_runtime():
    """No compiler, no ninja on PATH: the library `make install` built still loads; and its threads are
    torch's: it links no OpenMP runtime, so loading and running it maps none beside torch's."""
    code = (
        "import logging; logging.basicConfig()\n"
        "import torch\n"
        "from musicgen_local.engine.fast import rows_kernel\n"  # the library loads at first use, below
        "before = {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l}\n"
        "torch.set_num_threads(2)\n"
        "rows_kernel.linear(torch.randn(2, 64), torch.randn(64, 512).t())\n"
        "after = {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l}\n"
        "print('available', rows_kernel.available(), rows_kernel.vector_width())\n"
        "print('new openmp', sorted(after - before))\n"
        "print('torch openmp', sorted(p for p in before if p.startswith(torch.__path__[0])))\n"
    )
    result = run_python(code, CC="/bin/false", CXX="/bin/false", PATH="/nonexistent")
    assert result.returncode == 0, result.stderr
    assert f"available True {max(rows_kernel.widths())}" in result.stdout, result.stderr
    assert "new openmp []" in result.stdout
    assert "torch openmp ['" in result.stdout  # torch's own libgomp, loaded with torch
    assert "CPU rows kernel" not in result.stderr  # no build, nothing to say


@pytest.mark.slow
def test_without_the_library_or_a_compiler_the_decoder_says_why_and_uses_torchs_products(tmp_path):
    code = (
        "import logging; logging.basicConfig()\n"
        "from pathlib import Path\n"
        "from musicgen_local.engine.fast import build, rows_kernel\n"
        f"build.PREBUILT = Path({str(tmp_path / 'none')!r})\n"
        "print('available', rows_kernel.available())\n"
    )
    result = run_python(
        code, CC="/bin/false", CXX="/bin/false", PATH="/nonexistent", TORCH_EXTENSIONS_DIR=str(tmp_path / "cache")
    )
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout
    assert "CPU rows kernel unavailable: no library built by `make install`" in result.stderr
    assert "building it here failed" in result.stderr


@pytest.mark.skipif(shutil.which("c++") is None or shutil.which("ninja") is None, reason="no C++ compiler or ninja")
@pytest.mark.slow
def test_without_the_library_the_first_process_builds_it_into_torchs_cache_for_the_next(tmp_path):
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from pathlib import Path\n"
        "import torch, torch.nn.functional as F\n"
        "from musicgen_local.engine.fast import build, rows_kernel\n"
        f"build.PREBUILT = Path({str(tmp_path / 'none')!r})\n"
        "x, w = torch.randn(3, 100), torch.randn(100, 300).t()\n"
        "torch.testing.assert_close(rows_kernel.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)\n"
        "print('available', rows_kernel.available(), rows_kernel.library())\n"
    )
    cache = tmp_path / "cache"
    first = run_python(code, TORCH_EXTENSIONS_DIR=str(cache))
    assert first.returncode == 0, first.stderr
    assert "available True" in first.stdout and str(cache) in first.stdout
    assert "built into torch's extension cache" in first.stderr
    # The next process finds it there: ninja has nothing to do, and compiles nothing.
    second = run_python(code, TORCH_EXTENSIONS_DIR=str(cache))
    assert second.returncode == 0 and "available True" in second.stdout, second.stderr
    assert "Building extension" not in second.stderr
