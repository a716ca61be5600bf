"""The GPU pane: temperature, utilisation, VRAM used/total with a gauge and a history sparkline, power and
throttle reasons (NVML, sampled by the trainer). Without an NVIDIA GPU: a clear "no NVIDIA GPU" line with
NVML's reason, then CPU utilisation and RAM instead."""
from __future__ import annotations

from rich.text import Text

from cockpit.widgets.drawing import hbar, pack_words, sparkline
from cockpit.widgets.run_pane import StatePane, set_if_changed
from common.fmt import fmt_bytes


def gpu_summary(s) -> dict:
    """What the GPU pane shows: {'gpus': [...]} or {'no_gpu': reason, 'cpu': {...}}; {} before any event."""
    ev = s.system
    if not ev:
        return {}
    out: dict = {"cpu": ev.cpu or {}}
    if ev.gpus:
        out["gpus"] = ev.gpus
    else:
        out["no_gpu"] = ev.nvml or "NVML unavailable"
    return out


def throttle_text(reasons) -> str:
    if not reasons:
        return "none"
    if isinstance(reasons, str):
        return reasons
    return ", ".join(str(r) for r in reasons)


class GpuPane(StatePane):
    pane = "gpu"

    @staticmethod
    def signature(s, note=None) -> tuple:
        return (s.counts.get("system", 0),)

    def update_state(self, state, note: str | None = None):
        set_if_changed(self, "border_title", "GPU" if state.system is not None and state.system.gpus else "system")
        super().update_state(state, note)

    def render(self):
        self.rendered()
        s = self.state
        info = gpu_summary(s) if s is not None else {}
        if not info:
            return Text("no system sample yet", style="dim")
        w = max(20, self.size.width)
        out = Text(no_wrap=True, overflow="ellipsis")
        if "gpus" in info:
            for g in info["gpus"]:
                self._gpu(out, g, s, w)
        else:
            out.append("no NVIDIA GPU", style="bold yellow")
            rest = " here: training runs on the CPU"
            out.append((rest if len(rest) + 13 <= w else "\ntraining runs on the CPU") + "\n")
            # the reason in full, wrapped: it is what the user needs to fix the driver
            for line in pack_words(f"NVML: {info['no_gpu']}".split(" "), w):
                out.append(line + "\n", style="dim")
        cpu = info.get("cpu") or {}
        if cpu:
            self._cpu(out, cpu, s, w, brief="gpus" in info)
        out.rstrip()
        return out

    def _gpu(self, out: Text, g: dict, s, w: int):
        out.append(f"GPU {g.get('index', 0)} {g.get('name', '?')}\n", style="bold")
        temp, util, power = g.get("temp_c"), g.get("util_pct"), g.get("power_w")
        out.append("temp ", style="dim")
        out.append(f"{temp:.0f}°C" if temp is not None else "-", style="red" if temp and temp >= 85 else "")
        out.append("  util ", style="dim")
        out.append(f"{util:.0f}%" if util is not None else "-")
        out.append("  power ", style="dim")
        out.append(f"{power:.0f} W\n" if power is not None else "-\n")
        used, total = g.get("mem_used"), g.get("mem_total")
        frac = used / total if used is not None and total else 0.0
        gw = max(6, w - 24)
        out.append("VRAM ", style="dim")
        out.append(hbar(frac, gw), style="red" if frac > 0.95 else "yellow" if frac > 0.8 else "green")
        out.append(f" {fmt_bytes(used)}/{fmt_bytes(total)}\n")
        out.append("VRAM ", style="dim")
        out.append(sparkline(s.gpu_mem_history, w - 5, 0, 100) + "\n", style="green")
        out.append("util ", style="dim")
        out.append(sparkline(s.gpu_util_history, w - 5, 0, 100) + "\n", style="cyan")
        thr = throttle_text(g.get("throttle"))
        out.append("throttle ", style="dim")
        out.append(thr + "\n", style="red" if thr != "none" else "")

    def _cpu(self, out: Text, cpu: dict, s, w: int, brief: bool):
        util = cpu.get("util_pct")
        cores = cpu.get("cores")
        out.append("CPU  ", style="dim")
        out.append(f"{util:.0f}%" if util is not None else "-")
        if cores:
            out.append(f" of {cores} cores", style="dim")
        if not brief:
            out.append("\n     ")
            out.append(sparkline(s.cpu_util_history, w - 5, 0, 100), style="cyan")
        out.append("\n")
        used, total, rss = cpu.get("ram_used"), cpu.get("ram_total"), cpu.get("rss")
        if used is not None and total:
            out.append("RAM  ", style="dim")
            out.append(hbar(used / total, max(6, w - 24)), style="green")
            out.append(f" {fmt_bytes(used)}/{fmt_bytes(total)}\n")
        if rss is not None:
            out.append("trainer RSS ", style="dim")
            out.append(f"{fmt_bytes(rss)}\n")
