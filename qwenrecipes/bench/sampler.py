"""The GPU seen from outside the engine: its name (nvidia-smi) and a thread sampling whole-GPU memory in use
(NVML or nvidia-smi) while the engine runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable


def gpu_name() -> str:
    """The device name as nvidia-smi prints it ("NVIDIA H200"), or "cpu"."""
    if not shutil.which("nvidia-smi"):
        return "cpu"
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i",
                               os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "unknown GPU"


class MemorySampler(threading.Thread):
    """Whole-GPU memory in use, polled from outside the engine: NVML when importable (cheap, in-process),
    else `nvidia-smi`. Peak and baseline in MiB; ``samples`` counts successful reads."""

    def __init__(self, device_index: int = 0, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.device_index = device_index
        self.interval = interval
        self.peak_mib: float | None = None
        self.baseline_mib: float | None = None
        self.samples = 0
        self.source = "none"
        self.cpu_seconds = 0.0  # the sampler's own cost, for the harness-overhead figure
        self._stop_event = threading.Event()
        self._read: Callable[[], float | None] = self._pick_reader()

    def _pick_reader(self) -> Callable[[], float | None]:
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            self.source = "nvml"

            def read_nvml() -> float | None:
                return float(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / 2**20

            return read_nvml
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"

            def read_smi() -> float | None:
                try:
                    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-i", str(self.device_index)], capture_output=True, text=True, timeout=10)
                    return float(out.stdout.strip().splitlines()[0])
                except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                    return None

            return read_smi

        def read_none() -> float | None:
            return None

        return read_none

    def read(self) -> float | None:
        return self._read()

    def run(self) -> None:
        self.baseline_mib = self.read()
        while not self._stop_event.is_set():
            start = time.thread_time()
            value = self.read()
            self.cpu_seconds += time.thread_time() - start
            if value is not None:
                self.samples += 1
                self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)
