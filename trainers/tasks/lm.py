"""Language modelling: predict the next token of a text corpus (characters or GPT-2 BPE)."""
from __future__ import annotations

import torch

from trainers import data as textdata
from trainers.models import build_model
from trainers.tasks import Task as BaseTask


class Task(BaseTask):
    unit = "tokens"
    default_corpus = "shakespeare.txt"
    sample_prompt = "\n"

    def __init__(self, cfg, device, log=None):
        super().__init__(cfg, device, log)
        text, source = textdata.load_text(cfg["data"].get("path", ""), self.default_corpus)
        self.source = source
        self.tokenizer = self.make_tokenizer(text)
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        self.stream = textdata.TokenStream(ids, cfg["data"]["val_fraction"], cfg["model"]["block_size"], source)
        self.log("info", f"data: {source}, {len(ids):,} tokens ({self.tokenizer.kind} tokenizer, "
                         f"vocab {self.tokenizer.vocab_size})")

    def make_tokenizer(self, text: str):
        return textdata.make_tokenizer(self.cfg["data"]["tokenizer"], text)

    def build_model(self):
        return build_model(self.cfg["arch"], self.cfg["model"], vocab_size=self.tokenizer.vocab_size,
                           kernels=self.cfg.get("kernels", "torch"),
                           activation_checkpointing=self.cfg["train"]["activation_checkpointing"])

    def get_batch(self, split, step, micro=0):
        x, y = self.stream.batch(split, self.cfg["train"]["batch_size"], self.generator(split, step, micro))
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def batch_units(self, batch) -> int:
        return batch[0].numel()

    def loss(self, model, batch):
        _, loss = model(*batch)
        return loss

    @torch.no_grad()
    def evaluate(self, model, step):
        out = {}
        for split in ("train", "val"):
            losses = []
            for i in range(self.cfg["train"]["eval_iters"]):
                x, y = self.stream.batch(split, self.cfg["train"]["batch_size"], self.generator("test", 10_000 + i,
                                         0 if split == "train" else 1))
                with self.autocast():
                    _, loss = model(x.to(self.device), y.to(self.device))
                losses.append(loss.item())
            out[split] = sum(losses) / len(losses)
        metrics = {"train_loss": out["train"]}
        if hasattr(model, "metrics"):
            metrics.update(model.metrics())
        result = {"val_loss": out["val"], "metrics": metrics}
        if hasattr(model, "eval_fields"):  # e.g. MoE's `experts` (per-expert counts, balance loss)
            result.update(model.eval_fields())
        return result

    def autocast(self):
        dtype = self.cfg.get("_amp_dtype")
        if dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def samples(self, model, step):
        prompt = self.sample_prompt
        idx = torch.tensor([self.tokenizer.encode(prompt)], dtype=torch.long, device=self.device)
        g = torch.Generator(device=self.device)
        g.manual_seed(self.cfg["train"]["seed"] + step)
        with self.autocast():
            out = model.generate(idx, self.cfg["train"]["sample_tokens"], temperature=0.8, top_k=200, generator=g)
        text = self.tokenizer.decode(out[0, idx.size(1):].tolist())
        return [{"kind": "text", "text": text, "prompt": prompt}]

    def state_dict(self):
        return {"tokenizer": self.tokenizer.state_dict()}
