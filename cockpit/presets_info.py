"""Preset facts for `cockpit presets` and the picker: name, arch, task and description read from the YAML
files at once (preset_stubs), parameters and estimated VRAM measured by `python -m trainers.inspect` in a
subprocess (torch stays out of the UI process) and cached by the content of the presets and models."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from common.atomic import NotAFileTarget, write_atomic
from common.fmt import fmt_bytes, fmt_count
from common.paths import cache_dir


def _fingerprint() -> str:
    import trainers
    from trainers import config

    h = hashlib.sha1()
    root = Path(trainers.__file__).parent
    files = sorted(config.presets_dir().glob("*.yaml")) + sorted(root.glob("models/*.py")) + \
        sorted(root.glob("tasks/*.py")) + [root / "inspect.py", root / "memory.py", root / "plan.py"]
    for f in files:
        try:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        except OSError:
            pass
    h.update(str(config.cuda_available()).encode())
    return h.hexdigest()[:16]


def _cache_path() -> Path:
    return cache_dir() / f"presets-{_fingerprint()}.json"


def cached_infos() -> list[dict] | None:
    """The measured facts of every preset from the cache, when it holds this code's (None: measure them)."""
    path = _cache_path()
    if not path.is_file():
        return None
    try:
        infos = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, nested too deeply: measured again
        return None
    if isinstance(infos, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in infos):
        return infos
    return None


def _keep(infos: list[dict]) -> None:
    try:
        write_atomic(_cache_path(), json.dumps(infos))
    except (OSError, NotAFileTarget):  # a cache: not writing it costs only time
        pass


def _failure(stderr: str, code: int) -> RuntimeError:
    return RuntimeError(f"trainers.inspect failed: {stderr.strip().splitlines()[-1] if stderr.strip() else code}")


def presets_info(refresh: bool = False, names: list[str] | None = None) -> list[dict]:
    if not refresh and names is None:
        infos = cached_infos()
        if infos is not None:
            return infos
    cmd = [sys.executable, "-m", "trainers.inspect", "--json", *(names or [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise _failure(out.stderr, out.returncode)
    infos = json.loads(out.stdout.strip().splitlines()[-1])
    if names is None:
        _keep(infos)
    return infos


def stream_presets_info(on_info) -> list[dict]:
    """Every preset's facts, as presets_info() gives them, with `on_info(info, done, total)` called as each
    preset is measured (the picker fills its rows one by one instead of waiting for all: measuring every
    preset takes half a minute on a laptop CPU). From the cache when it holds them: one call per preset."""
    from trainers import config

    infos = cached_infos()
    if infos is not None:
        for k, info in enumerate(infos):
            on_info(info, k + 1, len(infos))
        return infos
    total = len(config.preset_names())
    cmd = [sys.executable, "-m", "trainers.inspect", "--jsonl"]
    infos = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            info = json.loads(line)
            infos.append(info)
            on_info(info, len(infos), max(total, len(infos)))
        stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise _failure(stderr, proc.returncode)
    _keep(infos)
    return infos


def preset_stubs() -> list[dict]:
    """Name, arch, task and description of every preset, read from the YAML files (fast: no torch, no
    model building). The measured facts (params, est. VRAM, profile here) arrive later from presets_info."""
    from trainers import config

    out = []
    for name in config.preset_names():
        info = {"name": name, "arch": "?", "task": "?", "description": "", "vram_budget_gb": 12.0}
        try:
            raw = config.read_yaml(config.preset_path(name))
            info.update(arch=str(raw.get("arch", "?")), task=str(raw.get("task", "?")),
                        description=str(raw.get("description") or ""),
                        vram_budget_gb=float(raw.get("vram_budget_gb", 12.0)))
        except (config.ConfigError, TypeError, ValueError) as e:
            info["error"] = str(e)
        out.append(info)
    return out


def merge_infos(stubs: list[dict], measured: list[dict]) -> list[dict]:
    """The stubs, each updated with its measured facts (matched by name); measured-only presets appended."""
    by_name = {m.get("name"): m for m in measured}
    out = [{**s, **by_name.pop(s["name"], {})} for s in stubs]
    return out + list(by_name.values())


def vram_fits(info: dict) -> bool | None:
    """Whether the estimated VRAM at full size fits the preset's budget; None when not measured."""
    est = info.get("est_vram_bytes")
    if not isinstance(est, (int, float)):
        return None
    return est <= float(info.get("vram_budget_gb", 12.0)) * 2**30


def estimate_fits(info: dict, row: dict) -> bool:
    return row["est_bytes"] <= float(info.get("vram_budget_gb", 12.0)) * 2**30


def finetune_cells(info: dict, row: dict) -> list[str]:
    """[base shape, method, params, micro-batch, est. VRAM, fits] of one fine-tune estimate (trainers/inspect.py
    finetune_estimates)."""
    batch = f"{row['micro_batch']} x {row['seq']}" + (" ckpt" if row.get("activation_checkpointing") else "")
    return [row["shape"], row["method"], fmt_count(row["n_params"]), batch, fmt_bytes(row["est_bytes"]),
            "yes" if estimate_fits(info, row) else f"NO (> {info.get('vram_budget_gb', 12):g} GB)"]


def finetune_summary(info: dict) -> str:
    """The fine-tune estimates of a preset in one line: `Llama 3.2 1B: lora 5.5 GB, qlora 2.4 GB · ...`."""
    by_shape: dict[str, list[str]] = {}
    for row in info.get("finetune_estimates") or []:
        mark = "" if estimate_fits(info, row) else " (too big)"
        by_shape.setdefault(row["shape"], []).append(f"{row['method']} {fmt_bytes(row['est_bytes'])}{mark}")
    return " · ".join(f"{shape}: {', '.join(parts)}" for shape, parts in by_shape.items())


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def preset_table(infos: list[dict]) -> str:
    rows = [["preset", "arch", "task", "params (full)", "params here", "est. VRAM (full)", "fits", "profile here"]]
    for i in infos:
        f = vram_fits(i)
        here = i.get("n_params_here", i.get("n_params"))
        rows.append([i["name"], i["arch"], i["task"], fmt_count(i.get("n_params")), fmt_count(here),
                     fmt_bytes(i.get("est_vram_bytes")) if i.get("est_vram_bytes") is not None else "n/a",
                     {True: "yes", False: f"NO (> {i.get('vram_budget_gb', 12):g} GB)", None: "?"}[f],
                     i.get("profile_here", "?")])
    lines = _aligned(rows)
    lines.append("")
    lines.append("est. VRAM: fp32 weights + grads + AdamW state + saved activations of one micro-batch, "
                 "measured on the meta device (an estimate; bf16 autocast on a GPU saves less).")
    tuned = [i for i in infos if i.get("finetune_estimates")]
    if tuned:
        rows = [["preset", "base shape", "method", "params", "micro-batch", "est. VRAM", "fits"]]
        rows += [[i["name"], *finetune_cells(i, r)] for i in tuned for r in i["finetune_estimates"]]
        lines += ["", "Fine-tuning Llama bases with each fine-tune preset's settings (estimates):", *_aligned(rows), "",
                  "est. VRAM: the frozen base (float32; QLoRA: NF4 linear layers) + float32 adapters, their grads "
                  "and optimizer moments + the bf16 activations of one micro-batch (B x T tokens; ckpt: activation "
                  "checkpointing), built on the meta device."]
    return "\n".join(lines)
