"""Diffusion: schedules, the samplers (DDIM-20 and full DDPM), guidance, EMA, the two models, the task."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cockpit.images import decode_image, write_png
from trainers import config
from trainers.config import ConfigError
from trainers.diffusion import Diffusion, DiffusionModel, cosine_betas, linear_betas
from trainers.models import build_model
from trainers.tasks import load_task

TINY_UNET = dict(image_size=8, in_channels=1, num_classes=3, base_channels=8, channel_mult="1,2",
                 num_res_blocks=1, n_head=2, dropout=0.0)
TINY_DIT = dict(image_size=8, in_channels=3, num_classes=3, patch_size=2, n_layer=2, n_head=2, n_embd=16)


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("unet", {**TINY_UNET, **kw})


def randomise_outputs(net):
    """Zero-initialised output layers make a fresh net predict 0; perturb every weight so outputs vary."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


# --- schedules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [linear_betas, cosine_betas])
@pytest.mark.parametrize("T", [50, 1000])
def test_schedules_take_clean_images_to_pure_noise(make, T):
    betas = make(T)
    abar = torch.cumprod(1 - betas, 0)
    assert betas.shape == (T,) and (betas > 0).all() and (betas < 1).all()
    assert (abar[1:] < abar[:-1]).all(), "signal must decay at every step"
    assert abar[0] > 0.95, "t=0 is almost clean"
    assert abar[-1] < 1e-2, "t=T-1 is almost pure noise"


def test_linear_schedule_matches_ddpm_endpoints_and_cosine_is_half_noise_midway():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    abar = torch.cumprod(1 - cosine_betas(1000), 0)
    assert abar[499].item() == pytest.approx(0.5, abs=0.03)  # cos^2(pi/4)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="cosine"):
        Diffusion("quadratic", 10)


