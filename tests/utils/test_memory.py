"""Returning freed heap memory to the OS (keras_gptq.memory).

The effect itself (about 490 MB returned after loading SmolLM2-135M) is
measured by benchmarks/memory.py; a unit test cannot reproduce glibc's
arena fragmentation reliably, so these pin the contract.
"""

import sys

import pytest

from keras_gptq.utils import memory


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def malloc_trim(self, pad):
        self.calls.append(pad)
        return 1


def test_release_collects_and_trims(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(memory, "_LIBC", fake)
    collected = []
    monkeypatch.setattr(memory.gc, "collect", lambda: collected.append(1))
    assert memory.release_freed_memory() is True
    assert fake.calls == [0] and collected == [1]


def test_release_without_malloc_trim_only_collects(monkeypatch):
    monkeypatch.setattr(memory, "_LIBC", False)
    assert memory.release_freed_memory() is False
    monkeypatch.setattr(memory, "_LIBC", object())  # a libc without it
    assert memory.release_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's malloc_trim exists on Linux only")
def test_real_libc_has_malloc_trim():
    libc = memory._libc()
    assert hasattr(libc, "malloc_trim")
    assert memory.release_freed_memory() is True
