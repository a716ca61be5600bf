"""Fine-tuning: LoRA adapters, the QLoRA 4-bit base, GPT-2 Hugging Face weights, the finetune task, merging."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers import config, hf, lora, quant
from trainers.config import ConfigError
from trainers.models.gpt import Config as GPTConfig
from trainers.models.gpt import Model as GPT

TINY = dict(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=64)
TINY_OVERRIDES = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                  "train.batch_size=4", "train.eval_iters=2", "train.system_interval=60",
                  "train.sample_tokens=8", "train.warmup_steps=1"]


def tiny_gpt(seed=0, bias=True, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, "bias": bias, **kw})).eval()


def tokens(seed=1, B=2, T=16, vocab=TINY["vocab_size"]):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def randomize_adapters(model, seed=3, std=0.05):
    """Give every B a non-zero value (a trained adapter), so that merging has something to merge."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                for a in m.lora.values():
                    a.B.copy_(torch.randn(a.B.shape, generator=g) * std)


def lora_model(base, targets="all", rank=4, alpha=8.0, dropout=0.0):
    m = copy.deepcopy(base)
    lora.inject_lora(m, targets, rank, alpha, dropout)
    lora.freeze_base(m)
    return m


def qlora_model(base, targets="all"):
    m = copy.deepcopy(base)
    quant.quantize_base(m, torch.device("cpu"))
    lora.inject_lora(m, targets, 4, 8.0, 0.0)
    lora.freeze_base(m)
    return m


# --- LoRA -------------------------------------------------------------------------------------------------
def test_fresh_adapters_give_exactly_the_base_logits():
    base = tiny_gpt()
    x = tokens()
    adapted = lora_model(base, dropout=0.1)
    assert torch.equal(adapted.eval()(x, x)[0], base(x, x)[0])
    # in training mode too (adapter dropout is active, but B = 0 makes the update zero)
    assert torch.equal(adapted.train()(x, x)[0], base.train()(x, x)[0])


def test_only_adapter_parameters_receive_gradients():
    x = tokens()
    m = lora_model(tiny_gpt(), targets="q,v,fc").train()
    _, loss = m(x, x)
    loss.backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    adapters = {n for n, _ in m.named_parameters() if ".lora." in n}
    assert with_grad == adapters and len(adapters) == 2 * 2 * 3  # (A, B) x 2 layers x (q, v, fc)
    assert all(not p.requires_grad for n, p in m.named_parameters() if ".lora." not in n)
    # B = 0 at the start, so the first signal reaches B (A's gradient is B^T-weighted, zero for now)
    assert all(p.grad.abs().sum() > 0 for n, p in m.named_parameters() if n.endswith(".B"))


def test_q_adapter_changes_only_the_query_rows_of_the_fused_qkv_projection():
    base = tiny_gpt()
    m = lora_model(base, targets="q")
    randomize_adapters(m)
    x = torch.randn(3, 5, TINY["n_embd"])
    C = TINY["n_embd"]
    layer = m.transformer.h[0].attn.c_attn
    assert isinstance(layer, lora.LoRALinear) and list(layer.slices) == ["q"]
    delta = layer(x) - base.transformer.h[0].attn.c_attn(x)
    assert delta[..., :C].abs().max() > 1e-3          # queries moved
    assert torch.equal(delta[..., C:], torch.zeros_like(delta[..., C:]))  # keys and values untouched
    assert not isinstance(m.transformer.h[0].mlp.c_fc, lora.LoRALinear)


def test_targets_accept_groups_and_reject_unknown_names():
    assert lora.parse_targets("attn") == ["q", "k", "v", "o"]
    assert lora.parse_targets("q, v,mlp") == ["q", "v", "fc", "proj"]
    with pytest.raises(ConfigError, match="finetune.targets: unknown projection 'query'"):
        lora.parse_targets("query")


