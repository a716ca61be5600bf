"""Diffusion: learn to generate images with a class-conditional DDPM (U-Net or DiT noise predictor).

Preset keys read here (besides the common train.* keys):
    data.dataset        digits (grey 16x16, labels 0-9) | emoji (colour 32x32, unlabelled); data.path overrides
    data.hflip          random horizontal flips in training (never for digits: a flipped 2 is not a 2)
    model.image_size    images are resized to it; in_channels and num_classes follow the data
    model.num_timesteps, model.schedule (linear | cosine), model.class_dropout (label dropout for CFG)
    sample.steps, sample.eta        DDIM steps and stochasticity of the live previews (sample.sampler: ddim | ddpm)
    sample.guidance                 classifier-free guidance scale w (1 = plain conditional)
    sample.rows, sample.cols        grid: `rows` samples per class column (`cols` columns when unlabelled)
    sample.ema_decay                decay of the weight EMA that samples use
    sample.eval_samples             samples scored by the digit classifier at each eval (digits only; 0 = off)

A batch is (x0, y, t, noise), drawn entirely from the (split, step, micro) generator, label dropout included,
so a resumed run sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import base64

import torch

from trainers.config import ConfigError, check_section_keys, coerce
from trainers.diffusion import Diffusion, DiffusionModel
from trainers.images import image_source, load_images, to_uint8
from trainers.internals import array
from trainers.models import build_model, make_config
from trainers.models.contract import Denoiser
from trainers.tasks import Task as BaseTask

SAMPLE_DEFAULTS = {"steps": 20, "eta": 0.0, "guidance": 2.0, "rows": 2, "cols": 8, "ema_decay": 0.999,
                   "eval_samples": 100, "sampler": "ddim"}
SAMPLE_RULES = {  # key: (holds for a good value, the fix); each value is typed by its default first
    "steps": (lambda v: v >= 1, "use at least 1 (20 is typical for DDIM)"),
    "eta": (lambda v: 0.0 <= v <= 1.0, "use a value in [0, 1]"),
    "guidance": (lambda v: v >= 0.0, "use a value >= 0 (1 = no guidance)"),
    "rows": (lambda v: v >= 1, "use at least 1"),
    "cols": (lambda v: v >= 1, "use at least 1"),
    "ema_decay": (lambda v: 0.0 <= v < 1.0, "use a value in [0, 1), e.g. 0.999"),
    "eval_samples": (lambda v: v >= 0, "use 0 (off) or more"),
    "sampler": (lambda v: v in ("ddim", "ddpm"), "use ddim or ddpm"),
}
# what the task reads of the denoiser's Config, for an arch whose Config lacks one of them
PROCESS_DEFAULTS = {"image_size": 16, "num_timesteps": 1000, "schedule": "linear", "class_dropout": 0.1}


def sample_options(cfg: dict) -> dict:
    """The `sample.*` keys with defaults filled in, typed and checked (ConfigError names the bad key)."""
    given = cfg.get("sample") or {}
    check_section_keys("sample", given, SAMPLE_DEFAULTS, " for the diffusion task")
    opts = {}
    for key, default in SAMPLE_DEFAULTS.items():
        value = coerce(f"sample.{key}", given.get(key, default), type(default), "diffusion task")
        ok, fix = SAMPLE_RULES[key]
        if not ok(value):
            raise ConfigError(f"sample.{key}={value!r} is invalid; {fix}")
        opts[key] = value
    return opts


def data_options(cfg: dict) -> tuple[str, str, bool]:
    """(data.dataset, data.path, data.hflip), typed."""
    d = cfg["data"]
    return (coerce("data.dataset", d.get("dataset", "digits"), str, "diffusion task"),
            coerce("data.path", d.get("path", ""), str, "diffusion task"),
            coerce("data.hflip", d.get("hflip", False), bool, "diffusion task"))
GRID_PAD = 1          # pixels between grid cells
GRID_PAD_VALUE = 128  # mid grey, visible on black digits and white emoji backgrounds


def image_grid(images: torch.Tensor, rows: int, cols: int, pad: int = GRID_PAD,
               pad_value: int = GRID_PAD_VALUE) -> torch.Tensor:
    """(rows * cols, C, H, W) in [-1, 1], column-major (column j holds images j*rows .. j*rows + rows - 1)
    -> one (H', W', C) uint8 image with `pad` pixels between cells."""
    n, C, H, W = images.shape
    assert n == rows * cols, f"{n} images do not fill a {rows}x{cols} grid"
    cells = torch.from_numpy(to_uint8(images))                        # (n, H, W, C)
    grid = torch.full((rows * (H + pad) - pad, cols * (W + pad) - pad, C), pad_value, dtype=torch.uint8)
    for k in range(n):
        j, i = divmod(k, rows)
        grid[i * (H + pad):i * (H + pad) + H, j * (W + pad):j * (W + pad) + W] = cells[k]
    return grid


def image_payload(grid: torch.Tensor) -> dict:
    """The `image` field of a sample event: {"h", "w", "c", "data": base64 of the HWC uint8 bytes}."""
    h, w, c = grid.shape
    return {"h": h, "w": w, "c": c, "data": base64.b64encode(grid.contiguous().numpy().tobytes()).decode("ascii")}


class Task(BaseTask):
    unit = "items"
    contract = Denoiser

    @classmethod
    def check(cls, cfg):
        super().check(cfg)  # the denoiser's Config holds the process too: image_size, schedule, num_timesteps ...
        sample_options(cfg)
        dataset, path, _ = data_options(cfg)
        image_source(dataset, path)

    def __init__(self, cfg, device, log=None, amp_dtype=None):
        super().__init__(cfg, device, log, amp_dtype)
        net = make_config(cfg["arch"], cfg["model"])  # the model.* keys, typed and checked
        process = {k: getattr(net, k, default) for k, default in PROCESS_DEFAULTS.items()}
        self.opts = sample_options(cfg)
        dataset, path, self.hflip = data_options(cfg)
        self.data = load_images(dataset, path, process["image_size"])
        self.train_set, self.val_set = self.data.split(cfg["data"]["val_fraction"])
        self.class_dropout = process["class_dropout"]
        self.diffusion = Diffusion(process["schedule"], process["num_timesteps"])
        self.null_class = self.data.num_classes
        # The classifier check applies to the shipped digits (class-conditional, grey).
        self.score_digits = not path and dataset == "digits" and self.opts["eval_samples"] > 0
        s = self.data
        self.log("info", f"data: {s.source}, {len(s.images)} images ({len(self.train_set.images)} train, "
                         f"{len(self.val_set.images)} val), {s.channels}x{s.size}x{s.size}, "
                         f"{s.num_classes if s.labelled else 'no'} classes")

    # --- model -------------------------------------------------------------------------------------
    def build_model(self):
        net = build_model(self.cfg["arch"], self.cfg["model"], contract=self.contract, image_size=self.data.size,
                          in_channels=self.data.channels, num_classes=self.data.num_classes,
                          kernels=self.cfg.get("kernels", "torch"),
                          activation_checkpointing=self.cfg["train"]["activation_checkpointing"])
        return DiffusionModel(net, float(self.opts["ema_decay"]))

    def on_step(self, model, optimizer, step, lr):
        """Fold the weights into the EMA once per optimizer step (these are the weights after step - 1)."""
        if step > 1:
            model.ema.update(model.net)
        return lr

    # --- data --------------------------------------------------------------------------------------
    def _draw(self, split: str, g: torch.Generator, n: int, drop_labels: bool):
        data = self.train_set if split == "train" else self.val_set
        idx = torch.randint(len(data.images), (n,), generator=g)
        x0, y = data.images[idx], data.labels[idx].clone()
        if self.hflip:
            flip = torch.rand(n, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        if drop_labels and self.class_dropout > 0:
            y[torch.rand(n, generator=g) < self.class_dropout] = self.null_class
        t = torch.randint(self.diffusion.T, (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        return tuple(v.to(self.device, non_blocking=True) for v in (x0, y, t, noise))

    def get_batch(self, split, step, micro=0, batch_size=None):
        """(x0 (B,C,H,W) in [-1,1], y (B,) with dropped labels = null class, t (B,), noise (B,C,H,W))."""
        bs = batch_size or self.cfg["train"]["batch_size"]
        return self._draw(split, self.generator(split, step, micro), bs, drop_labels=split == "train")

    def batch_units(self, batch) -> int:
        return batch[0].shape[0]

    def loss(self, model, batch):
        x0, y, t, noise = batch
        dtype = next(model.parameters()).dtype  # a model cast to bf16 (e.g. for a memory estimate) takes bf16
        return self.diffusion.loss(model, x0.to(dtype), t, noise.to(dtype), y)

    # --- reporting ---------------------------------------------------------------------------------
    def _fixed_loss(self, net, split: str, batch_size: int) -> float:
        """Diffusion loss on fixed images, timesteps and noise (the same at every eval, labels never dropped),
        so evals are comparable with each other."""
        losses = []
        for i in range(self.cfg["train"]["eval_iters"]):
            g = self.generator("test", 10_000 + i, 0 if split == "train" else 1)
            x0, y, t, noise = self._draw(split, g, batch_size, drop_labels=False)
            with self.autocast():
                losses.append(self.diffusion.loss(net, x0, t, noise, y).item())
        return sum(losses) / len(losses)

    @torch.no_grad()
    def evaluate(self, model: DiffusionModel, step, batch_size=None):
        bs = batch_size or self.cfg["train"]["batch_size"]
        metrics = {"train_loss": self._fixed_loss(model.net, "train", bs),
                   "ema_val_loss": self._fixed_loss(model.ema_net, "val", bs), "ema_decay": model.ema.current_decay()}
        if self.score_digits:
            from trainers.digit_classifier import score_samples

            n = int(self.opts["eval_samples"])
            labels = torch.arange(n) % 10
            images = self.generate(model, labels, seed=self.cfg["train"]["seed"] + 1)
            metrics["sample_accuracy"] = score_samples(images, labels)
        return {"val_loss": self._fixed_loss(model.net, "val", bs), "metrics": metrics}

    @torch.no_grad()
    def generate(self, model, labels: torch.Tensor, seed: int, sampler: str | None = None) -> torch.Tensor:
        """Class-conditional samples (N, C, H, W) in [-1, 1] from the EMA weights, in chunks of 256."""
        o = self.opts
        sampler = sampler or o["sampler"]
        g = torch.Generator().manual_seed(seed)
        shape = (self.data.channels, self.data.size, self.data.size)
        out = []
        for i in range(0, len(labels), 256):
            y = labels[i:i + 256].to(self.device)
            with self.autocast():
                if sampler == "ddpm":
                    x = self.diffusion.ddpm_sample(model.ema_net, y, shape, generator=g, null_class=self.null_class,
                                                   guidance=float(o["guidance"]))
                else:
                    x = self.diffusion.ddim_sample(model.ema_net, y, shape, generator=g, null_class=self.null_class,
                                                   steps=int(o["steps"]), eta=float(o["eta"]),
                                                   guidance=float(o["guidance"]))
            out.append(x.float().cpu())
        return torch.cat(out)

    def sampler_name(self) -> str:
        return f"ddpm-{self.diffusion.T}" if self.opts["sampler"] == "ddpm" else f"ddim-{int(self.opts['steps'])}"

    @torch.no_grad()
    def samples(self, model, step):
        """One grid: a column per class (rows samples each), the same starting noise at every call so the
        grids show one set of samples improving."""
        rows = int(self.opts["rows"])
        if self.data.labelled:
            classes = list(range(self.data.num_classes))
        else:
            classes = [0] * int(self.opts["cols"])
        labels = torch.tensor(classes).repeat_interleave(rows)            # column-major: class j in column j
        images = self.generate(model, labels, seed=self.cfg["train"]["seed"])
        grid = image_grid(images, rows, len(classes))
        names = [self.data.class_names[c] for c in classes]
        return [{"kind": "image", "image": image_payload(grid), "classes": names,
                 "grid": {"rows": rows, "cols": len(classes), "cell_h": self.data.size, "cell_w": self.data.size,
                          "pad": GRID_PAD},
                 "sampler": self.sampler_name(), "guidance": float(self.opts["guidance"]),
                 "prompt": f"{self.sampler_name()}, guidance {float(self.opts['guidance']):g}, EMA weights"}]

    PROBE_IMAGES = 8     # fixed held-out images, noise and classes of the internals probe
    PROBE_BUCKETS = 10   # equal ranges of timesteps the probe's loss is measured in

    @torch.no_grad()
    def internals(self, model, step):
        """The loss on fixed held-out images, noise and classes, with every image at the middle timestep of each
        of PROBE_BUCKETS equal ranges of t: which noise levels the network has learned (the loss is highest
        near t = 0, where the noise is hard to tell from the image, and falls as t grows)."""
        g = self.generator("probe", 0)
        x0, y, _, noise = self._draw("val", g, self.PROBE_IMAGES, drop_labels=False)
        T, n, k = self.diffusion.T, self.PROBE_BUCKETS, len(x0)
        t = ((torch.arange(n, device=x0.device) + 0.5) * T / n).long().repeat_interleave(k)   # (n·k,)
        x0, noise, y = x0.repeat(n, 1, 1, 1), noise.repeat(n, 1, 1, 1), y.repeat(n)         # one forward for all
        eps = model.net(self.diffusion.q_sample(x0, t, noise), t, y)
        losses = (eps.float() - noise.float()).pow(2).mean(dim=(1, 2, 3)).view(n, k).mean(1)  # L_simple per bucket
        return {"probe": f"{k} held-out images, fixed noise and classes, at {n} timesteps",
                "arrays": [array("loss_by_t", losses, ["bucket"], lo=0, hi=T, digits=5)]}

    def state_dict(self):
        return {"classes": self.data.class_names, "image_size": self.data.size, "channels": self.data.channels,
                "source": self.data.source}
