"""Builds the CPU rows kernel (`rows_linear.cpp`, the maths in `rows_maths.h` and `lora_maths.h`) into a
torch operator library, once: `make install` runs `python -m musicgen_local.engine.fast.build`, which writes it to
`_build/` beside this file, where every process (CLI runs, Ray replicas, the server) loads it with
`torch.ops.load_library` and no compiler (`rows_kernel.py`).

The build is torch's extension machinery (`torch.utils.cpp_extension.load`: torch's headers and ABI
flags, ninja, a file lock against concurrent builds). The library's name carries a hash of the
sources, the flags and torch's version, so a library built from other sources or for another torch is
never loaded; a stale or missing one is rebuilt by the same call at first use into torch's extension
cache (shared by processes, ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR), which needs a C++
compiler and ninja (`rows_kernel.py` falls back to torch's products, and says why, without them).

No -march: the kernel's AVX-512 and AVX2 copies are compiled through `#pragma GCC target` and chosen
at run time, so a library built on one x86-64 runs on any other. -fopenmp is a compile flag only (for
ATen's at::parallel_for header); nothing links an OpenMP runtime but torch itself.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
SOURCES = [HERE / "rows_linear.cpp"]
HEADERS = [HERE / "rows_maths.h", HERE / "lora_maths.h"]
CFLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp"]
PREBUILT = HERE / "_build"


def name() -> str:
    """The library's name: changes with its sources, flags and torch's version."""
    digest = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        digest.update(path.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(torch.__version__.encode())
    return f"musicgen_rows_{digest.hexdigest()[:12]}"


def prebuilt() -> Path:
    """Where `make install` leaves the library for these sources and this torch."""
    return PREBUILT / name() / f"{name()}.so"


def build(directory: Path | None = None, verbose: bool = False) -> Path:
    """Compile the library (ninja skips it when it is up to date) and load it into this process.
    `directory`: where to build; torch's extension cache when None. Raises where it cannot build."""
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None and (Path(sys.executable).parent / "ninja").exists():
        # The `ninja` wheel's command sits beside this interpreter, off PATH outside the virtualenv's shell.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    library = cpp_extension.load(
        name=name(),
        sources=[str(s) for s in SOURCES],
        extra_cflags=CFLAGS,
        extra_include_paths=[str(HERE)],
        build_directory=None if directory is None else str(directory),
        is_python_module=False,
        verbose=verbose,
    )
    return Path(library)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the CPU rows kernel once, for every process that runs here.")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = prebuilt().parent
    for old in PREBUILT.glob("musicgen_rows_*"):  # other sources' or another torch's builds
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    library = build(target, verbose=args.verbose)
    widths = torch.ops.musicgen_rows.widths()
    print(f"CPU rows kernel: {library} ({'/'.join(f'{w}-float' for w in widths) or 'no'} vectors on this CPU)")


if __name__ == "__main__":
    main()
