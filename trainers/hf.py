"""GPT-2 weights in Hugging Face's layout <-> our GPT (trainers/models/gpt.py). Local files only, never a download.

A Hugging Face GPT-2 directory holds `config.json` (model_type gpt2: n_layer, n_head, n_embd, n_positions,
vocab_size, ...) and the weights in `model.safetensors`, `pytorch_model.bin`, or shards named by
`model.safetensors.index.json`. Names map one to one onto ours (`h.0.attn.c_attn.weight` ->
`transformer.h.0.attn.c_attn.weight`), with one twist: GPT-2 was written with `Conv1D` layers whose weight is
stored (in, out), the transpose of nn.Linear's (out, in), so c_attn, c_proj, c_fc and the MLP c_proj are
transposed on the way in and out. `lm_head.weight` is tied to `wte` (not stored, or equal to it).

GPT-2 always has biases; saving a `bias=False` model writes zero biases, which load back as a `bias=True`
model computing the same function. A model with a non-GPT-2 tokenizer is saved with `cockpit_tokenizer.json`
beside the weights so that it loads back with its own vocabulary.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from common.atomic import NotAFileTarget, check_target, write_atomic
from trainers.config import ConfigError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SKIP_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints, not weights
TOKENIZER_FILE = "cockpit_tokenizer.json"
GPT2_VOCAB = 50257
HF_FILES = ("config.json", "model.safetensors", TOKENIZER_FILE)  # what save_hf writes


def is_hf_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


MAX_CONFIG_BYTES = 1 << 20  # a GPT-2 config.json is about 1 KB


def read_config(path: Path) -> dict:
    """config.json, checked: a JSON object whose GPT-2 keys have the types and ranges our GPT accepts."""
    from trainers.config import read_regular

    what = f"finetune.base={path}: config.json"
    data = read_regular(path / "config.json", what, "give a Hugging Face GPT-2 directory", limit=MAX_CONFIG_BYTES)
    try:
        hf = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ConfigError(f"{what} is unreadable ({why}); give a Hugging Face GPT-2 directory") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{what} holds a JSON {type(hf).__name__}, not an object; give a Hugging Face GPT-2 "
                          "directory")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ConfigError(f"finetune.base={path}: config.json has model_type {hf.get('model_type')!r}; only "
                          "GPT-2 (model_type gpt2) weights load into our GPT")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"finetune.base={path}: activation_function {act!r} is not GPT-2's tanh GELU "
                          "(gelu_new); this checkpoint cannot load into our GPT")
    for key, default, hi in (("n_layer", 12, 1000), ("n_head", 12, 1024), ("n_embd", 768, 1 << 16),
                             ("n_positions", hf.get("n_ctx", 1024), 1 << 20), ("vocab_size", 50257, 1 << 24)):
        v = hf.get(key, default)
        if type(v) is not int or not 1 <= v <= hi:
            raise ConfigError(f"{what}: {key}={v!r} is not a whole number in [1, {hi}]; is this a GPT-2 "
                              "config.json?")
    for key, default in (("layer_norm_epsilon", 1e-5), ("resid_pdrop", 0.0)):
        v = hf.get(key, default)
        if type(v) not in (int, float) or not 0 <= v < 1:
            raise ConfigError(f"{what}: {key}={v!r} is not a number in [0, 1); is this a GPT-2 config.json?")
    n_embd = hf.get("n_embd", 768)
    if n_embd % hf.get("n_head", 12):
        raise ConfigError(f"{what}: n_embd={n_embd} is not divisible by n_head={hf.get('n_head', 12)}")
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise ConfigError(f"finetune.base={path}: n_inner={hf['n_inner']} but our GPT's MLP is 4 * n_embd "
                          f"= {4 * n_embd}")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ConfigError(f"finetune.base={path}: layer_norm_epsilon={hf['layer_norm_epsilon']} differs from "
                          "our GPT's 1e-5")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise ConfigError(f"finetune.base={path}: attention scaling options differ from GPT-2's 1/sqrt(d); "
                          "this checkpoint cannot load into our GPT")
    return hf


def model_config(hf: dict) -> dict:
    """Our `model.*` keys for a GPT-2 config.json (checked by read_config)."""
    return {
        "n_layer": hf.get("n_layer", 12),
        "n_head": hf.get("n_head", 12),
        "n_embd": hf.get("n_embd", 768),
        "block_size": hf.get("n_positions", hf.get("n_ctx", 1024)),
        "dropout": float(hf.get("resid_pdrop", 0.0)),
        "bias": True,
    }


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the directory's weight file(s), on CPU."""
    from safetensors.torch import load_file

    st, index, binf = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    try:
        if st.is_file():
            return load_file(str(st), device="cpu")
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(load_file(str(path / shard), device="cpu"))
            return out
        if binf.is_file():
            return torch.load(binf, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as e:  # truncated file, bad header, pickled code refused by weights_only
        raise ConfigError(f"finetune.base={path}: weights are unreadable ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}); re-copy the files") from None
    raise ConfigError(f"finetune.base={path}: no model.safetensors or pytorch_model.bin in the directory; "
                      "copy the GPT-2 weights there")


def hf_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 names/layout -> our GPT state dict (float32)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        k = key[len("transformer."):] if key.startswith("transformer.") else key
        if k.endswith(SKIP_SUFFIXES) or k == "lm_head.weight":
            continue
        t = t.float()
        if k.endswith(CONV1D):
            t = t.t()
        out[f"transformer.{k}"] = t.contiguous()
    if "lm_head.weight" in sd and "transformer.wte.weight" in out:
        if not torch.equal(sd["lm_head.weight"].float(), out["transformer.wte.weight"]):
            raise ConfigError("finetune.base: lm_head.weight differs from wte.weight; our GPT ties them, so "
                              "untied GPT-2 variants cannot load")
    if "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def ours_to_hf(model) -> dict[str, torch.Tensor]:
    """Our GPT -> Hugging Face GPT2LMHeadModel names (`transformer.` prefix, lm_head tied and not stored)."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key == "lm_head.weight":
            continue
        k = key[len("transformer."):]
        if k == "wte.weight":  # without the rows a padded vocabulary adds (gpt.py vocab_pad_multiple)
            t = t[:cfg.vocab_size]
        out["transformer." + k] = (t.t() if k.endswith(CONV1D) else t).contiguous()
    if not cfg.bias:  # GPT-2 has biases everywhere: zeros compute what no bias computed
        C = cfg.n_embd
        for i in range(cfg.n_layer):
            p = f"transformer.h.{i}."
            for name, n in (("ln_1", C), ("ln_2", C), ("attn.c_attn", 3 * C), ("attn.c_proj", C),
                            ("mlp.c_fc", 4 * C), ("mlp.c_proj", C)):
                out.setdefault(p + name + ".bias", torch.zeros(n))
        out.setdefault("transformer.ln_f.bias", torch.zeros(C))
    return out


def hf_config(model) -> dict:
    cfg = model.config
    out = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    if cfg.vocab_size == GPT2_VOCAB:
        out.update(bos_token_id=50256, eos_token_id=50256)
    return out


def check_hf_target(path: str | Path) -> Path:
    """`path` if a Hugging Face directory can be written there (missing, or a directory whose files are
    regular files or missing); NotAFileTarget otherwise, before anything is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotAFileTarget(f"{path} exists and is not a directory; a Hugging Face model is a directory: give a "
                             "new or existing directory")
    for name in HF_FILES:
        check_target(path / name)
    return path


def save_hf(model, path: str | Path, tokenizer_state: dict | None = None) -> Path:
    """Write `model.safetensors`, then the tokenizer when it is not GPT-2 BPE, then `config.json`, each file
    atomically (common/atomic.py): a directory with a config.json always has whole weights beside it. The
    weights are serialised in memory and written here, so that a full disk is an OSError like any other
    (safetensors' own file writer reports it as its own error type)."""
    from safetensors.torch import save as safetensors_bytes

    path = check_hf_target(path)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / "model.safetensors", safetensors_bytes(ours_to_hf(model), metadata={"format": "pt"}))
    if tokenizer_state is not None and tokenizer_state.get("kind") != "gpt2":
        write_atomic(path / TOKENIZER_FILE, json.dumps(tokenizer_state) + "\n")
    write_atomic(path / "config.json", json.dumps(hf_config(model), indent=2) + "\n")
    return path


