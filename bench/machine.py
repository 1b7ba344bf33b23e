"""What machine a benchmark ran on: CPU model and the vector instructions the models' kernels use.

Speed figures differ several-fold between machines of the same core count (an int8 model runs
fastest with VNNI, and may be slower than float32 without it), so every speed report names its CPU.
"""

import os
from pathlib import Path

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # in /proc/cpuinfo's spelling


def describe(cpuinfo=Path("/proc/cpuinfo")):
    """{"cpu": model name (with its family and model numbers, which a VM's name may be all that
    tells apart), "cpus": logical CPUs, "simd": the SIMD_FLAGS present}; "unknown" off Linux."""
    model, flags, numbers = "unknown", set(), {}
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key in ("cpu family", "model") and key not in numbers:
            numbers[key] = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    if len(numbers) == 2:
        model += f" (family {numbers['cpu family']}, model {numbers['model']})"
    return {"cpu": model, "cpus": os.cpu_count(), "simd": [f for f in SIMD_FLAGS if f in flags]}


def summary(machine):
    """One line: `AMD EPYC (family 23, model 1), 2 CPUs, avx2 fma`."""
    return f"{machine['cpu']}, {machine['cpus']} CPUs, {' '.join(machine['simd']) or 'no AVX2'}"
