"""keep_freed_memory: freed large tensors are reused from the heap, not faulted in from fresh pages each time."""

import resource

import pytest
import torch

from lorakit.train.allocator import _glibc, keep_freed_memory

pytestmark = pytest.mark.skipif(_glibc() is None, reason="mallopt settings apply to glibc (Linux) only")


def _page_faults_of_reallocation(elements: int) -> int:
    first = torch.ones(elements)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(elements)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_freed_large_tensor_is_reused_without_page_faults():
    elements = 16 * 2**20  # 64 MiB of fp32: above glibc's largest mmap threshold
    with keep_freed_memory() as applied:
        assert applied
        faults = [_page_faults_of_reallocation(elements) for _ in range(3)]
        assert faults[-1] < 16, faults  # of 16,384 pages
    # Outside, glibc maps such blocks afresh again (which is what costs the faults), and the heap was trimmed.
    assert _page_faults_of_reallocation(elements) > 8000


def test_user_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    with keep_freed_memory() as applied:
        assert not applied
