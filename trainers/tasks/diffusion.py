"""Diffusion: learn to generate images with a class- or text-conditional DDPM (U-Net, DiT or PixArt noise
predictor), in pixel space or in a VAE's latent space.

Preset keys read here (besides the common train.* keys):
    data.dataset        digits (grey 16x16, labels 0-9, captions) | emoji (colour 32x32, unlabelled, captioned by
                        name); data.path overrides (trainers/images.py: folders and .npz, with or without captions)
    data.hflip          random horizontal flips in training (never for digits: a flipped 2 is not a 2)
    model.image_size    images are resized to it; in_channels and num_classes follow the data
    model.num_timesteps, model.schedule (linear | cosine), model.class_dropout (label dropout for CFG)
    model.conditioning  class | text (a denoiser's Config says which it takes; pixart: text); text-conditioned,
                        y is the caption's byte tokens (trainers/models/_text.py) and model.caption_dropout
                        replaces a training caption by the null (all-PAD) caption, for CFG
    model.latent        a vae run's checkpoint (trainers/latent.py): the data are encoded once at the start, the
                        denoiser trains on the latents, samples are decoded before they are shown
    sample.steps, sample.eta        DDIM steps and stochasticity of the live previews (sample.sampler: ddim | ddpm)
    sample.guidance                 classifier-free guidance scale w (1 = plain conditional)
    sample.rows, sample.cols        grid: `rows` samples per class (or prompt) column (`cols` columns when
                                    unlabelled, or for a prompt asked for with the `sample` command)
    sample.prompts                  text-conditioned: the prompts sampled at each sample interval, one column each,
                                    separated by "|" (empty: the first caption of a few images of the data)
    sample.ema_decay                decay of the weight EMA that samples use
    sample.eval_samples             samples scored by the digit classifier at each eval (digits only; 0 = off):
                                    `sample_accuracy` for class ids, `prompt_accuracy` for the prompts
                                    "the digit zero" .. "the digit nine"

A batch is (x0, y, t, noise), drawn entirely from the (split, step, micro) generator, label dropout and the
choice of caption variant included, so a resumed run sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import base64

import torch

from trainers.config import ConfigError, check_section_keys, coerce
from trainers.diffusion import Diffusion, DiffusionModel
from trainers.images import ImageSet, digit_prompt, image_source, load_images, to_uint8
from trainers.internals import array, token_label
from trainers.models import build_model, make_config
from trainers.models._text import PAD, cross_attention_map, decode_captions, encode_captions
from trainers.models.contract import Denoiser
from trainers.tasks import Task as BaseTask

SAMPLE_DEFAULTS = {"steps": 20, "eta": 0.0, "guidance": 2.0, "rows": 2, "cols": 8, "ema_decay": 0.999,
                   "eval_samples": 100, "sampler": "ddim", "prompts": ""}
SAMPLE_RULES = {  # key: (holds for a good value, the fix); each value is typed by its default first
    "steps": (lambda v: v >= 1, "use at least 1 (20 is typical for DDIM)"),
    "eta": (lambda v: 0.0 <= v <= 1.0, "use a value in [0, 1]"),
    "guidance": (lambda v: v >= 0.0, "use a value >= 0 (1 = no guidance)"),
    "rows": (lambda v: v >= 1, "use at least 1"),
    "cols": (lambda v: v >= 1, "use at least 1"),
    "ema_decay": (lambda v: 0.0 <= v < 1.0, "use a value in [0, 1), e.g. 0.999"),
    "eval_samples": (lambda v: v >= 0, "use 0 (off) or more"),
    "sampler": (lambda v: v in ("ddim", "ddpm"), "use ddim or ddpm"),
    "prompts": (lambda v: all(p.strip() for p in v.split("|")) or not v.strip(),
                'separate the prompts by "|", none of them empty, e.g. "a red apple|a cat"'),
}
# what the task reads of the denoiser's Config, for an arch whose Config lacks one of them
PROCESS_DEFAULTS = {"image_size": 16, "num_timesteps": 1000, "schedule": "linear", "class_dropout": 0.1,
                    "conditioning": "class", "caption_dropout": 0.1, "text_len": 32, "latent": ""}
DEFAULT_PROMPTS = 8   # text-conditioned without sample.prompts: the first caption of this many images (unlabelled)


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


def caption_tokens(captions: list[tuple[str, ...]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's caption variants as tokens (N, V, L), V the most variants of an image (a shorter list is
    padded with null captions never drawn), and each image's number of variants (N,)."""
    V = max(len(c) for c in captions)
    flat = [c[v] if v < len(c) else "" for c in captions for v in range(V)]
    return encode_captions(flat, max_len).view(len(captions), V, max_len), torch.tensor([len(c) for c in captions])


