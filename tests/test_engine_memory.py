"""The allocator set-up (ashem_engine/memory.py): a worker thread, as the dashboard runs the
engine, must allocate the head's big buffers from the main arena, where freed memory is kept
for reuse, rather than from a thread arena that hands them back as fresh pages."""
from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys, threading
import torch
from ashem_engine.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "set-up":
    keep_freed_memory()
grown = []

def work():
    before = libc.mallinfo2().uordblks  # bytes in use in the main arena
    block = torch.ones(8 << 20)  # 32 MB, as big as the head's buffers
    grown.append(libc.mallinfo2().uordblks - before)
    del block

worker = threading.Thread(target=work)
worker.start()
worker.join()
print(grown[0])
"""


def main_arena_growth(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=120, check=True)
    return int(out.stdout.strip())


def glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_worker_thread_allocates_from_the_main_arena_after_the_set_up():
    assert main_arena_growth("set-up") >= 32 << 20
    assert main_arena_growth("none") < 1 << 20  # without it: a thread arena, or fresh pages


def test_the_app_sets_the_allocator_up_before_anything_else(monkeypatch):
    import ashem_app.__main__ as app_main

    calls = []
    monkeypatch.setattr("ashem_engine.memory.keep_freed_memory", lambda: calls.append(1))
    assert app_main.main(["--replay", "/nonexistent-run-dir"], hard_exit=False) == 2
    assert calls == [1]