def test_q_sample_keeps_unit_variance_and_interpolates_clean_to_noise():
    d = Diffusion("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4000, 1, 2, 2, generator=g), torch.randn(4000, 1, 2, 2, generator=g)
    for t in (0, 300, 999):
        xt = d.q_sample(x0, torch.full((4000,), t), noise)
        assert xt.var().item() == pytest.approx(1.0, abs=0.08)
    assert torch.allclose(d.q_sample(x0, torch.zeros(4000, dtype=torch.long), noise), x0, atol=0.05)
    last = d.q_sample(x0, torch.full((4000,), 999), noise)
    assert torch.corrcoef(torch.stack([last.flatten(), noise.flatten()]))[0, 1] > 0.999


# --- samplers ----------------------------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """The exact noise predictor for a data set of one image per class: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""

    def __init__(self, d: Diffusion, targets: torch.Tensor):
        super().__init__()
        self.d, self.targets = d, targets

    def forward(self, x, t, y):
        x0 = self.targets[y.clamp(max=len(self.targets) - 1)]
        ab = self.d.abar[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_recover_the_data_with_an_exact_noise_predictor(sampler):
    d = Diffusion("cosine", 200)
    g = torch.Generator().manual_seed(1)
    targets = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    oracle = Oracle(d, targets)
    y = torch.tensor([0, 1, 2, 1])
    if sampler == "ddim":
        out = d.ddim_sample(oracle, y, (1, 4, 4), generator=g, null_class=3, steps=10, eta=0.5)
    else:
        out = d.ddpm_sample(oracle, y, (1, 4, 4), generator=g, null_class=3)
    assert torch.allclose(out, targets[y], atol=1e-4)
    assert d.loss(oracle, targets[y], torch.tensor([5, 50, 150, 199]), torch.randn(4, 1, 4, 4), y).item() < 1e-8


def test_ddim20_and_full_ddpm_both_sample_from_the_same_model_with_shape_range_and_seed_determinism():
    torch.manual_seed(0)  # a one-block DiT: 1000 DDPM steps of it take seconds on a CPU
    net = randomise_outputs(build_model("dit", dict(TINY_DIT, in_channels=1, patch_size=4, n_layer=1))).eval()
    d = Diffusion("linear", 1000)
    y = torch.tensor([0, 1, 2, 3])  # 3 is the null class
    runs = {}
    for name, fn in (("ddim", lambda g: d.ddim_sample(net, y, (1, 8, 8), generator=g, null_class=3, steps=20,
                                                      guidance=2.0)),
                     ("ddpm", lambda g: d.ddpm_sample(net, y, (1, 8, 8), generator=g, null_class=3, guidance=2.0))):
        a = fn(torch.Generator().manual_seed(7))
        b = fn(torch.Generator().manual_seed(7))
        c = fn(torch.Generator().manual_seed(8))
        assert a.shape == (4, 1, 8, 8)
        assert a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
        assert torch.equal(a, b), f"{name}: same seed must give the same images"
        assert not torch.allclose(a, c), f"{name}: another seed must give other images"
        assert a.std() > 0.05, f"{name}: samples are not a constant image"
        runs[name] = a
    assert not torch.allclose(runs["ddim"], runs["ddpm"])


def test_ddim_uses_the_requested_number_of_model_calls_ending_at_t0():
    d = Diffusion("linear", 1000)
    ts = d.ddim_timesteps(20)
    assert len(ts) == 20 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    calls = []

    def net(x, t, y):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    d.ddim_sample(net, torch.tensor([0]), (1, 2, 2), generator=torch.Generator().manual_seed(0), null_class=1,
                  steps=20, guidance=1.0)
    assert calls == ts


def test_classifier_free_guidance_extrapolates_from_unconditional_to_conditional():
    def net(x, t, y):  # conditional prediction = class id, unconditional (null = 9) = 0.5
        return torch.where(y == 9, 0.5, y.float()).view(-1, 1, 1, 1).expand_as(x)

    x, t, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([1, 3])
    assert torch.allclose(Diffusion.guided_eps(net, x, t, y, 9, 1.0)[:, 0, 0, 0], torch.tensor([1.0, 3.0]))
    assert torch.allclose(Diffusion.guided_eps(net, x, t, y, 9, 0.0)[:, 0, 0, 0], torch.tensor([0.5, 0.5]))
    w3 = Diffusion.guided_eps(net, x, t, y, 9, 3.0)[:, 0, 0, 0]
    assert torch.allclose(w3, 0.5 + 3.0 * (torch.tensor([1.0, 3.0]) - 0.5))


# --- EMA ---------------------------------------------------------------------------------------------
def test_ema_follows_the_weights_with_warmup_and_is_saved_with_the_model():
    net = tiny_unet()
    model = DiffusionModel(net, ema_decay=0.9)
    assert model.num_params() == sum(p.numel() for p in model.parameters()), "EMA weights are not parameters"
    w = net.conv_in.weight
    before = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    d = model.ema.current_decay()
    assert d == pytest.approx(0.1)  # (1 + 0) / (10 + 0): early updates follow the weights closely
    model.ema.update(net)
    assert torch.allclose(model.ema.params()["conv_in.weight"], before + (1 - d))
    for _ in range(200):
        model.ema.update(net)
    assert model.ema.current_decay() == 0.9
    assert torch.allclose(model.ema.params()["conv_in.weight"], w, atol=1e-5)
    state = model.state_dict()
    assert any(k.startswith("ema.") for k in state) and "ema.num_updates" in state
    clone = DiffusionModel(tiny_unet(seed=1), ema_decay=0.9)
    clone.load_state_dict(state)
    assert int(clone.ema.num_updates) == 201
    assert torch.equal(clone.ema.params()["conv_in.weight"], model.ema.params()["conv_in.weight"])


def test_ema_net_runs_the_averaged_weights_without_touching_the_trained_ones():
    model = DiffusionModel(randomise_outputs(tiny_unet()), ema_decay=0.5).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 1])
    assert torch.allclose(model.ema_net(x, t, y), model(x, t, y))  # EMA starts as a copy
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(1.5)
    trained = model(x, t, y)
    assert not torch.allclose(model.ema_net(x, t, y), trained)
    assert torch.equal(model(x, t, y), trained)


