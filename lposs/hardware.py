"""What this CPU offers: its physical cores (torch's thread count) and native bfloat16 arithmetic.

Read from Linux's /proc/cpuinfo; elsewhere the answers fall back to os.cpu_count() and "no bfloat16".
"""

from __future__ import annotations

import os


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def physical_cores() -> int:
    """Cores this process may run on, counting each physical core once (hyper-threads share its units)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores, physical = set(), "0"
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            physical = value.strip()
        elif key.strip() == "core id":
            cores.add((physical, value.strip()))
    return max(1, min(usable, len(cores) or usable))


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes in bfloat16 natively (AVX-512 BF16 or AMX)."""
    flags = next((line for line in _cpuinfo() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_physical_cores() -> int:
    """torch's intra-op threads = physical cores, unless OMP_NUM_THREADS says otherwise; -> the count in force."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(physical_cores())
    return torch.get_num_threads()
