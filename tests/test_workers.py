"""Pool workers end with the process that started them instead of running on as orphans."""

import os
import subprocess
import sys
import time

import pytest

PARENT = """
import os, signal, time
from fastvit_nas.workers import worker_pool
pool = worker_pool(1)
pool.submit(time.sleep, 120)
deadline = time.time() + 60
while not pool._processes and time.time() < deadline:
    time.sleep(0.05)
time.sleep(1.0)  # let the worker reach its task
print(next(iter(pool._processes)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_worker_dies_when_its_parent_is_killed():
    parent = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=120)
    worker = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, "the pool worker outlived its killed parent"
