"""Every architecture at its published small scale against the cards cockpit promises to train it on: the fit
planner's estimate (trainers/plan.py, the meta-device estimate; no GPU needed) of each published-scale size.

    python scripts/bench_plan.py [--out benchmarks/results/plan.md]

For each size: its parameters; the estimated memory of one training step at the size's own micro-batch, in
bf16 autocast, without and with activation checkpointing; and the plan for a 12 GB and an 8 GB card (the
largest micro-batch that fits, split so that micro-batch x grad_accum keeps the preset's rows per step),
beside the VRAM figure cockpit's promise rests on, where it makes one.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (preset, profile, the size as published, the promise's VRAM figure for it)
SIZES = [
    ("gpt2-124m", "paper", "GPT-2 small 124M (12 x 768, 1024 tokens)", "~10 GB"),
    ("mamba", "paper", "Mamba-130M (24 x 768, 2048 tokens)", "fits easily"),
    ("rwkv", "paper", "RWKV-6 L12-D768 (512 tokens)", ""),
    ("retnet", "paper", "RetNet, torchscale small (12 x 768, 3 heads, 2048 tokens)", ""),
    ("bitnet", "paper", "BitNet b1.58 ~125M (12 x 768, 2048 tokens)", ""),
    ("moe", "paper", "GPT-2 small with 8 experts, top-2 (1024 tokens)", "~10 GB"),
    ("dit", "full", "DiT-S/2 (12 x 384, 256 patch tokens)", "~10-11 GB (24M DiT, checkpointed)"),
    ("dit", "paper", "DiT-B/2 (12 x 768, 256 patch tokens)", ""),
    ("unet", "paper", "DDPM CIFAR-10 U-Net (128 ch, 1-2-2-2, 32x32)", ""),
]
CARDS = (12.0, 8.0)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def plan_cell(plan: dict, mode: str) -> str:
    m = plan["modes"].get(mode)
    if m is None:
        return "n/a"
    if not m["fit"]:
        return "none fits"
    return f"{m['micro']} x {m['accum']} ({gib(m['total'])})"


def measure(preset: str, profile: str) -> dict:
    from trainers import config
    from trainers.plan import Estimator

    cfg = config.load(preset, [f"profile={profile}"], has_cuda=True)
    cfg["device"] = "cpu"
    t0 = time.time()
    est = Estimator(cfg)
    micro = cfg["train"]["batch_size"]
    base = sum(est.static.values())
    row = {"n_params": est.n_params, "micro": micro, "rows": cfg["train"]["batch_size"] * cfg["train"]["grad_accum"],
           "off": base + est.activations(micro, False),
           "on": base + est.activations(micro, True) if est.offers_checkpointing else None,
           "plans": {gb: est.plan(gb) for gb in CARDS}}
    row["seconds"] = time.time() - t0
    return row


def table(rows: list[tuple]) -> str:
    head = ["preset", "size (configuration followed)", "params", "micro-batch", "est. GiB, no ckpt",
            "est. GiB, ckpt", "12 GB: plan, no ckpt", "12 GB: plan, ckpt", "8 GB: plan, no ckpt", "8 GB: plan, ckpt",
            "promise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (preset, profile, size, promise), r in rows:
        p12, p8 = r["plans"][12.0], r["plans"][8.0]
        cells = [f"`{preset}` profile={profile}", size, f"{r['n_params'] / 1e6:.1f}M", str(r["micro"]),
                 gib(r["off"]), gib(r["on"]) if r["on"] is not None else "n/a",
                 plan_cell(p12, "off"), plan_cell(p12, "on"), plan_cell(p8, "off"), plan_cell(p8, "on"),
                 promise or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "plan.md"))
    a = ap.parse_args(argv)
    import torch

    from common.plan import USABLE_FRACTION

    rows = []
    for spec in SIZES:
        r = measure(spec[0], spec[1])
        print(f"{spec[0]} {spec[1]}: {r['n_params'] / 1e6:.1f}M, {r['seconds']:.1f} s", flush=True)
        rows.append((spec, r))
    def micro(i: int, gb: float, mode: str) -> int:
        return rows[i][1]["plans"][gb]["modes"][mode]["micro"]

    def total(i: int, gb: float, mode: str) -> str:
        return gib(rows[i][1]["plans"][gb]["modes"][mode]["total"])

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    text = f"""## Published-scale sizes and the fit planner

`python scripts/bench_plan.py`, {when}, torch {torch.__version__}, {platform.machine()}; estimates only: the
model is built on the meta device and one training step's forward and backward run there under the
activation probe (trainers/plan.py), so no GPU was needed and none was used. Each size is the preset's
`profiles.paper` (`profile=paper`; DiT-S/2 is the dit preset's full size), with the GPT-2 BPE for the
language models. Memory = fp32 weights + fp32 grads + AdamW's two fp32 moments + the activations of one
micro-batch saved in bf16 (autocast), attention saving what flash attention saves; with checkpointing
(`train.activation_checkpointing=true`) each block keeps its input and backward holds one block's
activations again while it recomputes it. A plan is `micro-batch x grad_accum (GiB at that micro-batch)`:
the largest micro-batch that fits {USABLE_FRACTION:g} of the card (the CUDA context and the allocator's
rounding take the rest), brought down to a divisor of the preset's rows per step so that the token batch
stays exact. `cockpit plan PRESET profile=paper --vram GB` prints the same, with the reasons for what does
not fit; `train.batch_size=auto` applies it at launch.

{table(rows)}

Read against the promise: GPT-2 124M plans micro-batch {micro(0, 12.0, 'off')} on 12 GB ({total(0, 12.0, 'off')} GiB
estimated) and the 8-expert MoE {micro(5, 12.0, 'off')} ({total(5, 12.0, 'off')} GiB); with what the estimate leaves
out (below: about 0.1 GiB per 1024-token row for the fp32 log-probabilities, and 2 bytes per weight) they
come to about 10 GB, the promise's figure. The promise's 24M DiT is smaller than DiT-S/2 (32.5M here), which
takes the preset's 128 images at once, {total(6, 12.0, 'off')} GiB without checkpointing and {total(6, 12.0, 'on')} GiB with
it; DiT-B/2 needs checkpointing to take the paper's 256 at once. Mamba-130M without checkpointing does not
fit at all here: with `kernels=torch` its chunked scan saves the expanded states (rows x T x 2d x d_state)
of every layer, which the CUDA selective scan and `kernels=triton` (kernels/selective_scan.py) recompute
instead; with checkpointing it plans {micro(1, 12.0, 'on')} rows of 2048 tokens on 12 GB.

What the estimate leaves out, so a GPU's peak runs above it: autocast's cross-entropy saves its
log-probabilities in fp32, the estimate in bf16 (2 bytes x T x 50,304 more per row: 0.1 GiB per 1024-token
row), the bf16 weight copies
autocast caches during a forward (2 bytes per weight), gradient buffers of the backward in flight, and
cuBLAS / NCCL workspaces. On a GPU, the memory pane's `peak_allocated` of a real run is the measurement to
set against these figures; none was measured for this table (no GPU machine was lent).
"""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
