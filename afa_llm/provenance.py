"""Where a number was measured: the machine and the library versions, recorded beside each result.

A grid that runs across sessions may run on different machines (the same nominal kind has been an
Intel Xeon with AMX and an AMD EPYC without it); bf16 kernels differ between them, so a retrained
cell is not bit-identical, and timings are not comparable. Every results.json and eval report
says where it came from.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import peft
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


def machine_record() -> dict:
    """CPU, logical cores, torch threads, GPU (if any) and the versions that decide the numbers."""
    return {
        "cpu": cpu_name(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
    }
