"""Hugging Face checkpoints <-> our models. Local files only, never a download.

A Hugging Face model directory holds `config.json`, the weights in `model.safetensors`, in shards named by
`model.safetensors.index.json`, or (GPT-2) in `pytorch_model.bin`, and its tokenizer. Two families load:

    gpt2                              -> our GPT (trainers/models/gpt.py), GPT-2 BPE tokenizer
    llama, mistral, qwen2, qwen3      -> our Llama (trainers/models/llama.py), the directory's tokenizer.json
    (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)

GPT-2's names map one to one onto ours (`h.0.attn.c_attn.weight` -> `transformer.h.0.attn.c_attn.weight`),
with one twist: GPT-2 was written with `Conv1D` layers whose weight is stored (in, out), the transpose of
nn.Linear's (out, in), so c_attn, c_proj, c_fc and the MLP c_proj are transposed on the way in and out.
Llama's differ in their prefixes only (LLAMA_NAMES). A tied head (`lm_head.weight` = the embedding) is not
stored, or stored equal to it.

Tensors stream: the model is built on the meta device and each tensor, read one at a time from its shard
(safetensors' safe_open), replaces its meta parameter. For QLoRA each linear layer is quantised to NF4 as
its weight arrives (trainers/quant.py), so the float32 copy of one matrix is the most that is ever held
beside the growing 4-bit model: a 7B base never needs its 28 GB float32 (or 14 GB bf16) form in RAM.

GPT-2 always has biases; saving a `bias=False` GPT writes zero biases, which load back as a `bias=True`
model computing the same function. A model with a tokenizer of our own (characters) is saved with
`cockpit_tokenizer.json` beside the weights so that it loads back with its own vocabulary.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn

from common.atomic import NotAFileTarget, check_target, write_atomic
from trainers.config import ConfigError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SKIP_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # buffers of old checkpoints
TOKENIZER_FILE = "cockpit_tokenizer.json"
GPT2_VOCAB = 50257
INDEX_FILE = "model.safetensors.index.json"
HF_FILES = ("config.json", "model.safetensors", INDEX_FILE, TOKENIZER_FILE, "tokenizer.json",
            "tokenizer_config.json")  # what save_hf may write
MAX_SHARD_BYTES = 5 * 10**9  # save_pretrained's default max_shard_size ("5GB")

# model_type -> the architectures entry of its causal LM; every one but gpt2 loads into trainers/models/llama.py
FAMILIES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SUPPORTED = ", ".join(f"{t} ({a})" for t, a in FAMILIES.items())
# Hugging Face name <-> ours for the Llama family: {i} a layer index, {p} a parameter inside the module
LLAMA_NAMES = (
    ("model.embed_tokens.weight", "transformer.wte.weight"),
    ("model.norm.weight", "transformer.ln_f.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.layers.{i}.self_attn.{p}", "transformer.h.{i}.attn.{p}"),
    ("model.layers.{i}.mlp.{p}", "transformer.h.{i}.mlp.{p}"),
    ("model.layers.{i}.input_layernorm.weight", "transformer.h.{i}.ln_1.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "transformer.h.{i}.ln_2.weight"),
)


def is_hf_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB


def family_of(hf: dict) -> str:
    """The model_type of a checked config.json (gpt2 when it names none, as GPT-2's own files do)."""
    return hf.get("model_type", "gpt2")


def base_arch(hf: dict) -> str:
    """Our architecture for a checked config.json: gpt for GPT-2, llama for the rest."""
    return "gpt" if family_of(hf) == "gpt2" else "llama"


def read_json(file: Path, what: str, fix: str, limit: int = MAX_CONFIG_BYTES):
    from trainers.config import read_regular

    data = read_regular(file, what, fix, limit=limit)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ConfigError(f"{what} is unreadable ({why}); {fix}") from None


def read_config(path: Path) -> dict:
    """config.json, checked: a JSON object of a supported family whose keys have the types and ranges our model
    accepts."""
    what = f"finetune.base={path}: config.json"
    hf = read_json(path / "config.json", what, "give a Hugging Face model directory")
    if not isinstance(hf, dict):
        raise ConfigError(f"{what} holds a JSON {type(hf).__name__}, not an object; give a Hugging Face model "
                          "directory")
    model_type = hf.get("model_type", "gpt2")
    if model_type not in FAMILIES:
        raise ConfigError(f"{what}: model_type {model_type!r} is not supported; supported: {SUPPORTED}")
    archs = hf.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"{what}: architectures={archs!r} is not a list of names; e.g. "
                              f"[\"{FAMILIES[model_type]}\"]")
        for a in archs:
            if a != FAMILIES[model_type]:
                raise ConfigError(f"{what}: architectures entry {a!r} is not supported for model_type "
                                  f"{model_type!r}; supported: {SUPPORTED}")
    if model_type == "gpt2":
        return check_gpt2(hf, path, what)
    return check_llama(hf, path, what)


