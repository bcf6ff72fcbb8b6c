"""The machine and commit a figure came from, as every benchmark and timing records them.

A speed figure means nothing without its machine: the CPU model, whether it has AVX2
(TensorFlow's oneDNN kernels are picked by the CPU's instruction set at run time, and
the DP/non-DP ratio moved from 0.4x to 1.0x between two 2-core AMD EPYCs that differ in
it), the cores, the load while it ran, and the commit. No TensorFlow import.
"""

import datetime
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu() -> dict:
    """``{"model": ..., "avx2": "yes"|"no"|"unknown", "cores": n}`` from /proc/cpuinfo."""
    model, avx2 = platform.processor() or "unknown", "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                     model)
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
        avx2 = "yes" if "avx2" in flags else "no"
    except OSError:
        pass
    return {"model": model, "avx2": avx2, "cores": os.cpu_count()}


def commit() -> str:
    """The checkout's short commit (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe() -> str:
    """One line: CPU model, AVX2, cores, load average, commit and time."""
    c = cpu()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{c['model']}, AVX2 {c['avx2']}, {c['cores']} cores, load average {load} (1, 5, 15 min), "
            f"commit {commit()}, {datetime.datetime.now().isoformat(timespec='seconds')}")
