"""The fast decoder's matrix products on CPU: `rows_linear.c`, built with the machine's C compiler at
first use (for this CPU: -march=native) and called through ctypes, which lets go of the GIL.

Why a kernel of our own: a decode step multiplies 2 to 2 x MUSICGEN_MAX_BATCH rows by every weight
matrix, and for so few rows MKL reads the weights at about half the memory's rate, while what it
computes for one row depends on how many rows it is given (batching would change a request's audio).
The kernel sums every element in the same order whatever the rows, and runs 1.5-2x faster than MKL
at 2 and 16 rows with AVX-512, 1.2-2x with AVX2 (`bench/RESULTS.md`). It needs AVX2 with FMA, or
AVX-512; without them, or without a C compiler, torch's own products are used (and the log says why,
once). `CC` and `CFLAGS` work as usual (CFLAGS come after ours: `CFLAGS=-mno-avx512f` builds the AVX2
kernel on an AVX-512 machine).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("rows_linear.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC"]

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False


def _build() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: the fast decoder uses torch's matrix products on CPU")
        return None
    # Built per process, for this CPU, in a fraction of a second; the file goes once it is mapped.
    build = Path(tempfile.mkdtemp(prefix="musicgen-rows-"))
    try:
        target = build / "rows_linear.so"
        flags = [*FLAGS, *shlex.split(os.environ.get("CFLAGS", ""))]
        subprocess.run([compiler, *flags, "-o", str(target), str(SOURCE)], check=True, capture_output=True,
                       text=True, timeout=120)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        log.warning("building the CPU rows kernel failed (%s): the fast decoder uses torch's matrix products",
                    str(detail).strip()[:500])
        return None
    finally:
        shutil.rmtree(build, ignore_errors=True)
    library.rows_linear_vector_width.restype = ctypes.c_int
    log.info("CPU rows kernel built: %d floats a vector", library.rows_linear_vector_width())
    library.rows_linear.restype = None
    library.rows_linear.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_ssize_t,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
    return library


def library() -> ctypes.CDLL | None:
    """The built kernel, or None where it cannot be built (tried once per process)."""
    global _library, _tried
    with _lock:
        if not _tried:
            _library, _tried = _build(), True
        return _library


def available() -> bool:
    return library() is not None


def vector_width() -> int:
    """Floats per vector of the built kernel: 16 (AVX-512) or 8 (AVX2); 0 when it is not built."""
    lib = library()
    return 0 if lib is None else lib.rows_linear_vector_width()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for float32 CPU tensors whose weight is stored transposed (as
    `lay_out_for_cpu` leaves it: weight.t() has unit column stride); F.linear itself otherwise."""
    lib = library()
    w = weight.t()  # [in, out]
    if (lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
            or w.stride(1) != 1 or (bias is not None and (bias.dtype != torch.float32 or bias.stride(0) != 1))):
        return F.linear(x, weight, bias)
    k, n = w.shape
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty((rows.shape[0], n), dtype=torch.float32)
    lib.rows_linear(rows.shape[0], n, k, rows.data_ptr(), rows.stride(0), w.data_ptr(), w.stride(0),
                    None if bias is None else bias.data_ptr(), out.data_ptr(), out.stride(0),
                    torch.get_num_threads())
    return out.view(*x.shape[:-1], n)
