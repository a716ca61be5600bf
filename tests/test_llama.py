"""The llama architecture and Hugging Face Llama, Mistral, Qwen2 and Qwen3 checkpoints: tiny random checkpoints
built with transformers and a tiny tokenizer trained with `tokenizers` (nothing is downloaded); our logits
against transformers', LoRA roles, LoRA / QLoRA fine-tunes, merged and PEFT exports, and the memory a sharded
load takes."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import ROOT, events_of, train_in_process
from trainers import hf, lora
from trainers.config import ConfigError

VOCAB = 128
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def hf_model(family: str, seed: int = 0, **overrides):
    """A tiny random transformers model of `family`, its weights spread wider than the default init (std
    0.02 gives logits so flat that 1e-4 would say little), biases and norm gains away from 0 and 1."""
    import transformers as tf

    configs = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE)),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(sliding_window=8, tie_word_embeddings=False)),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(head_dim=24, tie_word_embeddings=False)),
    }
    config_cls, model_cls, family_kw = configs[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**SHAPE, **family_kw, **overrides})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "norm" in name:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return model


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    """A BPE tokenizer in SentencePiece's manner (Llama 2's: spaces as U+2581) trained on Shakespeare, under
    VOCAB tokens, with unknown and end-of-text tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from trainers.data import asset_path

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    text = asset_path("shakespeare.txt").read_text()[:50_000]
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<unk>", "</s>"]))
    assert tok.get_vocab_size() <= VOCAB
    return tok.to_str()


def save_checkpoint(model, path, tokenizer_json: str, **kw):
    model.save_pretrained(path, **kw)
    (path / "tokenizer.json").write_text(tokenizer_json)
    return path


def random_ids(T=24, B=2, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def logits_of(model, x):
    """Our model's logits at every position (forward alone returns the last one without targets)."""
    with torch.no_grad():
        return model.eval()(x, torch.zeros_like(x))[0]


# --- our logits equal transformers' ------------------------------------------------------------------------
@pytest.mark.parametrize("family, features", [
    ("llama", {"n_kv_head": 2, "tie_embeddings": False, "rope_scaling": "llama3", "rope_theta": 500000.0}),
    ("mistral", {"n_kv_head": 2, "sliding_window": 8}),
    ("qwen2", {"qkv_bias": True, "out_bias": False, "tie_embeddings": True}),
    ("qwen3", {"qk_norm": True, "head_dim": 24, "tie_embeddings": False}),
])
def test_our_logits_equal_transformers_in_fp32(family, features, tmp_path, tokenizer_json):
    ref = hf_model(family)
    save_checkpoint(ref, tmp_path, tokenizer_json)
    ours, mcfg, tok = hf.load_hf(tmp_path)
    assert {k: mcfg[k] for k in features} == features  # the family's options reached our config
    assert tok["kind"] == "hf" and type(ours).__module__ == "trainers.models.llama"
    x = random_ids(T=24)  # longer than Mistral's window of 8: the sliding mask is in play
    with torch.no_grad():
        expected = ref(x).logits
    got = logits_of(ours, x)
    assert expected.abs().max() > 1.0  # logits with some spread, so that 1e-4 is a real bound
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_the_family_options_change_the_function_so_the_comparison_can_tell(tmp_path, tokenizer_json):
    """Loaded without its sliding window or its Llama 3 rope scaling, a model computes something else."""
    x = random_ids(T=24)
    for family, key, off in (("mistral", "sliding_window", 0), ("llama", "rope_scaling", "none")):
        ref = hf_model(family)
        path = save_checkpoint(ref, tmp_path / family, tokenizer_json)
        _, mcfg, _ = hf.load_hf(path)
        from trainers.models import build_model

        with torch.device("meta"):
            plain = build_model("llama", {**mcfg, key: off}, vocab_size=VOCAB)
        hf.load_weights(plain, path, family)
        with torch.no_grad():
            assert (logits_of(plain, x) - ref(x).logits).abs().max() > 1e-2, family


@pytest.mark.parametrize("options, family", [({}, "llama"), ({"sliding_window": 8}, "mistral"),
                                             ({"qkv_bias": True}, "qwen2"), ({"qk_norm": True}, "qwen3")])
def test_a_model_of_ours_saves_as_the_family_that_computes_it_and_loads_back(options, family, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainers.models import build_model

    torch.manual_seed(0)
    ours = build_model("llama", dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=32, **options),
                       vocab_size=VOCAB).eval()
    with torch.no_grad():  # biases and norm gains away from their zero / one inits
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    chars = {"kind": "char", "chars": "".join(chr(32 + i) for i in range(VOCAB))}
    hf.save_hf(ours, tmp_path, chars, max_shard_bytes=100_000)  # shards, as a large model would have
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    assert (tmp_path / hf.INDEX_FILE).is_file()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    back, _, tok = hf.load_hf(tmp_path)
    x = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, logits_of(ours, x), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits_of(back, x), logits_of(ours, x), atol=0, rtol=0)
    assert tok == chars


