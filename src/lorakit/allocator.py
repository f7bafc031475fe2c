"""The memory allocator of lorakit's own processes: tcmalloc where the machine has it, else the C library's malloc.

A training step makes and frees hundreds of large, short-lived tensors (activations, gradients, dropout masks).
glibc's malloc serves them from fresh mmap'd pages and gives them back to the kernel, so the step pays for page faults
and for zeroing pages, and its elementwise work runs on cold memory. tcmalloc keeps freed memory for the next
tensor. Measured in `bench/train_speed.py` (bench/README.md): +10-25% tokens/s on a LoRA step, fp32 and bf16.

A process's allocator is fixed when it starts, so the `lorakit` command re-executes itself once with the library in
LD_PRELOAD, as PyTorch's own CPU launcher does (`python -m torch.backends.xeon.run_cpu --enable-tcmalloc`; here
without its core pinning, which would fight the user's other processes). Python code that imports lorakit keeps
its interpreter's allocator. `LORAKIT_ALLOCATOR=system` keeps glibc's; the library comes from the system's
packages (Debian/Ubuntu `libtcmalloc-minimal4`, Fedora `gperftools-libs`, conda `gperftools`).
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from lorakit.errors import ConfigError

SETTING = "LORAKIT_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "system")
_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
_NO_LARGE_ALLOC_REPORTS = str(1 << 50)  # gperftools prints a line for every allocation over 1 GiB by default


@functools.cache
def tcmalloc_library() -> str | None:
    """The file name of an installed tcmalloc (e.g. libtcmalloc_minimal.so.4), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    return next(filter(None, map(ctypes.util.find_library, _LIBRARIES)), None)


def allocator_in_use(maps: Path = Path("/proc/self/maps")) -> str:
    """"tcmalloc", "jemalloc" or "system": the allocator mapped into this process (recorded in each run's manifest)."""
    try:
        mapped = maps.read_text()
    except OSError:
        return "system"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in mapped), "system")


def preload_environment(environ: Mapping[str, str], library: str | None, loaded: str) -> dict[str, str] | None:
    """The environment to re-execute with so that `library` serves this process's memory, or None to go on as is.

    `loaded` is `allocator_in_use()`. None when the user chose the system allocator, when another allocator is
    already in place, when no tcmalloc is installed, or when LD_PRELOAD already names it (it could not be loaded:
    the dynamic loader said why, and a second try would fail the same way).
    """
    setting = environ.get(SETTING, "auto").strip().lower() or "auto"
    if setting not in CHOICES:
        raise ConfigError(f"{SETTING}={environ[SETTING]!r} is not one of {', '.join(CHOICES)}. Unset it (auto: "
                          "tcmalloc where installed), or set it to system to keep the C library's malloc.")
    if setting == "system" or loaded != "system":
        return None
    if library is None:
        if setting == "tcmalloc":
            raise ConfigError(f"{SETTING}=tcmalloc, but no tcmalloc library is installed. Install it (Debian/Ubuntu: "
                              "apt-get install libtcmalloc-minimal4) or unset the variable.")
        return None
    preload = environ.get("LD_PRELOAD", "")
    if library in preload.replace(":", " ").split():
        return None
    return {**environ, "LD_PRELOAD": f"{library} {preload}".strip(),
            "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD",
                                                                 _NO_LARGE_ALLOC_REPORTS)}


def restart_with_tcmalloc() -> None:
    """Re-execute this command with tcmalloc preloaded where that applies (see preload_environment); else return.

    Only the `lorakit` command calls this, before it imports anything heavy; it never returns when it re-executes.
    """
    environment = preload_environment(os.environ, tcmalloc_library(), allocator_in_use())
    if environment is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
