"""A small CNN digit classifier, trained on the real digits, that scores class-conditional diffusion samples.

The objective sample-quality check: a sample conditioned on class c "counts" when the classifier, trained
only on real handwritten digits, calls it c. Chance is 10%. The classifier sees images exactly as the
diffusion task does: grey, image_size x image_size, values in [-1, 1].

    python -m trainers.digit_classifier        # trains it and prints the held-out accuracy
"""
from __future__ import annotations

import functools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.images import ImageSet, load_digits


class DigitClassifier(nn.Module):
    def __init__(self, image_size: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # (32, s/2, s/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # (64, s/4, s/4)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * (image_size // 4) ** 2, 128),
                                  nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        """x (B, 1, s, s) in [-1, 1] -> logits (B, 10)."""
        return self.head(self.features(x))


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to max_shift pixels (padding with background -1): cheap augmentation."""
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B), generator=g).tolist()
    return torch.stack([pad[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images classified as their label."""
    model.eval()
    pred = torch.cat([model(images[i:i + 512].float()).argmax(-1) for i in range(0, len(images), 512)])
    return (pred.cpu() == labels.cpu()).float().mean().item()


@torch.enable_grad()  # also when called from an eval under no_grad
def train_classifier(image_size: int = 16, epochs: int = 12, batch_size: int = 64, seed: int = 0,
                     val_fraction: float = 0.2) -> tuple[DigitClassifier, float]:
    """Train on a fixed 80% of the digits; returns (model in eval mode, accuracy on the held-out 20%)."""
    data: ImageSet = load_digits(image_size)
    train, held_out = data.split(val_fraction, seed=1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitClassifier(image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(train.images) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train.images), generator=g)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            x = random_shift(train.images[idx], g)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model, accuracy(model, held_out.images, held_out.labels)


@functools.lru_cache(maxsize=4)
def get_classifier(image_size: int = 16) -> tuple[DigitClassifier, float]:
    """The trained classifier for this image size (trained once per process, a few seconds on a CPU)."""
    return train_classifier(image_size)


def score_samples(images: torch.Tensor, labels: torch.Tensor, image_size: int | None = None) -> float:
    """Fraction of samples (B, 1, s, s) in [-1, 1] that the digit classifier assigns to their conditioned class."""
    model, _ = get_classifier(image_size or images.shape[-1])
    return accuracy(model, images.detach().float().cpu().clamp(-1, 1), labels)


if __name__ == "__main__":
    t0 = time.time()
    _, acc = train_classifier()
    print(f"digit classifier: held-out accuracy {acc:.1%} ({time.time() - t0:.1f} s)")
