"""The fit planner's arithmetic: which micro-batch fits a VRAM budget, and the grad accumulation that keeps a
token batch. Pure Python (no torch): the trainer measures (trainers/plan.py, on the meta device), the picker
plans from cached facts (cockpit/presets_info.py), both through these functions.

A training step holds, besides the activations that one micro-batch saves for backward:
    weights     fp32 master weights (and buffers such as an EMA copy)
    grads       one fp32 gradient per trainable weight
    optimizer   AdamW's two fp32 moments per trainable weight
so memory(b) = weights + grads + optimizer + activations(b), and activations grow with the micro-batch b.
With activation checkpointing a block keeps only its input; backward recomputes one block at a time, whose
activations are added back as the recomputation's peak.
"""
from __future__ import annotations

from collections.abc import Callable

from common.fmt import fmt_bytes

GIB = 2**30
# The share of a card's memory a plan may fill: the CUDA context and cuBLAS workspaces live outside PyTorch's
# allocator, and the caching allocator rounds blocks up and fragments.
USABLE_FRACTION = 0.9
MAX_MICRO = 1 << 20  # train.batch_size's upper bound (trainers/config.py)
STATIC = ("weights", "grads", "optimizer")
MODES = ("off", "on")  # activation checkpointing off / on


def usable_bytes(vram_gb: float) -> int:
    return int(vram_gb * GIB * USABLE_FRACTION)


