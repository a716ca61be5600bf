"""The VAE (trainers/models/vae.py), its task, the codec latent diffusion uses (trainers/latent.py), and the
emoji captions asset (scripts/build_emoji.py)."""
from __future__ import annotations

import math
import unicodedata

import numpy as np
import pytest
import torch

from tests.conftest import events_of, train_in_process
from trainers import config
from trainers.config import ConfigError
from trainers.images import asset_path, load_digits
from trainers.latent import load_codec
from trainers.models import build_model
from trainers.models.contract import Autoencoder
from trainers.models.vae import LOGVAR_RANGE, kl_divergence, vae_loss
from trainers.tasks import load_task

TINY = dict(image_size=16, in_channels=3, base_channels=8, channel_mult="1,2,2", num_res_blocks=1)
# The CPU profile, shortened to ~100 steps (~40 s on 2 busy cores): it reaches a held-out MSE of about 0.034
# (PSNR ~21 dB); reconstructing every digit as the mean training image scores 0.174.
SHORT = ("profile=cpu", "train.max_steps=100", "train.eval_interval=100", "train.warmup_steps=10", "train.lr=3e-3",
         "train.sample_interval=0", "train.internals_interval=50", "train.checkpoint_interval=0",
         "train.system_interval=0.5")
MSE_BOUND = 0.06  # held-out round-trip MSE (pixels in [-1, 1]) after SHORT: a third of the mean image's


def tiny_vae(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("vae", {**TINY, **kw}, contract=Autoencoder)


# --- the model ---------------------------------------------------------------------------------------------
def test_the_encoder_downsamples_four_times_to_four_latent_channels_and_the_decoder_mirrors_it():
    vae = tiny_vae()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 4, 4)
    assert vae.config.factor == 4 and vae.config.latent_channels == 4
    assert vae.decode(mean).shape == (2, 3, 16, 16)
    x_hat, m, lv = vae(x, torch.randn(2, 4, 4, 4))
    assert x_hat.shape == x.shape and torch.equal(m, mean) and torch.equal(lv, logvar)


def test_without_noise_the_forward_decodes_the_posterior_mean_and_with_it_a_sample():
    vae = tiny_vae().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, _ = vae.encode(x)
    assert torch.allclose(vae(x)[0], vae.decode(mean))
    assert not torch.allclose(vae(x, torch.randn(2, 4, 4, 4))[0], vae.decode(mean))


def test_kl_matches_a_hand_computation_and_is_zero_for_the_prior():
    mean = torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, 4, 1, 1)
    logvar = torch.tensor([0.0, math.log(0.25), math.log(4.0), -1.0]).view(1, 4, 1, 1)
    by_hand = 0.5 * sum(m * m + v - 1 - math.log(v) for m, v in
                        [(0.5, 1.0), (-1.0, 0.25), (0.0, 4.0), (2.0, math.exp(-1.0))])
    assert kl_divergence(mean, logvar).item() == pytest.approx(by_hand, rel=1e-6)
    assert kl_divergence(torch.zeros(3, 4, 2, 2), torch.zeros(3, 4, 2, 2)).abs().max().item() == 0.0


def test_the_loss_is_l1_plus_kl_weight_times_kl_per_pixel_value():
    x, x_hat = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    mean, logvar = torch.ones(2, 4, 1, 1), torch.zeros(2, 4, 1, 1)     # KL = 1/2 * 4 * 1 = 2 nats per image
    loss, rec, kl = vae_loss(x, x_hat, mean, logvar, kl_weight=0.1)
    assert rec.item() == pytest.approx(0.5) and kl.item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(0.5 + 0.1 * 2.0 / 48)


@pytest.mark.parametrize("bias, expected", [(100.0, LOGVAR_RANGE[1]), (-100.0, LOGVAR_RANGE[0])])
def test_the_posterior_log_variance_is_clamped_as_stable_diffusion_clamps_it(bias, expected):
    vae = tiny_vae()
    out = vae.encoder.conv_out
    with torch.no_grad():
        out.weight.zero_()
        out.bias[4:] = bias  # the second half of the moments is the log-variance
    _, logvar = vae.encode(torch.zeros(1, 3, 16, 16))
    assert (logvar == expected).all()
    assert torch.isfinite(kl_divergence(*vae.encode(torch.zeros(1, 3, 16, 16)))).all()


def test_an_image_size_the_downsamplings_do_not_divide_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"model.image_size=18 must be divisible by 4"):
        build_model("vae", {**TINY, "image_size": 18})


def test_the_vae_is_an_autoencoder_and_a_diffusion_preset_refuses_it():
    cfg = config.load("unet", ["arch=vae"], has_cuda=False)
    with pytest.raises(ConfigError) as e:
        load_task(cfg, torch.device("cpu"))
    assert str(e.value).startswith("arch vae (trainers/models/vae.py) is an Autoencoder; this task needs a "
                                   "Denoiser")


# --- training through the real trainer, and the codec ------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    log = tmp_path_factory.mktemp("vae") / "run" / "events.jsonl"
    assert train_in_process("vae", *SHORT, log=log) == 0
    return log


def held_out(n=64):
    _, val = load_digits(16).split(config.load("vae", has_cuda=False)["data"]["val_fraction"])
    return val.images[:n]


def test_the_cpu_profile_learns_to_reconstruct_held_out_digits(trained):
    evals = events_of(trained, "eval")
    final = evals[-1]["metrics"]
    assert evals[-1]["step"] == 100 and final["recon_mse"] < MSE_BOUND
    assert final["psnr"] == pytest.approx(10 * math.log10(4 / final["recon_mse"]))
    assert final["kl"] > 0
    losses = [e["loss"] for e in events_of(trained, "step")]
    assert losses[-1] < 0.3 * losses[0], losses
    assert events_of(trained, "run_end")[-1]["status"] == "completed"


