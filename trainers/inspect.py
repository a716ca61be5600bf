"""Preset facts for `cockpit presets` and the picker: parameters and a full-size VRAM estimate.

Each preset's full-size model is built on the meta device and measured by the fit planner's Estimator (trainers/plan.py): fp32 weights + grads + AdamW
state (2 x fp32) + the activations of one micro-batch as a CUDA GPU would save them (bf16, flash attention).
The VRAM figure is an estimate, labelled so. `plan_facts` are what the picker plans a budget from.

    python -m trainers.inspect [--json | --jsonl] [NAME ...]
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


# The Llama shapes the fine-tune presets are estimated for: the published config.json of each model.
FINETUNE_SHAPES = {
    "Llama 3.2 1B": dict(n_layer=16, n_embd=2048, n_head=32, n_kv_head=8, head_dim=64, n_hidden=8192,
                         vocab_size=128256, tie_embeddings=True),
    "Llama 3.2 3B": dict(n_layer=28, n_embd=3072, n_head=24, n_kv_head=8, head_dim=128, n_hidden=8192,
                         vocab_size=128256, tie_embeddings=True),
    "Llama 2 7B": dict(n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, head_dim=128, n_hidden=11008,
                       vocab_size=32000, tie_embeddings=False),
    "Llama 3.1 8B": dict(n_layer=32, n_embd=4096, n_head=32, n_kv_head=8, head_dim=128, n_hidden=14336,
                         vocab_size=128256, tie_embeddings=False),
}
OPTIMIZER_BYTES = {"adamw": 8, "paged_adamw_32bit": 8, "paged_adamw_8bit": 2}  # per trainable weight: 2 moments


def estimate_finetune(shape: dict, method: str, cfg: dict) -> dict:
    """Estimated GPU memory of fine-tuning a Llama of `shape` with `method` (lora, qlora) and the preset's
    settings (finetune.rank / targets / optimizer, micro-batch train.batch_size of finetune.block_size tokens,
    train.activation_checkpointing), measured on the meta device as a CUDA run would hold it: the frozen base
    as the finetune task keeps it (float32; QLoRA: its linear layers NF4 + double quantisation, computed in
    bf16), the float32 adapters with their gradients and optimizer moments, and the activations one
    micro-batch saves in bf16 with flash attention (trainers/plan.py FlashLikeSDPA). The blocks are all alike,
    so a model of one block and one of two are measured and every figure is extrapolated to the shape's
    n_layer (exactly: each is a + b * n_layer)."""
    from trainers.tasks.finetune import finetune_settings, optimizer_name

    ft = {**finetune_settings(cfg), "method": method}
    seq = int(ft["block_size"]) or int(cfg["model"].get("block_size", 1024))
    train = cfg["train"]
    one, two = (_measure_finetune({**shape, "n_layer": n}, ft, train, seq) for n in (1, 2))
    L = shape["n_layer"]
    at = {k: one[k] + (two[k] - one[k]) * (L - 1) for k in one}
    if train["activation_checkpointing"]:  # backward recomputes one block at a time: its activations on top
        plain = {**train, "activation_checkpointing": False}
        one, two = (_measure_finetune({**shape, "n_layer": n}, ft, plain, seq) for n in (1, 2))
        at["activations"] += two["activations"] - one["activations"]
    trainable = at["trainable"]
    est = {"weights": at["weights"], "adapters": trainable * 4, "grads": trainable * 4,
           "optimizer": trainable * OPTIMIZER_BYTES[optimizer_name(ft)], "activations": at["activations"]}
    return {"method": method, "n_params": at["params"], "trainable_params": trainable,
            "micro_batch": train["batch_size"], "seq": seq,
            "activation_checkpointing": train["activation_checkpointing"],
            "est_breakdown": est, "est_bytes": sum(est.values())}


def _measure_finetune(shape: dict, ft: dict, train: dict, seq: int) -> dict:
    """Base parameters, their bytes, trainable parameters and saved activations of one training step of a Llama
    of `shape` with ft's method, on the meta device."""
    import torch

    from trainers import lora, quant
    from trainers.memory import ActivationProbe
    from trainers.models import build_model
    from trainers.plan import FlashLikeSDPA

    meta = torch.device("meta")
    with meta:
        model = build_model("llama", {k: v for k, v in shape.items() if k != "vocab_size"},
                            vocab_size=shape["vocab_size"], block_size=seq,
                            activation_checkpointing=train["activation_checkpointing"])
        if ft["method"] == "qlora":
            quant.quantize_base(model, meta, torch.bfloat16)
        lora.inject_lora(model, ft["targets"], int(ft["rank"]), float(ft["alpha"]), 0.0)
        lora.freeze_base(model)
    counts = lora.count_params(model)
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not lora.is_lora_param(n))
    weights += quant.quant_state_bytes(model)
    for m in model.modules():  # what autocast computes in: bf16 activations (the 4-bit layers already are)
        if not quant.is_4bit(m):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(torch.bfloat16)
    x = torch.zeros(train["batch_size"], seq, dtype=torch.long, device=meta)
    probe = ActivationProbe(model)
    model.train()
    with FlashLikeSDPA():  # backward too: activation checkpointing recomputes the forward there
        with probe.capture():
            _, loss = model(x, x)
        loss.float().backward()
    return {"params": counts["total"] - counts["adapters"], "weights": weights, "trainable": counts["trainable"],
            "activations": probe.total}


def finetune_estimates(cfg: dict) -> list[dict]:
    """estimate_finetune for every shape of FINETUNE_SHAPES with the preset's finetune.method (lora, qlora)."""
    method = (cfg.get("finetune") or {}).get("method", "lora")
    if method not in ("lora", "qlora"):
        return []
    return [{"shape": name, **estimate_finetune(shape, method, cfg)} for name, shape in FINETUNE_SHAPES.items()]


def inspect_preset(name: str) -> dict:
    import torch

    from trainers import config
    from trainers.tasks import load_task

    here = config.load(name)
    info = {"name": name, "arch": here["arch"], "task": here["task"], "description": here.get("description", ""),
            "profile_here": here["profile"], "vram_budget_gb": here["vram_budget_gb"],
            "has_cpu_profile": "cpu" in here["_has_profiles"]}
    try:
        cfg = config.load(name, profile="full", has_cuda=True)
        info.update(_measure(cfg))
        if cfg["task"] == "finetune":
            info["finetune_estimates"] = finetune_estimates(cfg)
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
    p.add_argument("--jsonl", action="store_true", help="one JSON object per preset, each printed as soon as it "
                                                        "is measured")
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
        if args.jsonl:
            try:
                print(json.dumps(info), flush=True)
            except OSError as e:  # the reader has gone
                return output_failed(e)
    if args.jsonl:
        return 0
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