def check_gpt2(hf: dict, path: Path, what: str) -> dict:
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


def _whole(hf: dict, what: str, key: str, hi: int, required: bool = True) -> None:
    v = hf.get(key)
    if v is None and not required:
        return
    if type(v) is not int or not 1 <= v <= hi:
        shown = "missing" if v is None else f"{v!r}, not a whole number in [1, {hi}]"
        raise ConfigError(f"{what}: {key} is {shown}; is this the model's own config.json?")


def rope_settings(hf: dict, what: str) -> dict:
    """Our rope_* keys from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (earlier files)."""
    params = hf.get("rope_parameters")
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if not isinstance(params, dict):
        raise ConfigError(f"{what}: rope_parameters={params!r} is not an object")
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if type(theta) not in (int, float) or not theta > 0:
        raise ConfigError(f"{what}: rope_theta={theta!r} is not a positive number")
    out = {"rope_theta": float(theta)}
    if kind in ("default", None):
        return {**out, "rope_scaling": "none"}
    if kind != "llama3":
        raise ConfigError(f"{what}: rope_type {kind!r} is not supported; supported: default, llama3 (Llama 3.1's "
                          "frequency scaling)")
    try:
        return {**out, "rope_scaling": "llama3", "rope_factor": float(params["factor"]),
                "rope_low_freq_factor": float(params["low_freq_factor"]),
                "rope_high_freq_factor": float(params["high_freq_factor"]),
                "rope_original_context": int(params["original_max_position_embeddings"])}
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{what}: rope_type llama3 needs factor, low_freq_factor, high_freq_factor and "
                          f"original_max_position_embeddings ({type(e).__name__}: {e})") from None


def sliding_window_of(hf: dict, what: str) -> int:
    """The window every layer uses (0: none). Mistral slides in every layer; Qwen2/Qwen3 only with
    use_sliding_window, from layer max_window_layers on (or as `layer_types` says): a mix is refused."""
    family, n_layer = family_of(hf), hf["num_hidden_layers"]
    window = hf.get("sliding_window")
    if family == "mistral":
        types = ["sliding_attention" if window else "full_attention"] * n_layer
    elif family in ("qwen2", "qwen3"):
        types = hf.get("layer_types")
        if not hf.get("use_sliding_window") or not window:
            types = ["full_attention"] * n_layer
        elif not isinstance(types, list):
            start = hf.get("max_window_layers", n_layer)
            types = ["sliding_attention" if i >= start else "full_attention" for i in range(n_layer)]
    else:
        types = hf.get("layer_types") or ["full_attention"] * n_layer
        if window is None:
            types = ["full_attention"] * n_layer
    kinds = set(types)
    if kinds == {"full_attention"}:
        return 0
    if kinds != {"sliding_attention"}:
        raise ConfigError(f"{what}: layer_types mixes {', '.join(sorted(map(str, kinds)))}; our Llama uses one "
                          "attention for every layer (all full, or all sliding_window as Mistral)")
    if type(window) is not int or window < 1:
        raise ConfigError(f"{what}: sliding_window={window!r} is not a whole number of tokens")
    return window


