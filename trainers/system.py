"""System sampler: a thread that emits `system` events every few seconds.

With an NVIDIA driver: NVML (nvidia-ml-py, module `pynvml`) per GPU — temperature, utilisation, memory
used/total, power and throttle reasons. Without one (NVMLError_LibraryNotFound here): CPU utilisation
from /proc/stat, the trainer's RSS and the machine's RAM, with `nvml` saying why there is no GPU data.
"""
from __future__ import annotations

import os
import threading
import time

THROTTLE_REASONS = {
    0x0000000000000002: "applications_clocks",
    0x0000000000000004: "sw_power_cap",
    0x0000000000000008: "hw_slowdown",
    0x0000000000000020: "sw_thermal",
    0x0000000000000040: "hw_thermal",
    0x0000000000000080: "hw_power_brake",
}


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


class Nvml:
    def __init__(self):
        self.error = None
        self.handles = []
        try:
            import pynvml

            self.nv = pynvml
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError ...
            self.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    def read(self) -> list[dict]:
        nv, out = self.nv, []
        for i, h in enumerate(self.handles):
            def get(fn, *a, default=None):
                try:
                    return fn(h, *a)
                except Exception:
                    return default
            mem = get(nv.nvmlDeviceGetMemoryInfo)
            util = get(nv.nvmlDeviceGetUtilizationRates)
            power = get(nv.nvmlDeviceGetPowerUsage)
            mask = get(nv.nvmlDeviceGetCurrentClocksEventReasons, default=None)
            if mask is None:
                mask = get(nv.nvmlDeviceGetCurrentClocksThrottleReasons, default=0)
            name = get(nv.nvmlDeviceGetName, default="GPU")
            out.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "temp_c": get(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU),
                "util_pct": util.gpu if util is not None else None,
                "mem_used": mem.used if mem is not None else None,
                "mem_total": mem.total if mem is not None else None,
                "power_w": power / 1000.0 if power is not None else None,
                "throttle": throttle_names(mask or 0),
            })
        return out


class CpuStats:
    """CPU utilisation from /proc/stat deltas; RSS from /proc/self/statm; RAM from /proc/meminfo."""

    def __init__(self):
        self.prev = self._times()
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    @staticmethod
    def _times():
        try:
            with open("/proc/stat") as f:
                parts = [int(x) for x in f.readline().split()[1:]]
            idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
            return sum(parts), idle
        except (OSError, ValueError, IndexError):
            return None

    def read(self) -> dict:
        now = self._times()
        util = None
        if now and self.prev and now[0] > self.prev[0]:
            total, idle = now[0] - self.prev[0], now[1] - self.prev[1]
            util = round(100.0 * (1 - idle / total), 1)
        self.prev = now
        out = {"util_pct": util, "rss": None, "ram_used": None, "ram_total": None, "cores": os.cpu_count()}
        try:
            with open("/proc/self/statm") as f:
                out["rss"] = int(f.read().split()[1]) * self.page
        except (OSError, ValueError, IndexError):
            pass
        try:
            info = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    k, v = line.split(":", 1)
                    info[k] = int(v.split()[0]) * 1024
            out["ram_total"] = info.get("MemTotal")
            out["ram_used"] = info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))
        except (OSError, ValueError, KeyError):
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