def largest_fit(cost: Callable[[int], int], budget: int, limit: int = MAX_MICRO) -> int:
    """The largest b in [1, limit] with cost(b) <= budget (cost grows with b), 0 when not even b = 1 fits.
    The first guess extrapolates cost(1) and cost(2) linearly; a few more calls settle it exactly."""
    memo: dict[int, int] = {}

    def fits(b: int) -> bool:
        if b not in memo:
            memo[b] = cost(b)
        return memo[b] <= budget

    if not fits(1):
        return 0
    if limit == 1 or not fits(2):
        return 1
    slope = memo[2] - memo[1]
    guess = limit if slope <= 0 else max(2, min(limit, 1 + (budget - memo[1]) // slope))
    lo, hi = 2, limit + 1  # fits(lo), not fits(hi) (limit + 1: beyond the range)
    if fits(guess):
        lo = guess
        step = 1
        while lo < limit:  # walk up from the guess, doubling the stride, until something does not fit
            b = min(limit, lo + step)
            if not fits(b):
                hi = b
                break
            lo, step = b, step * 2
    else:
        hi = guess
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def split_rows(rows: int, fit: int) -> tuple[int, int]:
    """(micro-batch, grad accumulation) for `rows` rows per optimizer step with at most `fit` rows at once:
    the largest divisor of rows that fits, so that micro x accum is exactly rows. (0, 0) when fit is 0."""
    if fit <= 0:
        return 0, 0
    micro = max(d for d in range(1, min(rows, fit) + 1) if rows % d == 0)
    return micro, rows // micro


def linear_cost(static: int, activations: list[int] | None) -> Callable[[int], int] | None:
    """The cost of a micro-batch b from cached facts: static + a1 + (b - 1) x per_row, activations = [a1, per_row]."""
    if not activations:
        return None
    a1, per_row = int(activations[0]), int(activations[1])
    return lambda b: static + a1 + (b - 1) * per_row


def make_plan(static: dict[str, int], costs: dict[str, Callable[[int], int] | None], budget: int, rows: int,
              preset_micro: int, vram_gb: float, checkpointing: bool = False) -> dict:
    """The plan: for each mode (checkpointing off, on; a mode whose cost is None is not offered by the
    model), the largest micro-batch that fits `budget`, the split of `rows` into micro-batch x accumulation
    and the memory at that micro-batch; the chosen mode (checkpointing: the preset already asks for it, so
    it is kept where it fits; otherwise only when nothing fits without it); and why what does not fit does not."""
    base = sum(static[k] for k in STATIC)
    plan: dict = {"vram_gb": vram_gb, "budget": budget, "rows": rows, "preset_micro": preset_micro,
                  **{k: static[k] for k in STATIC}, "modes": {}, "notes": []}
    for mode in MODES:
        cost = costs.get(mode)
        if cost is None:
            continue
        fit = largest_fit(cost, budget)
        micro, accum = split_rows(rows, fit)
        plan["modes"][mode] = {"fit": fit, "micro": micro, "accum": accum,
                               "activations": cost(max(micro, 1)) - base, "total": cost(max(micro, 1)),
                               "preset_total": cost(preset_micro)}
    off, on = plan["modes"].get("off"), plan["modes"].get("on")
    order = ("on", "off") if checkpointing else ("off", "on")
    chosen = next((m for m in order if plan["modes"].get(m) and plan["modes"][m]["fit"]), None)
    plan["chosen"] = chosen
    notes = plan["notes"]
    if base > budget:
        notes.append(f"weights, grads and optimizer state alone take {fmt_bytes(base)}, more than the "
                     f"{fmt_bytes(budget)} usable: a smaller model (model.n_layer, model.n_embd) is the only way")
    elif chosen is None:
        why = "even with activation checkpointing" if on else "and this model has no activation checkpointing"
        notes.append(f"one row's activations ({fmt_bytes(off['activations'])}) do not fit the "
                     f"{fmt_bytes(budget - base)} left after the weights {why}: shorten the rows "
                     "(model.block_size) or shrink the model")
    elif chosen == "on" and not off["fit"]:
        notes.append(f"without activation checkpointing not even one row fits ({fmt_bytes(off['total'])}); "
                     "train.activation_checkpointing=true trades ~30% more compute for it")
    if off and off["fit"] and off["preset_total"] > budget:
        notes.append(f"the preset's micro-batch of {preset_micro} needs {fmt_bytes(off['preset_total'])}, more "
                     f"than the {fmt_bytes(budget)} usable")
    if chosen and plan["modes"][chosen]["fit"] < rows and rows % plan["modes"][chosen]["fit"]:
        m = plan["modes"][chosen]
        notes.append(f"{m['fit']} rows fit at once; {m['micro']} is the largest that divides the {rows} rows "
                     "of a step, so the token batch stays exact")
    return plan


def plan_lines(plan: dict, unit: str = "rows") -> list[str]:
    """The plan as text: the fixed memory, each mode's micro-batch and accumulation, then the notes."""
    budget = (f"budget {plan['vram_gb']:g} GB x {USABLE_FRACTION:g} usable = {fmt_bytes(plan['budget'])}; "
              f"{plan['rows']} {unit} per optimizer step")
    fixed = (f"weights {fmt_bytes(plan['weights'])} + grads {fmt_bytes(plan['grads'])} + optimizer "
             f"{fmt_bytes(plan['optimizer'])} = {fmt_bytes(sum(plan[k] for k in STATIC))}")
    lines = [budget, fixed]
    for mode, label in (("off", "without checkpointing"), ("on", "with checkpointing")):
        m = plan["modes"].get(mode)
        if m is None:
            lines.append(f"{label}: not offered by this model")
        elif not m["fit"]:
            lines.append(f"{label}: nothing fits (one row: {fmt_bytes(m['total'])})")
        else:
            mark = "  <- planned" if plan.get("chosen") == mode else ""
            lines.append(f"{label}: up to {m['fit']} {unit} fit; micro-batch {m['micro']} x grad_accum "
                         f"{m['accum']}, activations {fmt_bytes(m['activations'])}, total "
                         f"{fmt_bytes(m['total'])}{mark}")
    return lines + plan["notes"]


def plan_from_facts(facts: dict, vram_gb: float) -> dict:
    """The plan from cached facts (trainers/plan.py Estimator.facts): activations linear in the micro-batch."""
    static = {k: int(facts[k]) for k in STATIC}
    base = sum(static.values())
    costs = {m: linear_cost(base, facts["activations"].get(m)) for m in MODES}
    plan = make_plan(static, costs, usable_bytes(vram_gb), int(facts["rows"]), int(facts["micro"]), vram_gb,
                     checkpointing=bool(facts.get("checkpointing")))
    plan["tokens_per_row"] = facts.get("tokens_per_row")
    return plan


def unit_of(plan: dict) -> str:
    n = plan.get("tokens_per_row")
    return f"rows of {n:,} tokens" if n else "rows"


def plan_summary(plan: dict) -> str:
    """One line: the planned micro-batch and accumulation for the budget, or why nothing fits."""
    chosen = plan.get("chosen")
    if chosen is None:
        return f"nothing fits {plan['vram_gb']:g} GB: {plan['notes'][0]}" if plan["notes"] else \
            f"nothing fits {plan['vram_gb']:g} GB"
    m = plan["modes"][chosen]
    line = (f"fits {plan['vram_gb']:g} GB with micro-batch {m['micro']} x grad_accum {m['accum']} "
            f"({fmt_bytes(m['total'])}; up to {m['fit']} {unit_of(plan)} at once"
            f"{', activation checkpointing' if chosen == 'on' else ''})")
    other = plan["modes"].get("on" if chosen == "off" else "off")
    if other and other["fit"]:
        line += (f"; {'with' if chosen == 'off' else 'without'} checkpointing {other['micro']} x {other['accum']}")
    return line
