"""Per-layer activation memory is measured (saved-tensor hooks), sums to the total, and scales with batch."""
from __future__ import annotations

import torch

from trainers.memory import ActivationProbe, layer_of
from trainers.models.gpt import Config, Model


def measure(batch: int):
    torch.manual_seed(0)
    m = Model(Config(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32))
    x = torch.randint(0, 50, (batch, 32))
    probe = ActivationProbe(m)
    with probe.capture():
        _, loss = m(x, x)
    loss.backward()
    return probe


def test_layer_table_sums_to_the_hooked_total():
    probe = measure(4)
    table = probe.table({})
    assert {"transformer.h.0", "transformer.h.1"} <= {r["name"] for r in table}
    assert sum(r["activation_bytes"] for r in table) == probe.total > 0


def test_doubling_the_batch_doubles_activation_bytes():
    a, b = measure(4).total, measure(8).total
    assert abs(b / a - 2.0) < 0.10 * 1.0, (a, b)
    assert abs(b / a - 2.0) <= 0.05 * 2.0


def test_weights_saved_by_matmuls_are_not_counted_as_activations():
    probe = measure(4)
    n_param_bytes = sum(p.numel() * 4 for p in Model(Config(vocab_size=50, block_size=32, n_layer=2, n_head=2,
                                                              n_embd=32)).parameters())
    # one (4 x 32) batch of 32-wide activations is far smaller than the weights: if weights were
    # counted the total would exceed the parameter bytes
    assert probe.total < 40 * n_param_bytes
    lm_head_rows = [r for r in probe.table({}) if r["name"] == "lm_head"]
    assert lm_head_rows and lm_head_rows[0]["activation_bytes"] < 4 * 32 * 32 * 4 * 2


def test_module_paths_roll_up_to_layers():
    assert layer_of("transformer.h.3.attn.c_attn") == "transformer.h.3"
    assert layer_of("lm_head") == "lm_head"
    assert layer_of("transformer.ln_f") == "transformer.ln_f"
    assert layer_of("") == "(model)"


def test_memory_events_at_step_0_and_every_interval(tmp_path):
    from tests.conftest import TINY_GPT, events_of, train_in_process

    log = tmp_path / "m" / "events.jsonl"
    train_in_process("nanogpt", *TINY_GPT, "train.max_steps=10", "train.memory_interval=4", log=log)
    mem = events_of(log, "memory")
    assert [m["step"] for m in mem] == [0, 4, 8]
    t = mem[0]["totals"]
    assert t["params"] > 0 and t["grads"] == t["params"]
    # AdamW keeps two fp32 moments per weight, plus one scalar step counter per tensor
    assert 2 * t["params"] <= t["optimizer"] < 2 * t["params"] + 1024
    assert sum(layer["activation_bytes"] for layer in mem[0]["layers"]) == t["activations"]