def tokenizer_state(path: Path, vocab: int) -> dict:
    """The tokenizer a directory's model was trained with: ours beside the weights, else GPT-2 BPE."""
    tok_file = path / TOKENIZER_FILE
    if tok_file.is_file():
        tokenizer = json.loads(tok_file.read_text(encoding="utf-8"))
        if tokenizer.get("kind") == "char" and len(tokenizer.get("chars", "")) != vocab:
            raise ConfigError(f"finetune.base={path}: {TOKENIZER_FILE} has {len(tokenizer['chars'])} characters "
                              f"but config.json says vocab_size {vocab}")
        return tokenizer
    if vocab >= GPT2_VOCAB:
        return {"kind": "gpt2"}
    raise ConfigError(f"finetune.base={path}: vocab_size {vocab} is smaller than GPT-2's {GPT2_VOCAB} and there "
                      f"is no {TOKENIZER_FILE}; cockpit cannot tell which tokenizer it was trained with")


def load_hf(path: str | Path, kernels: str = "torch"):
    """(model, model_cfg, tokenizer_state) from a Hugging Face GPT-2 directory; ConfigError on bad input."""
    from trainers.models import build_model

    path = Path(path).expanduser()
    if not is_hf_dir(path):
        raise ConfigError(f"finetune.base={path}: not a Hugging Face model directory (no config.json); give a "
                          "directory with config.json and model.safetensors or pytorch_model.bin")
    hf = read_config(path)
    mcfg = model_config(hf)
    vocab = int(hf.get("vocab_size", GPT2_VOCAB))
    tokenizer = tokenizer_state(path, vocab)
    sd = hf_to_ours(read_weights(path))
    model = build_model("gpt", mcfg, vocab_size=vocab, kernels=kernels)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"finetune.base={path}: weights do not match config.json ({first[:200]}); check that "
                          "the files belong together") from None
    return model, mcfg, tokenizer