def test_the_samples_show_originals_above_their_reconstructions(trained):
    from cockpit.images import decode_image

    sample = events_of(trained, "sample")[-1]
    assert sample["kind"] == "image" and sample["grid"]["rows"] == 2 and sample["grid"]["cols"] == 8
    grid = decode_image(sample["image"])
    assert grid.shape == (2 * 16 + 1, 8 * 16 + 7, 1)
    originals = [grid[:16, 17 * j:17 * j + 16].astype(float) for j in range(8)]
    reconstructions = [grid[17:, 17 * j:17 * j + 16].astype(float) for j in range(8)]
    nearest = [int(np.argmin([np.abs(r - o).mean() for o in originals])) for r in reconstructions]
    assert nearest == list(range(8)), "each reconstruction looks most like the original above it"
    assert len(sample["classes"]) == 8 and all(c in "0123456789" for c in sample["classes"])


def test_the_internals_describe_each_latent_channel(trained):
    arrays = {a["name"]: a for a in events_of(trained, "internals")[-1]["arrays"]}
    for name in ("latent_mean", "latent_std", "latent_kl"):
        assert arrays[name]["shape"] == [4] and arrays[name]["labels"] == ["z0", "z1", "z2", "z3"]
    assert all(s > 0 for s in arrays["latent_std"]["data"]) and all(k > 0 for k in arrays["latent_kl"]["data"])


def test_the_codec_round_trips_a_held_out_batch_under_the_bound(trained):
    codec = load_codec(str(trained.parent), torch.device("cpu"))
    assert (codec.latent_channels, codec.factor, codec.image_channels, codec.image_size) == (4, 4, 1, 16)
    x = held_out()
    z = codec.encode(x)
    assert z.shape == (64, 4, 4, 4)
    x_hat = codec.decode(z)
    assert x_hat.shape == x.shape and x_hat.min() >= -1 and x_hat.max() <= 1
    assert (x_hat - x).pow(2).mean().item() < MSE_BOUND
    # each reconstruction is nearest its own original: the latents keep which digit, and which drawing, it was
    dist = torch.cdist(x_hat.flatten(1), x.flatten(1))
    assert (dist.argmin(1) == torch.arange(64)).float().mean() > 0.9


def test_the_scale_factor_gives_the_training_latents_unit_std_and_is_measured_when_absent(trained, tmp_path):
    codec = load_codec(str(trained.parent / "ckpt.pt"), torch.device("cpu"))
    train, _ = load_digits(16).split(config.load("vae", has_cuda=False)["data"]["val_fraction"])
    assert codec.encode(train.images).std().item() == pytest.approx(1.0, rel=1e-4)
    ckpt = torch.load(trained.parent / "ckpt.pt", weights_only=True)
    del ckpt["task"]["scale_factor"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    assert load_codec(str(tmp_path), torch.device("cpu")).scale_factor == pytest.approx(codec.scale_factor, rel=1e-5)


def test_a_path_without_a_vae_checkpoint_is_bad_input_naming_the_fix(trained, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_codec(str(tmp_path / "nowhere"), torch.device("cpu"))
    assert str(e.value).startswith(f"model.latent={tmp_path / 'nowhere'}: no VAE checkpoint")
    assert "`cockpit train vae`" in str(e.value) and "\n" not in str(e.value)
    ckpt = torch.load(trained.parent / "ckpt.pt", weights_only=True)
    ckpt["config"] = {**ckpt["config"], "task": "diffusion", "arch": "unet"}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match=r"a diffusion run's checkpoint \(unet\), not a VAE's; train one with "
                                          r"`cockpit train vae`"):
        load_codec(str(tmp_path), torch.device("cpu"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"not a VAE checkpoint cockpit can read .*`cockpit train vae`"):
        load_codec(str(tmp_path / "garbage.pt"), torch.device("cpu"))


# --- the emoji captions asset --------------------------------------------------------------------------------
def test_the_emoji_asset_holds_each_image_with_its_codepoint_and_unicode_name():
    with np.load(asset_path("noto_emoji_32.npz")) as z:
        assert set(z.files) == {"images", "codepoints", "names"}
        images, codepoints, names = z["images"], z["codepoints"], z["names"]
    assert images.shape == (1432, 32, 32, 3) and images.dtype == np.uint8
    assert codepoints.shape == names.shape == (1432,) and codepoints.dtype == np.int64
    assert (np.diff(codepoints) > 0).all(), "one image per codepoint, in codepoint order"
    assert all(n and n == n.lower() and n.strip() == n for n in names.tolist())
    unnamed = []
    for cp, name in zip(codepoints.tolist(), names.tolist()):
        known = unicodedata.name(chr(cp), "")
        if known:
            assert name == known.lower(), hex(cp)
        else:
            unnamed.append(cp)
    # Python 3.11 knows Unicode 14.0: the font's 20 emoji of Unicode 15.0 are unassigned to it, and its 21
    # private-use glyphs (flags, keycaps) have no Unicode name at all
    categories = [unicodedata.category(chr(cp)) for cp in unnamed]
    assert categories.count("Co") == 21 and set(categories) <= {"Cn", "Co"}
    assert dict(zip(codepoints.tolist(), names.tolist()))[0x1F600] == "grinning face"
    assert (images[:, 0, 0] == 255).all(-1).mean() > 0.99, "rendered on white"