def check_llama(hf: dict, path: Path, what: str) -> dict:
    for key, hi in (("hidden_size", 1 << 16), ("num_hidden_layers", 1000), ("num_attention_heads", 1024),
                    ("intermediate_size", 1 << 20), ("vocab_size", 1 << 24)):
        _whole(hf, what, key, hi)
    for key, hi in (("num_key_value_heads", 1024), ("head_dim", 1 << 12), ("max_position_embeddings", 1 << 24)):
        _whole(hf, what, key, hi, required=False)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{what}: hidden_act {act!r} is not SwiGLU's silu; this checkpoint cannot load into "
                          "our Llama")
    if hf.get("mlp_bias"):
        raise ConfigError(f"{what}: mlp_bias=true; our Llama's SwiGLU has no biases")
    eps = hf.get("rms_norm_eps", 1e-6)
    if type(eps) not in (int, float) or not 0 < eps < 1:
        raise ConfigError(f"{what}: rms_norm_eps={eps!r} is not a number in (0, 1)")
    heads, kv = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"]
    if heads % kv:
        raise ConfigError(f"{what}: num_attention_heads={heads} is not divisible by num_key_value_heads={kv}")
    if not hf.get("head_dim") and hf["hidden_size"] % heads:
        raise ConfigError(f"{what}: hidden_size={hf['hidden_size']} is not divisible by num_attention_heads={heads}")
    rope_settings(hf, what)
    sliding_window_of(hf, what)
    return hf


def model_config(hf: dict) -> dict:
    """Our `model.*` keys for a checked config.json (read_config)."""
    if family_of(hf) == "gpt2":
        return {
            "n_layer": hf.get("n_layer", 12),
            "n_head": hf.get("n_head", 12),
            "n_embd": hf.get("n_embd", 768),
            "block_size": hf.get("n_positions", hf.get("n_ctx", 1024)),
            "dropout": float(hf.get("resid_pdrop", 0.0)),
            "bias": True,
        }
    family, what = family_of(hf), "config.json"
    bias = bool(hf.get("attention_bias", False))
    heads = hf["num_attention_heads"]
    return {
        "n_layer": hf["num_hidden_layers"],
        "n_head": heads,
        "n_kv_head": hf.get("num_key_value_heads") or heads,
        "n_embd": hf["hidden_size"],
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "n_hidden": hf["intermediate_size"],
        "block_size": hf.get("max_position_embeddings", 2048),
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        **rope_settings(hf, what),
        "qk_norm": family == "qwen3",
        "qkv_bias": True if family == "qwen2" else bias,   # Qwen2: biases on q, k, v and none on o
        "out_bias": False if family == "qwen2" else bias,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "sliding_window": sliding_window_of(hf, what),
        "dropout": float(hf.get("attention_dropout", 0.0)),
    }


# --- names ----------------------------------------------------------------------------------------------
def _pattern(template: str) -> re.Pattern:
    p = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>[a-z_]+\.(?:weight|bias))")
    return re.compile(p)


_LLAMA_IN = [(_pattern(h), o) for h, o in LLAMA_NAMES]
_LLAMA_OUT = [(_pattern(o), h) for h, o in LLAMA_NAMES]


def _rename(name: str, table) -> str | None:
    for pattern, template in table:
        m = pattern.fullmatch(name)
        if m:
            return template.format(**m.groupdict())
    return None


def our_name(family: str, key: str) -> str | None:
    """Our parameter name for a Hugging Face tensor name; None for what is not a weight (old buffers), and the
    name unchanged when it matches nothing (reported as a tensor no layer has)."""
    if key.endswith(SKIP_SUFFIXES):
        return None
    if family == "gpt2":
        k = key[len("transformer."):] if key.startswith("transformer.") else key
        return k if k == "lm_head.weight" else f"transformer.{k}"
    return _rename(key, _LLAMA_IN) or key


def hf_name(family: str, name: str) -> str:
    """The Hugging Face name of one of our parameters."""
    if family == "gpt2":
        return name
    return _rename(name, _LLAMA_OUT) or name