def test_merged_model_gives_the_same_logits_as_base_plus_adapters():
    x = tokens()
    m = lora_model(tiny_gpt(), targets="q,k,o,fc,proj")
    randomize_adapters(m)
    m.eval()
    merged = lora.merge_lora(copy.deepcopy(m)).eval()
    assert not any(isinstance(mod, lora.LoRALinear) for mod in merged.modules())
    assert set(merged.state_dict()) == set(tiny_gpt().state_dict())  # the base architecture again
    torch.testing.assert_close(merged(x, x)[0], m(x, x)[0], atol=1e-5, rtol=1e-5)
    # and it is not trivially the base: the adapters did change the function
    assert (merged(x, x)[0] - tiny_gpt()(x, x)[0]).abs().max() > 1e-3


# --- QLoRA ----------------------------------------------------------------------------------------------
def test_qlora_base_weights_take_half_a_byte_each_plus_a_small_quantisation_state():
    base = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=1, n_head=4, n_embd=256, bias=True))
    m = copy.deepcopy(base)
    names = quant.quantize_base(m, torch.device("cpu"))
    assert len(names) == 4 and type(m.lm_head) is torch.nn.Linear  # lm_head is tied to wte: kept
    layers = [mod for mod in m.modules() if quant.is_4bit(mod)]
    n_weights = sum(mod.in_features * mod.out_features for mod in layers)
    packed = sum(mod.weight.numel() * mod.weight.element_size() for mod in layers)
    assert packed / n_weights == 0.5
    assert all(mod.weight.dtype == torch.uint8 and mod.weight.quant_state.nested for mod in layers)  # double quant
    state = quant.quant_state_bytes(m)
    assert 0.5 < (packed + state) / n_weights < 0.56  # absmax ~1/64 B per weight after double quantisation
    # the quantised base still computes nearly what the fp32 base computes
    x = tokens(vocab=40)
    base.eval(), m.eval()
    assert (m(x, x)[1] - base(x, x)[1]).abs() < 0.05


def test_qlora_forward_and_backward_run_on_cpu_and_train_only_the_adapters():
    x = tokens()
    base = tiny_gpt()
    quantised = copy.deepcopy(base)
    quant.quantize_base(quantised, torch.device("cpu"))
    m = qlora_model(base).train()
    assert torch.equal(m.eval()(x, x)[0], quantised.eval()(x, x)[0])  # adapters start as a no-op here too
    m.train()
    opt = quant.paged_adamw([p for p in m.parameters() if p.requires_grad], torch.device("cpu"), 1e-2,
                            (0.9, 0.99), bits=8)
    assert type(opt).__name__ == "AdamW8bit"
    losses = []
    for _ in range(5):
        _, loss = m(x, x)
        loss.backward()
        assert all(p.grad is None for n, p in m.named_parameters() if ".lora." not in n)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_qlora_state_dict_survives_save_and_load_for_resume(tmp_path):
    x = tokens()
    m = qlora_model(tiny_gpt())
    randomize_adapters(m)
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    fresh = qlora_model(tiny_gpt(seed=9))  # different base weights before loading
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert torch.equal(fresh.eval()(x, x)[0], m.eval()(x, x)[0])


def test_qlora_merge_dequantises_and_matches_the_adapted_model():
    x = tokens()
    m = qlora_model(tiny_gpt(), targets="q,v")
    randomize_adapters(m)
    m.eval()
    merged = lora.merge_lora(copy.deepcopy(m)).eval()
    assert not any(quant.is_4bit(mod) for mod in merged.modules())
    torch.testing.assert_close(merged(x, x)[0], m(x, x)[0], atol=1e-4, rtol=1e-4)


