"""Autoencoder: learn a KL autoencoder of images (trainers/models/vae.py), the latent space latent diffusion
trains in (`model.latent=RUN` of the unet and pixart presets, trainers/latent.py).

Preset keys read here (besides the common train.* keys):
    data.dataset, data.path, data.hflip   the images, as the diffusion task reads them (trainers/images.py)
    model.image_size                      images are resized to it; in_channels follows the data
    model.kl_weight                       beta of the objective: L1 reconstruction + kl_weight * KL
    sample.cols                           held-out images in the samples grid (originals above reconstructions)

A batch is (x, noise): images and the reparameterisation's noise, both drawn from the (split, step, micro)
generator, so a resumed run sees exactly the batches of an uninterrupted one. Evaluation and samples
reconstruct from the posterior's mean (what a latent diffusion model is trained on), on held-out images.
"""
from __future__ import annotations

import math

import torch

from trainers.config import ConfigError, check_section_keys, coerce
from trainers.images import image_source, load_images
from trainers.internals import array
from trainers.latent import latent_scale
from trainers.models import build_model, make_config
from trainers.models.contract import Autoencoder
from trainers.models.vae import kl_divergence, vae_loss
from trainers.tasks import Task as BaseTask
from trainers.tasks.diffusion import GRID_PAD, data_options, image_grid, image_payload

SAMPLE_DEFAULTS = {"cols": 8}
PROBE_IMAGES = 64  # held-out images whose latents the internals probe describes


