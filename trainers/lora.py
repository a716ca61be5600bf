"""LoRA: low-rank adapters on the frozen linear layers of a pretrained model (Hu et al. 2021).

    h = W0 x + (alpha / r) * B A dropout(x)     W0 (out, in) frozen;  A (r, in), B (out, r) trained   (eq. 3)
    A ~ Kaiming-uniform, B = 0   ->  at step 0 the adapted model computes exactly what the base computes
    merge:  W = W0 + (alpha / r) B A              (same function, no extra matmuls at inference)

Targets name projections by their role, mapped onto each architecture's module names:

    role   gpt (trainers/models/gpt.py)          llama (trainers/models/llama.py; Llama, Mistral, Qwen2/3)
    q      query rows of the fused attn.c_attn   attn.q_proj
    k      key rows of attn.c_attn               attn.k_proj
    v      value rows of attn.c_attn             attn.v_proj
    o      attn.c_proj                           attn.o_proj
    gate   (none: GPT's MLP has no gate)         mlp.gate_proj
    up     mlp.c_fc   (also named `fc`)          mlp.up_proj   (`fc` too)
    down   mlp.c_proj (also named `proj`)        mlp.down_proj (`proj` too)
    attn = q,k,v,o    mlp = gate,up,down    all = every role the architecture has

The q, k and v rows of GPT's fused c_attn (out = 3 * n_embd) each get their own A and B on their third of the
output rows, so `q,v` adapts queries and values only (the paper's Table 5 setting) and the key rows stay
exactly the base's.

The base may be a plain `nn.Linear` or a 4-bit `bitsandbytes` layer (QLoRA, trainers/quant.py); the adapter
math is the same, and merging dequantises the base first.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.config import ConfigError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
GROUPS = {"attn": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down"), "all": ROLES}
ALIASES = {"fc": "up", "proj": "down"}  # GPT-2's names for its MLP's projections (earlier presets use them)
# arch -> role -> (the name the arch's targets use, module name suffix, which third of a fused q/k/v output
# it adapts or None for all rows)
MODULES: dict[str, dict[str, tuple[str, str, int | None]]] = {
    "gpt": {"q": ("q", "attn.c_attn", 0), "k": ("k", "attn.c_attn", 1), "v": ("v", "attn.c_attn", 2),
            "o": ("o", "attn.c_proj", None), "up": ("fc", "mlp.c_fc", None), "down": ("proj", "mlp.c_proj", None)},
    "llama": {role: (role, f"{'mlp' if role in GROUPS['mlp'] else 'attn'}.{role}_proj", None) for role in ROLES},
}


def _role(name: str) -> str:
    return ALIASES.get(name, name)


def check_targets(spec: str) -> str:
    """finetune.targets checked for names only (the architecture is known once the base is read): the spec
    without spaces; ConfigError names an unknown projection."""
    parts = [raw for raw in str(spec).replace(" ", "").split(",") if raw]
    for raw in parts:
        if raw not in GROUPS and _role(raw) not in ROLES:
            valid = ", ".join([*ROLES, *GROUPS])
            raise ConfigError(f"finetune.targets: unknown projection '{raw}'; use a comma list of {valid} "
                              f"({', '.join(f'{a} = {r}' for a, r in ALIASES.items())})")
    if not parts:
        raise ConfigError("finetune.targets is empty; name the projections to adapt, e.g. finetune.targets=q,k,v,o")
    return ",".join(parts)


def arch_of(model: nn.Module) -> str:
    """The architecture a model was built from: its module's name (trainers/models/<arch>.py)."""
    return type(model).__module__.rsplit(".", 1)[-1]


def parse_targets(spec: str, arch: str = "gpt") -> list[str]:
    """'q,v' / 'attn,mlp' / 'all' -> the ordered unique target names of `arch` ('up' is GPT's 'fc'); a role of
    a group the arch lacks (GPT's gate) is left out, a role named alone that it lacks is refused."""
    table = MODULES.get(arch)
    if table is None:
        raise ConfigError(f"finetune.targets: arch {arch} has no LoRA targets; LoRA here adapts "
                          f"{' and '.join(MODULES)} models")
    out: list[str] = []
    for raw in check_targets(spec).split(","):
        for role in GROUPS.get(raw, (_role(raw),)):
            if role not in table:
                if raw in GROUPS:
                    continue
                raise ConfigError(f"finetune.targets: arch {arch} has no {raw} projection; its targets are "
                                  f"{', '.join(t[0] for t in table.values())}")
            if table[role][0] not in out:
                out.append(table[role][0])
    return out


