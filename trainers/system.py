"""System sampler: a thread that emits `system` events every few seconds.

With an NVIDIA driver: NVML (nvidia-ml-py, module `pynvml`) per GPU — temperature, utilisation, memory
used/total, power and throttle reasons. Always: the machine's CPU utilisation, the trainer's RSS and the
machine's RAM (psutil, on Linux, macOS and Windows alike); without a GPU (NVMLError_LibraryNotFound here)
`nvml` says why there is no GPU data.
"""
from __future__ import annotations

import os
import threading

import psutil

from trainers.threads import cpu_busy_total

# The throttle reasons the `system` event names, by the suffix of pynvml's bit constants:
# nvmlClocksEventReason<suffix> (nvidia-ml-py >= 12.535), nvmlClocksThrottleReason<suffix> before that.
THROTTLE_REASONS = {
    "ApplicationsClocksSetting": "applications_clocks",
    "SwPowerCap": "sw_power_cap",
    "HwSlowdown": "hw_slowdown",
    "SwThermalSlowdown": "sw_thermal",
    "HwThermalSlowdown": "hw_thermal",
    "HwPowerBrakeSlowdown": "hw_power_brake",
}


def throttle_bits(nv) -> dict[int, str]:
    """{bit: event name} from the pynvml module's own constants."""
    bits = {}
    for suffix, name in THROTTLE_REASONS.items():
        bit = getattr(nv, "nvmlClocksEventReason" + suffix, None)
        if bit is None:
            bit = getattr(nv, "nvmlClocksThrottleReason" + suffix, None)
        if bit is not None:
            bits[bit] = name
    return bits


class Nvml:
    def __init__(self):
        self.error = None
        self.handles = []
        self.throttle = {}
        try:
            import pynvml

            self.nv = pynvml
            self.throttle = throttle_bits(pynvml)
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError ...
            self.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    def throttle_names(self, mask: int) -> list[str]:
        return [name for bit, name in self.throttle.items() if mask & bit]

    def read(self) -> list[dict]:
        nv, out = self.nv, []
        for i, h in enumerate(self.handles):
            def get(fn_name, *a, default=None):
                try:
                    return getattr(nv, fn_name)(h, *a)
                except Exception:  # NVMLError_NotSupported, or a function this pynvml lacks
                    return default
            mem = get("nvmlDeviceGetMemoryInfo")
            util = get("nvmlDeviceGetUtilizationRates")
            power = get("nvmlDeviceGetPowerUsage")
            mask = get("nvmlDeviceGetCurrentClocksEventReasons")
            if mask is None:
                mask = get("nvmlDeviceGetCurrentClocksThrottleReasons", default=0)
            name = get("nvmlDeviceGetName", default="GPU")
            out.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "temp_c": get("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
                "util_pct": util.gpu if util is not None else None,
                "mem_used": mem.used if mem is not None else None,
                "mem_total": mem.total if mem is not None else None,
                "power_w": power / 1000.0 if power is not None else None,
                "throttle": self.throttle_names(mask or 0),
            })
        return out


class CpuStats:
    """The machine's CPU utilisation since the previous read, this process's RSS and the machine's RAM."""

    def __init__(self):
        self.prev = cpu_busy_total()
        self.process = psutil.Process()

    def read(self) -> dict:
        now = cpu_busy_total()
        util = None
        if now and self.prev and now[1] > self.prev[1]:
            busy, total = now[0] - self.prev[0], now[1] - self.prev[1]
            util = round(min(100.0, max(0.0, 100.0 * busy / total)), 1)
        self.prev = now
        out = {"util_pct": util, "rss": None, "ram_used": None, "ram_total": None, "cores": os.cpu_count()}
        try:
            out["rss"] = self.process.memory_info().rss
        except (psutil.Error, OSError):
            pass
        try:
            vm = psutil.virtual_memory()
            out["ram_total"], out["ram_used"] = vm.total, vm.total - vm.available
        except (psutil.Error, OSError):
            pass
        return out


class SystemSampler(threading.Thread):
    def __init__(self, emit, interval: float = 2.0):
        super().__init__(name="cockpit-system-sampler", daemon=True)
        self.emit, self.interval = emit, interval
        self._stop_event = threading.Event()
        self.nvml = Nvml()
        self.cpu = CpuStats()

    def sample(self) -> dict:
        fields: dict = {"cpu": self.cpu.read()}
        if self.nvml.handles:
            fields["gpus"] = self.nvml.read()
        else:
            fields["nvml"] = self.nvml.error or "no NVIDIA GPU"
        return fields

    def run(self):
        while not self._stop_event.wait(self.interval):
            try:
                self.emit("system", **self.sample())
            except Exception:
                pass  # the sampler must never take the run down

    def stop(self):
        self._stop_event.set()
