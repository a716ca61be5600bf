"""Language modelling: predict the next token of a corpus: a text file tokenised in memory, or a token dataset
on disk read through memmap (trainers/data.py), with characters, GPT-2 BPE or a tokenizer.json."""
from __future__ import annotations

import torch

from trainers import data as textdata
from trainers.config import ConfigError
from trainers.internals import PROBE_TOKENS, token_label
from trainers.models import build_model
from trainers.models.contract import LanguageModel
from trainers.tasks import Task as BaseTask
from trainers.tokenizer import describe, identity


class Task(BaseTask):
    """Batches come in nanoGPT's order: one stream of random windows, drawn from a generator that starts from
    torch's RNG state right after the model is initialised (where nanoGPT's get_batch starts drawing), the
    next training batch drawn as soon as the current one is taken, and each eval drawing fresh batches of
    both splits from the same stream (evals at step 0 and every eval_interval). So a run with nanoGPT's
    configuration and seed sees exactly nanoGPT's batches. The stream's state and the batch already drawn
    are in every checkpoint: a resumed run draws what the uninterrupted one would have.

    With data.order=sequential the training batches walk the train split instead (llm.c's order: row i of a
    batch starts i x block_size tokens after row 0, the next batch where this one ended, the split again when
    it runs out); the position is in every checkpoint. Evals then score the first eval_iters batches of val
    (the same tokens every time) and random train windows from a generator of their own."""
    unit = "tokens"
    default_corpus = "shakespeare.txt"
    sample_prompt = "\n"
    eval_at_start = True  # the curve starts at the untrained loss, ln(vocab)
    contract = LanguageModel

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        textdata.check_data(cfg["data"], cfg["model"]["block_size"])

    def __init__(self, cfg, device, log=None, amp_dtype=None):
        super().__init__(cfg, device, log, amp_dtype)
        self.order = cfg["data"].get("order", "random")
        self.open_data(cfg["data"])
        self.data_gen = torch.Generator()
        self.pending = None  # the next training batch, already drawn
        self.position, self.epoch = 0, 0  # data.order=sequential: where the next training batch starts
        self._probe = None  # the internals probe, drawn once

    def open_data(self, d: dict):
        """Set the tokenizer, the stream of batches and the dataset run_start records, from `data.*`."""
        cfg = self.cfg
        dataset = textdata.open_tokens(d.get("path", ""), d["val_fraction"])
        if dataset is None:
            text, source = textdata.load_text(d.get("path", ""), self.default_corpus)
            self.tokenizer = self.make_tokenizer(text)
            ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
            # model.block_size read after make_tokenizer: a fine-tune's base sets it there
            self.stream = textdata.TokenStream(ids, d["val_fraction"], cfg["model"]["block_size"], source)
            self.dataset = textdata.text_info(source, self.stream, self.tokenizer)
            self.log("info", f"data: {source}, {len(ids):,} tokens ({self.tokenizer.kind} tokenizer, "
                             f"vocab {self.tokenizer.vocab_size})")
        else:
            self.tokenizer = self.dataset_tokenizer(dataset)
            self.stream = textdata.ShardStream(dataset, cfg["model"]["block_size"], self.tokenizer.vocab_size)
            self.dataset = dataset.info(self.tokenizer.state_dict(), self.tokenizer.vocab_size)
            self.log("info", f"data: {dataset.path} ({dataset.format}), train {len(dataset.train):,} tokens in "
                             f"{len(dataset.train.files)} file(s), val {len(dataset.val):,} tokens "
                             f"({self.dataset['tokenizer']} tokenizer, vocab {self.tokenizer.vocab_size}), "
                             "read through memmap")
            for note in dataset.notes:
                self.log("info", f"data: {note}")

    def dataset_info(self) -> dict:
        return self.dataset

    def dataset_tokenizer(self, dataset):
        return textdata.dataset_tokenizer(dataset, self.cfg["data"]["tokenizer"])

    def fork_data_rng(self):
        """Start the data stream from torch's RNG as it is now: after the model's initialisation."""
        self.data_gen.set_state(torch.get_rng_state())
        self.pending = None

    def draw(self, split, batch_size):
        if self.order == "sequential" and split == "train":
            if self.position + batch_size * self.stream.block_size + 1 > self.stream.length("train"):
                self.position, self.epoch = 0, self.epoch + 1
                self.log("info", f"data: epoch {self.epoch + 1} of the train split begins")
            batch, self.position = self.stream.consecutive("train", batch_size, self.position)
            return batch
        return self.stream.batch(split, batch_size, self.data_gen)

    def make_tokenizer(self, text: str):
        return textdata.make_tokenizer(self.cfg["data"]["tokenizer"], text)

    def build_model(self):
        model = build_model(self.cfg["arch"], self.cfg["model"], contract=self.contract,
                            vocab_size=self.tokenizer.vocab_size, kernels=self.cfg.get("kernels", "torch"),
                            activation_checkpointing=self.cfg["train"]["activation_checkpointing"])
        self.fork_data_rng()
        return model

    def get_batch(self, split, step, micro=0, batch_size=None):
        """The next training batch of the stream (step and micro are implied by the order of calls)."""
        bs = batch_size or self.cfg["train"]["batch_size"]
        if split != "train":
            x, y = self.draw(split, bs)
        else:
            if self.pending is None:
                self.pending = self.draw("train", bs)
            (x, y), self.pending = self.pending, self.draw("train", bs)  # nanoGPT prefetches the next one
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def eval_batches(self, step: int, batch_size: int | None = None):
        """Fresh batches of both splits for one eval. Evals on the schedule (step 0 and every eval_interval)
        draw them from the stream, as nanoGPT does; an eval off the schedule (the last step of a run that
        ends between evals) draws from a generator of its own, so that it does not move the stream and a run
        stopped there and resumed trains on the batches the uninterrupted run would. DDP ranks that do not
        evaluate draw the same batches (skip_eval) so that every rank's stream stays in step."""
        n, every = self.cfg["train"]["eval_iters"], self.cfg["train"]["eval_interval"]
        bs = batch_size or self.cfg["train"]["batch_size"]
        if self.order == "sequential":  # val from its start every time; train windows that leave the walk be
            g, position, val = self.generator("test", step), 0, []
            for _ in range(n):
                batch, position = self.stream.consecutive("val", bs, position)
                val.append(batch)
            return {"train": [self.stream.batch("train", bs, g) for _ in range(n)], "val": val}
        if step % every == 0:
            if self.pending is None:
                self.pending = self.draw("train", bs)
            return {split: [self.draw(split, bs) for _ in range(n)] for split in ("train", "val")}
        g = self.generator("test", step)
        return {split: [self.stream.batch(split, bs, g) for _ in range(n)] for split in ("train", "val")}

    def skip_eval(self, step: int, batch_size: int | None = None):
        self.eval_batches(step, batch_size)

    def batch_units(self, batch) -> int:
        return batch[0].numel()

    def loss(self, model, batch):
        _, loss = model(*batch)
        return loss

    @torch.no_grad()
    def evaluate(self, model, step, batch_size=None):
        out = {}
        for split, batches in self.eval_batches(step, batch_size).items():
            losses = []
            for x, y in batches:
                with self.autocast():
                    _, loss = model(x.to(self.device), y.to(self.device))
                losses.append(loss.item())
            out[split] = sum(losses) / len(losses)
        metrics = {"train_loss": out["train"], **model.metrics()}
        # the model's extra eval fields, e.g. MoE's `experts` (per-expert counts, balance loss)
        return {"val_loss": out["val"], "metrics": metrics, **model.eval_fields()}

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

    def probe(self) -> torch.Tensor:
        """The internals probe (1, T): a window of the held-out split, T = PROBE_TOKENS (or the context, if
        shorter), the same at every probe of the run; drawn from a generator of its own (the data stream's
        batches are untouched)."""
        if self._probe is None:
            x, _ = self.stream.batch("val", 1, self.generator("probe", 0))
            self._probe = x[:1, :min(PROBE_TOKENS, self.stream.block_size)].to(self.device)
        return self._probe

    def decode_each(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    @torch.no_grad()
    def internals(self, model, step):
        idx = self.probe()
        return {"probe": f"a held-out window of {idx.size(1)} tokens",
                "tokens": [token_label(t) for t in self.decode_each(idx[0].tolist())],
                "arrays": model.internals(idx, self.decode_each) if hasattr(model, "internals") else []}

    def state_dict(self):
        return {"tokenizer": self.tokenizer.state_dict(), "data": self.data_state()}

    def data_state(self):
        return {"rng": self.data_gen.get_state(), "pending": self.pending, "position": self.position,
                "epoch": self.epoch}

    def load_state_dict(self, state: dict):
        saved = state.get("tokenizer")
        now = self.tokenizer.state_dict()
        if saved and identity(saved) != identity(now):
            raise ConfigError(f"--resume: the checkpoint was trained with the {describe(saved)} tokenizer, but "
                              f"data.path={self.dataset['path']} with data.tokenizer={self.cfg['data']['tokenizer']} "
                              f"gives {describe(now)}; resume on the data it was trained on, with its tokenizer")
        data = state.get("data")
        if data:
            self.data_gen.set_state(data["rng"])
            self.pending = tuple(data["pending"]) if data["pending"] is not None else None
            self.position, self.epoch = int(data.get("position", 0)), int(data.get("epoch", 0))
