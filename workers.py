"""Worker process pools whose workers never outlive the process that started them.

A `ProcessPoolExecutor` worker keeps running when its parent is killed (SIGKILL, an out-of-memory kill, a
`pkill` that matches the parent's command line only): it finishes its task, still timing ops or training a
candidate, and competes for the cores with whatever runs next. An orphaned LUT-benchmark child spoiled a torch
128 px check run that way on 2026-11-29. Spawned workers here ask the kernel to terminate them when their parent
dies (Linux `PR_SET_PDEATHSIG`; elsewhere they behave as before).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

from .libc import libc_function

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: SIGTERM this worker when `parent_pid` exits (also if it already has)."""
    prctl = libc_function("prctl")
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes (no forked torch or ONNX Runtime state) that end with their parent."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
