"""Keep numpy's OpenBLAS on one thread while the checker multiplies its small similarity matrices.

OpenBLAS splits every matrix product above ~262k multiply-adds over all cores. The checker's
products (≈ 85 claims × 200 sentences × 512 dimensions) are just above that, and on a loaded
machine the helper thread is often not scheduled: the caller waits for it. Measured on the
shared 2-core machine, one such product took 0.3 ms at the median and 50 ms at the p99; on one
thread 0.5 ms and 9 ms. The products are small, so one thread is always fast enough.

`single_thread()` sets OpenBLAS to one thread and restores the previous count on exit. It finds
the library numpy loaded through /proc/self/maps (Linux) and calls its exported
`*_set_num_threads`; where numpy uses another BLAS (Accelerate, MKL) or the library cannot be
found it does nothing. A split over threads can change a similarity in its last bits (another
summation order), so one thread also makes the scores independent of the machine's core count.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from bot.logs import get_logger

log = get_logger(__name__)

# Exported names across OpenBLAS builds: numpy ≥ 2 wheels (scipy-openblas, ILP64), numpy 1.x wheels, distros.
_PREFIXES = ("scipy_openblas_", "openblas_")
_SUFFIXES = ("64_", "")
_MAPS = Path("/proc/self/maps")
# Products with fewer multiply-adds than this run on one thread in OpenBLAS whatever its setting
# (its gemv splits from 2304 × GEMM_MULTITHREAD_THRESHOLD = 9,216 elements, gemm from 262,144,
# dot from 10,000), so `single_thread()` — two ctypes calls and a context manager, most of a small
# product's cost — is skipped for them. The scope detector's products are 1 × 1 and 1 × 12 rows.
SERIAL_BELOW = 9216


def _loaded_openblas() -> list[str]:
    try:
        lines = _MAPS.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    paths = {line.split(maxsplit=5)[-1] for line in lines if "openblas" in line.lower() and ".so" in line}
    return sorted(p for p in paths if p.startswith("/"))


@cache
def _controls() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """OpenBLAS's (get, set) thread-count functions, or None when there is no OpenBLAS to control."""
    import numpy  # noqa: F401  (the library must be loaded before it can be found)

    mode = getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL  # only ever attach to the copy numpy loaded
    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path, mode=mode)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                getter = getattr(library, f"{prefix}get_num_threads{suffix}", None)
                setter = getattr(library, f"{prefix}set_num_threads{suffix}", None)
                if getter is None or setter is None:
                    continue
                getter.restype, getter.argtypes = ctypes.c_int, []
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                log.debug("openblas thread control found", library=path, symbol=f"{prefix}set_num_threads{suffix}")
                return getter, setter
    return None


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with OpenBLAS on one thread (a no-op without a controllable OpenBLAS)."""
    controls = _controls()
    if controls is None:
        yield
        return
    get, set_threads = controls
    previous = get()
    if previous <= 1:
        yield
        return
    set_threads(1)
    try:
        yield
    finally:
        set_threads(previous)
