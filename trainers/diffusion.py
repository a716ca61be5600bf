"""Denoising diffusion: noise schedules, the DDPM training loss, EMA weights, DDPM and DDIM samplers, and
classifier-free guidance. Model-agnostic: a network is any `eps = net(x_t, t, y)`; the denoisers embed their
timestep with `timestep_embedding`.

Forward process (Ho et al. 2020, eq. 4):   q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),
                                           abar_t = prod_{s<=t} (1 - beta_s)
L_simple (eq. 14):                         E || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2
DDPM ancestral step (posterior, eq. 6-7):  x_{t-1} = mu~_t(x_t, x0_hat) + sqrt(beta~_t) z,  x0_hat clipped to [-1, 1]
DDIM step (Song et al. 2021, eq. 12):      x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps + sigma z,
                                           sigma = eta sqrt((1 - abar_t') / (1 - abar_t)) sqrt(1 - abar_t / abar_t')
Classifier-free guidance (Ho & Salimans 2022): eps = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null))
Timesteps are 0-based: t = 0 .. T-1, and t = 0 is the least noisy step.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids of the (integer) timestep: [cos(t * w_i), sin(t * w_i)], w_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int) -> torch.Tensor:
    """DDPM's schedule, beta from 1e-4 to 0.02 over 1000 steps, rescaled for other T (Nichol & Dhariwal 2021)."""
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule: abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), beta_t = 1 - abar(t+1)/abar(t)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, T: int) -> torch.Tensor:
    if schedule == "linear":
        return linear_betas(T)
    if schedule == "cosine":
        return cosine_betas(T)
    raise ValueError(f"unknown noise schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


class Diffusion:
    """The fixed forward process and its samplers. Tables are float64 for precision, gathered as float32."""

    def __init__(self, schedule: str = "linear", num_timesteps: int = 1000):
        self.schedule, self.T = schedule, num_timesteps
        self.betas = make_betas(schedule, num_timesteps)
        self.alphas = 1.0 - self.betas
        self.abar = torch.cumprod(self.alphas, dim=0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        # posterior q(x_{t-1} | x_t, x_0) = N(c0 x_0 + ct x_t, beta~_t)   (eq. 6-7)
        self.post_var = self.betas * (1 - self.abar_prev) / (1 - self.abar)
        self.post_c0 = self.betas * self.abar_prev.sqrt() / (1 - self.abar)
        self.post_ct = (1 - self.abar_prev) * self.alphas.sqrt() / (1 - self.abar)

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] as float32 on like's device, shaped (B, 1, 1, 1) to broadcast over images."""
        return table.to(like.device)[t.to(like.device)].float().view(-1, *([1] * (like.dim() - 1)))

    # --- training -----------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._at(self.abar.sqrt(), t, x0) * x0 + self._at((1 - self.abar).sqrt(), t, x0) * noise

    def loss(self, net, x0, t, noise, y) -> torch.Tensor:
        """L_simple: mean squared error between the true and the predicted noise (float32)."""
        eps = net(self.q_sample(x0, t, noise).to(x0.dtype), t, y)
        return F.mse_loss(eps.float(), noise.float())

    # --- sampling ------------------------------------------------------------------------------------
    @staticmethod
    def guided_eps(net, x, t, y, null_class: int, guidance: float) -> torch.Tensor:
        """Classifier-free guidance. guidance 1 is the plain conditional model, 0 the unconditional one."""
        if guidance == 1.0:
            return net(x, t, y).float()
        if guidance == 0.0:
            return net(x, t, torch.full_like(y, null_class)).float()
        eps = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)])).float()
        cond, uncond = eps.chunk(2)
        return uncond + guidance * (cond - uncond)

    def _x0(self, x, t_batch, eps):
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to the data range [-1, 1]."""
        return ((x - self._at((1 - self.abar).sqrt(), t_batch, x) * eps) / self._at(self.abar.sqrt(), t_batch, x)
                ).clamp(-1, 1)

    @torch.no_grad()
    def ddpm_sample(self, net, y: torch.Tensor, shape: tuple, *, generator: torch.Generator, null_class: int,
                    guidance: float = 1.0) -> torch.Tensor:
        """Ancestral sampling through all T steps. y (B,) class ids; shape (C, H, W). Returns (B, C, H, W) in [-1, 1].

        Noise is drawn on the CPU from `generator`, so a seed gives the same images on any device.
        """
        B, device = y.shape[0], y.device
        x = torch.randn((B, *shape), generator=generator).to(device)
        for i in reversed(range(self.T)):
            t = torch.full((B,), i, dtype=torch.long, device=device)
            eps = self.guided_eps(net, x, t, y, null_class, guidance)
            x0 = self._x0(x, t, eps)
            mean = self._at(self.post_c0, t, x) * x0 + self._at(self.post_ct, t, x) * x
            if i > 0:
                z = torch.randn((B, *shape), generator=generator).to(device)
                x = mean + self._at(self.post_var, t, x).sqrt() * z
            else:
                x = mean
        return x.clamp(-1, 1)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` timesteps evenly spaced over [0, T-1], descending (the last one is t = 0)."""
        steps = max(1, min(steps, self.T))
        ts = torch.linspace(0, self.T - 1, steps, dtype=torch.float64).round().long().unique()
        return ts.flip(0).tolist()

    @torch.no_grad()
    def ddim_sample(self, net, y: torch.Tensor, shape: tuple, *, generator: torch.Generator, null_class: int,
                    steps: int = 20, eta: float = 0.0, guidance: float = 1.0, on_x0=None) -> torch.Tensor:
        """DDIM with `steps` model calls (eta 0: deterministic given the starting noise; eta 1: DDPM-like).
        on_x0(t, x0_hat): called at each step with its timestep and the clipped prediction of the clean image."""
        B, device = y.shape[0], y.device
        x = torch.randn((B, *shape), generator=generator).to(device)
        ts = self.ddim_timesteps(steps)
        for j, i in enumerate(ts):
            t = torch.full((B,), i, dtype=torch.long, device=device)
            eps = self.guided_eps(net, x, t, y, null_class, guidance)
            x0 = self._x0(x, t, eps)
            if on_x0 is not None:
                on_x0(i, x0)
            ab = self.abar[i].item()
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # the noise consistent with the clipped x0
            ab_prev = self.abar[ts[j + 1]].item() if j + 1 < len(ts) else 1.0
            sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn((B, *shape), generator=generator).to(device)
        return x.clamp(-1, 1)


