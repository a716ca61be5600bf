"""The fit planner: will a preset fit a card, and with what micro-batch?

The model is built on the meta device (no memory, no time) and one training step's forward and backward run
there under the activation probe (trainers/memory.py), so the activation bytes come from the real graph, at
any micro-batch, rather than from a formula. The rest is common/plan.py's arithmetic: weights + grads + AdamW
state + activations(b) against the budget, with activation checkpointing off and on, and the grad
accumulation that keeps the preset's rows (and so tokens) per optimizer step.

As on a CUDA GPU, activations are saved in the run's autocast dtype (bf16 unless train.dtype=float32) and
attention saves what flash attention saves (q, k, v, the output and the row log-sum-exp, not the T x T
matrix). It is an estimate, labelled so: the allocator's rounding and transient buffers are not in it
(common/plan.py USABLE_FRACTION leaves room for them).

    cockpit plan PRESET [k=v ...] [--vram GB] [--json]
    train.batch_size=auto        the trainer applies the plan at launch (Trainer._build) and logs it

torch is imported inside the functions: `cockpit plan` adds this module's arguments without it.
"""
from __future__ import annotations

import json
import re

from common.cli import BadInput, Parser
from common.fmt import fmt_count
from common.plan import make_plan, plan_lines, unit_of, usable_bytes

_BLOCK = re.compile(r"\.\d+$")  # a layer of a ModuleList (trainers/memory.py layer_of): one block


class FlashLikeSDPA:
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


def run_dtype(cfg: dict):
    """The dtype activations are saved in on a GPU: float32 for train.dtype=float32, else bf16 (autocast)."""
    import torch

    return torch.float32 if cfg["train"]["dtype"] == "float32" else torch.bfloat16


def preset_micro(cfg: dict) -> int:
    """train.batch_size, or with train.batch_size=auto the batch size the preset had (config.AUTO_FROM)."""
    from trainers.config import AUTO, AUTO_FROM, COMMON

    t = cfg["train"]
    return int(cfg.get(AUTO_FROM, COMMON["train.batch_size"][1]) if t["batch_size"] == AUTO else t["batch_size"])


def rows_per_step(cfg: dict) -> int:
    """Rows (sequences, images) per optimizer step: batch_size x grad_accum (preset_micro)."""
    return preset_micro(cfg) * int(cfg["train"]["grad_accum"])


