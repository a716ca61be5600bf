"""The `system` events the trainer emits (trainers/system.py): GPU fields from NVML, CPU and memory from psutil."""
from __future__ import annotations

import os
import sys
import threading
import types
from collections import namedtuple

import psutil
import pytest

from trainers.system import CpuStats, Nvml, SystemSampler


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # the name pynvml gives it
    def __str__(self):
        return "NVML Shared Library Not Found"


class NVMLError_NotSupported(NVMLError):
    def __str__(self):
        return "Not Supported"


# Deliberately not NVML's real bit values: the sampler must take them from the module, not keep its own copy.
BITS = {"GpuIdle": 1 << 20, "ApplicationsClocksSetting": 1 << 21, "SwPowerCap": 1 << 22, "HwSlowdown": 1 << 23,
        "SyncBoost": 1 << 24, "SwThermalSlowdown": 1 << 25, "HwThermalSlowdown": 1 << 26,
        "HwPowerBrakeSlowdown": 1 << 27}


class GPU:
    def __init__(self, name, temp, util, used, total, milliwatts, mask):
        self.name, self.temp, self.util, self.used, self.total = name, temp, util, used, total
        self.milliwatts, self.mask = milliwatts, mask


def fake_pynvml(gpus: list[GPU], *, prefix="nvmlClocksEventReason", init_error=None) -> types.ModuleType:
    """A pynvml module: `prefix` picks the constant names of newer (Event) or older (Throttle) nvidia-ml-py."""
    nv = types.ModuleType("pynvml")
    for suffix, bit in BITS.items():
        setattr(nv, prefix + suffix, bit)
    nv.NVML_TEMPERATURE_GPU = 0

    def init():
        if init_error is not None:
            raise init_error

    def power(h):
        if h.milliwatts is None:
            raise NVMLError_NotSupported()
        return h.milliwatts

    nv.nvmlInit = init
    nv.nvmlDeviceGetCount = lambda: len(gpus)
    nv.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    nv.nvmlDeviceGetName = lambda h: h.name
    nv.nvmlDeviceGetTemperature = lambda h, sensor: h.temp if sensor == nv.NVML_TEMPERATURE_GPU else None
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=h.util, memory=0)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=h.used, total=h.total, free=h.total - h.used)
    nv.nvmlDeviceGetPowerUsage = power
    if prefix == "nvmlClocksEventReason":
        nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: h.mask
    else:  # nvidia-ml-py before 12.535 has only the Throttle function
        nv.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: h.mask
    return nv


def two_gpus() -> list[GPU]:
    return [GPU(b"NVIDIA H100 80GB HBM3", 71, 93, 40 * 2**30, 80 * 2**30, 512_345,
                BITS["SwThermalSlowdown"] | BITS["HwPowerBrakeSlowdown"] | BITS["GpuIdle"]),
            GPU("NVIDIA L4", 45, 0, 2**30, 24 * 2**30, None, 0)]


@pytest.mark.parametrize("prefix", ["nvmlClocksEventReason", "nvmlClocksThrottleReason"])
def test_gpu_fields_and_throttle_names_come_from_pynvml(monkeypatch, prefix):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(two_gpus(), prefix=prefix))
    sample = SystemSampler(lambda *a, **k: None).sample()
    assert "nvml" not in sample
    assert sample["gpus"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "temp_c": 71, "util_pct": 93, "mem_used": 40 * 2**30,
         "mem_total": 80 * 2**30, "power_w": 512.345, "throttle": ["sw_thermal", "hw_power_brake"]},
        {"index": 1, "name": "NVIDIA L4", "temp_c": 45, "util_pct": 0, "mem_used": 2**30,
         "mem_total": 24 * 2**30, "power_w": None, "throttle": []},
    ]


def test_every_throttle_reason_has_its_event_name(monkeypatch):
    names = {"ApplicationsClocksSetting": "applications_clocks", "SwPowerCap": "sw_power_cap",
             "HwSlowdown": "hw_slowdown", "SwThermalSlowdown": "sw_thermal", "HwThermalSlowdown": "hw_thermal",
             "HwPowerBrakeSlowdown": "hw_power_brake"}
    for suffix, name in names.items():
        monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([GPU("g", 0, 0, 0, 1, 0, BITS[suffix])]))
        assert Nvml().read()[0]["throttle"] == [name]
    # idle and sync boost are not throttling: the GPU pane and the loss plot's T markers stay quiet
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([GPU("g", 0, 0, 0, 1, 0,
                                                                BITS["GpuIdle"] | BITS["SyncBoost"])]))
    assert Nvml().read()[0]["throttle"] == []


