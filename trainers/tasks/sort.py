"""minGPT's sorting task: read `length` digits in [0, num_digits), then emit them sorted.

    input  2 0 1 1 0 2 | output 0 0 1 1 2 2
The model sees input + output[:-1] and is trained only on the output positions (targets -1 elsewhere).
Held-out inputs (a fixed quarter of all possible sequences, chosen by a hash) are never trained on;
`eval` reports exact-match accuracy on every one of them, with greedy decoding.
"""
from __future__ import annotations

import itertools
import math
import zlib

import torch

from trainers.config import ConfigError, coerce
from trainers.models import build_model, check_model
from trainers.models.contract import LanguageModel
from trainers.tasks import Task as BaseTask

# Every possible input is enumerated (and a quarter of them evaluated at each eval): the count is bounded.
MAX_SEQUENCES = 1_000_000


def is_test(seq: tuple[int, ...]) -> bool:
    return zlib.crc32(bytes(seq)) % 4 == 0


def sort_shape(cfg: dict) -> tuple[int, int]:
    """(data.length, data.num_digits), typed and checked: digits are bytes (is_test hashes them), and all
    num_digits ** length inputs must fit the bound."""
    d = cfg["data"]
    length = coerce("data.length", d.get("length", 6), int, "sort task")
    num_digits = coerce("data.num_digits", d.get("num_digits", 3), int, "sort task")
    if length < 1:
        raise ConfigError(f"data.length={length} must be at least 1 (6 is minGPT's)")
    if not 2 <= num_digits <= 256:
        raise ConfigError(f"data.num_digits={num_digits} is out of range; use a value in [2, 256] (3 is minGPT's)")
    if length * math.log(num_digits) > math.log(MAX_SEQUENCES):  # num_digits ** length, without computing it
        raise ConfigError(f"data.num_digits={num_digits} and data.length={length} make {num_digits}^{length} "
                          f"possible inputs, more than the {MAX_SEQUENCES:,} the task enumerates; make either "
                          "smaller")
    return length, num_digits


class Task(BaseTask):
    unit = "tokens"
    contract = LanguageModel

    @classmethod
    def check(cls, cfg):
        length, num_digits = sort_shape(cfg)
        check_model(cfg["arch"], {**cfg["model"], "block_size": length * 2 - 1}, contract=cls.contract,
                    vocab_size=num_digits, kernels=cfg.get("kernels", "torch"))

    def __init__(self, cfg, device, log=None, amp_dtype=None):
        super().__init__(cfg, device, log, amp_dtype)
        self.length, self.num_digits = sort_shape(cfg)
        all_seqs = list(itertools.product(range(self.num_digits), repeat=self.length))
        test = [s for s in all_seqs if is_test(s)]
        train = [s for s in all_seqs if not is_test(s)]
        if not test or not train:
            raise ConfigError(f"data.num_digits={self.num_digits} and data.length={self.length} make only "
                              f"{len(all_seqs)} possible inputs, too few to hold some out; make either larger")
        self.test_inputs = torch.tensor(test, dtype=torch.long)
        self.train_inputs = torch.tensor(train, dtype=torch.long)
        self.log("info", f"sort: {len(self.train_inputs)} train / {len(self.test_inputs)} held-out sequences "
                         f"of {self.length} digits in [0, {self.num_digits})")

    def build_model(self):
        model_cfg = {**self.cfg["model"], "block_size": self.length * 2 - 1}
        return build_model(self.cfg["arch"], model_cfg, contract=self.contract, vocab_size=self.num_digits,
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

    def probe(self) -> torch.Tensor:
        """The internals probe (1, 2 * length - 1): a fixed held-out list, unsorted and holding as many different
        digits as it can, followed by its sorted answer as the model reads it (input + output[:-1])."""
        inputs = self.test_inputs.tolist()
        most = min(self.num_digits, self.length)
        seq = next((s for s in inputs if s != sorted(s) and len(set(s)) == most),
                   next((s for s in inputs if s != sorted(s)), inputs[0]))
        x, _ = self._pairs(torch.tensor([seq]))
        return x.to(self.device)

    @torch.no_grad()
    def internals(self, model, step):
        idx = self.probe()
        digits = [str(i) for i in idx[0].tolist()]
        return {"probe": f"the held-out list {' '.join(digits[:self.length])}, then its sorted answer",
                "tokens": digits, "arrays": model.internals(idx, lambda ids: [str(i) for i in ids])}

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
