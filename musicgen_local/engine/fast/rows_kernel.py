"""The fast decoder's matrix products on CPU: the torch operator `torch.ops.musicgen_rows.linear`
(`rows_linear.cpp`, its maths in `rows_maths.h`; and `lora_add`, the adapters' low-rank products of
`lora_maths.h`), built once by `make install` (`build.py`) and loaded
here without a compiler. Torch checks its arguments against the operator's schema, releases the GIL
while it runs, and runs its column blocks on torch's own thread pool (`torch.set_num_threads`).

Why a kernel of our own: a decode step multiplies 2 to 2 x MUSICGEN_MAX_BATCH rows by every weight
matrix, and for so few rows MKL reads the weights at about half the memory's rate, while what it
computes for one row depends on how many rows it is given (batching would change a request's audio).
The kernel sums every element in the same order whatever the rows, and ran 1.5-2x faster than MKL
at 2 and 16 rows with AVX-512 (EPYC, old ctypes build), 1.3-1.8x at 2 rows and 0.9-1.0x at 16 with
AVX2 on an EPYC without AVX-512 (this build, as fast as the old one there); `bench/RESULTS.md`. One
build carries an AVX-512 and an AVX2+FMA copy and uses the widest this CPU runs (`width` forces one:
the tests run both where the CPU has both).

Where `make install` left no library for these sources and this torch (a plain checkout, edited
sources), the first process builds it into torch's extension cache, shared by every later process;
without a C++ compiler and ninja for that, or on a CPU without AVX2 and FMA, torch's own products run
and the log says why, once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class _Loaded:
    """What this process loaded, once."""

    lock = threading.Lock()
    tried = False
    library: Path | None = None
    widths: tuple[int, ...] = ()  # floats a vector of each path this CPU runs
    op = None  # torch.ops.musicgen_rows.linear.default


def _load() -> Path | None:
    from . import build  # here, not above: `python -m ...build` runs it as __main__ without a second copy

    path = build.prebuilt()
    if path.exists():
        try:
            torch.ops.load_library(str(path))
            return path
        except (OSError, RuntimeError) as e:
            why = f"the library `make install` built ({path}) does not load: {e}"
    else:
        why = f"no library built by `make install` for these sources and this torch ({path})"
    try:
        built = build.build()
    except Exception as e:  # noqa: BLE001 - a build fails in many ways (no compiler, no ninja, a compile error)
        log.warning(
            "CPU rows kernel unavailable: %s, and building it here failed (%s): the fast decoder uses "
            "torch's matrix products",
            why,
            str(e).strip()[-500:],
        )
        return None
    log.info("CPU rows kernel built into torch's extension cache, %s (%s)", built, why)
    return built


def library() -> Path | None:
    """The kernel's library loaded in this process, or None where there is none (tried once per process)."""
    with _Loaded.lock:
        if not _Loaded.tried:
            try:
                loaded = _load()
                if loaded is not None:
                    _Loaded.widths = tuple(torch.ops.musicgen_rows.widths())
                    if _Loaded.widths:
                        _Loaded.library, _Loaded.op = loaded, torch.ops.musicgen_rows.linear.default
                    else:
                        log.warning(
                            "this CPU has neither AVX-512 nor AVX2 with FMA: the fast decoder uses torch's "
                            "matrix products"
                        )
            finally:
                _Loaded.tried = True  # last: `linear` reads `op` without the lock once this is set
        return _Loaded.library


def available() -> bool:
    return library() is not None


def widths() -> tuple[int, ...]:
    """Floats a vector of each path this CPU runs, widest first: (16, 8) with AVX-512, (8,) with AVX2."""
    library()
    return _Loaded.widths if _Loaded.library is not None else ()


def vector_width() -> int:
    """Floats per vector of the path `linear` takes: 16 (AVX-512) or 8 (AVX2); 0 when it is not available."""
    return max(widths(), default=0)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, width: int = 0) -> torch.Tensor:
    """F.linear(x, weight, bias) for float32 CPU tensors whose weight is stored transposed (as
    `lay_out_for_cpu` leaves it: weight.t() has unit column stride); F.linear itself otherwise.
    `width`: 0 for the widest vectors this CPU runs, or 16 / 8 to force the AVX-512 / AVX2 path."""
    op = _Loaded.op if _Loaded.tried else (library() and _Loaded.op)  # no lock once loaded: called per product
    w = weight.t()  # [in, out]
    if (
        op is None
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or w.dtype != torch.float32
        or w.stride(1) != 1
        or (bias is not None and (bias.dtype != torch.float32 or bias.stride(0) != 1))
    ):
        return F.linear(x, weight, bias)
    k, n = w.shape
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return op(rows, w, bias, width).view(*x.shape[:-1], n)


def lora_add(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slot: torch.Tensor, rank: torch.Tensor
) -> None:
    """y += each row's low-rank product, in place (`lora_maths.h`): y [M, N], x [M, K], a [S, K, R],
    b [S, R, N] (a column slice of a wider table may do), slot [G] int64 with M = G x group (the rows of a
    group share a slot; a negative slot leaves its rows as they are), rank [S] int64 (the rows of b each slot
    uses; the rest are zero padding). Float32 CPU tensors."""
    if not _Loaded.tried:
        library()
    torch.ops.musicgen_rows.lora_add_.default(y, x, a, b, slot, rank, x.shape[0] // slot.shape[0])