def test_the_real_constants_of_the_installed_pynvml_match_the_event_names():
    import pynvml

    nvml = Nvml()
    assert sorted(nvml.throttle.values()) == sorted(["applications_clocks", "sw_power_cap", "hw_slowdown",
                                                      "sw_thermal", "hw_thermal", "hw_power_brake"])
    reason = getattr(pynvml, "nvmlClocksEventReasonHwSlowdown", None) or pynvml.nvmlClocksThrottleReasonHwSlowdown
    assert nvml.throttle_names(reason) == ["hw_slowdown"]


def test_without_an_nvidia_library_the_event_says_why_in_plain_words(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error=NVMLError_LibraryNotFound()))
    sample = SystemSampler(lambda *a, **k: None).sample()
    assert sample["nvml"] == "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    assert "gpus" not in sample and sample["cpu"]["ram_total"] > 0


def test_without_pynvml_installed_the_event_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ModuleNotFoundError
    reason = SystemSampler(lambda *a, **k: None).sample()["nvml"]
    assert reason.startswith("ModuleNotFoundError") and "pynvml" in reason


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_cpu_utilisation_is_the_busy_share_since_the_previous_read(monkeypatch):
    readings = iter([
        CpuTimes(100.0, 0.0, 20.0, 500.0, 5.0, 0.0, 1.0, 0.0, 0.0, 0.0),   # when the sampler starts
        CpuTimes(103.0, 0.0, 21.0, 505.0, 6.0, 0.0, 1.0, 0.0, 0.0, 0.0),   # 4 busy of 10 s: 40%
        CpuTimes(103.0, 0.0, 21.0, 505.0, 6.0, 0.0, 1.0, 0.0, 0.0, 0.0),   # no time passed: unknown
        CpuTimes(110.0, 0.0, 21.0, 505.0, 6.0, 0.0, 1.0, 0.0, 4.0, 0.0),   # guest is inside user: 7 of 7 s
    ])
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(readings))
    cpu = CpuStats()
    assert [cpu.read()["util_pct"] for _ in range(3)] == [40.0, None, 100.0]


def test_the_first_sample_reports_this_machines_memory_and_cores():
    cpu = CpuStats()
    first = cpu.read()  # read at once, as the trainer does when the run starts: no CPU time has passed
    assert first["util_pct"] is None or 0.0 <= first["util_pct"] <= 100.0
    assert set(first) == {"util_pct", "rss", "ram_used", "ram_total", "cores"}
    rss = psutil.Process().memory_info().rss
    vm = psutil.virtual_memory()
    assert 0.5 * rss < first["rss"] < 2 * rss
    assert first["ram_total"] == vm.total and 0 < first["ram_used"] <= vm.total
    assert first["cores"] == os.cpu_count()
    sum(i * i for i in range(300_000))
    assert 0.0 <= cpu.read()["util_pct"] <= 100.0


def test_unreadable_cpu_times_leave_the_utilisation_unknown(monkeypatch):
    def no_proc_stat():
        raise FileNotFoundError(2, "No such file or directory", "/proc/stat")
    monkeypatch.setattr(psutil, "cpu_times", no_proc_stat)
    cpu = CpuStats()
    out = cpu.read()
    assert out["util_pct"] is None and out["rss"] > 0


def test_the_sampler_thread_emits_system_events_until_stopped():
    events, got_two = [], threading.Event()

    def emit(kind, **fields):
        events.append((kind, fields))
        if len(events) >= 2:
            got_two.set()

    sampler = SystemSampler(emit, interval=0.05)
    sampler.start()
    assert got_two.wait(10), "no system events within 10 s"
    sampler.stop()
    sampler.join(5)
    assert not sampler.is_alive()
    kind, fields = events[0]
    assert kind == "system" and set(fields["cpu"]) == {"util_pct", "rss", "ram_used", "ram_total", "cores"}
    assert ("gpus" in fields) != ("nvml" in fields)
