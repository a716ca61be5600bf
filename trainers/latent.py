"""The latent space of latent diffusion (Rombach et al. 2022): a trained KL autoencoder (a `cockpit train vae`
run, trainers/tasks/autoencoder.py) as a codec between images and the latents a denoiser trains on.

    z = scale_factor * mean of q(z|x)        Codec.encode: (B, C, H, W) in [-1, 1] -> (B, 4, H / 4, W / 4)
    x = decoder(z / scale_factor)            Codec.decode: back to images, clamped to [-1, 1]

scale_factor = 1 / std of the training images' latents (Stable Diffusion's `scale_factor`, which its configs
fix at 0.18215 after measuring it so): it gives the latents unit variance, as the diffusion process assumes of
its data. SD measures it on posterior samples; here on the posterior means, which the codec encodes to (with
kl_weight = 1e-6 the two differ by a posterior std of about 1e-3 of the latents'). The autoencoder task stores
it in each checkpoint, measured with that checkpoint's weights; a checkpoint without it has it measured here,
on the training images of its config.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.paths import CKPT_NAME
from trainers import checkpoint
from trainers.config import ConfigError
from trainers.images import load_images
from trainers.models import build_model
from trainers.models.contract import Autoencoder

CHUNK = 256  # images encoded or decoded at once
TRAIN_ONE = "train one with `cockpit train vae` and give its run directory"


@torch.no_grad()
def latent_scale(model: torch.nn.Module, images: torch.Tensor) -> float:
    """1 / std of the posterior means of `images` (N, C, H, W) in [-1, 1] under `model` (an Autoencoder),
    over every latent value; computed in float32, in eval mode, on the model's device."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        latents = torch.cat([model.encode(images[i:i + CHUNK].to(device))[0].float()
                             for i in range(0, len(images), CHUNK)])
    finally:
        model.train(was_training)
    return 1.0 / max(latents.std().item(), 1e-8)


class Codec:
    """A trained autoencoder, frozen, in eval mode: images <-> scaled latents."""

    def __init__(self, model: torch.nn.Module, scale_factor: float, image_size: int):
        self.model = model.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)
        self.latent_channels = model.config.latent_channels
        self.factor = model.config.factor
        self.image_channels = model.config.in_channels
        self.image_size = image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> z (B, latent_channels, H / factor, W / factor): the posterior's mean
        times scale_factor."""
        return torch.cat([self.model.encode(x[i:i + CHUNK].to(self.device))[0] * self.scale_factor
                          for i in range(0, len(x), CHUNK)])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_channels, h, w) -> x (B, C, h * factor, w * factor) in [-1, 1]."""
        return torch.cat([self.model.decode(z[i:i + CHUNK].to(self.device) / self.scale_factor).clamp(-1, 1)
                          for i in range(0, len(z), CHUNK)])


def load_codec(path: str, device) -> Codec:
    """The codec of a VAE run's checkpoint (its run directory or its ckpt.pt) on `device`. A path that holds no
    checkpoint, or the checkpoint of another task, is a ConfigError naming model.latent and the fix."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / CKPT_NAME
    if not p.is_file():
        raise ConfigError(f"model.latent={path}: no VAE checkpoint at {p}; {TRAIN_ONE}")
    try:
        ckpt = checkpoint.load(p)
    except ConfigError as e:
        raise ConfigError(f"model.latent={path}: not a VAE checkpoint cockpit can read ({e}); {TRAIN_ONE}") from None
    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or cfg.get("task") != "autoencoder":
        what = f"a {cfg.get('task')} run's checkpoint ({cfg.get('arch')})" if isinstance(cfg, dict) else "damaged"
        raise ConfigError(f"model.latent={path}: {what}, not a VAE's; {TRAIN_ONE}")
    state = ckpt.get("task") or {}
    try:
        model = build_model(cfg["arch"], cfg["model"], contract=Autoencoder, image_size=state["image_size"],
                            in_channels=state["channels"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as e:  # a damaged checkpoint: keys or shapes that do not match
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"model.latent={path}: the VAE checkpoint is damaged ({first}); {TRAIN_ONE}") from None
    model.to(device)
    scale = state.get("scale_factor")
    if scale is None:  # the training images of the run: its data, split as the autoencoder task split it
        data = cfg["data"]
        images = load_images(data.get("dataset", "digits"), data.get("path", ""), state["image_size"])
        scale = latent_scale(model, images.split(data["val_fraction"])[0].images)
    return Codec(model, scale, state["image_size"])
