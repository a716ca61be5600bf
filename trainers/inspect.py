"""Preset facts for `cockpit presets` and the picker: parameters and a full-size VRAM estimate.

Each preset's full-size model is built on the meta device (no memory, no time) and one training step's
forward and backward run there under the activation probe, so the activation bytes come from the real
graph rather than a formula. The VRAM figure is still an estimate (labelled so): fp32 weights + grads +
AdamW state (2 x fp32) + the activations of one micro-batch as a CUDA GPU would save them: in bf16 (the
presets' autocast dtype) and with flash attention, which keeps q, k, v, the output and the row
log-sum-exp instead of the T x T attention matrix.

    python -m trainers.inspect [--json] [NAME ...]
"""
from __future__ import annotations

import json
import sys
import time


class _FlashLikeSDPA:
    """Stands in for F.scaled_dot_product_attention on the meta device, saving what flash attention saves."""

    def __enter__(self):
        import torch
        import torch.nn.functional as F

        class Flash(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                out = torch.empty_like(q)
                lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
                ctx.save_for_backward(q, k, v, out, lse)
                return out

            @staticmethod
            def backward(ctx, g):
                q, k, v, _, _ = ctx.saved_tensors
                return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

        self.F, self.real = F, F.scaled_dot_product_attention

        def sdpa(q, k, v, *args, **kwargs):
            return Flash.apply(q, k, v) if q.device.type == "meta" else self.real(q, k, v, *args, **kwargs)
        F.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        self.F.scaled_dot_product_attention = self.real
        return False


def inspect_preset(name: str) -> dict:
    import torch

    from trainers import config
    from trainers.memory import ActivationProbe
    from trainers.tasks import load_task

    here = config.load(name)
    info = {"name": name, "arch": here["arch"], "task": here["task"], "description": here.get("description", ""),
            "profile_here": here["profile"], "vram_budget_gb": here["vram_budget_gb"],
            "has_cpu_profile": "cpu" in here["_has_profiles"]}
    try:
        cfg = config.load(name, profile="full", has_cuda=True)
        cfg["device"] = "cpu"  # data stays on the CPU; the model and batch go to the meta device
        task = load_task(cfg, torch.device("cpu"))
        with torch.device("meta"):
            model = task.build_model()
        params = {id(p): p for p in model.parameters()}.values()
        n_params = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        weight_bytes = sum(p.numel() * p.element_size() for p in params)  # fp32 master weights
        weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())  # e.g. EMA copies
        batch = task.get_batch("train", 0)
        batch = tuple(b.to("meta") if torch.is_tensor(b) else b for b in batch) if isinstance(batch, (tuple, list)) \
            else batch.to("meta")
        if cfg["train"]["dtype"] in ("auto", "bfloat16", "float16"):
            model.to(torch.bfloat16)  # autocast saves bf16 activations; fp32 weights are counted below
        probe = ActivationProbe(model)
        model.train()
        with probe.capture(), _FlashLikeSDPA():
            loss = task.loss(model, batch)
        loss.float().backward()
        est = {"weights": weight_bytes, "grads": trainable * 4, "optimizer": trainable * 8,
               "activations": probe.total}
        info.update(n_params=n_params, trainable_params=trainable, est_vram_bytes=sum(est.values()),
                    est_breakdown=est, full_batch=cfg["train"]["batch_size"],
                    grad_accum=cfg["train"]["grad_accum"])
    except Exception as e:  # noqa: BLE001 — a preset that cannot be estimated still lists, with the reason
        info.update(n_params=None, est_vram_bytes=None, error=f"{type(e).__name__}: {e}"[:300])
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
