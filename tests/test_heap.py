"""The worker's heap trimming: freed pages inside glibc's heaps go back to the system."""

from __future__ import annotations

import sys

import pytest

from core.engine.heap import HeapTrimmer


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or not HeapTrimmer().available,
                    reason="malloc_trim is glibc's (Linux); elsewhere the trimmer is a no-op")
def test_trim_returns_the_holes_a_long_lived_allocation_leaves():
    chunks = [bytearray(64 * 1024) for _ in range(3000)]  # below glibc's mmap threshold: from the heap
    keep = chunks[::50]  # long-lived blocks scattered through the heap pin it, like cached tensors
    del chunks
    before = rss_mb()
    trimmer = HeapTrimmer(interval=0)
    assert trimmer.maybe_trim() and trimmer.trims == 1
    assert before - rss_mb() > 100, "the freed holes (~190 MB) stayed in the process"
    assert len(keep) == 60


def test_trim_waits_for_its_interval():
    trimmer = HeapTrimmer(interval=3600)
    assert not trimmer.maybe_trim() and trimmer.trims == 0