# --- GPT-2 in Hugging Face layout ---------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_hf_directory_round_trips_a_random_model(tmp_path, bias):
    model = tiny_gpt(bias=bias)
    x = tokens()
    hf.save_hf(model, tmp_path, {"kind": "char", "chars": "".join(chr(65 + i) for i in range(40))})
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "model.safetensors"))
    C = TINY["n_embd"]
    assert raw["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)  # Conv1D layout: (in, out)
    assert raw["transformer.h.0.mlp.c_fc.weight"].shape == (C, 4 * C)
    assert raw["transformer.h.0.mlp.c_proj.weight"].shape == (4 * C, C)
    assert json.loads((tmp_path / "config.json").read_text())["n_positions"] == TINY["block_size"]
    loaded, mcfg, tok = hf.load_hf(tmp_path)
    assert mcfg["n_layer"] == TINY["n_layer"] and tok["kind"] == "char"
    torch.testing.assert_close(loaded.eval()(x, x)[0], model(x, x)[0], atol=1e-6, rtol=1e-6)


def test_hf_loader_reads_gpt2_hub_style_pytorch_model_bin(tmp_path):
    """Un-prefixed names, the causal-mask buffers and lm_head of older GPT-2 files, GPT-2 BPE vocabulary."""
    model = tiny_gpt(vocab_size=hf.GPT2_VOCAB)
    x = tokens(vocab=hf.GPT2_VOCAB)
    sd = {k[len("transformer."):]: v for k, v in hf.ours_to_hf(model).items()}
    T = TINY["block_size"]
    for i in range(TINY["n_layer"]):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    sd["lm_head.weight"] = sd["wte.weight"].clone()
    torch.save({k: v.half() if k.endswith("weight") else v for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config(model)))
    loaded, _, tok = hf.load_hf(tmp_path)
    assert tok == {"kind": "gpt2"}
    torch.testing.assert_close(loaded.eval()(x, x)[0], model(x, x)[0], atol=2e-2, rtol=0)  # stored in fp16


def test_hf_loader_rejects_what_our_gpt_cannot_hold(tmp_path):
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        hf.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon"}))  # llama loads: tests/test_llama.py
    with pytest.raises(ConfigError, match="model_type 'falcon' is not supported; supported: gpt2 .*, llama .*qwen3"):
        hf.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2,
                                                      "n_embd": 32, "vocab_size": 50257}))
    with pytest.raises(ConfigError, match="no model.safetensors or pytorch_model.bin"):
        hf.load_hf(tmp_path)


# --- the finetune task and presets --------------------------------------------------------------------------
def run_trainer(preset, overrides, log):
    from trainers.loop import Trainer

    cfg = config.load(preset, overrides, profile="cpu", has_cuda=False)
    code = Trainer(cfg, log).run()
    events = [json.loads(line) for line in Path(log).read_text().splitlines()]
    return code, events


@pytest.fixture(scope="module")
def shakespeare_ckpt(tmp_path_factory):
    """A tiny nanogpt checkpoint trained by the real loop: what `finetune.base=runs/<run>/ckpt.pt` reads."""
    d = tmp_path_factory.mktemp("base")
    code, _ = run_trainer("nanogpt", [*TINY_OVERRIDES, "train.max_steps=30", "train.eval_interval=30",
                                      "train.lr=1e-2"], d / "events.jsonl")
    assert code == 0
    return d / "ckpt.pt"


def make_task(overrides, device="cpu"):
    from trainers.tasks import load_task

    cfg = config.load("lora", overrides, profile="cpu", has_cuda=False)
    logs = []
    task = load_task(cfg, torch.device(device), lambda level, msg: logs.append((level, msg)))
    return task, logs


