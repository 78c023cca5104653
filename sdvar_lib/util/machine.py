"""Where a result was measured: one description of the machine for every report."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["MachineInfo"]


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def _nvidia_driver() -> str:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


@dataclass
class MachineInfo:
    """The device a result came from (GPU name, or CPU model and cores), with the software versions.

    ``cpu`` holds the GPU's name when ``device == "cuda"`` (field name kept from the stored reports).
    """

    device: str
    cpu: str
    torch_threads: int
    torch_version: str
    python_version: str
    platform: str
    cuda_version: str = ""
    driver: str = ""

    @classmethod
    def current(cls, device: torch.device | str) -> MachineInfo:
        device = torch.device(device)
        cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if cuda else f"{_cpu_name()}, {os.cpu_count()} cores"
        return cls(
            device=device.type, cpu=name, torch_threads=torch.get_num_threads(), torch_version=torch.__version__,
            python_version=platform.python_version(), platform=platform.platform(),
            cuda_version=str(torch.version.cuda) if cuda else "", driver=_nvidia_driver() if cuda else "",
        )

    @property
    def device_name(self) -> str:
        return self.cpu

    def describe(self) -> str:
        extra = f", CUDA {self.cuda_version}, driver {self.driver}" if self.device == "cuda" else ""
        return (f"{self.cpu} ({self.device}, {self.torch_threads} torch thread(s)), torch {self.torch_version}{extra}, "
                f"Python {self.python_version}")