def test_a_config_json_written_before_transformers_5_loads_the_same(tmp_path, tokenizer_json):
    """Checkpoints on the hub name RoPE with rope_theta and rope_scaling (transformers 4's keys)."""
    ref = hf_model("llama")
    save_checkpoint(ref, tmp_path, tokenizer_json)
    config = json.loads((tmp_path / "config.json").read_text())
    rope = config.pop("rope_parameters")
    legacy = {**config, "rope_theta": rope.pop("rope_theta"), "rope_scaling": rope}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    ours, mcfg, _ = hf.load_hf(tmp_path)
    assert mcfg["rope_scaling"] == "llama3" and mcfg["rope_theta"] == 500000.0
    x = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ours, x), ref(x).logits, atol=1e-4, rtol=0)


def test_a_sharded_checkpoint_loads_to_the_same_logits(tmp_path, tokenizer_json):
    ref = hf_model("llama")
    save_checkpoint(ref, tmp_path, tokenizer_json, max_shard_size="40KB")
    index = json.loads((tmp_path / hf.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) >= 3 and not (tmp_path / "model.safetensors").exists()
    ours, _, _ = hf.load_hf(tmp_path)
    x = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ours, x), ref(x).logits, atol=1e-4, rtol=0)


# --- bad input -------------------------------------------------------------------------------------------
def one_line_error(path) -> str:
    with pytest.raises(ConfigError) as e:
        hf.load_hf(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"finetune.base={path}")
    return message


def test_an_unsupported_model_type_or_architecture_names_the_supported_ones(tmp_path, tokenizer_json):
    save_checkpoint(hf_model("llama"), tmp_path, tokenizer_json)
    config = json.loads((tmp_path / "config.json").read_text())
    supported = ("gpt2 (GPT2LMHeadModel)", "llama (LlamaForCausalLM)", "mistral (MistralForCausalLM)",
                 "qwen2 (Qwen2ForCausalLM)", "qwen3 (Qwen3ForCausalLM)")
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    message = one_line_error(tmp_path)
    assert "config.json: model_type 'gemma' is not supported" in message and all(s in message for s in supported)
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    message = one_line_error(tmp_path)
    assert "architectures entry 'LlamaForSequenceClassification' is not supported" in message
    assert all(s in message for s in supported)


