"""Describe the device a table is measured on: its name, a path-safe slug, CPU model, driver and CUDA."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from typing import Any

from ..text import slug


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def last_level_cache_bytes(device: str, device_id: int = 0) -> int | None:
    """Size of the largest cache in front of memory: the CPU's last level, or the GPU's L2; None if unknown."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        return getattr(torch.cuda.get_device_properties(device_id), "L2_cache_size", None) or None
    best: tuple[int, int] | None = None
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in os.listdir(root):
            if not index.startswith("index"):
                continue
            with open(f"{root}/{index}/level") as f:
                level = int(f.read())
            with open(f"{root}/{index}/size") as f:
                size = _parse_size(f.read().strip())
            if size and (best is None or level > best[0]):
                best = (level, size)
    except (OSError, ValueError):
        best = None
    return best[1] if best else None


def _parse_size(text: str) -> int | None:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", text.upper())
    if not m:
        return None
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def device_info(device: str, device_id: int = 0) -> dict[str, Any]:
    """Name, slug, CPU model, logical CPU count, driver and CUDA version for a ``cpu`` or ``cuda`` backend."""
    import torch

    info: dict[str, Any] = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "driver": None, "cuda": None}
    if device == "cuda" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(device_id)
        info["driver"] = _nvidia_driver()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = info["cpu_model"]
    info["device_slug"] = slug(info["device"], "unknown-device")
    return info