def test_finetune_task_starts_from_the_base_checkpoint_and_reuses_its_tokenizer(shakespeare_ckpt, tmp_path):
    ckpt = torch.load(shakespeare_ckpt, weights_only=True)
    corpus = tmp_path / "milton_plus.txt"
    # Milton with characters Shakespeare's vocabulary lacks: they are reported and map to the fallback
    from trainers.data import asset_path
    corpus.write_text(asset_path("milton.txt").read_text()[:20000] + "\n~ § ~\n")
    task, logs = make_task([f"finetune.base={shakespeare_ckpt}", f"data.path={corpus}", "train.eval_iters=2",
                            "train.batch_size=4"])
    assert task.tokenizer.chars == list(ckpt["task"]["tokenizer"]["chars"])
    assert task.cfg["model"]["n_embd"] == 32  # the base's shape, not the preset's
    assert any(level == "warning" and "not in the base's vocabulary" in msg for level, msg in logs)
    model = task.build_model()
    base = GPT(GPTConfig(vocab_size=len(task.tokenizer.chars), **ckpt["config"]["model"]))
    base.load_state_dict(ckpt["model"])
    x, y = task.get_batch("val", 0)
    base.eval(), model.eval()
    torch.testing.assert_close(model(x, y)[1], base(x, y)[1])  # step 0 = the base's loss on Milton
    res = task.evaluate(model, 0)
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if ".lora." in n)
    assert res["metrics"]["trainable_params"] == n_adapter < res["metrics"]["params"]
    assert res["method"] == "lora"


def test_bad_finetune_settings_fail_with_the_field_named(tmp_path, shakespeare_ckpt):
    with pytest.raises(ConfigError, match="finetune.method='adapters'"):
        make_task(["finetune.method=adapters"])
    with pytest.raises(ConfigError, match="finetune.targets: unknown projection 'xyz'"):
        make_task(["finetune.targets=q,xyz"])
    with pytest.raises(ConfigError, match="finetune.base=.*no checkpoint or Hugging Face directory"):
        make_task([f"finetune.base={tmp_path / 'nope.pt'}"])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="checkpoint is unreadable"):
        make_task([f"finetune.base={tmp_path / 'garbage.pt'}"])


def test_memory_comparison_measures_full_lora_and_qlora_on_the_same_base():
    task, _ = make_task(["model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=32",
                         "train.batch_size=4"])
    model = task.build_model()
    opt = task.configure_optimizer(model)
    fields = task.memory_fields(model, opt)
    assert fields["method"] == "lora" and fields["totals"]["method"] == "lora"
    rows = {r["method"]: r for r in fields["comparison"]}
    full, lo, q = rows["full"], rows["lora"], rows["qlora"]
    assert full["trainable_params"] == full["n_params"] > lo["trainable_params"] == q["trainable_params"] > 0
    assert lo["grads"] == lo["trainable_params"] * 4 and full["grads"] == full["n_params"] * 4
    # AdamW keeps two fp32 moments per trainable weight: for every weight vs for the adapters only
    assert full["optimizer"] >= 8 * full["n_params"] and lo["optimizer"] < 8 * lo["trainable_params"] + 1024
    assert q["optimizer"] <= lo["optimizer"]  # 8-bit moments (bitsandbytes keeps tensors < 4096 in 32 bits)
    assert q["params"] < lo["params"] and q["quant_state"] > 0  # the 4-bit base
    assert all(r["activations"] > 0 and r["total"] > 0 for r in rows.values())
    again = task.memory_fields(model, opt)  # measured once per run, repeated in every memory event
    assert again["comparison"] is fields["comparison"] and "CPU" in again["comparison_note"]


def test_lora_and_qlora_presets_load_and_are_described_by_inspect():
    from trainers.inspect import inspect_preset

    for name, method in (("lora", "lora"), ("qlora", "qlora")):
        cfg = config.load(name, profile="cpu", has_cuda=False)
        assert cfg["task"] == "finetune" and cfg["finetune"]["method"] == method and cfg["data"]["path"] == ""
    info = inspect_preset("qlora")  # GPT-2 124M shape on the meta device
    assert info.get("error") is None, info.get("error")
    assert 0 < info["trainable_params"] < info["n_params"]
    assert info["est_breakdown"]["weights"] < 124e6 * 4 / 2  # a 4-bit base, not fp32


