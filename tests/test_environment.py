"""The process's environment (irmlib.environment): giving freed memory back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

FRAGMENTED_HEAP = """
from irmlib.environment import release_freed_memory
def rss_mb():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
blocks = [bytearray(64 * 1024) for _ in range(8000)]  # 500 MB in pieces below glibc's mmap threshold
for block in blocks:
    block[::4096] = b"x" * len(block[::4096])
del blocks[:-1]  # the last piece pins the top of the heap, so free() alone cannot shrink it
before = rss_mb()
print(before, rss_mb() if release_freed_memory() else None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_freed_memory_returns_a_fragmented_heap_to_the_system():
    result = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    before, after = map(int, result.stdout.split())
    assert before - after > 300, f"RSS {before} MB -> {after} MB"