class Estimator:
    """One preset's model on the meta device, measured at any micro-batch, checkpointing off or on.

    `task`: the run's task (the trainer's own: its data are already loaded), or None to load one here with
    its data on the CPU. `dtype`: the activations' dtype (None: run_dtype(cfg)). Building the model leaves
    torch's RNG as it was, so a run that plans trains on exactly the batches of one that does not."""

    def __init__(self, cfg: dict, task=None, dtype=None):
        import torch

        from trainers.tasks import load_task

        self.cfg = cfg
        if task is None:
            task = load_task({**cfg, "device": "cpu"}, torch.device("cpu"))
        self.task = task
        rng = torch.get_rng_state()
        try:
            with torch.device("meta"):
                self.model = task.build_model()
            self.sample = task.get_batch("val", 0, batch_size=1)
        finally:
            torch.set_rng_state(rng)
        params = list({id(p): p for p in self.model.parameters()}.values())
        self.n_params = sum(p.numel() for p in params)
        self.trainable = sum(p.numel() for p in params if p.requires_grad)
        weights = sum(p.numel() * p.element_size() for p in params)  # fp32 master weights (4-bit for QLoRA)
        weights += sum(b.numel() * b.element_size() for b in self.model.buffers())  # e.g. EMA copies
        self.static = {"weights": weights, "grads": self.trainable * 4, "optimizer": self.trainable * 8}
        # the configs whose activation_checkpointing the forward reads (a denoiser's is inside its wrapper)
        self.ckpt_configs = [m.config for m in self.model.modules()
                             if hasattr(getattr(m, "config", None), "activation_checkpointing")]
        self.dtype = dtype or run_dtype(cfg)
        if self.dtype != torch.float32:
            self.model.to(self.dtype)  # autocast saves low-precision activations; fp32 weights counted above
        self.model.train()
        self.tokens_per_row = task.batch_units(self.sample) if task.unit == "tokens" else None
        self._measured: dict[tuple[int, bool], tuple[int, dict]] = {}

    @property
    def offers_checkpointing(self) -> bool:
        return bool(self.ckpt_configs)

    def _batch(self, rows: int):
        import torch

        def grow(t):
            if not torch.is_tensor(t) or t.dim() == 0:
                return t
            return torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device="meta")
        s = self.sample
        return type(s)(grow(t) for t in s) if isinstance(s, (tuple, list)) else grow(s)

    def measure(self, rows: int, checkpointing: bool) -> tuple[int, dict]:
        """(bytes saved for backward, bytes by layer) of one training step on a micro-batch of `rows`."""
        key = (rows, checkpointing)
        if key not in self._measured:
            from trainers.memory import ActivationProbe

            for c in self.ckpt_configs:
                c.activation_checkpointing = checkpointing
            probe = ActivationProbe(self.model)
            with probe.capture(), FlashLikeSDPA():  # open through backward: checkpointing recomputes there
                loss = self.task.loss(self.model, self._batch(rows))
                loss.float().backward()
            self.model.zero_grad(set_to_none=True)
            self._measured[key] = (probe.total, dict(probe.layers))
        return self._measured[key]

    def activations(self, rows: int, checkpointing: bool = False) -> int:
        """Activation bytes of a micro-batch; with checkpointing, plus the largest block's own activations,
        which backward holds again while it recomputes that block."""
        total, _ = self.measure(rows, checkpointing)
        if checkpointing:
            _, layers = self.measure(rows, False)
            total += max((v for k, v in layers.items() if _BLOCK.search(k)), default=0)
        return total

    def cost(self, checkpointing: bool):
        if checkpointing and not self.offers_checkpointing:
            return None
        base = sum(self.static.values())
        return lambda rows: base + self.activations(rows, checkpointing)

    def plan(self, vram_gb: float, world: int = 1) -> dict:
        """The plan for `vram_gb` (common/plan.py make_plan), measured exactly at the micro-batches it tries.
        world: DDP processes, each of which takes its share of the rows of a step on a card of its own."""
        t = self.cfg["train"]
        plan = make_plan(self.static, {"off": self.cost(False), "on": self.cost(True)}, usable_bytes(vram_gb),
                         max(1, rows_per_step(self.cfg) // world), preset_micro(self.cfg), vram_gb,
                         checkpointing=t["activation_checkpointing"])
        plan.update(n_params=self.n_params, tokens_per_row=self.tokens_per_row,
                    dtype=str(self.dtype).replace("torch.", ""))
        return plan

    def facts(self) -> dict:
        """What the picker plans from without torch: the static bytes, and the activations of 1 row and
        per further row ([a1, per_row], from a micro-batch of 1 and the preset's own, or 2) for each mode
        the model offers."""
        acts = {}
        b = max(2, preset_micro(self.cfg))
        for mode, ckpt in (("off", False), ("on", True)):
            if ckpt and not self.offers_checkpointing:
                continue
            a1, ab = self.activations(1, ckpt), self.activations(b, ckpt)
            acts[mode] = [a1, (ab - a1) // (b - 1)]
        return {**self.static, "activations": acts, "rows": rows_per_step(self.cfg),
                "micro": preset_micro(self.cfg), "checkpointing": self.cfg["train"]["activation_checkpointing"],
                "tokens_per_row": self.tokens_per_row}


def apply_auto(cfg: dict, task, device, amp_dtype, world: int = 1) -> str:
    """train.batch_size=auto: plan for the preset's vram_budget_gb (on a GPU, at most its memory) and set
    train.batch_size, train.grad_accum and train.activation_checkpointing in `cfg` (the task's own dict);
    the line the trainer logs. Under DDP each of the `world` processes plans its share of the rows of a
    step. ConfigError when nothing fits."""
    import torch

    from trainers.config import ConfigError

    vram = float(cfg["vram_budget_gb"])
    where = f"vram_budget_gb={vram:g}"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        if total < vram:
            vram, where = total, f"this GPU's {total:.1f} GB"
    est = Estimator(cfg, task, dtype=amp_dtype or torch.float32)
    plan = est.plan(vram, world)
    if plan["chosen"] is None:
        raise ConfigError(f"train.batch_size=auto: nothing fits {where}: {plan['notes'][0]}")
    m = plan["modes"][plan["chosen"]]
    t = cfg["train"]
    was = f"{plan['preset_micro']} x {t['grad_accum']}"
    t["batch_size"], t["grad_accum"] = m["micro"], m["accum"]
    t["activation_checkpointing"] = plan["chosen"] == "on"
    from common.fmt import fmt_bytes

    share = f" on each of {world} processes" if world > 1 else ""
    return (f"train.batch_size=auto: micro-batch {m['micro']} x grad_accum {m['accum']} = {plan['rows']} "
            f"{unit_of(plan)} per step{share} (the preset's {was}), activation checkpointing "
            f"{'on' if plan['chosen'] == 'on' else 'off'}; up to {m['fit']} fit {where} "
            f"({fmt_bytes(plan['budget'])} usable): weights {fmt_bytes(plan['weights'])}, grads "
            f"{fmt_bytes(plan['grads'])}, optimizer {fmt_bytes(plan['optimizer'])}, activations "
            f"{fmt_bytes(m['activations'])} ({plan['dtype']}, estimated on the meta device)")


def report(cfg: dict, plan: dict) -> str:
    head = (f"{cfg['name']} ({cfg['arch']}, {cfg['task']}, profile {cfg['profile']}): "
            f"{fmt_count(plan['n_params'])} parameters; memory estimated on the meta device, activations in "
            f"{plan['dtype']}")
    return "\n".join([head, *plan_lines(plan, unit_of(plan))]) + "\n"


def add_arguments(p: Parser) -> None:
    p.add_argument("preset", metavar="PRESET", help="a preset name (`cockpit presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", default=[], metavar="k=v",
                   help="dotted preset keys, e.g. profile=paper model.block_size=512")
    p.add_argument("--vram", type=float, metavar="GB", help="the card's memory (default: the preset's vram_budget_gb)")
    p.add_argument("--json", action="store_true", help="the plan as one JSON object")


def main(argv: list[str], parser: Parser) -> int:
    import sys

    from trainers import config

    a = parser.parse_intermixed_args(argv)
    if a.vram is not None and not 0.1 <= a.vram <= 4096:
        raise BadInput(f"--vram {a.vram:g} is out of range; give the card's memory in GB, e.g. --vram 12")
    cfg = config.load(a.preset, a.overrides, has_cuda=True)  # planned for a GPU, whatever this machine has
    cfg["device"] = "cpu"  # the data stay on the CPU; the model and batches go to the meta device
    plan = Estimator(cfg).plan(a.vram if a.vram is not None else float(cfg["vram_budget_gb"]))
    sys.stdout.write(json.dumps({"preset": cfg["name"], "profile": cfg["profile"], **plan}) + "\n" if a.json
                     else report(cfg, plan))
    return 0
