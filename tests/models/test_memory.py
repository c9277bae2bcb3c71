"""release_memory gives freed heap pages back (glibc Linux only)."""

import pytest
import torch
from mechmerge.models.memory import _malloc_trim, release_memory


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_freed_heap_is_returned():
    # 64 KB tensors stay below glibc's mmap threshold, so they live in the heap; a tensor
    # allocated after them keeps the heap's top in use, so free() alone cannot shrink it
    small = [torch.ones(16 * 1024) for _ in range(1600)]  # 100 MB
    keep = torch.ones(16 * 1024)
    del small
    before = _rss_anon_mb()
    assert release_memory()
    assert before - _rss_anon_mb() > 50
    del keep
