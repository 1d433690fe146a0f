"""Resident memory of this process (Linux), for benchmarks and memory tests.

`ru_maxrss` is not used: Linux carries it over from the parent process across fork and exec, so a child started
by a big process (pytest, a benchmark that built a checkpoint) reports the parent's size as its own peak. The
per-process high-water mark `VmHWM` of /proc/self/status does not have that flaw and can be reset.
"""

from __future__ import annotations

from pathlib import Path


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # the file gives kB
    raise RuntimeError(f"/proc/self/status has no {key} (not Linux?)")


def resident_bytes() -> int:
    """Resident set size now (VmRSS), bytes."""
    return _status_bytes("VmRSS")


def peak_resident_bytes() -> int:
    """Highest resident set size since start or the last `reset_peak` (VmHWM), bytes."""
    return _status_bytes("VmHWM")


def reset_peak() -> bool:
    """Start a new peak from the current size (writes 5 to /proc/self/clear_refs, Linux >= 4.0); False when the
    kernel does not allow it, in which case the peak keeps counting from the start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
