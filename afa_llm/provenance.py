"""Where a number was measured: the machine and the library versions, recorded beside each result.

A grid that runs across sessions may run on different machines (the same nominal kind has been an
Intel Xeon with AMX and an AMD EPYC without it); bf16 kernels differ between them, so a retrained
cell is not bit-identical, and timings are not comparable. Every results.json and eval report
says where it came from.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import transformers


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# CPU features that multiply bf16 in hardware; without them oneDNN emulates bf16, and an autocast
# step is many times slower than fp32 (docs/PERFORMANCE.md: 13x for an IMDB LoRA step on AVX2).
BF16_FEATURES = {"x86_64": ("avx512_bf16", "amx_bf16"), "aarch64": ("sve_bf16", "bf16")}


def cpu_bf16_native(capabilities: Mapping | None = None) -> bool | None:
    """Whether this CPU has bf16 arithmetic (``BF16_FEATURES``); None on an architecture not listed."""
    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    features = BF16_FEATURES.get(caps.get("architecture", ""))
    return None if features is None else any(caps.get(name, False) for name in features)


def emulated_bf16_warning(bf16: bool, device_type: str, native: bool | None,
                          fix: str = "set mixed_precision: no") -> str | None:
    """The warning for bf16 asked for on a CPU that would emulate it; None when there is nothing to say.
    ``fix``: how the command at hand turns bf16 off."""
    if not bf16 or device_type != "cpu" or native is not False:
        return None
    return ("warning: bf16 on a CPU without bf16 instructions (AVX512-BF16/AMX on x86) is emulated and "
            f"many times slower than fp32; {fix} (docs/PERFORMANCE.md)")


def warn_if_emulated_bf16(bf16: bool, device_type: str, fix: str = "set mixed_precision: no") -> None:
    """Print ``emulated_bf16_warning`` to stderr when it applies (the run goes on as asked)."""
    message = emulated_bf16_warning(bf16, device_type, cpu_bf16_native() if bf16 else None, fix)
    if message:
        print(message, file=sys.stderr)


def machine_record() -> dict:
    """CPU, its vector ISA and bf16 support, cores, torch threads, GPU (if any) and the versions."""
    return {
        "cpu": cpu_name(), "cpu_isa": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": cpu_bf16_native(),
        "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": _version("peft"),
    }


def _version(package: str) -> str | None:
    """An installed package's version, None where it is not installed (the lm-eval benchmark's venv has no peft)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
