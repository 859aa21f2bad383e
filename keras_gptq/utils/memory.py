"""Returning freed heap memory to the operating system.

Loading a model and solving a block free hundreds of megabytes of numpy
buffers, but glibc's allocator keeps freed pages mapped, so the process's
resident memory (what an out-of-memory killer and `ru_maxrss` count) stays
high. `release_freed_memory` asks the allocator to give them back.
"""

import ctypes
import ctypes.util
import gc

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    return _LIBC


def release_freed_memory():
    """Collects garbage, then returns freed heap pages to the OS.

    Uses glibc's `malloc_trim(0)`; elsewhere (macOS, musl, Windows) only the
    garbage collection happens.

    Returns:
        True when the allocator was asked to release memory.
    """
    gc.collect()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc else None
    if trim is None:
        return False
    trim(0)
    return True
