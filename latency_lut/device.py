"""Device fingerprints: what a LUT was measured on, so it is never used for another device by mistake."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ..errors import FastVitNasError


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo spells it (falls back to the platform string elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def require_cuda() -> None:
    """One clear line instead of a CUDA traceback deep inside a measurement."""
    if not torch.cuda.is_available():
        raise FastVitNasError("--device cuda: no CUDA GPU is visible to torch here (torch.cuda.is_available() is "
                              "False); use --device cpu or run on a GPU machine")


def fingerprint(device: str, threads: int) -> dict[str, str | int]:
    """CPU model with logical cores and threads, or GPU name with compute capability and CUDA version."""
    if device == "cpu":
        return {"kind": "cpu", "name": cpu_name(), "logical_cores": os.cpu_count() or 0, "threads": threads}
    if device == "cuda":
        require_cuda()
        major, minor = torch.cuda.get_device_capability()
        return {"kind": "cuda", "name": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
                "cuda": torch.version.cuda or "", "threads": threads}
    raise FastVitNasError(f"--device: must be cpu or cuda, got {device!r}")
