"""A device fingerprint that a label cannot fake: what the hardware reports about itself.

A table's device name (``AMD EPYC``) says little: two cloud hosts of one label can differ in generation,
clock and caches, and so in latency. The fingerprint records what the kernel and the driver report —
CPU vendor, family/model/stepping, feature flags, nominal clock, the CPUs this process may run on and the
cache sizes; for a GPU its name, compute capability, streaming multiprocessors, memory, maximum clocks
and driver — and :func:`fingerprint_difference` names the fields in which two fingerprints differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

#: Fields compared between a table's fingerprint and this machine's (the others are informative only).
COMPARED = ("cpu_vendor", "cpu_family", "cpu_model_id", "cpu_stepping", "cpu_model", "cpu_flags_sha256",
            "cpu_mhz", "cpus", "caches", "gpu_name", "gpu_capability", "gpu_sms", "gpu_memory_mib",
            "gpu_max_sm_clock_mhz", "gpu_max_mem_clock_mhz", "gpu_driver")


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of ``/proc/cpuinfo`` (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return out


def _caches() -> dict[str, str]:
    """Cache sizes by level and type (``L1d``, ``L2``, ``L3``) from sysfs."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    out: dict[str, str] = {}
    try:
        for index in sorted(os.listdir(root)):
            if not index.startswith("index"):
                continue
            with open(f"{root}/{index}/level") as f:
                level = f.read().strip()
            with open(f"{root}/{index}/type") as f:
                kind = f.read().strip()
            with open(f"{root}/{index}/size") as f:
                size = f.read().strip()
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            out[f"L{level}{suffix}"] = size
    except (OSError, ValueError):
        pass
    return out


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux, else every CPU)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_fingerprint() -> dict[str, Any]:
    """What this machine's CPU reports: vendor, family/model/stepping, name, flags (hashed), clock, CPUs, caches.

    The clock is ``cpu MHz`` of ``/proc/cpuinfo`` rounded to 100 MHz (virtual machines report the host's
    nominal clock there; rounding keeps a governor's small moves out).
    """
    info = _cpuinfo()
    flags = " ".join(sorted(info.get("flags", "").split()))
    mhz = info.get("cpu mhz")
    try:
        rounded = int(round(float(mhz) / 100.0) * 100) if mhz else None
    except ValueError:
        rounded = None
    return {
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family": info.get("cpu family"),
        "cpu_model_id": info.get("model"),
        "cpu_stepping": info.get("stepping"),
        "cpu_model": info.get("model name"),
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16] if flags else None,
        "cpu_mhz": rounded,
        "cpus": usable_cpus(),
        "caches": _caches(),
    }


def _nvidia_smi(device_id: int, fields: str) -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--id={device_id}", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]


def gpu_fingerprint(device_id: int = 0) -> dict[str, Any]:
    """What GPU ``device_id`` reports: name, compute capability, SMs, memory, maximum clocks, driver."""
    import torch

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(device_id)
    smi = _nvidia_smi(device_id, "clocks.max.sm,clocks.max.mem,driver_version") or [None, None, None]
    return {
        "gpu_name": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_sms": props.multi_processor_count,
        "gpu_memory_mib": props.total_memory >> 20,
        "gpu_max_sm_clock_mhz": smi[0],
        "gpu_max_mem_clock_mhz": smi[1],
        "gpu_driver": smi[2],
    }


def device_fingerprint(device: str, device_id: int = 0) -> dict[str, Any]:
    """The fingerprint of the device a backend runs on (``cpu`` or ``cuda``), with its short ``id``.

    A GPU backend's fingerprint includes the host CPU (it launches every kernel), a CPU backend's has no GPU.
    """
    fp = cpu_fingerprint()
    if device == "cuda":
        fp.update(gpu_fingerprint(device_id))
    fp["id"] = fingerprint_id(fp)
    return fp


def fingerprint_device(fp: Mapping[str, Any]) -> str:
    """The device a recorded fingerprint describes: ``cuda`` when it names a GPU, else ``cpu``."""
    return "cuda" if fp.get("gpu_name") else "cpu"


def fingerprint_id(fp: Mapping[str, Any]) -> str:
    """Short hash of the compared fields: equal ids, same hardware as far as it tells."""
    key = {k: fp.get(k) for k in COMPARED if fp.get(k) is not None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def fingerprint_difference(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """``field: recorded -> here`` for every compared field in which the two fingerprints differ."""
    out = []
    for key in COMPARED:
        a, b = recorded.get(key), here.get(key)
        if a != b and not (a is None and b is None):
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return re.sub(r"\s+", " ", text)[:60]
