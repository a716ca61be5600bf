"""Text to image: caption tokens, PixArt-alpha's DiT and the text U-Net (cross-attention is the caption's only
path; the dropped caption is the unconditional branch; adaLN-single), the frozen pretrained text encoder, the
diffusion task's text path (caption dropout, prompts, cross-attention internals, latent space), the trainer end
to end, and the full size's memory plan."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cockpit.images import decode_image
from common.events import encode_command
from tests.conftest import ROOT, events_of, train_in_process
from trainers import config
from trainers.config import ConfigError
from trainers.diffusion import Diffusion
from trainers.models import build_model
from trainers.models._text import PAD, CrossAttention, cross_attention_map, decode_captions, encode_captions
from trainers.tasks import load_task

TEXT = dict(text_len=12, text_layers=1, text_embd=16, text_heads=2)
TINY = {
    "pixart": dict(image_size=8, in_channels=3, patch_size=2, n_layer=2, n_head=2, n_embd=16, **TEXT),
    "unet": dict(image_size=8, in_channels=1, base_channels=8, channel_mult="1,2", num_res_blocks=1, n_head=2,
                 dropout=0.0, conditioning="text", **TEXT),
}


def tiny(arch: str, seed: int = 0, **kw):
    """A tiny text-conditioned net with every weight perturbed (zero-initialised projections would hide the
    caption), in eval mode."""
    torch.manual_seed(seed)
    net = build_model(arch, {**TINY[arch], **kw})
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def inputs(net, captions: list[str]):
    cfg = net.config
    torch.manual_seed(1)
    x = torch.randn(len(captions), cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.randint(0, cfg.num_timesteps, (len(captions),))
    return x, t, encode_captions(captions, cfg.text_len)


def test_captions_are_utf8_bytes_plus_one_cut_and_padded_and_decode_back():
    y = encode_captions(["ab", "", "héllo world"], 6)
    assert y.tolist()[0] == [98, 99, 0, 0, 0, 0] and y.tolist()[1] == [PAD] * 6
    assert decode_captions(y) == ["ab", "", "héllo"]   # cut at 6 bytes: é is two


@pytest.mark.parametrize("arch", ["pixart", "unet"])
def test_changing_the_caption_changes_the_output(arch):
    net = tiny(arch)
    x, t, y = inputs(net, ["a 7", "a 7"])
    same = net(x, t, y)
    other = net(x, t, encode_captions(["a 7", "the digit one"], net.config.text_len))
    assert torch.allclose(other[0], same[0], atol=1e-6)
    assert (other[1] - same[1]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["pixart", "unet"])
def test_cross_attention_is_the_only_path_from_caption_to_output(arch):
    net = tiny(arch)
    x, t, _ = inputs(net, ["", ""])
    a = net(x, t, encode_captions(["a 7", "a thin 7"], net.config.text_len))
    b = net(x, t, encode_captions(["the digit one", ""], net.config.text_len))
    assert (a - b).abs().max() > 1e-3
    crosses = [m for m in net.modules() if isinstance(m, CrossAttention)]
    assert crosses
    with torch.no_grad():
        for m in crosses:
            m.proj.weight.zero_()
            m.proj.bias.zero_()
    a = net(x, t, encode_captions(["a 7", "a thin 7"], net.config.text_len))
    b = net(x, t, encode_captions(["the digit one", ""], net.config.text_len))
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["pixart", "unet"])
def test_the_dropped_caption_is_the_unconditional_branch_and_attends_to_start_alone(arch):
    net = tiny(arch)
    x, t, y = inputs(net, ["a 7", "the digit two"])
    null = torch.zeros_like(y)
    uncond = Diffusion.guided_eps(net, x, t, y, PAD, guidance=0.0)
    assert torch.equal(uncond, net(x, t, null).float())
    guided = Diffusion.guided_eps(net, x, t, y, PAD, guidance=3.0)
    cond = net(x, t, y).float()
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)
    weights = cross_attention_map(net, x, t, null)          # (B, positions, 1 + text_len)
    assert torch.allclose(weights[..., 0], torch.ones(()), atol=1e-6) and weights[..., 1:].abs().max() == 0


def test_adaln_single_shares_one_timestep_modulation_with_per_block_tables_and_zero_init_outputs():
    torch.manual_seed(0)
    D = 64
    net = build_model("pixart", {**TINY["pixart"], "n_embd": D, "n_head": 4, "n_layer": 3}).eval()
    t0 = net.t_block(net.t_embedder(torch.tensor([1, 500])))
    assert t0.shape == (2, 6 * D), "one (B, 6D) modulation for all the blocks"
    assert not any(name.endswith("adaLN_modulation") for name, _ in net.named_modules()), "no per-block MLP"
    for block in net.blocks:
        assert block.scale_shift_table.shape == (6, D)
        assert 0.6 / D ** 0.5 < block.scale_shift_table.std() < 1.4 / D ** 0.5, "randn / sqrt(D)"
        assert block.cross_attn.proj.weight.abs().max() == 0 and block.cross_attn.proj.bias.abs().max() == 0
    assert net.final_layer.scale_shift_table.shape == (2, D)
    assert net.final_layer.linear.weight.abs().max() == 0 and net.final_layer.linear.bias.abs().max() == 0
    assert not torch.equal(net.blocks[0].scale_shift_table, net.blocks[1].scale_shift_table)
    x, t, y = inputs(net, ["a 7", "a 1"])
    assert torch.equal(net(x, t, y), torch.zeros_like(x)), "a fresh net predicts zero noise"


def test_a_frozen_pretrained_text_encoder_loads_from_a_local_directory(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "7", "the",
                                                   "digit", "one", "thin"]) + "\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=32)).save_pretrained(tmp_path / "enc")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "enc")
    net = tiny("pixart", text_encoder=str(tmp_path / "enc"))
    frozen = [p for p in net.text.encoder.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    net.train()
    assert not net.text.encoder.training, "the frozen encoder's dropout stays off"
    net.eval()
    x, t, _ = inputs(net, ["", ""])
    a = net(x, t, encode_captions(["a 7", "a 7"], 12))
    b = net(x, t, encode_captions(["a 7", "the digit one"], 12))
    assert torch.allclose(a[0], b[0], atol=1e-6) and (a[1] - b[1]).abs().max() > 1e-4
    with pytest.raises(ConfigError, match=r"model.text_encoder=.*must be a local directory"):
        build_model("pixart", {**TINY["pixart"], "text_encoder": str(tmp_path / "missing")})


# --- the task -------------------------------------------------------------------------------------------
def pixart_cfg(*overrides: str) -> dict:
    return config.load("pixart", ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.text_layers=1",
                                  "model.text_embd=16", "model.text_heads=2", "train.batch_size=8",
                                  "train.eval_iters=1", "sample.eval_samples=0", "sample.steps=2", *overrides],
                       profile="cpu", has_cuda=False)


def test_train_batches_carry_caption_tokens_and_drop_them_to_the_null_caption_at_the_set_rate():
    task = load_task(pixart_cfg("train.batch_size=400", "model.caption_dropout=0.25"), torch.device("cpu"))
    x0, y, t, noise = task.get_batch("train", 3)
    assert y.shape == (400, 16) and y.dtype == torch.long
    dropped = (y == PAD).all(dim=1)
    assert 0.18 < dropped.float().mean() < 0.32
    texts = set(decode_captions(y[~dropped]))
    assert any(s.startswith("the digit ") for s in texts) and any(s.startswith("a thin ") for s in texts) \
        and any(len(s) == 3 for s in texts), "each of an image's caption variants is drawn"
    assert torch.equal(task.get_batch("train", 3)[1], y), "batches are a function of the step"
    assert not (task.get_batch("val", 0)[1] == PAD).all(dim=1).any(), "validation never drops captions"


def test_samples_are_a_column_per_prompt_or_a_grid_of_the_asked_prompt():
    task = load_task(pixart_cfg("sample.prompts=a 7| the digit one ", "sample.rows=2", "sample.cols=3"),
                     torch.device("cpu"))
    model = task.build_model().eval()
    (p,) = task.samples(model, 0)
    assert p["classes"] == ["a 7", "the digit one"] and (p["grid"]["rows"], p["grid"]["cols"]) == (2, 2)
    assert decode_image(p).shape == (2 * 17 - 1, 2 * 17 - 1, 1)
    (q,) = task.samples(model, 0, prompt="a  thin 4")
    assert q["caption"] == "a thin 4" and (q["grid"]["rows"], q["grid"]["cols"]) == (2, 3) and "classes" not in q
    assert q["prompt"].startswith("ddim-") and "caption" not in p   # how it was sampled; the fixed set has none
    assert task.takes_prompts and task.dataset_info()["conditioning"] == "text"
    assert task.dataset_info()["prompts"] == ["a 7", "the digit one"], "run_start tells the cockpit the prompts"
    default = load_task(pixart_cfg(), torch.device("cpu"))
    assert default.prompts == [f"the digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six",
                                                          "seven", "eight", "nine")]
    with pytest.raises(ConfigError, match=r"sample.prompts"):
        load_task(pixart_cfg("sample.prompts=a 7||a 1"), torch.device("cpu"))


def test_a_text_model_on_data_without_captions_is_a_config_error(tmp_path):
    np.savez(tmp_path / "plain.npz", images=np.zeros((4, 16, 16), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"model.conditioning=text trains on captions.*NAME.txt"):
        load_task(pixart_cfg(f"data.path={tmp_path / 'plain.npz'}"), torch.device("cpu"))


def test_internals_map_each_patch_to_the_caption_tokens_of_the_first_prompt():
    task = load_task(pixart_cfg(), torch.device("cpu"))
    model = task.build_model().eval()
    out = task.internals(model, 0)
    cross = next(a for a in out["arrays"] if a["name"] == "cross_attention")
    assert cross["dims"] == ["patch", "token"] and cross["shape"] == [64, 1 + len("the digit zero")]
    assert out["tokens"] == ["<start>", "t", "h", "e", "␣", "d", "i", "g", "i", "t", "␣", "z", "e", "r", "o"]
    rows = torch.tensor(cross["data"]).view(cross["shape"]).sum(1)
    assert torch.allclose(rows, torch.ones(64), atol=1e-3), "each patch's weights over the tokens sum to 1"


def test_the_text_unet_trains_through_the_task_and_its_class_default_is_unchanged():
    cfg = config.load("unet", ["model.conditioning=text", "model.base_channels=8", "model.n_head=2",
                               "model.text_embd=16", "model.text_heads=2", "train.batch_size=4",
                               "sample.eval_samples=0"], profile="cpu", has_cuda=False)
    task = load_task(cfg, torch.device("cpu"))
    model = task.build_model()
    batch = task.get_batch("train", 1)
    assert batch[1].shape == (4, 32)
    with torch.no_grad():  # past the zero-initialised output layer, as after a first step
        model.net.conv_out.weight.normal_(std=0.1)
    task.loss(model, batch).backward()
    assert model.net.mid_cross.attn.proj.weight.grad.abs().max() > 0, "the caption's path is trained"
    assert not load_task(config.load("unet", ["sample.eval_samples=0"], profile="cpu", has_cuda=False),
                         torch.device("cpu")).takes_prompts
    plain = build_model("unet", dict(TINY["unet"], conditioning="class", num_classes=3))
    assert not any(isinstance(m, CrossAttention) for m in plain.modules()) and hasattr(plain, "class_emb")


def test_in_latent_space_the_task_trains_on_encoded_images_and_decodes_samples(monkeypatch, tmp_path):
    class Codec:  # stands in for a vae run: 4 channels at a quarter of the side, by average pooling
        scale_factor, latent_channels, factor, image_channels, image_size = 0.5, 4, 4, 1, 16

        def encode(self, x):
            return torch.nn.functional.avg_pool2d(x, 4).repeat(1, 4, 1, 1) * self.scale_factor

        def decode(self, z):
            return torch.nn.functional.interpolate(z[:, :1] / self.scale_factor, scale_factor=4.0)

    opened = []
    fake = types.ModuleType("trainers.latent")
    fake.load_codec = lambda path, device: opened.append(path) or Codec()
    monkeypatch.setitem(sys.modules, "trainers.latent", fake)
    task = load_task(pixart_cfg(f"model.latent={tmp_path / 'ckpt.pt'}", "model.patch_size=1", "sample.rows=1"),
                     torch.device("cpu"))
    assert opened == [str(tmp_path / "ckpt.pt")]
    assert task.get_batch("train", 0)[0].shape == (8, 4, 4, 4)
    model = task.build_model().eval()
    assert model.net.config.in_channels == 4 and model.net.config.image_size == 4
    (p,) = task.samples(model, 0)
    assert decode_image(p).shape == (16, 10 * 17 - 1, 1), "samples are decoded to 16x16 digits"


# --- end to end and the plan ----------------------------------------------------------------------------
def test_a_short_cpu_run_of_pixart_writes_samples_of_the_prompts_and_cross_attention_internals(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("pixart", "profile=cpu", "device=cpu", "model.n_layer=1", "model.n_embd=32",
                            "model.n_head=2", "model.text_layers=1", "model.text_embd=16", "train.max_steps=3",
                            "train.batch_size=4", "train.eval_iters=1", "train.eval_interval=3",
                            "train.sample_interval=3", "train.internals_interval=3", "train.checkpoint_interval=0",
                            "sample.eval_samples=0", "sample.steps=2", "sample.rows=1",
                            "sample.prompts=the digit seven|a thin 1", log=log) == 0
    samples = events_of(log, "sample")
    assert samples and samples[-1]["classes"] == ["the digit seven", "a thin 1"]
    internals = events_of(log, "internals")[-1]
    assert any(a["name"] == "cross_attention" for a in internals["arrays"])
    assert internals["tokens"][:4] == ["<start>", "t", "h", "e"]
    assert events_of(log, "run_end")[-1]["status"] == "completed"


def test_the_full_size_plans_within_12_gb_and_the_paper_size_is_pixart_xl2(tmp_path):
    from common.plan import usable_bytes
    from trainers.plan import Estimator

    # captions at 32x32 as the emoji carry them (the estimate depends on the shapes, not on the pictures)
    np.savez(tmp_path / "emoji.npz", images=np.zeros((20, 32, 32, 3), dtype=np.uint8),
             captions=np.array(["grinning face with smiling eyes"] * 20))
    cfg = config.load("pixart", [f"data.path={tmp_path / 'emoji.npz'}"], has_cuda=True)
    cfg["device"] = "cpu"
    full = Estimator(cfg)
    assert 30e6 < full.n_params < 36e6
    assert full.cost(False)(cfg["train"]["batch_size"]) <= usable_bytes(12.0), "the preset's batch fits a 12 GB " \
        "card without activation checkpointing"
    paper = config.load("pixart", ["profile=paper", f"data.path={tmp_path / 'emoji.npz'}"], has_cuda=True)
    paper["device"] = "cpu"
    assert 0.58e9 < Estimator(paper).n_params < 0.66e9, "PixArt-XL/2: about 0.6B parameters"


def test_latent_diffusion_through_a_trained_vae_run_samples_images_of_the_datas_size(tmp_path):
    """A vae run's checkpoint is the codec (`model.latent=RUN/ckpt.pt`): pixart trains on its 4x4x4 latents of
    the 16x16 digits, and its samples are decoded back to 16x16 grey digits."""
    vae_log = tmp_path / "vae" / "events.jsonl"
    assert train_in_process("vae", "profile=cpu", "device=cpu", "model.base_channels=8", "model.num_res_blocks=1",
                            "model.mid_attention=false", "train.max_steps=2", "train.batch_size=8",
                            "train.eval_iters=1", "train.sample_interval=0", "train.internals_interval=0",
                            log=vae_log) == 0
    log = tmp_path / "latent" / "events.jsonl"
    assert train_in_process("pixart", "profile=cpu", "device=cpu", f"model.latent={vae_log.parent / 'ckpt.pt'}",
                            "model.patch_size=1", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                            "model.text_layers=1", "model.text_embd=16", "train.max_steps=2", "train.batch_size=4",
                            "train.eval_iters=1", "train.eval_interval=2", "train.internals_interval=0",
                            "sample.eval_samples=0", "sample.steps=2", "sample.rows=1",
                            "sample.prompts=the digit seven|a thin 1", log=log) == 0
    start = events_of(log, "run_start")[0]
    assert start["config"]["model"]["latent"].endswith("ckpt.pt")
    sample = events_of(log, "sample")[-1]
    assert (sample["grid"]["cell_h"], sample["grid"]["cell_w"], sample["image"]["c"]) == (16, 16, 1)
    assert (sample["image"]["h"], sample["image"]["w"]) == (16, 2 * 17 - 1)


def trainer_with_commands(tmp_path, preset: str, overrides: list[str], commands: list[bytes]) -> Path:
    """A trainer run as the cockpit launches one (`--commands`), its stdin fed these command lines."""
    log = tmp_path / preset / "events.jsonl"
    r = subprocess.run([sys.executable, "-m", "trainers", preset, *overrides, "--log", str(log), "--commands"],
                       input=b"".join(commands), cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return log


def test_a_prompt_sent_to_a_running_pixart_comes_back_as_a_grid_under_that_caption(tmp_path):
    log = trainer_with_commands(tmp_path, "pixart", [
        "profile=cpu", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.text_layers=1",
        "model.text_embd=16", "train.max_steps=4", "train.batch_size=4", "train.eval_iters=1",
        "train.sample_interval=0", "train.internals_interval=0", "sample.eval_samples=0", "sample.steps=2",
        "sample.rows=1", "sample.cols=3"], [encode_command("sample", "a thin 7")])
    asked = [s for s in events_of(log, "sample") if s.get("caption")]
    assert [s["caption"] for s in asked] == ["a thin 7"]
    assert (asked[0]["grid"]["rows"], asked[0]["grid"]["cols"]) == (1, 3) and "classes" not in asked[0]


def test_a_prompt_sent_to_a_run_that_is_not_text_conditioned_is_named_in_a_warning_and_sampling_goes_on(tmp_path):
    log = trainer_with_commands(tmp_path, "mingpt-sort", ["train.max_steps=4", "train.eval_interval=4"],
                                [encode_command("sample", "a red apple")])
    warnings = [e["message"] for e in events_of(log, "log") if e["level"] == "warning"]
    assert any("not text-conditioned" in m and "a red apple" in m for m in warnings), warnings
    assert events_of(log, "run_end")[-1]["status"] == "completed"
