"""Freed tensor memory kept in the process heap while training on CPU, instead of going back to the OS each time.

glibc serves large allocations (over its 32 MiB mmap threshold: the loss's logits chunks, attention scores of long
examples) with fresh pages from mmap and unmaps them on free, and trims the heap's top above a threshold. Every step
then pays one page fault per 4 KiB of those tensors, again and again: 10-15% of a SmolLM2 LoRA step on the project's
CPU (`bench/train_speed.py`). jemalloc or tcmalloc through LD_PRELOAD (Intel's advice for PyTorch on CPU) fix the
same, but must be set before Python starts and installed by the user; `mallopt` does it from inside the process.
Peak RSS stays what it was (measured +1%): the memory is reused, not added.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_UP_TO = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top
# After the run: glibc's mmap count default, and the trim threshold its adaptive rule reaches once 32 MiB blocks have
# been freed (2 x the largest mmap threshold). Any mallopt call switches that adaptive rule off for the process.
_AFTER_MMAP_MAX = 65536
_AFTER_TRIM_THRESHOLD = 64 * 2**20
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES")


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None elsewhere (macOS, Windows, musl), where nothing is changed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside: no mmap'd allocations and no heap trimming, so freed tensors' pages are reused. Yields whether it
    applied: not outside glibc, nor where the user tuned malloc through its environment variables. On exit, the
    free memory goes back to the OS (malloc_trim) and the settings above apply for the rest of the process."""
    libc = _glibc()
    if libc is None or any(name in os.environ for name in _USER_SETTINGS):
        yield False
        return
    applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))
    try:
        yield applied
    finally:
        libc.mallopt(_M_MMAP_MAX, _AFTER_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
        libc.malloc_trim(0)