# --- reading the weights --------------------------------------------------------------------------------
def weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files, in order, and the index's tensor -> shard map when the weights are sharded; the index
    is checked: every shard it names is a file of the directory."""
    st, index, binf = path / "model.safetensors", path / INDEX_FILE, path / "pytorch_model.bin"
    if st.is_file():
        return [st], None
    if index.is_file():
        what = f"finetune.base={path}: {INDEX_FILE}"
        data = read_json(index, what, "copy the model's index file again", limit=64 << 20)
        wmap = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wmap, dict) or not wmap or not all(isinstance(k, str) and isinstance(v, str)
                                                              for k, v in wmap.items()):
            raise ConfigError(f"{what}: weight_map is missing or not an object of tensor name -> shard file; "
                              "copy the model's index file again")
        shards = sorted(set(wmap.values()))
        for shard in shards:
            if Path(shard).name != shard or not (path / shard).is_file():
                raise ConfigError(f"{what}: weight_map names shard {shard!r}, which is not a file in {path}; copy "
                                  "every shard of the model")
        return [path / s for s in shards], wmap
    if binf.is_file():
        return [binf], None
    raise ConfigError(f"finetune.base={path}: no model.safetensors or pytorch_model.bin (nor {INDEX_FILE} and "
                      "its shards) in the directory; copy the model's weights there")


def iter_tensors(path: Path):
    """(file, name, tensor) for every tensor of the directory, one at a time (safetensors: read from the
    memory-mapped shard as it is asked for). A shard whose tensors differ from what the index places in it is
    refused before any of its tensors is used."""
    from safetensors import safe_open

    files, wmap = weight_files(path)
    for file in files:
        try:
            if file.suffix == ".bin":
                sd = torch.load(file, map_location="cpu", weights_only=True)
                for key in list(sd):
                    yield file, key, sd.pop(key)
                continue
            with safe_open(str(file), framework="pt", device="cpu") as f:
                keys = list(f.keys())
                if wmap is not None:
                    listed = {k for k, v in wmap.items() if v == file.name}
                    extra, lacking = sorted(set(keys) - listed), sorted(listed - set(keys))
                    if extra or lacking:
                        why = (f"lacks {lacking[0]!r}, which the index places there" if lacking else
                               f"holds {extra[0]!r}, which the index places elsewhere")
                        raise ConfigError(f"finetune.base={path}: shard {file.name} {why} ({len(lacking)} missing, "
                                          f"{len(extra)} unexpected); the shard and {INDEX_FILE} do not belong "
                                          "together: copy both again")
                for key in keys:
                    yield file, key, f.get_tensor(key)
        except ConfigError:
            raise
        except Exception as e:  # truncated file, bad header, pickled code refused by weights_only
            first = str(e).splitlines()[0][:160] if str(e) else ""
            raise ConfigError(f"finetune.base={path}: {file.name} is unreadable ({type(e).__name__}: {first}); "
                              "re-copy the files") from None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def load_weights(model: nn.Module, path: Path, family: str, quantize_on: torch.device | None = None,
                 compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Fill `model` (built on the meta device) with the directory's tensors, streamed (iter_tensors), in
    float32 on the CPU; with `quantize_on`, every linear layer not tied to the embedding becomes a frozen NF4
    layer on that device as its weight arrives (QLoRA). ConfigError names the file and tensor of a mismatch."""
    from trainers.quant import nf4_from_linear

    params = dict(model.named_parameters(remove_duplicate=False))
    canonical: dict[int, str] = {}
    aliases: dict[str, str] = {}  # a tied name -> the name it shares its parameter with
    for name, p in params.items():
        if id(p) in canonical:
            aliases[name] = canonical[id(p)]
        else:
            canonical[id(p)] = name
    tied_ids = {id(params[a]) for a in aliases.values()}
    loaded: set[str] = set()
    stored_aliases: dict[str, torch.Tensor] = {}
    for file, key, t in iter_tensors(path):
        name = our_name(family, key)
        if name is None:
            continue
        if family == "gpt2" and name.endswith(CONV1D):
            t = t.t()
        if name in aliases:  # a tied head stored as well: it must equal what it is tied to (checked below)
            stored_aliases[name] = t
            continue
        if name not in params:
            raise ConfigError(f"finetune.base={path}: {file.name} holds tensor {key!r}, which no layer of the "
                              f"{family} model config.json describes has; the weights and config.json do not "
                              "belong together")
        want = params[name]
        if tuple(t.shape) != tuple(want.shape):
            raise ConfigError(f"finetune.base={path}: {file.name}: tensor {key!r} has shape {tuple(t.shape)} but "
                              f"config.json gives {tuple(want.shape)}; the weights and config.json do not belong "
                              "together")
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name)
        # a copy in float32: a tensor read from a shard may share its memory map, which would keep every page
        # of the shard resident as long as any of its tensors lives
        value = nn.Parameter(t.to(torch.float32, copy=True).contiguous(), requires_grad=want.requires_grad)
        del t
        if quantize_on is not None and type(module) is nn.Linear and pname == "weight" and id(want) not in tied_ids:
            module.weight = value
            if module.bias is not None and module.bias.is_meta:  # its bias arrives later: a placeholder till then
                module.bias = nn.Parameter(torch.zeros(module.out_features), requires_grad=False)
            _set_submodule(model, module_name, nf4_from_linear(module, quantize_on, compute_dtype))
        else:
            setattr(module, pname, value)
        loaded.add(name)
    missing = [n for n in canonical.values() if n not in loaded]
    if missing:
        raise ConfigError(f"finetune.base={path}: the weights lack {len(missing)} tensor(s) config.json describes "
                          f"(first: {hf_name(family, missing[0])!r}); a shard is missing or belongs to another "
                          "model")
    for alias, name in aliases.items():  # tie again: each loaded parameter replaced the shared meta one
        owner = model.get_submodule(name.rpartition(".")[0])
        shared = getattr(owner, name.rpartition(".")[2])
        if alias in stored_aliases and not torch.equal(stored_aliases[alias].float(), shared.data):
            raise ConfigError(f"finetune.base={path}: {hf_name(family, alias)} differs from "
                              f"{hf_name(family, name)}, but config.json ties them; untied variants need "
                              "tie_word_embeddings=false")
        setattr(model.get_submodule(alias.rpartition(".")[0]), alias.rpartition(".")[2], shared)
    return model


