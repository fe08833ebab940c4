"""Host-memory allocator settings for medsyn processes — training and inference (one place for every entry point).

Why: PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block larger
than ``M_MMAP_THRESHOLD`` (at most 32 MiB, adapted at run time) with a fresh ``mmap`` and
gives it back with ``munmap`` when the tensor is freed. A training step allocates and frees the
same large activations, gradients and spectral-norm weights every step (base-32 2.5D UNet at
batch 10 × 144²: 26 MB per feature map; D1's 42.9 M-parameter FC weight: 172 MB per forward),
so the kernel mapped ~5 GB of zeroed pages per step: ~1.3 M minor page faults and ~40 % of
the step's CPU time in the kernel (measured, docs/scaling.md "CPU memory churn").

What :func:`keep_freed_memory` does (Linux/glibc only; a no-op elsewhere): large blocks come
from the heap (``M_MMAP_THRESHOLD`` = 1 GiB) and freed memory stays in the process
(``M_TRIM_THRESHOLD`` = 2 GiB − 1, the largest ``mallopt`` takes) for the next step to reuse,
so after one or two warm-up steps a step maps nothing new. The price is a higher resident set:
memory freed at the end of a step is kept for the next one instead of going back to the OS
(measured +0.6–0.9 GB on the paper's method at base 32, whose step peaks at ~3.3 GB).

It is called by every training entry point — :class:`~medsyn.training.engine.Trainer` (so
``medsyn train``, ``torchrun`` ranks and the Python API), ``medsyn bench`` and the scripts in
``benchmarks/`` — before the first tensor is allocated, and by medsyn's sliding-window inference
(``inference/sliding_window.py``: ``medsyn predict``, validation, evaluation), whose batches free
and re-allocate the same feature maps every model call. ``mallopt`` settings live in the
process's memory, so forked DataLoader workers inherit them.

Opting out: ``MEDSYN_MALLOC=default`` leaves glibc as it is; glibc's own ``MALLOC_MMAP_THRESHOLD_``
/ ``MALLOC_TRIM_THRESHOLD_`` environment variables, when set, win (they are then left alone).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: blocks up to this size come from the heap (1 GiB: every activation of the paper-size models)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap kept before it is returned to the OS (int max for mallopt)
TRIM_THRESHOLD = 2**31 - 1

_applied: dict[str, int] | None = None


def keep_freed_memory() -> dict[str, int]:
    """Tune glibc ``malloc`` so a training step reuses its freed memory instead of re-mapping it.

    Idempotent. Returns the settings applied (``{}`` when nothing was changed: not glibc,
    ``MEDSYN_MALLOC=default``, or the user set glibc's ``MALLOC_*_`` variables).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    if not sys.platform.startswith("linux") or os.environ.get("MEDSYN_MALLOC", "").lower() == "default":
        return _applied
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 — glibc only (musl has no such symbol, nor these knobs)
    except (OSError, AttributeError):
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for name, param, value in (("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                               ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) == 1:
            _applied[name] = value
    return _applied
