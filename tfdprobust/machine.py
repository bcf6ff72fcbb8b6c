"""The machine and commit a figure came from, as every benchmark, timing and cache records them.

A speed figure means nothing without its machine: the CPU model, its vector instruction
sets (TensorFlow's oneDNN kernels are picked by them at run time, and the DP/non-DP ratio
moved from 0.4x to 1.0x between two 2-core AMD EPYCs that differ in AVX2), the cores, the
load while it ran, and the commit. No TensorFlow import.
"""

import datetime
import os
import platform
import subprocess
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The instruction sets the reports name (yes/no each).
ISAS = ("avx", "avx2", "fma", "avx512f")


def cpu() -> Dict[str, Any]:
    """``{"model", "flags" (sorted list), "cores", "avx", "avx2", "fma", "avx512f"}`` from the first
    CPU of /proc/cpuinfo (``platform`` where there is none)."""
    info: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())  # the first CPU's
    except OSError:
        pass
    flags = sorted(set(info.get("flags", "").split()))
    model = info.get("model name") or platform.processor() or platform.machine() or "unknown"
    return {"model": model, "flags": flags, "cores": os.cpu_count(), **{isa: isa in flags for isa in ISAS}}


def commit(short: bool = True, mark_dirty: bool = False) -> str:
    """The checkout's commit (``"unknown"`` outside a git checkout); with ``mark_dirty``,
    `` (with uncommitted changes)`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", *(["--short"] if short else []), "HEAD"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        if mark_dirty and subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                         capture_output=True, text=True, timeout=30, check=True).stdout.strip():
            head += " (with uncommitted changes)"
        return head or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe() -> str:
    """One line: CPU model, AVX2, cores, load average, commit and time."""
    c = cpu()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{c['model']}, AVX2 {'yes' if c['avx2'] else 'no'}, {c['cores']} cores, load average {load} "
            f"(1, 5, 15 min), commit {commit()}, {datetime.datetime.now().isoformat(timespec='seconds')}")
