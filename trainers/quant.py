"""QLoRA's frozen 4-bit base and paged optimizer, through bitsandbytes (Dettmers et al. 2023).

    NF4: each block of 64 weights is stored as 4-bit indices into the 16 NormalFloat levels q_i (quantiles of
         N(0, 1), scaled to [-1, 1]) and one absmax c:  W ~= c * q[idx]            (Section 3, eq. 4-5)
    double quantisation: the fp32 absmax constants are themselves quantised to 8 bits in blocks of 256
         (one fp32 scale per 256 blocks): ~0.52 bytes per weight instead of 0.5 + 4/64      (Section 3)
    forward:  y = x dequant(W)^T + b  in the compute dtype (bf16 on CUDA, fp32 on CPU); the adapters on top
         (trainers/lora.py) stay in float32 and are the only trainable parameters.
    paged optimizer: AdamW whose state lives in CUDA unified memory, paged to CPU RAM under memory pressure
         (the spikes of long sequences do not end the run). The QLoRA reference script (artidoro/qlora
         qlora.py: optim="paged_adamw_32bit", max_grad_norm=0.3, lr_scheduler_type="constant") keeps the two
         moments in 32 bits: `paged_adamw(bits=32)`, QLoRA's default here; bits=8 quantises them block-wise
         (Dettmers et al. 2022), a quarter of the memory, as a named option (finetune.optimizer).

bitsandbytes 0.50 runs all of this on CPU too, with two differences we handle here:
  - paging needs CUDA unified memory: on CPU we use plain `AdamW32bit` / `AdamW8bit` (bitsandbytes itself
    would warn and fall back from the paged ones), and say so in a log line;
  - its CPU inference fast path repacks the weights for AVX512-BF16 and un-nests the double-quantised absmax
    on the first eval forward; we turn it off so the base stays NF4 + double quantisation throughout and
    state dicts keep one layout.
bitsandbytes is an optional dependency (`pip install 'cockpit[quant]'`), imported only when QLoRA is used.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from trainers.config import ConfigError

BLOCKSIZE = 64


def bnb():
    """Import bitsandbytes (optional) or raise ConfigError naming the fix."""
    import logging

    # On CPUs with AVX512-BF16 bitsandbytes tries to fetch a 4-bit GEMM from the Hugging Face hub at import and
    # warns when it cannot (always, offline); its own CPU kernels are used either way.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as e:
        raise ConfigError(f"finetune.method=qlora needs bitsandbytes ({e}); install it with "
                          "`pip install 'cockpit[quant]'` or use finetune.method=lora") from None
    return bitsandbytes


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 compute on CUDA (where the GPU has it), fp32 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


_NF4Linear = None


def nf4_linear_class():
    """`bitsandbytes.nn.Linear4bit` that can also load its own (pre-quantised) state dict, for resume."""
    global _NF4Linear
    if _NF4Linear is not None:
        return _NF4Linear
    b = bnb()

    class NF4Linear(b.nn.Linear4bit):
        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                  unexpected_keys, error_msgs):
            wkey = prefix + "weight"
            stats = {k[len(wkey) + 1:]: v for k, v in state_dict.items() if k.startswith(wkey + ".")}
            if wkey in state_dict and stats:  # packed 4-bit data + its quantisation state
                device = self.weight.device
                self.weight = b.nn.Params4bit.from_prequantized(state_dict[wkey], stats, requires_grad=False,
                                                                device=device, module=self)
                rest = {k: v for k, v in state_dict.items() if k != wkey and not k.startswith(wkey + ".")}
                super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                              unexpected_keys, error_msgs)
                if wkey in missing_keys:
                    missing_keys.remove(wkey)
            else:
                super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                              unexpected_keys, error_msgs)

    _NF4Linear = NF4Linear
    return NF4Linear


def is_4bit(module: nn.Module) -> bool:
    if type(module).__name__ not in ("NF4Linear", "Linear4bit"):
        return False
    return getattr(module.weight, "quant_state", None) is not None


def nf4_from_linear(linear: nn.Linear, device: torch.device, compute_dtype: torch.dtype | None = None):
    """A frozen NF4 + double-quantised copy of `linear` on `device` (quantisation happens on the move)."""
    b = bnb()
    compute_dtype = compute_dtype or compute_dtype_for(device)
    cls = nf4_linear_class()
    q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=compute_dtype,
            compress_statistics=True, quant_type="nf4", device="meta")
    src = linear.weight.data.detach()
    q.weight = b.nn.Params4bit(src.to(compute_dtype) if src.is_meta else src.to("cpu", compute_dtype),
                               requires_grad=False,
                               compress_statistics=True, quant_type="nf4", blocksize=BLOCKSIZE, module=q)
    if linear.bias is not None:
        bias = linear.bias.data.detach()
        q.bias = nn.Parameter(bias.float() if bias.is_meta else bias.to("cpu", torch.float32), requires_grad=False)
    q.support_avx512bf16_for_cpu = False  # keep the NF4 + double-quant layout on CPU (see module docstring)
    if linear.weight.is_meta:  # shape-only model (trainers/inspect.py): quantise shapes on the meta device
        with torch.device("cpu"):
            # bitsandbytes caches its 8-bit code table on the device of the first tensor it quantises:
            # fill that cache with a real CPU table before anything meta reaches it
            b.functional.quantize_4bit(torch.zeros(BLOCKSIZE), blocksize=BLOCKSIZE, compress_statistics=True,
                                       quant_type="nf4")
            q.weight._quantize(torch.device("meta"))
        return q
    return q.to(device)


def tied_weight_ids(model: nn.Module) -> set[int]:
    """ids of parameters that appear under more than one name (e.g. GPT's lm_head tied to wte)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {i for i, c in counts.items() if c > 1}


def quantize_base(model: nn.Module, device: torch.device, compute_dtype: torch.dtype | None = None) -> list[str]:
    """Replace every plain nn.Linear of `model` by its frozen NF4 version (in place); returns their names.

    A linear layer whose weight is tied to another module (GPT's lm_head = wte) stays in full precision:
    the embedding lookup needs the real matrix, as in the QLoRA paper, which quantises the linear layers only.
    """
    tied = tied_weight_ids(model)
    names = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and id(module.weight) not in tied:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nf4_from_linear(module, device, compute_dtype))
            names.append(name)
    return names