# --- models ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,cfg", [("unet", TINY_UNET), ("dit", TINY_DIT)])
def test_models_predict_noise_of_the_input_shape_and_start_at_zero(arch, cfg):
    torch.manual_seed(0)
    net = build_model(arch, cfg)
    x = torch.randn(3, cfg["in_channels"], 8, 8)
    out = net(x, torch.tensor([0, 10, 999]), torch.tensor([0, 2, cfg["num_classes"]]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0, "zero-initialised output: a fresh model predicts no noise"


@pytest.mark.parametrize("arch,cfg", [("unet", TINY_UNET), ("dit", TINY_DIT)])
def test_models_depend_on_timestep_and_class(arch, cfg):
    net = randomise_outputs(build_model(arch, cfg)).eval()
    x = torch.randn(1, cfg["in_channels"], 8, 8)
    base = net(x, torch.tensor([100]), torch.tensor([0]))
    assert not torch.allclose(base, net(x, torch.tensor([800]), torch.tensor([0])), atol=1e-4)
    assert not torch.allclose(base, net(x, torch.tensor([100]), torch.tensor([1])), atol=1e-4)
    assert not torch.allclose(base, net(x, torch.tensor([100]), torch.tensor([cfg["num_classes"]])), atol=1e-4)


def test_dit_adaln_zero_blocks_start_as_identity():
    net = build_model("dit", TINY_DIT)
    h = torch.randn(2, 16, 16)
    c = torch.randn(2, 16)
    for block in net.blocks:
        assert torch.equal(block(h, c), h)


@pytest.mark.parametrize("arch,lo,hi", [("dit", 30e6, 36e6), ("unet", 20e6, 60e6)])
def test_full_size_presets_are_dit_s2_like_on_emoji_and_fit_12gb(arch, lo, hi):
    from trainers.inspect import inspect_preset

    cfg = config.load(arch, profile="full", has_cuda=True)
    assert cfg["data"]["dataset"] == "emoji" and cfg["model"]["image_size"] == 32
    if arch == "dit":
        assert (cfg["model"]["n_layer"], cfg["model"]["n_embd"], cfg["model"]["n_head"],
                cfg["model"]["patch_size"]) == (12, 384, 6, 2)
    info = inspect_preset(arch)  # one training step of the full-size model, measured on the meta device
    assert info.get("error") is None
    assert lo < info["n_params"] < hi
    assert info["est_vram_bytes"] < 12 * 2**30, "weights + grads + AdamW + fp32 activations of one micro-batch"


# --- the task ----------------------------------------------------------------------------------------
def task_cfg(arch="unet", *overrides):
    cfg = config.load(arch, ["train.batch_size=8", "train.eval_iters=1", "sample.eval_samples=0",
                             *overrides], profile="cpu", has_cuda=False)
    return cfg


def test_task_batches_are_deterministic_per_split_step_and_micro():
    task = load_task(task_cfg(), torch.device("cpu"))
    a, b = task.get_batch("train", 5, 0), task.get_batch("train", 5, 0)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    x0, y, t, noise = a
    assert x0.shape == (8, 1, 16, 16) and noise.shape == x0.shape and y.shape == t.shape == (8,)
    assert x0.min() >= -1 and x0.max() <= 1
    assert not torch.equal(task.get_batch("train", 6, 0)[0], x0)
    assert not torch.equal(task.get_batch("train", 5, 1)[3], noise)
    assert not torch.equal(task.get_batch("val", 5, 0)[3], noise)
    assert task.batch_units(a) == 8


def test_train_batches_drop_labels_to_the_null_class_at_the_configured_rate_and_val_never():
    task = load_task(task_cfg("unet", "train.batch_size=500", "model.class_dropout=0.2"), torch.device("cpu"))
    y_train = torch.cat([task.get_batch("train", s)[1] for s in range(4)])
    frac = (y_train == 10).float().mean().item()
    assert 0.15 < frac < 0.25
    assert (task.get_batch("val", 0)[1] < 10).all()


def test_task_loss_trains_and_evaluate_reports_val_and_ema_losses():
    cfg = task_cfg("unet", "model.base_channels=8", "model.n_head=2")
    task = load_task(cfg, torch.device("cpu"))
    model = task.build_model()
    opt = task.configure_optimizer(model)
    for g in opt.param_groups:
        g["lr"] = 3e-3
    losses = []
    for step in range(1, 31):
        task.on_step(model, opt, step, 3e-3)
        loss = task.loss(model, task.get_batch("train", step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, "the noise-prediction loss falls"
    model.eval()
    res = task.evaluate(model, 30)
    assert math.isfinite(res["val_loss"]) and res["val_loss"] < 1.0
    assert {"train_loss", "ema_val_loss", "ema_decay"} <= set(res["metrics"])
    assert res == task.evaluate(model, 30), "eval uses fixed images, timesteps and noise"


def test_samples_are_one_grid_with_a_column_per_class():
    task = load_task(task_cfg("unet", "model.base_channels=8", "model.n_head=2", "sample.rows=3",
                              "sample.steps=4"), torch.device("cpu"))
    model = task.build_model().eval()
    randomise_outputs(model.net)
    model.ema.update(model.net)
    out = task.samples(model, 0)
    assert len(out) == 1
    p = out[0]
    assert p["kind"] == "image" and p["sampler"] == "ddim-4"
    assert p["classes"] == [str(i) for i in range(10)] and p["grid"]["rows"] == 3 and p["grid"]["cols"] == 10
    img = decode_image(p)
    assert img.shape == (3 * 17 - 1, 10 * 17 - 1, 1)
    assert (img[16, :] == 128).all() and (img[:, 16] == 128).all(), "grey 1-pixel gaps between cells"
    again = decode_image(task.samples(model, 100)[0])
    assert np.array_equal(img, again), "the live grid reuses its starting noise"


def test_emoji_data_is_colour_and_unlabelled():
    cfg = config.load("dit", ["model.n_layer=1", "model.n_embd=16", "model.n_head=1", "sample.cols=3",
                              "sample.steps=2", "train.batch_size=4"], profile="full", has_cuda=False)
    task = load_task(cfg, torch.device("cpu"))
    assert task.data.channels == 3 and task.data.size == 32 and not task.data.labelled
    assert len(task.data.images) == 1432
    p = task.samples(task.build_model().eval(), 0)[0]
    assert p["classes"] == ["all"] * 3 and decode_image(p).shape == (2 * 33 - 1, 3 * 33 - 1, 3)


def test_user_folder_with_class_subfolders_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            write_png(tmp_path / "imgs" / cls / f"{i}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    task = load_task(task_cfg("unet", f"data.path={tmp_path / 'imgs'}"), torch.device("cpu"))
    assert task.data.class_names == ["cats", "dogs"] and task.data.images.shape == (6, 3, 16, 16)
    assert task.build_model().net.config.num_classes == 2

    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (5, 16, 16), dtype=np.uint8),
             labels=np.array([0, 1, 2, 0, 1]))
    task = load_task(task_cfg("unet", f"data.path={tmp_path / 'd.npz'}"), torch.device("cpu"))
    assert task.data.images.shape == (5, 1, 16, 16) and task.data.num_classes == 3


@pytest.mark.parametrize("override,match", [
    ("model.schedule=quadratic", "model.schedule"),
    ("sample.guidance=-1", "sample.guidance"),
    ("data.path=/nonexistent/images", "data.path"),
    ("data.dataset=cifar", "data.dataset"),
    ("model.image_size=15", "model"),
])
def test_bad_diffusion_settings_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        task = load_task(task_cfg("unet", override), torch.device("cpu"))
        task.build_model()


def test_an_undecodable_jpeg_is_a_config_error_naming_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    write_png(tmp_path / "imgs" / "ok.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "imgs" / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    # without Pillow: "needs Pillow; pip install pillow"; with it: "cannot decode ..."
    with pytest.raises(ConfigError) as err:
        load_task(task_cfg("unet", f"data.path={tmp_path / 'imgs'}"), torch.device("cpu"))
    assert "photo.jpg" in str(err.value) and ("Pillow" in str(err.value) or "cannot decode" in str(err.value))


def test_npz_without_images_key_is_a_config_error(tmp_path):
    np.savez(tmp_path / "bad.npz", pictures=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ConfigError, match="no key `images`"):
        load_task(task_cfg("unet", f"data.path={tmp_path / 'bad.npz'}"), torch.device("cpu"))
