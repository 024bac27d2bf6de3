"""Describe the machine a benchmark ran on, so printed figures carry their context."""

from __future__ import annotations

import os
import platform


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    extra = ""
    try:
        import torch

        extra = f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            extra += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}{extra}"