def dense_weight(linear: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a plain or 4-bit linear layer, dequantised to its original dtype."""
    if is_4bit(linear):
        b = bnb()
        w = linear.weight
        return b.functional.dequantize_4bit(w.data, w.quant_state).reshape(linear.out_features, linear.in_features)
    return linear.weight.data


@torch.no_grad()
def dequantize_model(model: nn.Module) -> list[str]:
    """Replace every 4-bit layer by a float32 nn.Linear with its dequantised weight (in place)."""
    names = []
    for name, module in list(model.named_modules()):
        if is_4bit(module):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=module.weight.device)
            dense.weight.copy_(dense_weight(module).float())
            if module.bias is not None:
                dense.bias.copy_(module.bias.float())
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, dense)
            names.append(name)
    return names


def quant_state_bytes(model: nn.Module) -> int:
    """Bytes of the quantisation state (absmax, nested absmax, code tables) that are not parameters."""
    total = 0
    for module in model.modules():
        if is_4bit(module):
            qs = module.weight.quant_state
            for t in (qs.absmax, qs.code, getattr(qs, "offset", None)):
                total += t.numel() * t.element_size() if torch.is_tensor(t) else 0
            if qs.nested and qs.state2 is not None:
                total += sum(t.numel() * t.element_size() for t in (qs.state2.absmax, qs.state2.code))
    return total


def logical_numel(p: torch.Tensor) -> int:
    """How many weights a parameter stands for (a packed 4-bit tensor holds two per byte)."""
    qs = getattr(p, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        return int(torch.Size(qs.shape).numel())
    return p.numel()


def paged_adamw(groups, device: torch.device, lr: float, betas: tuple[float, float], bits: int = 32, log=None):
    """bitsandbytes' paged AdamW with `bits`-bit moments (32: the QLoRA reference's paged_adamw_32bit, 8:
    paged_adamw_8bit); on CPU the unpaged optimizer of the same bits (no unified memory to page)."""
    if bits not in (32, 8):
        raise ValueError(f"paged_adamw: bits={bits}; use 32 or 8")
    b = bnb()
    log = log or (lambda level, message: None)
    what = "32-bit moments" if bits == 32 else "8-bit block-wise quantised moments"
    if device.type == "cuda":
        name = f"PagedAdamW{bits}bit"
        log("info", f"optimizer: bitsandbytes {name} ({what} in paged unified memory)")
    else:
        name = f"AdamW{bits}bit"
        log("info", f"optimizer: bitsandbytes {name} on CPU ({what}); paging needs CUDA unified memory, so the "
                    f"paged variant falls back to this")
    return getattr(b.optim, name)(groups, lr=lr, betas=betas)