class LoRAAdapter(nn.Module):
    """The parameters of one low-rank update delta_W = (alpha / r) B A of shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))  # B = 0: the update starts at zero
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))         # as nn.Linear initialises its weight
        self.rank, self.alpha = rank, alpha


class LoRALinear(nn.Module):
    """A frozen base linear layer plus adapters on slices of its output rows.

    `slices` maps an adapter name to the [start, stop) range of output features it updates; a single
    adapter over all rows is the plain LoRA layer, three slices of a fused q/k/v layer adapt q, k and v
    separately. Rows no adapter covers pass through unchanged. All adapters of a layer run as two matmuls:

        h     = dropout(x) [A_q; A_k; A_v]^T * (alpha / r)          (..., n*r)   A's stacked
        delta = h blockdiag(B_q, B_k, B_v)^T                         (..., out)   zero rows where no adapter
    """

    def __init__(self, base: nn.Linear, slices: dict[str, tuple[int, int]], rank: int, alpha: float,
                 dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.slices = dict(sorted(slices.items(), key=lambda kv: kv[1][0]))
        pos = 0
        for name, (start, stop) in self.slices.items():
            if not (pos <= start < stop <= self.out_features):
                raise ValueError(f"adapter {name}: rows [{start}, {stop}) overlap or fall outside 0..{self.out_features}")
            pos = stop
        self.lora = nn.ModuleDict({name: LoRAAdapter(self.in_features, stop - start, rank, alpha)
                                   for name, (start, stop) in self.slices.items()})
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def stacked_A(self) -> torch.Tensor:  # (n*r, in)
        adapters = list(self.lora.values())
        return adapters[0].A if len(adapters) == 1 else torch.cat([a.A for a in adapters], dim=0)

    def block_B(self) -> torch.Tensor:  # (out, n*r): each B on its rows, zeros elsewhere
        if list(self.slices.values()) == [(0, self.out_features)]:  # one adapter on every row: plain LoRA
            return next(iter(self.lora.values())).B
        blocks, pos = [], 0
        for name, (start, stop) in self.slices.items():
            if start > pos:  # a (rows, 0) block adds rows of zeros and no columns
                blocks.append(self.lora[name].B.new_zeros(start - pos, 0))
            blocks.append(self.lora[name].B)
            pos = stop
        if pos < self.out_features:
            blocks.append(blocks[-1].new_zeros(self.out_features - pos, 0))
        return torch.block_diag(*blocks)

    def forward(self, x):
        y = self.base(x)                                            # (..., out) frozen (maybe 4-bit) W0 x + b
        h = F.linear(self.dropout(x), self.stacked_A()) * self.scale  # (..., n*r)
        return y + F.linear(h, self.block_B()).to(y.dtype)        # (..., out)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) blockdiag(B) [A] : the (out, in) update the adapters add to W0."""
        return (self.block_B().float() @ self.stacked_A().float()) * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W0 + delta_W, float32, shape (out, in)."""
        from trainers.quant import dense_weight

        return dense_weight(self.base).float() + self.delta_weight()

    @torch.no_grad()
    def top_directions(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """W0's top-k left and right singular vectors, (out, k) and (in, k): the directions the frozen weights
        emphasise most (W0 never changes: computed once, kept)."""
        cached = getattr(self, "_w0_top", None)
        if cached is None or cached[0].size(1) != k:
            from trainers.quant import dense_weight

            U, _, Vh = torch.linalg.svd(dense_weight(self.base).float(), full_matrices=False)
            cached = self._w0_top = (U[:, :k], Vh[:k].t())
        return cached

    @torch.no_grad()
    def spectrum(self, k: int) -> tuple[torch.Tensor, float]:
        """ΔW's top-k singular values (at most n*r of them are non-zero: ΔW = B A has rank <= n*r), and the
        share of ΔW's energy ‖U0ᵀ ΔW V0‖² / ‖ΔW‖² inside W0's top-(n*r) singular directions: LoRA's section 7
        finds it small, ΔW amplifying directions W0 does not emphasise."""
        dW = self.delta_weight()
        nr = self.stacked_A().size(0)
        U0, V0 = self.top_directions(nr)
        total = float(dW.pow(2).sum())
        inside = float((U0.t() @ dW @ V0).pow(2).sum())
        return torch.linalg.svdvals(dW)[:k], (inside / total if total > 0 else 0.0)

    def extra_repr(self) -> str:
        a = next(iter(self.lora.values()))
        return f"adapters={list(self.slices)}, rank={a.rank}, alpha={a.alpha}"


def _target_plan(model: nn.Module, targets: list[str], arch: str) -> dict[str, dict[str, int | None]]:
    """module name -> {target name: third index or None} for every module the targets select."""
    by_name = {t[0]: t[1:] for t in MODULES[arch].values()}
    plan: dict[str, dict[str, int | None]] = {}
    for name, module in model.named_modules():
        for target in targets:
            suffix, third = by_name[target]
            if (name == suffix or name.endswith("." + suffix)) and isinstance(module, nn.Linear):
                plan.setdefault(name, {})[target] = third
    return plan


def _set_submodule(model: nn.Module, name: str, new: nn.Module):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inject_lora(model: nn.Module, targets: str | list[str], rank: int, alpha: float, dropout: float = 0.0,
                arch: str | None = None) -> list[str]:
    """Wrap the selected linear layers of `model` in LoRALinear (in place); returns the wrapped module names.
    `arch` (default: the model's own, arch_of) decides which modules each role names.

    Adapters are created on the device of the layer they wrap, in float32.
    """
    arch = arch or arch_of(model)
    names = parse_targets(",".join([targets] if isinstance(targets, str) else targets), arch)
    if rank < 1:
        raise ConfigError(f"finetune.rank={rank}: must be at least 1")
    plan = _target_plan(model, names, arch)
    if not plan:
        wanted = ", ".join(sorted({m[1] for m in MODULES[arch].values() if m[0] in names}))
        raise ConfigError(f"finetune.targets={','.join(names)}: arch {arch} has no linear layer named "
                          f"*.{wanted}")
    wrapped = []
    for name, chosen in plan.items():
        base = model.get_submodule(name)
        slices = {}
        for target, third in chosen.items():
            if third is None:
                slices[target] = (0, base.out_features)
            else:
                if base.out_features % 3:
                    raise ConfigError(f"finetune.targets={target}: {name} has {base.out_features} outputs, "
                                      "not a fused q/k/v of three equal parts")
                width = base.out_features // 3
                slices[target] = (third * width, (third + 1) * width)
        device = next((p.device for p in base.parameters()), torch.device("cpu"))
        layer = LoRALinear(base, slices, rank, alpha, dropout).to(device)
        for p in layer.lora.parameters():  # adapters stay float32 whatever the base holds
            p.data = p.data.float()
        _set_submodule(model, name, layer)
        wrapped.append(name)
    return wrapped


def is_lora_param(name: str) -> bool:
    return ".lora." in f".{name}"


def freeze_base(model: nn.Module) -> int:
    """requires_grad only for adapter parameters; returns the number of trainable parameters."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_param(name))
        n += p.numel() if p.requires_grad else 0
    return n


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear holding W0 + (alpha / r) B A (in place), and any
    remaining 4-bit base layer by its dequantised float32 nn.Linear: the result is the base architecture
    again, computing what base + adapters computed."""
    from trainers.quant import dequantize_model

    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            base = module.base
            dense = nn.Linear(module.in_features, module.out_features, bias=base.bias is not None,
                              device=module.lora[next(iter(module.lora))].A.device)
            dense.weight.copy_(module.merged_weight())
            if base.bias is not None:
                dense.bias.copy_(base.bias.float())
            _set_submodule(model, name, dense)
    dequantize_model(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_params(model: nn.Module) -> dict[str, int]:
    """Logical parameter counts: 4-bit weights count as the weights they stand for, not their packed bytes."""
    from trainers.quant import logical_numel

    total = trainable = adapters = 0
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = logical_numel(p)
        total += n
        trainable += n if p.requires_grad else 0
        adapters += n if is_lora_param(name) else 0
    return {"total": total, "trainable": trainable, "adapters": adapters}


@torch.no_grad()
def adapter_internals(model: nn.Module) -> list[dict]:
    """The internals arrays of a model's LoRA adapters (trainers/internals.py): per adapted layer, the top
    singular values of its ΔW (`lora_sv`: twice as many as its adapters' ranks add up to, so that the zeros
    beyond rank n*r show) and the share of ΔW inside W0's top singular directions (`lora_overlap`)."""
    from trainers.internals import array

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not layers:
        return []
    k = min(min(min(m.out_features, m.in_features) for _, m in layers),
            2 * max(m.stacked_A().size(0) for _, m in layers))
    svs, overlaps, names = [], [], []
    for name, m in layers:
        sv, overlap = m.spectrum(k)
        svs.append(sv)
        overlaps.append(overlap)
        names.append(f"{name} (rank {m.stacked_A().size(0)})")
    return [array("lora_sv", torch.stack(svs), ["layer", "singular value"], labels=names),
            array("lora_overlap", overlaps, ["layer"], labels=names, digits=4)]
