"""Preset facts for `cockpit presets` and the picker: parameters and a full-size VRAM estimate.

Each preset's full-size model is built on the meta device and measured by the fit planner's Estimator (trainers/plan.py): fp32 weights + grads + AdamW
state (2 x fp32) + the activations of one micro-batch as a CUDA GPU would save them (bf16, flash attention).
The VRAM figure is an estimate, labelled so. `plan_facts` are what the picker plans a budget from.

    python -m trainers.inspect [--json] [NAME ...]
"""
from __future__ import annotations

import json
import sys
import time


def _measure(cfg: dict) -> dict:
    """n_params, the estimate at the preset's own micro-batch and the fit planner's facts, of one config."""
    from trainers.plan import Estimator

    cfg["device"] = "cpu"  # data stays on the CPU; the model and batch go to the meta device
    est = Estimator(cfg)
    t = cfg["train"]
    acts = est.activations(t["batch_size"], t["activation_checkpointing"] and est.offers_checkpointing)
    breakdown = {**est.static, "activations": acts}
    return {"n_params": est.n_params, "trainable_params": est.trainable, "est_vram_bytes": sum(breakdown.values()),
            "est_breakdown": breakdown, "full_batch": t["batch_size"], "grad_accum": t["grad_accum"],
            "plan_facts": est.facts()}


def inspect_preset(name: str) -> dict:
    import torch

    from trainers import config
    from trainers.tasks import load_task

    here = config.load(name)
    info = {"name": name, "arch": here["arch"], "task": here["task"], "description": here.get("description", ""),
            "profile_here": here["profile"], "vram_budget_gb": here["vram_budget_gb"],
            "has_cpu_profile": "cpu" in here["_has_profiles"]}
    try:
        info.update(_measure(config.load(name, profile="full", has_cuda=True)))
    except Exception as e:  # noqa: BLE001 — a preset that cannot be estimated still lists, with the reason
        info.update(n_params=None, est_vram_bytes=None, error=f"{type(e).__name__}: {e}"[:300])
    info["has_paper_profile"] = "paper" in here["_has_profiles"]  # `cockpit plan NAME profile=paper` sizes it
    if here["profile"] != "full":  # what a run here trains (the CPU profile's smaller model), counted too
        try:
            here_task = load_task(here, torch.device("cpu"))  # its data on the CPU, as for the full size
            with torch.device("meta"):
                model = here_task.build_model()
            info["n_params_here"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        except Exception:  # noqa: BLE001, S110 — the full size's figures stand alone
            pass
    return info


def main(argv: list[str]) -> int:
    from common.cli import BadInput, Parser, fail, output_failed
    from trainers import config

    p = Parser(prog="python -m trainers.inspect",
               description="Parameter counts and memory estimates of presets, built on the meta device.")
    p.add_argument("presets", nargs="*", help="preset names or YAML paths (default: every preset)")
    p.add_argument("--json", action="store_true", help="one JSON list instead of one line per preset")
    try:
        args = p.parse_args(argv)
    except BadInput as e:
        return fail(str(e))
    out = []
    for n in args.presets or config.preset_names():
        t0 = time.time()
        info = inspect_preset(n)
        info["inspect_s"] = round(time.time() - t0, 2)
        out.append(info)
    try:
        if args.json:
            print(json.dumps(out))
        else:
            for i in out:
                print(i)
        sys.stdout.flush()
    except OSError as e:  # a full disk, a closed pipe
        return output_failed(e)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