def tokenizer_state(path: Path, vocab: int, family: str = "gpt2") -> dict:
    """The tokenizer a directory's model was trained with: ours beside the weights, else the family's: GPT-2
    BPE for gpt2, the directory's tokenizer.json for the Llama family (its vocabulary must fit the embedding)."""
    tok_file = path / TOKENIZER_FILE
    if tok_file.is_file():
        tokenizer = json.loads(tok_file.read_text(encoding="utf-8"))
        if tokenizer.get("kind") == "char" and len(tokenizer.get("chars", "")) != vocab:
            raise ConfigError(f"finetune.base={path}: {TOKENIZER_FILE} has {len(tokenizer['chars'])} characters "
                              f"but config.json says vocab_size {vocab}")
        return tokenizer
    if family != "gpt2":
        from trainers.tokenizer import HFTokenizer

        file = path / "tokenizer.json"
        if not file.is_file():
            raise ConfigError(f"finetune.base={path}: no tokenizer.json; copy the model's tokenizer.json beside "
                              "config.json")
        tok = HFTokenizer.from_file(file, f"finetune.base={path}: tokenizer.json")
        if tok.vocab_size > vocab:
            raise ConfigError(f"finetune.base={path}: tokenizer.json has ids up to {tok.vocab_size - 1} but "
                              f"config.json vocab_size is {vocab} (the embedding's rows); the tokenizer is not this "
                              "model's: copy the model's own tokenizer.json")
        return tok.state_dict()
    if vocab >= GPT2_VOCAB:
        return {"kind": "gpt2"}
    raise ConfigError(f"finetune.base={path}: vocab_size {vocab} is smaller than GPT-2's {GPT2_VOCAB} and there "
                      f"is no {TOKENIZER_FILE}; cockpit cannot tell which tokenizer it was trained with")


def read_base_dir(path: Path) -> dict:
    """A Hugging Face directory described without reading its weights: config checked, tokenizer read."""
    hfc = read_config(path)
    family = family_of(hfc)
    vocab = int(hfc.get("vocab_size", GPT2_VOCAB))
    weight_files(path)  # refused now, not after the run has started
    return {"kind": "hf", "path": str(path), "family": family, "arch": base_arch(hfc), "model": model_config(hfc),
            "vocab_size": vocab, "tokenizer": tokenizer_state(path, vocab, family)}


