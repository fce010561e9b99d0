"""Giving freed memory back to the operating system once a snapshot has been swapped in.

Loading a full snapshot frees about as much as it keeps: its chunks, the joined payload, the state
it replaces, the fetch buffers of the consumer that read it. glibc's malloc keeps most of that
resident, in holes of its heaps, until it is asked to return it (the default model's serving
process: 263 MiB resident, 228 MiB after `release`). Elsewhere (another C library) nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


def release() -> None:
    """Return the C heap's free pages to the operating system (glibc's ``malloc_trim``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