def split_prompts(text: str) -> list[str]:
    """sample.prompts: prompts separated by "|"."""
    return [p.strip() for p in text.split("|") if p.strip()]


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
        self.codec = None
        image_size = process["image_size"]
        if process["latent"]:
            from trainers.latent import load_codec

            self.codec = load_codec(process["latent"], device)
            image_size = self.codec.image_size
        self.data = load_images(dataset, path, image_size)
        self.text = process["conditioning"] == "text"
        if self.text and self.data.captions is None:
            raise ConfigError(f"arch {cfg['arch']} with model.conditioning=text trains on captions, and the data "
                              f"({self.data.source}) have none; use data.dataset=digits, or a folder with NAME.txt "
                              "beside each image or a captions.jsonl, or an .npz with `captions`")
        self.pixel_shape = (self.data.channels, self.data.size, self.data.size)   # what samples are shown at
        if self.codec is not None:
            self.data = self._encoded(self.data)
        self.train_set, self.val_set = self.data.split(cfg["data"]["val_fraction"])
        self.diffusion = Diffusion(process["schedule"], process["num_timesteps"])
        if self.text:
            self.text_len = process["text_len"]
            self.drop_prob, self.null_class = process["caption_dropout"], PAD
            self.captions = {name: caption_tokens(part.captions, self.text_len)
                             for name, part in (("train", self.train_set), ("val", self.val_set))}
            self.prompts = split_prompts(self.opts["prompts"]) or self._default_prompts()
        else:
            self.drop_prob, self.null_class = process["class_dropout"], self.data.num_classes
            self.prompts = []
        # The classifier check applies to the shipped digits (grey, conditioned on the digit or its name).
        self.score_digits = not path and dataset == "digits" and self.opts["eval_samples"] > 0
        s = self.data
        self.log("info", f"data: {s.source}, {len(s.images)} images ({len(self.train_set.images)} train, "
                         f"{len(self.val_set.images)} val), {'x'.join(map(str, self.pixel_shape))}, "
                         f"{s.num_classes if s.labelled else 'no'} classes"
                         + (", captioned" if self.text else "")
                         + (f", trained as {s.channels}x{s.size}x{s.size} latents" if self.codec else ""))

    @property
    def takes_prompts(self) -> bool:
        """A text-conditioned task samples the `sample` command's prompt (trainers/loop.py Trainer.samples)."""
        return self.text

    def dataset_info(self) -> dict:
        """run_start's `dataset`: where the images come from, what the model is conditioned on and, for captions,
        the prompts sampled at each sample interval (the cockpit offers them when it asks for a prompt)."""
        info = {"name": self.data.source, "images": len(self.data.images),
                "conditioning": "text" if self.text else "class"}
        if self.text:
            info["prompts"] = self.prompts
        return info

    def _encoded(self, data: ImageSet) -> ImageSet:
        """The data set with its images replaced by their latents (encoded once, in chunks, on the run's device)."""
        with torch.no_grad():
            z = torch.cat([self.codec.encode(data.images[i:i + 256].to(self.device)).float().cpu()
                           for i in range(0, len(data.images), 256)])
        return ImageSet(z, data.labels, data.class_names, f"{data.source}, encoded by {self.codec_name()}",
                        data.labelled, data.captions)

    def codec_name(self) -> str:
        return f"the VAE of {self.cfg['model']['latent']}"

    def _default_prompts(self) -> list[str]:
        """The first caption of one image per class (the digits: "the digit zero" .. "the digit nine"), or of
        DEFAULT_PROMPTS images spread over an unlabelled set; as the model reads them (cut at text_len bytes)."""
        data = self.data
        if data.labelled:
            picks = [int(torch.nonzero(data.labels == c)[0]) for c in range(data.num_classes)
                     if (data.labels == c).any()]
        else:
            n = min(DEFAULT_PROMPTS, len(data.captions))
            picks = [round(i * (len(data.captions) - 1) / max(n - 1, 1)) for i in range(n)]
        return decode_captions(encode_captions([data.captions[i][0] for i in picks], self.text_len))

    def conditions(self, prompts: list[str]) -> torch.Tensor:
        """What the denoiser is conditioned on for these prompts: (N, text_len) caption tokens."""
        return encode_captions(prompts, self.text_len)

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
        x0 = data.images[idx]
        if self.text:  # one of each image's caption variants, at random
            tokens, counts = self.captions["train" if split == "train" else "val"]
            variant = (torch.rand(n, generator=g) * counts[idx]).long()
            y = tokens[idx, variant].clone()                                  # (n, text_len)
        else:
            y = data.labels[idx].clone()                                      # (n,)
        if self.hflip:
            flip = torch.rand(n, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        if drop_labels and self.drop_prob > 0:  # the null class, or the null caption (all PAD)
            y[torch.rand(n, generator=g) < self.drop_prob] = self.null_class
        t = torch.randint(self.diffusion.T, (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        return tuple(v.to(self.device, non_blocking=True) for v in (x0, y, t, noise))

    def get_batch(self, split, step, micro=0, batch_size=None):
        """(x0 (B,C,H,W) in [-1,1] (latents when model.latent is set), y (B,) class ids with dropped labels = null
        class or, text-conditioned, (B, text_len) caption tokens with dropped captions all PAD, t (B,),
        noise (B,C,H,W))."""
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
            if self.text:  # the digit named in words: does the sample show it?
                images = self.generate(model, self.conditions([digit_prompt(int(d)) for d in labels]),
                                       seed=self.cfg["train"]["seed"] + 1)
                metrics["prompt_accuracy"] = score_samples(images, labels)
            else:
                images = self.generate(model, labels, seed=self.cfg["train"]["seed"] + 1)
                metrics["sample_accuracy"] = score_samples(images, labels)
        return {"val_loss": self._fixed_loss(model.net, "val", bs), "metrics": metrics}

    @torch.no_grad()
    def generate(self, model, conds: torch.Tensor, seed: int, sampler: str | None = None) -> torch.Tensor:
        """Samples (N, C, H, W) in [-1, 1] from the EMA weights, in chunks of 256: conds (N,) class ids or
        (N, text_len) caption tokens. In latent space the latents are decoded to images."""
        o = self.opts
        sampler = sampler or o["sampler"]
        g = torch.Generator().manual_seed(seed)
        shape = (self.data.channels, self.data.size, self.data.size)
        out = []
        for i in range(0, len(conds), 256):
            y = conds[i:i + 256].to(self.device)
            with self.autocast():
                if sampler == "ddpm":
                    x = self.diffusion.ddpm_sample(model.ema_net, y, shape, generator=g, null_class=self.null_class,
                                                   guidance=float(o["guidance"]))
                else:
                    x = self.diffusion.ddim_sample(model.ema_net, y, shape, generator=g, null_class=self.null_class,
                                                   steps=int(o["steps"]), eta=float(o["eta"]),
                                                   guidance=float(o["guidance"]))
                if self.codec is not None:
                    x = self.codec.decode(x)
            out.append(x.float().clamp(-1, 1).cpu())
        return torch.cat(out)

    def sampler_name(self) -> str:
        return f"ddpm-{self.diffusion.T}" if self.opts["sampler"] == "ddpm" else f"ddim-{int(self.opts['steps'])}"

    @torch.no_grad()
    def samples(self, model, step, prompt: str | None = None):
        """One grid, the same starting noise at every call so the grids show one set of samples improving:
        a column per class (rows samples each), or text-conditioned a column per prompt of sample.prompts; with
        `prompt` (the `sample` command's, text-conditioned runs) rows x cols samples of that prompt."""
        rows, seed = int(self.opts["rows"]), self.cfg["train"]["seed"]
        about = f"{self.sampler_name()}, guidance {float(self.opts['guidance']):g}, EMA weights"
        if self.text and prompt is not None and prompt.strip():
            prompt = " ".join(prompt.split())
            cols = int(self.opts["cols"])
            images = self.generate(model, self.conditions([prompt] * (rows * cols)), seed=seed)
            return [self._grid_event(images, rows, cols, about, None, caption=prompt)]
        if self.text:
            names = self.prompts
            conds = self.conditions(names).repeat_interleave(rows, dim=0)   # column-major: prompt j in column j
        else:
            classes = list(range(self.data.num_classes)) if self.data.labelled else [0] * int(self.opts["cols"])
            names = [self.data.class_names[c] for c in classes]
            conds = torch.tensor(classes).repeat_interleave(rows)            # column-major: class j in column j
        images = self.generate(model, conds, seed=seed)
        return [self._grid_event(images, rows, len(names), about, names)]

    def _grid_event(self, images, rows: int, cols: int, prompt: str, classes: list[str] | None,
                    caption: str | None = None) -> dict:
        """A sample event of a grid; `prompt` says how it was sampled, `caption` what every image was generated
        from (a prompt asked for with the `sample` command), `classes` each column's class or prompt."""
        size = images.shape[-1]
        event = {"kind": "image", "image": image_payload(image_grid(images, rows, cols)),
                 "grid": {"rows": rows, "cols": cols, "cell_h": size, "cell_w": size, "pad": GRID_PAD},
                 "sampler": self.sampler_name(), "guidance": float(self.opts["guidance"]), "prompt": prompt}
        if classes is not None:
            event["classes"] = classes
        if caption is not None:
            event["caption"] = caption
        return event

    PROBE_IMAGES = 8     # fixed held-out images, noise and classes of the internals probe
    PROBE_BUCKETS = 10   # equal ranges of timesteps the probe's loss is measured in

    @torch.no_grad()
    def internals(self, model, step):
        """The loss on fixed held-out images, noise and classes (or captions), with every image at the middle
        timestep of each of PROBE_BUCKETS equal ranges of t: which noise levels the network has learned (the loss
        is highest near t = 0, where the noise is hard to tell from the image, and falls as t grows).
        Text-conditioned, also the last cross-attention's map for the first of the sample prompts on the first
        probe image at mid-noise: how much each image patch reads each caption token (averaged over heads)."""
        g = self.generator("probe", 0)
        x0, y, _, noise = self._draw("val", g, self.PROBE_IMAGES, drop_labels=False)
        T, n, k = self.diffusion.T, self.PROBE_BUCKETS, len(x0)
        t = ((torch.arange(n, device=x0.device) + 0.5) * T / n).long().repeat_interleave(k)   # (n·k,)
        x0, noise = x0.repeat(n, 1, 1, 1), noise.repeat(n, 1, 1, 1)                          # one forward for all
        y = y.repeat(n, *([1] * (y.dim() - 1)))
        eps = model.net(self.diffusion.q_sample(x0, t, noise), t, y)
        losses = (eps.float() - noise.float()).pow(2).mean(dim=(1, 2, 3)).view(n, k).mean(1)  # L_simple per bucket
        what = "captions" if self.text else "classes"
        out = {"probe": f"{k} held-out images, fixed noise and {what}, at {n} timesteps",
               "arrays": [array("loss_by_t", losses, ["bucket"], lo=0, hi=T, digits=5)]}
        if self.text:
            cross = self._cross_attention_probe(model, x0[:1], noise[:1])
            out["arrays"] += cross["arrays"]
            out["tokens"], out["probe"] = cross["tokens"], f"{out['probe']}; {cross['probe']}"
        trajectory, about = self._trajectory(model)
        out["arrays"].append(trajectory)
        out["probe"] = f"{out['probe']}; {about}"
        return out

    TRAJECTORY_FRAMES = 8   # x0 predictions kept along the probe's sampling trajectory

    def _trajectory(self, model) -> tuple[dict, str]:
        """The `x0_trajectory` array (frame, channel, row, column): the EMA network's prediction of the clean image
        at TRAJECTORY_FRAMES evenly spaced steps of one DDIM run (sample.steps, the same starting noise at every
        probe) for the first class or sample prompt, decoded to pixels in latent space; labelled by timestep."""
        o = self.opts
        cond = self.conditions([self.prompts[0]]) if self.text else torch.zeros(1, dtype=torch.long)
        frames: list[tuple[int, torch.Tensor]] = []
        shape = (self.data.channels, self.data.size, self.data.size)
        with self.autocast():
            self.diffusion.ddim_sample(model.ema_net, cond.to(self.device), shape,
                                       generator=torch.Generator().manual_seed(self.cfg["train"]["seed"] + 2),
                                       null_class=self.null_class, steps=int(o["steps"]), eta=float(o["eta"]),
                                       guidance=float(o["guidance"]), on_x0=lambda t, x0: frames.append((t, x0)))
        n = min(self.TRAJECTORY_FRAMES, len(frames))
        keep = sorted({round(k * (len(frames) - 1) / max(n - 1, 1)) for k in range(n)})
        images = torch.cat([frames[k][1] for k in keep]).float()
        if self.codec is not None:
            images = self.codec.decode(images).float()
        what = repr(self.prompts[0]) if self.text else f"class {self.data.class_names[0]!r}"
        return (array("x0_trajectory", images.clamp(-1, 1), ["frame", "channel", "row", "column"],
                      labels=[f"t={frames[k][0]}" for k in keep], digits=3),
                f"x0 along one {self.sampler_name()} trajectory for {what} (EMA weights)")

    def _cross_attention_probe(self, model, x0, noise) -> dict:
        """The `cross_attention` array (patch x token) and the caption's tokens as the event's `tokens`."""
        caption = self.prompts[0]
        y = self.conditions([caption]).to(x0.device)
        t = torch.full((1,), self.diffusion.T // 2, dtype=torch.long, device=x0.device)
        weights = cross_attention_map(model.net, self.diffusion.q_sample(x0, t, noise), t, y)[0]   # (N, 1 + L)
        used = 1 + int((y[0] != PAD).sum())                                  # START and the caption's bytes
        return {"arrays": [array("cross_attention", weights[:, :used], ["patch", "token"], digits=4)],
                "tokens": ["<start>"] + byte_labels(caption, used - 1),
                "probe": f"cross-attention of the last block for {caption!r} on a held-out image at t = {int(t)}"}

    def state_dict(self):
        state = {"classes": self.data.class_names, "image_size": self.pixel_shape[-1],
                 "channels": self.pixel_shape[0], "source": self.data.source}
        if self.text:
            state["prompts"] = self.prompts
        return state


def byte_labels(caption: str, n: int) -> list[str]:
    """A label per byte token of the caption's first n: a character on its first byte ("␣" for a space), "·"
    on the rest of a multi-byte character."""
    out = []
    for ch in caption:
        size = len(ch.encode("utf-8"))
        out += ["␣" if ch == " " else token_label(ch)] + ["·"] * (size - 1)
    return out[:n]