def test_what_our_llama_cannot_compute_is_refused_naming_the_field(tmp_path, tokenizer_json):
    save_checkpoint(hf_model("qwen2"), tmp_path, tokenizer_json)
    config = json.loads((tmp_path / "config.json").read_text())
    mixed = {**config, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}
    mixed.pop("layer_types", None)
    (tmp_path / "config.json").write_text(json.dumps(mixed))
    assert "config.json: layer_types mixes full_attention, sliding_attention; our Llama uses one attention for " \
           "every layer" in one_line_error(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_parameters": {"rope_type": "yarn",
                                                                                   "rope_theta": 1e6}}))
    assert "config.json: rope_type 'yarn' is not supported; supported: default, llama3" in one_line_error(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    assert "config.json: hidden_act 'gelu' is not SwiGLU's silu" in one_line_error(tmp_path)


def test_missing_or_mismatched_shards_are_refused_naming_the_shard(tmp_path, tokenizer_json):
    save_checkpoint(hf_model("llama"), tmp_path, tokenizer_json, max_shard_size="40KB")
    index_file = tmp_path / hf.INDEX_FILE
    index = json.loads(index_file.read_text())
    shards = sorted(set(index["weight_map"].values()))
    # a tensor the index places in the wrong shard (one of a shard that holds others too)
    shard = next(s for s in shards if list(index["weight_map"].values()).count(s) > 1)
    name = next(k for k, v in index["weight_map"].items() if v == shard)
    other = next(s for s in shards if s != shard)
    index_file.write_text(json.dumps({**index, "weight_map": {**index["weight_map"], name: other}}))
    message = one_line_error(tmp_path)
    first = min(shard, other)  # the shards are read in order: the first of the two is refused
    why = "holds" if first == shard else "lacks"
    assert f"shard {first} {why} '{name}', which the index places" in message
    assert "do not belong together" in message
    # a shard that is not there
    index_file.write_text(json.dumps(index))
    (tmp_path / shards[-1]).unlink()
    message = one_line_error(tmp_path)
    assert f"model.safetensors.index.json: weight_map names shard '{shards[-1]}', which is not a file" in message


def test_weights_of_another_shape_or_a_lacking_tensor_are_refused_naming_the_tensor(tmp_path, tokenizer_json):
    save_checkpoint(hf_model("llama"), tmp_path, tokenizer_json)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    message = one_line_error(tmp_path)
    assert "model.safetensors: tensor 'model.layers.0.mlp.down_proj.weight' has shape (64, 96)" in message
    assert "config.json gives (64, 128)" in message
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    message = one_line_error(tmp_path)
    assert "the weights lack 9 tensor(s)" in message and "model.layers.2." in message


def test_a_tokenizer_larger_than_the_embedding_exits_2_in_one_line(tmp_path, tokenizer_json, capsys):
    from tokenizers import Tokenizer

    from trainers.__main__ import main

    save_checkpoint(hf_model("llama", vocab_size=64), tmp_path, tokenizer_json)
    n = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    capsys.readouterr()  # transformers' progress bar while saving
    code = main(["lora", f"finetune.base={tmp_path}", "--log", str(tmp_path / "run" / "events.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"cockpit: error: finetune.base={tmp_path}: tokenizer.json has ids up to {n - 1} but "
                      "config.json vocab_size is 64 (the embedding's rows); the tokenizer is not this model's: "
                      "copy the model's own tokenizer.json")
    assert not (tmp_path / "run").exists()


# --- LoRA roles --------------------------------------------------------------------------------------------
def test_lora_roles_map_onto_each_architectures_modules():
    assert lora.parse_targets("mlp", "llama") == ["gate", "up", "down"]
    assert lora.parse_targets("attn,fc,proj", "llama") == ["q", "k", "v", "o", "up", "down"]
    assert lora.parse_targets("all", "gpt") == ["q", "k", "v", "o", "fc", "proj"]  # GPT-2 has no gate
    assert lora.parse_targets("up,down", "gpt") == ["fc", "proj"]
    with pytest.raises(ConfigError, match="finetune.targets: arch gpt has no gate projection; its targets are "
                                          "q, k, v, o, fc, proj"):
        lora.parse_targets("q,gate", "gpt")
    from trainers.models import build_model

    model = build_model("llama", dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16), vocab_size=VOCAB)
    wrapped = lora.inject_lora(model, "q,down", rank=4, alpha=8.0)
    assert wrapped == [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.q_proj", "mlp.down_proj")]


# --- fine-tuning a Llama base ----------------------------------------------------------------------------
FEW_STEPS = ("profile=cpu", "train.max_steps=30", "train.batch_size=8", "train.eval_interval=30",
             "train.eval_iters=4", "train.system_interval=60", "train.sample_tokens=8", "train.log_interval=1",
             "train.checkpoint_interval=0", "finetune.compare_memory=false", "finetune.block_size=32",
             "train.lr=1e-2", "train.warmup_steps=2")


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory, tokenizer_json):
    path = tmp_path_factory.mktemp("llama-base")
    return save_checkpoint(hf_model("llama"), path, tokenizer_json, max_shard_size="40KB")


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_and_qlora_fine_tunes_of_a_llama_base_lower_the_loss(method, llama_base, tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process(method, f"finetune.base={llama_base}", "finetune.targets=all", *FEW_STEPS, log=log) == 0
    start = events_of(log, "run_start")[0]
    assert start["config"]["model"]["n_kv_head"] == 2  # the base's shape, read from its config.json
    evals = events_of(log, "eval")
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3, [e["val_loss"] for e in evals]
    assert events_of(log, "run_end")[-1]["status"] == "completed"
    # the run's checkpoint exports, from the checkpoint alone, merged weights and the adapters
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainers.export_merged import main as export_main

    assert export_main([str(log.parent), "--hf", str(tmp_path / "hf"), "--peft", str(tmp_path / "adapter")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_base), tmp_path / "adapter")
    x = random_ids()
    with torch.no_grad():
        gap = (merged(x).logits - on_base.eval()(x).logits).abs().max()
    # LoRA: the same function; QLoRA's merge holds the NF4-rounded base, PEFT's adapter rides the float one
    assert gap < (1e-4 if method == "lora" else 0.5), gap


def adapted_llama(base_path, method="lora", targets="all", extra=()):
    """The finetune task's model for `base_path`, its adapters given trained-looking values."""
    from trainers import config
    from trainers.tasks import load_task

    cfg = config.load(method, [f"finetune.base={base_path}", f"finetune.targets={targets}", *FEW_STEPS[1:], *extra],
                      profile="cpu", has_cuda=False)
    task = load_task(cfg, torch.device("cpu"), lambda level, msg: None)
    model = task.build_model()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                for a in m.lora.values():
                    a.B.copy_(torch.randn(a.B.shape, generator=g) * 0.05)
    return task, model.eval()


def test_merged_export_reloads_in_transformers_with_equal_logits(llama_base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.tasks.finetune import export_merged

    task, model = adapted_llama(llama_base)
    paths = export_merged(model, task.cfg, task.state_dict(), tmp_path, "hf")
    assert paths == [str(tmp_path / "merged-hf")]
    reloaded = AutoModelForCausalLM.from_pretrained(paths[0]).eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    x = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, logits_of(model, x), atol=1e-4, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(llama_base).eval()
        assert (base(x).logits - logits_of(model, x)).abs().max() > 1e-2  # the adapters are in the merge
    text = "Romeo, Romeo! wherefore art thou Romeo?"
    assert AutoTokenizer.from_pretrained(paths[0])(text)["input_ids"] == task.tokenizer.encode(text)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_the_peft_adapter_loads_onto_the_base_with_equal_logits(method, llama_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainers.tasks.finetune import export_adapter

    task, model = adapted_llama(llama_base, method, targets="q,v,mlp")
    out = export_adapter(model, task.state_dict(), tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "q_proj", "up_proj", "v_proj"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_base), out).eval()
    x = random_ids()
    with torch.no_grad():
        got = peft_model(x).logits
    if method == "qlora":  # ours ride on the NF4 base, PEFT's on the float one: the same adapters on that
        reference, _, _ = hf.load_hf(llama_base)
        lora.inject_lora(reference, "q,v,mlp", int(task.ft["rank"]), float(task.ft["alpha"]))
        adapters = {k: v for k, v in model.state_dict().items() if lora.is_lora_param(k)}
        assert not reference.load_state_dict(adapters, strict=False).unexpected_keys
        model = reference
    torch.testing.assert_close(got, logits_of(model, x), atol=1e-4, rtol=0)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(llama_base).eval()
        assert (got - base(x).logits).abs().max() > 1e-2  # the adapters change the function


def test_a_completed_run_with_export_peft_writes_the_adapter_into_the_run_directory(llama_base, tmp_path):
    task, model = adapted_llama(llama_base, extra=("finetune.merge=true", "finetune.export=peft"))
    assert task.on_end(model, tmp_path, status="stopped") == []
    assert task.on_end(model, tmp_path) == [str(tmp_path / "adapter")]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(llama_base) and config["peft_type"] == "LORA"
    assert not (tmp_path / "merged.pt").exists()


def test_a_gpt2_peft_adapter_on_the_fused_qkv_loads_in_peft(tmp_path):
    """GPT-2's q and v adapters sit on slices of the fused c_attn: one PEFT adapter of rank 2r holds both."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from trainers.models.gpt import Config, Model

    torch.manual_seed(0)
    base = Model(Config(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=64, bias=True)).eval()
    hf.save_hf(base, tmp_path / "base")
    model = copy.deepcopy(base)
    lora.inject_lora(model, "q,v,fc", rank=4, alpha=8.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                for a in m.lora.values():
                    a.B.normal_(0, 0.05)
    hf.save_peft(model, tmp_path / "adapter", str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {f"transformer.h.{i}.attn.c_attn": 8 for i in range(2)}
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"),
                                           tmp_path / "adapter").eval()
    x = random_ids(T=16)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x).logits, logits_of(model, x), atol=1e-4, rtol=0)


# --- memory while loading ----------------------------------------------------------------------------------
RSS_PROBE = textwrap.dedent("""
    import json, sys
    import torch
    from trainers import hf, quant
    quant.nf4_from_linear(torch.nn.Linear(512, 512), torch.device("cpu"))  # bitsandbytes' lazy start-up

    def status(field):  # kB -> bytes, from the kernel's accounting of this process
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to what is resident now: the imports' peak is not the load's
    before = status("VmRSS")
    model, _, _ = hf.load_hf(sys.argv[1], quantize_on=None if sys.argv[2] == "lora" else torch.device("cpu"))
    print(json.dumps({"before": before, "peak": status("VmHWM")}))
""")



def test_peak_rss_while_loading_a_sharded_checkpoint_for_qlora_stays_near_one_shard(tmp_path, tokenizer_json):
    """A 109 MB float32 checkpoint in shards of at most 20 MB, loaded for QLoRA in a fresh process: the peak
    resident memory grows by about one shard (the pages of the shard being read, the float32 copy of the
    tensor being quantised) plus the 4-bit model, never by the whole checkpoint. Measured here: the peak grows
    by 49 MB against the bound of 54 MB (twice the largest shard plus the NF4 model); reading every shard
    before building the model, as a plain load_file would, takes more than the 109 MB of the checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True)
    save_checkpoint(LlamaForCausalLM(config), tmp_path, tokenizer_json, max_shard_size="20MB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    total = sum(p.stat().st_size for p in shards)
    largest = max(p.stat().st_size for p in shards)
    assert len(shards) >= 5 and total > 100e6
    # glibc serves a freed block's size from its heap afterwards (the dynamic mmap threshold, up to 32 MB)
    # and keeps that heap: with this test's 3 MB matrices, freed float32 copies would stay resident. A 7B
    # model's matrices (45 MB and more) are above that threshold; a fixed one makes these behave the same.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path), "qlora"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    grown = rss["peak"] - rss["before"]
    nf4_model = total * 0.52 / 4  # 4-bit weights and their absmax (trainers/quant.py)
    assert grown < 2 * largest + nf4_model, (grown / 1e6, largest / 1e6, nf4_model / 1e6)


# --- memory estimates ----------------------------------------------------------------------------------------
def test_presets_estimate_lora_and_qlora_of_1b_to_8b_llama_bases_against_the_budget():
    from cockpit.presets_info import preset_table
    from trainers.inspect import inspect_preset

    infos = [inspect_preset(name) for name in ("qlora", "lora")]
    rows = {(info["name"], r["shape"]): r for info in infos for r in info["finetune_estimates"]}
    # the published parameter counts of the four shapes, built on the meta device
    for shape, billions in (("Llama 3.2 1B", 1.24), ("Llama 3.2 3B", 3.21), ("Llama 2 7B", 6.74),
                            ("Llama 3.1 8B", 8.03)):
        for preset in ("qlora", "lora"):
            row = rows[(preset, shape)]
            assert row["method"] == preset and round(row["n_params"] / 1e9, 2) == billions
            assert (row["micro_batch"], row["seq"], row["activation_checkpointing"]) == (2, 2048, True)
    budget = 12 * 2**30
    # the qlora preset's defaults fit a 7B and an 8B base in 12 GB; LoRA's float32 base does not
    assert rows[("qlora", "Llama 2 7B")]["est_bytes"] < budget and rows[("qlora", "Llama 3.1 8B")]["est_bytes"] < budget
    assert rows[("lora", "Llama 2 7B")]["est_bytes"] > budget and rows[("lora", "Llama 3.2 1B")]["est_bytes"] < budget
    seven = rows[("qlora", "Llama 2 7B")]["est_breakdown"]
    assert 0.5 * 6.74e9 < seven["weights"] < 0.6 * 6.74e9 + 4 * 32000 * 4096  # NF4 linears, float32 embedding
    table = preset_table(infos)
    assert "Fine-tuning Llama bases with each fine-tune preset's settings (estimates):" in table
    lines = {(ln.split()[0], " ".join(ln.split()[1:4])): ln for ln in table.splitlines() if "Llama 2 7B" in ln}
    assert lines[("lora", "Llama 2 7B")].endswith("NO (> 12 GB)") and lines[("qlora", "Llama 2 7B")].endswith("yes")


def test_the_picker_sums_up_a_presets_estimates_in_one_line_marking_what_does_not_fit():
    from cockpit.presets_info import finetune_summary

    info = {"vram_budget_gb": 12.0, "finetune_estimates": [
        {"shape": "Llama 2 7B", "method": "qlora", "est_bytes": 6 * 2**30},
        {"shape": "Llama 3.1 8B", "method": "qlora", "est_bytes": 13 * 2**30}]}
    assert finetune_summary(info) == "Llama 2 7B: qlora 6.0 GiB · Llama 3.1 8B: qlora 13.0 GiB (too big)"


def test_qlora_of_a_sharded_llama_base_on_alpaca_data_learns_the_answers_with_the_bases_chat_template(
        llama_base, tmp_path):
    """The whole path of the issue at once: a Hugging Face Llama base (sharded safetensors, tokenizer.json, a
    chat template in tokenizer_config.json), quantised to NF4 as it streams in, QLoRA on Alpaca records
    rendered with the base's template, loss on the answers only, answers to held-out prompts as samples."""
    import shutil

    from tests.test_instruct import write_alpaca

    base = tmp_path / "base"
    shutil.copytree(llama_base, base)
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    (base / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    data = write_alpaca(tmp_path / "alpaca.jsonl", n=160)
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("qlora", f"finetune.base={base}", f"data.path={data}", "data.sample_prompts=2",
                            *FEW_STEPS, log=log) == 0
    start = events_of(log, "run_start")[0]
    assert start["dataset"]["template"] == str(base / "tokenizer_config.json")
    evals = events_of(log, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3, [e["val_loss"] for e in evals]
    samples = [s for s in events_of(log, "sample") if s.get("prompt")]
    assert samples and all(s["text"] is not None for s in samples)
    assert events_of(log, "run_end")[-1]["status"] == "completed"