def load_hf(path: str | Path, kernels: str = "torch", quantize_on: torch.device | None = None):
    """(model, model_cfg, tokenizer_state) from a Hugging Face directory; ConfigError on bad input."""
    from trainers.models import build_model

    path = Path(path).expanduser()
    if not is_hf_dir(path):
        raise ConfigError(f"finetune.base={path}: not a Hugging Face model directory (no config.json); give a "
                          "directory with config.json and model.safetensors (or its shards)")
    base = read_base_dir(path)
    with torch.device("meta"):
        model = build_model(base["arch"], base["model"], vocab_size=base["vocab_size"], kernels=kernels)
    load_weights(model, path, base["family"], quantize_on)
    return model, base["model"], base["tokenizer"]


# --- writing --------------------------------------------------------------------------------------------
def family_for(cfg) -> str:
    """The Hugging Face family that computes what one of our Llama configs computes: Qwen3 has QK-norm, Qwen2
    biases on q/k/v only, Mistral a sliding window, Llama the rest. ConfigError for a mix none of them has."""
    if cfg.qk_norm:
        family = "qwen3"
    elif cfg.qkv_bias and not cfg.out_bias:
        family = "qwen2"
    elif cfg.sliding_window:
        family = "mistral"
    else:
        family = "llama"
    if family in ("qwen3", "llama") and cfg.qkv_bias != cfg.out_bias or \
            family == "mistral" and (cfg.qkv_bias or cfg.out_bias) or \
            family == "qwen2" and cfg.head_dim not in (0, cfg.n_embd // cfg.n_head):
        raise ConfigError(f"this Llama (qk_norm={cfg.qk_norm}, qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}, "
                          f"sliding_window={cfg.sliding_window}) has no Hugging Face family that computes the same; "
                          "export a cockpit checkpoint instead")
    if cfg.sliding_window and family != "mistral":
        raise ConfigError(f"a {family} model with a sliding window does not save in Hugging Face's layout here; "
                          "export a cockpit checkpoint instead")
    return family


def is_llama(model) -> bool:
    return hasattr(model.config, "qk_norm")


def ours_to_hf(model) -> dict[str, torch.Tensor]:
    """Our model -> Hugging Face names: GPT2LMHeadModel's (`transformer.` prefix, lm_head tied and not stored)
    or the Llama family's (lm_head stored unless tied)."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if is_llama(model):
        return {hf_name("llama", k): t.contiguous() for k, t in sd.items()
                if not (k == "lm_head.weight" and cfg.tie_embeddings)}
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
    if is_llama(model):
        family = family_for(cfg)
        rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling == "llama3":
            rope.update(rope_type="llama3", factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                        high_freq_factor=cfg.rope_high_freq_factor,
                        original_max_position_embeddings=cfg.rope_original_context)
        out = {
            "model_type": family, "architectures": [FAMILIES[family]],
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim, "hidden_act": "silu",
            "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_parameters": rope, "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings,
            "attention_dropout": cfg.dropout, "initializer_range": 0.02, "torch_dtype": "float32",
        }
        if family in ("llama", "qwen3"):
            out.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
        if family == "mistral":
            out["sliding_window"] = cfg.sliding_window
        if family in ("qwen2", "qwen3"):
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
        return out
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


def shard_plan(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names in shards of at most max_bytes each (a larger tensor gets a shard of its own), in order."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def save_hf(model, path: str | Path, tokenizer_state: dict | None = None,
            max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write the weights (`model.safetensors`, or shards of at most max_shard_bytes with their index), then the
    tokenizer, then `config.json`, each file atomically (common/atomic.py): a directory with a config.json
    always has whole weights beside it. Each file is serialised in memory and written here, so that a full
    disk is an OSError like any other (safetensors' own file writer reports it as its own error type)."""
    from safetensors.torch import save as safetensors_bytes

    path = check_hf_target(path)
    path.mkdir(parents=True, exist_ok=True)
    config = hf_config(model)  # refuses a model no family expresses before anything is written
    tensors = ours_to_hf(model)
    shards = shard_plan(tensors, max_shard_bytes)
    if len(shards) == 1:
        write_atomic(path / "model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}))
    else:
        weight_map = {}
        for i, names in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_atomic(path / file, safetensors_bytes({n: tensors[n] for n in names}, metadata={"format": "pt"}))
            weight_map.update(dict.fromkeys(names, file))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        write_atomic(path / INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2) + "\n")
    if tokenizer_state is not None and tokenizer_state.get("kind") == "hf" and is_llama(model):
        write_tokenizer_files(path, tokenizer_state, model.config.block_size)
    elif tokenizer_state is not None and tokenizer_state.get("kind") != "gpt2":
        write_atomic(path / TOKENIZER_FILE, json.dumps(tokenizer_state) + "\n")
    write_atomic(path / "config.json", json.dumps(config, indent=2) + "\n")
    return path


def write_tokenizer_files(path: Path, state: dict, max_length: int) -> None:
    """tokenizer.json as the base had it, and a tokenizer_config.json that transformers' AutoTokenizer reads."""
    from trainers.tokenizer import EOT_NAMES, tokenizer_from_state

    tok = tokenizer_from_state(state)
    vocab = tok.tok.get_vocab(with_added_tokens=True)
    eos = next((t for t in EOT_NAMES if t in vocab), None)
    write_atomic(path / "tokenizer.json", state["json"])
    write_atomic(path / "tokenizer_config.json", json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
        **({"eos_token": eos} if eos else {})}, indent=2) + "\n")



