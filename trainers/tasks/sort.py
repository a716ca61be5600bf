"""minGPT's sorting task: read `length` digits in [0, num_digits), then emit them sorted.

    input  2 0 1 1 0 2 | output 0 0 1 1 2 2
The model sees input + output[:-1] and is trained only on the output positions (targets -1 elsewhere).
Held-out inputs (a fixed quarter of all possible sequences, chosen by a hash) are never trained on;
`eval` reports exact-match accuracy on every one of them, with greedy decoding.
"""
from __future__ import annotations

import itertools
import zlib

import torch

from trainers.models import build_model
from trainers.models.contract import LanguageModel
from trainers.tasks import Task as BaseTask


def is_test(seq: tuple[int, ...]) -> bool:
    return zlib.crc32(bytes(seq)) % 4 == 0


class Task(BaseTask):
    unit = "tokens"

    def __init__(self, cfg, device, log=None, amp_dtype=None):
        super().__init__(cfg, device, log, amp_dtype)
        self.length = int(cfg["data"].get("length", 6))
        self.num_digits = int(cfg["data"].get("num_digits", 3))
        all_seqs = list(itertools.product(range(self.num_digits), repeat=self.length))
        self.test_inputs = torch.tensor([s for s in all_seqs if is_test(s)], dtype=torch.long)
        self.train_inputs = torch.tensor([s for s in all_seqs if not is_test(s)], dtype=torch.long)
        self.log("info", f"sort: {len(self.train_inputs)} train / {len(self.test_inputs)} held-out sequences "
                         f"of {self.length} digits in [0, {self.num_digits})")

    def build_model(self):
        model_cfg = {**self.cfg["model"], "block_size": self.length * 2 - 1}
        return build_model(self.cfg["arch"], model_cfg, contract=LanguageModel, vocab_size=self.num_digits,
                           kernels=self.cfg.get("kernels", "torch"))

    def _pairs(self, inputs: torch.Tensor):
        sol = torch.sort(inputs, dim=1).values
        cat = torch.cat([inputs, sol], dim=1)
        x, y = cat[:, :-1].clone(), cat[:, 1:].clone()
        y[:, :self.length - 1] = -1  # only the sorted half is predicted
        return x, y

    def get_batch(self, split, step, micro=0, batch_size=None):
        pool = self.train_inputs if split == "train" else self.test_inputs
        bs = batch_size or self.cfg["train"]["batch_size"]
        ix = torch.randint(len(pool), (bs,), generator=self.generator(split, step, micro))
        x, y = self._pairs(pool[ix])
        return x.to(self.device), y.to(self.device)

    def batch_units(self, batch):
        return batch[0].numel()

    def loss(self, model, batch):
        return model(*batch)[1]

    @torch.no_grad()
    def accuracy(self, model, inputs: torch.Tensor) -> float:
        inp = inputs.to(self.device)
        out = self._greedy(model, inp)
        return (out == torch.sort(inp, dim=1).values).all(dim=1).float().mean().item()

    def _greedy(self, model, inp):
        idx = inp
        for _ in range(self.length):
            logits, _ = model(idx)
            idx = torch.cat([idx, logits[:, -1, :].argmax(-1, keepdim=True)], dim=1)
        return idx[:, self.length:]

    @torch.no_grad()
    def evaluate(self, model, step, batch_size=None):
        """Every held-out input, whatever the batch size."""
        x, y = self._pairs(self.test_inputs)
        _, val_loss = model(x.to(self.device), y.to(self.device))
        acc = self.accuracy(model, self.test_inputs)
        g = self.generator("test", 0)
        train_sub = self.train_inputs[torch.randperm(len(self.train_inputs), generator=g)[:len(self.test_inputs)]]
        return {"val_loss": val_loss.item(),
                "metrics": {"accuracy": acc, "train_accuracy": self.accuracy(model, train_sub),
                            "held_out": len(self.test_inputs)}}

    @torch.no_grad()
    def samples(self, model, step):
        g = self.generator("sample", step)
        inp = self.test_inputs[torch.randperm(len(self.test_inputs), generator=g)[:6]].to(self.device)
        out = self._greedy(model, inp)
        lines = []
        for a, b in zip(inp.tolist(), out.tolist()):
            ok = "ok" if b == sorted(a) else "WRONG"
            lines.append(f"{' '.join(map(str, a))}  ->  {' '.join(map(str, b))}   {ok}")
        return [{"kind": "text", "text": "\n".join(lines) + "\n", "prompt": "held-out inputs"}]