class EMA(nn.Module):
    """Exponential moving average of a network's parameters: ema <- d ema + (1 - d) theta after each step.

    The averages are buffers, so they are saved with the model's state_dict (exact resume), move with .to(),
    are not trained and not counted as parameters. The decay warms up as min(decay, (1 + n) / (10 + n)) so
    that short runs are not dominated by the random initialisation.
    """

    def __init__(self, net: nn.Module, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.names = [n for n, _ in net.named_parameters()]
        for n, p in net.named_parameters():
            self.register_buffer(self._key(n), p.detach().clone())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(name: str) -> str:
        return "p_" + name.replace(".", "__")

    def params(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, self._key(n)) for n in self.names}

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, net: nn.Module):
        d = self.current_decay()
        ema = list(self.params().values())
        cur = [p.detach() for _, p in net.named_parameters()]
        torch._foreach_lerp_(ema, [c.to(e.dtype) for c, e in zip(cur, ema)], 1.0 - d)
        self.num_updates += 1


class DiffusionModel(nn.Module):
    """A noise-prediction network plus the EMA of its weights (used for sampling)."""

    def __init__(self, net: nn.Module, ema_decay: float = 0.999):
        super().__init__()
        self.net = net
        self.ema = EMA(net, ema_decay)
        self.config = net.config

    def forward(self, x, t, y):
        return self.net(x, t, y)

    def ema_net(self, x, t, y):
        """The network evaluated with the EMA weights (the trained weights are untouched)."""
        return functional_call(self.net, self.ema.params(), (x, t, y))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