@pytest.mark.slow
def test_qlora_run_from_a_checkpoint_then_merged_export_matches(tmp_path, shakespeare_ckpt):
    code, events = run_trainer("qlora", [f"finetune.base={shakespeare_ckpt}", "finetune.optimizer=paged_adamw_8bit",
                                         "train.max_steps=6",
                                         "train.eval_interval=3", "train.batch_size=4", "train.eval_iters=2",
                                         "train.system_interval=60", "train.sample_tokens=8",
                                         "finetune.compare_memory=false"], tmp_path / "events.jsonl")
    assert code == 0
    end = [e for e in events if e["type"] == "run_end"][0]
    assert end["status"] == "completed"
    assert any(e["type"] == "log" and "AdamW8bit" in e["message"] for e in events)
    evals = [e for e in events if e["type"] == "eval"]
    assert evals and all(e["method"] == "qlora" for e in evals)
    out = subprocess.run([sys.executable, "-m", "trainers.export_merged", str(tmp_path), "--hf",
                          str(tmp_path / "hf")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "merged.pt").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    from trainers.tasks.finetune import model_from_checkpoint

    adapted, _, _ = model_from_checkpoint(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    merged_hf, _, _ = hf.load_hf(tmp_path / "hf")
    # the merged checkpoint is itself a base a new fine-tune can start from
    task, _ = make_task([f"finetune.base={tmp_path / 'merged.pt'}", "finetune.method=full", "train.batch_size=2"])
    merged_ckpt_model = task.build_model()
    x, y = task.get_batch("val", 0)
    ref = adapted.eval()(x, y)[0]
    torch.testing.assert_close(merged_hf.eval()(x, y)[0], ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged_ckpt_model.eval()(x, y)[0], ref, atol=1e-4, rtol=1e-4)


def test_export_merged_refuses_a_checkpoint_that_is_not_a_finetune(shakespeare_ckpt):
    out = subprocess.run([sys.executable, "-m", "trainers.export_merged", str(shakespeare_ckpt)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("cockpit: error:") and "not a fine-tune checkpoint" in out.stderr


def test_merge_at_the_end_of_a_run_writes_a_checkpoint_and_a_hf_directory_that_reload(tmp_path):
    small = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32", "train.batch_size=2"]
    task, _ = make_task([*small, "finetune.merge=true", "finetune.export=both", "finetune.targets=q,v,proj"])
    model = task.build_model()
    randomize_adapters(model)
    assert task.on_end(model, tmp_path, status="stopped") == []  # only a completed run exports
    paths = task.on_end(model, tmp_path)
    assert paths == [str(tmp_path / "merged.pt"), str(tmp_path / "merged-hf")]
    x, y = task.get_batch("val", 0)
    ref = model.eval()(x, y)[0]
    again, _ = make_task([*small, f"finetune.base={tmp_path / 'merged.pt'}", "finetune.method=full"])
    from_hf, _ = make_task([*small, f"finetune.base={tmp_path / 'merged-hf'}", "finetune.method=full"])
    assert again.tokenizer.chars == from_hf.tokenizer.chars == task.tokenizer.chars
    for t in (again, from_hf):
        torch.testing.assert_close(t.build_model().eval()(x, y)[0], ref, atol=1e-5, rtol=1e-5)


def test_lora_plus_gives_the_b_matrices_a_larger_learning_rate_through_lr_scale():
    task, _ = make_task(["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
                         "finetune.lr_ratio=16", "train.lr=1e-3"])
    model = task.build_model()
    opt = task.configure_optimizer(model)
    b_params = {id(p) for n, p in model.named_parameters() if ".lora." in n and n.endswith(".B")}
    fast = [g for g in opt.param_groups if g.get("lr_scale", 1.0) == 16.0]
    assert len(fast) == 1 and {id(p) for p in fast[0]["params"]} == b_params
    assert fast[0]["lr"] == pytest.approx(16e-3)
    slow = [p for g in opt.param_groups if g.get("lr_scale", 1.0) == 1.0 for p in g["params"]]
    assert slow and all(id(p) not in b_params for p in slow)