def sample_options(cfg: dict) -> dict:
    """The `sample.*` keys with defaults filled in, typed and checked (ConfigError names the bad key)."""
    given = cfg.get("sample") or {}
    check_section_keys("sample", given, SAMPLE_DEFAULTS, " for the autoencoder task")
    cols = coerce("sample.cols", given.get("cols", SAMPLE_DEFAULTS["cols"]), int, "autoencoder task")
    if cols < 1:
        raise ConfigError(f"sample.cols={cols} is invalid; use at least 1")
    return {"cols": cols}


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of pixels in [-1, 1] (peak-to-peak 2): 10 log10(2^2 / MSE)."""
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


class Task(BaseTask):
    unit = "items"
    contract = Autoencoder

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        sample_options(cfg)
        dataset, path, _ = data_options(cfg)
        image_source(dataset, path)

    def __init__(self, cfg, device, log=None, amp_dtype=None):
        super().__init__(cfg, device, log, amp_dtype)
        net = make_config(cfg["arch"], cfg["model"])  # the model.* keys, typed and checked
        self.kl_weight = float(net.kl_weight)
        self.opts = sample_options(cfg)
        dataset, path, self.hflip = data_options(cfg)
        self.data = load_images(dataset, path, net.image_size)
        self.train_set, self.val_set = self.data.split(cfg["data"]["val_fraction"])
        self.latent_shape = (net.latent_channels, self.data.size // net.factor, self.data.size // net.factor)
        self.model = None  # the model build_model last made (the loop's): checkpoints measure the scale factor on it
        s = self.data
        self.log("info", f"data: {s.source}, {len(s.images)} images ({len(self.train_set.images)} train, "
                         f"{len(self.val_set.images)} val), {s.channels}x{s.size}x{s.size}; latents "
                         f"{'x'.join(map(str, self.latent_shape))}")

    # --- model -------------------------------------------------------------------------------------
    def build_model(self):
        self.model = build_model(self.cfg["arch"], self.cfg["model"], contract=self.contract,
                                 image_size=self.data.size, in_channels=self.data.channels)
        return self.model

    def on_step(self, model, optimizer, step, lr):
        """The loop's schedule as it is: an autoencoder has no step hook of its own (a language model's)."""
        return lr

    # --- data --------------------------------------------------------------------------------------
    def _draw(self, split: str, g: torch.Generator, n: int):
        data = self.train_set if split == "train" else self.val_set
        x = data.images[torch.randint(len(data.images), (n,), generator=g)]
        if self.hflip and split == "train":
            flip = torch.rand(n, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        noise = torch.randn((n, *self.latent_shape), generator=g)
        return x.to(self.device, non_blocking=True), noise.to(self.device, non_blocking=True)

    def get_batch(self, split, step, micro=0, batch_size=None):
        """(x (B, C, H, W) in [-1, 1], noise (B, latent_channels, H / f, W / f))."""
        return self._draw(split, self.generator(split, step, micro), batch_size or self.cfg["train"]["batch_size"])

    def batch_units(self, batch) -> int:
        return batch[0].shape[0]

    def loss(self, model, batch):
        x, noise = batch
        x = x.to(next(model.parameters()).dtype)  # a model cast to bf16 (e.g. for a memory estimate) takes bf16
        x_hat, mean, logvar = model(x, noise)
        return vae_loss(x, x_hat, mean, logvar, self.kl_weight)[0]

    # --- reporting ---------------------------------------------------------------------------------
    def _held_out(self, batch_size: int) -> list[torch.Tensor]:
        """The held-out images in order, in batches: every one of them, up to train.eval_iters batches."""
        images = self.val_set.images[:batch_size * self.cfg["train"]["eval_iters"]]
        return [images[i:i + batch_size].to(self.device) for i in range(0, len(images), batch_size)]

    @torch.no_grad()
    def evaluate(self, model, step, batch_size=None):
        """val_loss: the training objective on the held-out images, with fixed noise; recon_mse and psnr: their
        reconstruction from the posterior's mean (pixels in [-1, 1]); kl: KL(q(z|x) || N(0, I)) per image."""
        bs = batch_size or self.cfg["train"]["batch_size"]
        g = self.generator("test", 10_000)
        n = loss = sq = kl = 0.0
        for x in self._held_out(bs):
            noise = torch.randn((len(x), *self.latent_shape), generator=g).to(self.device)
            with self.autocast():
                x_hat, mean, logvar = model(x, noise)
                rec = model.decode(mean)
            loss += vae_loss(x, x_hat, mean, logvar, self.kl_weight)[0].item() * len(x)
            sq += (rec.float() - x).pow(2).mean(dim=(1, 2, 3)).sum().item()
            kl += kl_divergence(mean, logvar).sum().item()
            n += len(x)
        mse = sq / n
        return {"val_loss": loss / n, "metrics": {"recon_mse": mse, "psnr": psnr(mse), "kl": kl / n}}

    @torch.no_grad()
    def samples(self, model, step, prompt: str | None = None):
        """One grid: the first sample.cols held-out images (top row) above their reconstructions from the
        posterior's mean (bottom row). An autoencoder has nothing to condition on: `prompt` changes nothing."""
        x = self.val_set.images[:self.opts["cols"]].to(self.device)
        with self.autocast():
            rec = model.decode(model.encode(x)[0])
        pairs = torch.stack([x.float(), rec.float().clamp(-1, 1)], dim=1).flatten(0, 1).cpu()  # column-major
        cols = len(x)
        grid = image_grid(pairs, 2, cols)
        payload = {"kind": "image", "image": image_payload(grid),
                   "grid": {"rows": 2, "cols": cols, "cell_h": self.data.size, "cell_w": self.data.size,
                            "pad": GRID_PAD},
                   "prompt": "held-out images (top) and their reconstructions (bottom), from the posterior mean"}
        if self.val_set.labelled:
            payload["classes"] = [self.val_set.class_names[int(c)] for c in self.val_set.labels[:cols]]
        return [payload]

    @torch.no_grad()
    def internals(self, model, step):
        """The latents of fixed held-out images, per latent channel: the mean and spread of the posterior means
        (a latent diffusion model wants them near 0 and of similar scale: the scale factor divides them all by
        one std) and the KL each channel costs (nats per image; a channel near 0 carries nothing)."""
        x = self.val_set.images[:PROBE_IMAGES].to(self.device)
        mean, logvar = model.encode(x)
        mean = mean.float()
        kl = kl_divergence(mean, logvar, dims=(2, 3)).mean(0)  # (latent,)
        labels = [f"z{c}" for c in range(mean.shape[1])]
        return {"probe": f"{len(x)} held-out images",
                "arrays": [array("latent_mean", mean.mean(dim=(0, 2, 3)), ["channel"], labels=labels, digits=4),
                           array("latent_std", mean.std(dim=(0, 2, 3)), ["channel"], labels=labels, digits=4),
                           array("latent_kl", kl, ["channel"], labels=labels, digits=4)]}

    def state_dict(self):
        """What the codec needs besides the weights (trainers/latent.py): the image shape, and the scale factor
        1 / std of the training images' latents, measured with the weights this checkpoint holds."""
        state = {"image_size": self.data.size, "channels": self.data.channels, "source": self.data.source}
        if self.model is not None:
            state["scale_factor"] = latent_scale(self.model, self.train_set.images)
        return state
