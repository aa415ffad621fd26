"""Giving freed heap memory back to the operating system.

A long-running server that keeps some tensors for a long time (the prefix cache) and allocates others for one
decoding step leaves holes in glibc's heaps: freed, reusable, but still counted in the process's memory (in soaks,
memory outside the cache crept up; with the cache off it stayed flat). `malloc_trim(0)`
returns the free pages inside the heaps (not only at their top) to the system; it walks the heaps, so it runs at
most every `interval` seconds.
"""

from __future__ import annotations

import ctypes
import time


class HeapTrimmer:
    """`maybe_trim()` calls glibc's malloc_trim(0) when `interval` seconds have passed since the last call; a no-op
    where the C library has no malloc_trim (macOS, musl)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = time.monotonic()
        self.trims = 0
        self._trim = None
        try:
            # the process's own symbols: glibc's malloc_trim where it exists (ctypes.util.find_library would run
            # ldconfig in a subprocess, on the start-up path)
            self._trim = ctypes.CDLL(None).malloc_trim
            self._trim.argtypes = [ctypes.c_size_t]
            self._trim.restype = ctypes.c_int
        except (OSError, AttributeError):
            self._trim = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def maybe_trim(self) -> bool:
        """Trim if it is time; True when it trimmed."""
        now = time.monotonic()
        if self._trim is None or now - self._last < self.interval:
            return False
        self._last = now
        self._trim(0)
        self.trims += 1
        return True
