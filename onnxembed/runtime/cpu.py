"""What CPU this process runs on: vendor, model, the instruction sets the kernels care about, cores, caches.

In scope: reading /proc/cpuinfo and /sys (Linux; elsewhere what ``platform`` says), and a key that tells one
CPU from another for tuning profiles (runtime/profile.py). Not in scope: choosing settings from it (profile.py).
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# The flags that pick onnxruntime's MLAS kernels: fp32 GEMM (AVX2/FMA, AVX-512) and int8 GEMM (VNNI, AMX).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "neon")


@dataclass(frozen=True)
class CpuInfo:
    """One CPU as tuning sees it. ``cores``: the cores this process may run on (a container's CPU set)."""

    vendor: str
    model_name: str
    family: str
    model: str
    cores: int
    flags: tuple[str, ...] = ()
    cache_bytes: dict[str, int] = field(default_factory=dict)  # "L2", "L3": per instance

    @property
    def key(self) -> str:
        """16 hex digits that change with the vendor, model, kernel flags or core count (not the caches)."""
        text = "|".join([self.vendor, self.model_name, self.family, self.model, str(self.cores), *self.flags])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line: "AMD EPYC (AuthenticAMD family 25 model 1), 2 cores, avx2 fma, L2 512 KiB, L3 32 MiB"."""
        caches = ", ".join(f"{level} {_size(size)}" for level, size in sorted(self.cache_bytes.items()))
        flags = " ".join(self.flags) or "no AVX2/AVX-512/VNNI"
        identity = f"{self.vendor} family {self.family} model {self.model}"
        return f"{self.model_name} ({identity}), {self.cores} cores, {flags}" + (f", {caches}" if caches else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flags": list(self.flags), "key": self.key}


def _size(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 and size % (1 << 20) == 0 else f"{size >> 10} KiB"


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return CpuInfo(
        vendor=fields.get("vendor_id") or fields.get("CPU implementer") or platform.machine() or "unknown",
        model_name=fields.get("model name") or platform.processor() or "unknown CPU",
        family=fields.get("cpu family", ""),
        model=fields.get("model", ""),
        cores=available_cores(),
        flags=tuple(flag for flag in KERNEL_FLAGS if flag in flags or (flag == "neon" and "asimd" in flags)),
        cache_bytes=_caches(),
    )


def _caches() -> dict[str, int]:
    """Unified L2 and L3 sizes of cpu0 from sysfs ({} where there is none)."""
    sizes: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Unified" or level not in ("2", "3"):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "")
        if number.isdigit():
            sizes[f"L{level}"] = int(number) * units.get(unit, 1)
    return sizes