# --- adapters in PEFT's layout ----------------------------------------------------------------------------
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def peft_adapter(model, base_path: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA adapters of `model` as PEFT saves them: tensors `base_model.model.<module>.lora_A.weight` (r, in)
    and `.lora_B.weight` (out, r) under the Hugging Face module names, and adapter_config.json's fields.
    PEFT computes W0 x + (lora_alpha / r) B A x as we do; a layer whose adapters sit on slices of its rows
    (GPT-2's fused c_attn with q, k and v adapters) becomes one adapter of rank n*r with A stacked and B
    block-diagonal, which is the same update, and its rank and alpha go in rank_pattern / alpha_pattern."""
    from trainers.lora import LoRALinear

    family = "llama" if is_llama(model) else "gpt2"
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    leaves: set[str] = set()
    rank = alpha = dropout = None
    for name, module in model.named_modules():
        if not isinstance(module, LoRALinear):
            continue
        first = next(iter(module.lora.values()))
        rank, alpha, dropout = first.rank, first.alpha, module.dropout.p
        target = hf_name(family, name + ".weight")[:-len(".weight")]
        A, B = module.stacked_A().detach().float().cpu(), module.block_B().detach().float().cpu()
        tensors[f"base_model.model.{target}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{target}.lora_B.weight"] = B.contiguous()
        if A.shape[0] != rank:
            ranks[target], alphas[target] = A.shape[0], module.scale * A.shape[0]
        leaves.add(target.rsplit(".", 1)[-1])
    if not tensors:
        raise ConfigError("the model has no LoRA adapters to export (finetune.method=full trains every weight: "
                          "export merged weights instead)")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path, "r": rank,
              "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(leaves), "bias": "none",
              "fan_in_fan_out": family == "gpt2", "rank_pattern": ranks, "alpha_pattern": alphas,
              "use_rslora": False, "init_lora_weights": True, "inference_mode": True, "modules_to_save": None}
    return tensors, config


def save_peft(model, path: str | Path, base_path: str = "") -> Path:
    """adapter_model.safetensors then adapter_config.json (peft_adapter), each atomically, into directory `path`:
    `PeftModel.from_pretrained(base, path)` loads them onto the base."""
    from safetensors.torch import save as safetensors_bytes

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotAFileTarget(f"{path} exists and is not a directory; a PEFT adapter is a directory: give a new or "
                             "existing directory")
    for name in PEFT_FILES:
        check_target(path / name)
    tensors, config = peft_adapter(model, base_path)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / "adapter_model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}))
    write_atomic(path / "adapter_config.json", json.dumps(config, indent=2) + "\n")
    return path
