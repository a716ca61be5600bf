"""Language-model data: the embedded corpora and any text file (read and tokenised in memory), and token
datasets on disk (trainers/shards.py: `cockpit data prepare` directories, llm.c shards, nanoGPT's train.bin),
read through numpy memmap a batch at a time, so that the trainer's memory does not grow with the corpus.

Both are sampled the same way (Stream): nanoGPT's random windows by default, or consecutive windows through
the train split, one epoch after another (`data.order=sequential`, llm.c's DataLoader order). Tokenizers live
in trainers/tokenizer.py (no torch), re-exported here.

No download ever happens implicitly: `download_tinyshakespeare()` exists for users with internet and is
only called by `python -m trainers.data --download-tinyshakespeare DEST`.
"""
from __future__ import annotations

import hashlib
import sys
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from trainers.config import ConfigError, open_regular, read_regular
from trainers.shards import Split, TokenDataset, open_tokens
from trainers.tokenizer import GPT2Tokenizer, asset_path, describe, load_spec, tokenizer_from_state  # noqa: F401

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def text_path(path: str) -> Path | None:
    """`data.path` checked without reading it (None: the embedded corpus): an existing regular file that can
    be opened; a named pipe or a device is refused (ConfigError) rather than read."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"data.path={path}: file not found; give an existing text file or a prepared directory")
    with open_regular(p, f"data.path={path}", "give a text file or a prepared directory"):
        return p


def load_text(path: str = "", default: str = "shakespeare.txt") -> tuple[str, str]:
    """(text, source). An empty path means the embedded corpus `default`. A file is read up to the size it
    had when opened, never further (text_path refuses what has no size: a pipe, a device)."""
    p = text_path(path)
    if p is None:
        p = asset_path(default)
        return p.read_text(encoding="utf-8"), f"embedded {default}"
    text = read_regular(p, f"data.path={path}", "give a text file").decode("utf-8", errors="replace")
    if not text.strip():
        raise ConfigError(f"data.path={path}: file is empty; give a file with text in it")
    return text, str(p)


def check_data(data: dict, block_size: int, tokenizer: bool = True) -> TokenDataset | None:
    """What `data.*` names, checked before anything is built: a text file that can be read, or a token
    dataset whose headers, lengths and tokenizer (unless `tokenizer` is False: a fine-tune's base decides it)
    fit the run. Returns the dataset (None for text)."""
    spec = data.get("tokenizer", "char")
    if tokenizer and spec not in ("char", "gpt2"):
        load_spec(spec)  # a tokenizer.json that is there and reads
    dataset = open_tokens(data.get("path", ""), data.get("val_fraction", 0.1))
    if dataset is None:
        text_path(data.get("path", ""))
        return None
    if tokenizer:
        dataset_tokenizer(dataset, spec)
    check_lengths(dataset.path, {"train": len(dataset.train), "val": len(dataset.val)}, block_size)
    return dataset


def dataset_tokenizer(dataset: TokenDataset, spec: str):
    """The tokenizer a run with `data.tokenizer=spec` reads `dataset` with: the one the data was made with,
    which `spec` must name (`char` takes a prepared char corpus's characters from its manifest); ConfigError
    naming both otherwise."""
    fix = f"set data.tokenizer={dataset.suggest()}, or prepare the data again with --tokenizer {spec}"
    made = dataset.tokenizer
    if spec == "char":
        if made is not None and made.get("kind") == "char":
            return tokenizer_from_state(made)
        dataset.check_tokenizer(None, "char", fix)
    tok = load_spec(spec)
    dataset.check_tokenizer(tok.state_dict(), describe(tok.state_dict()), fix)
    if tok.vocab_size > np.iinfo(dataset.dtype).max + 1:
        raise ConfigError(f"data.path={dataset.path}: its {dataset.dtype.name} tokens cannot hold the ids of the "
                          f"{tok.vocab_size:,}-token vocabulary of data.tokenizer={spec}; {fix}")
    return tok


def check_lengths(source: str, lengths: dict[str, int], block_size: int) -> None:
    for split, n in lengths.items():
        if n <= block_size + 1:
            raise ConfigError(
                f"data.path={source}: the {split} split has {n} tokens, fewer than one block "
                f"(model.block_size={block_size}); use a longer text or a smaller model.block_size")


class Stream(ABC):
    """Windows of `block_size` + 1 tokens from a corpus's train and val splits, as (x, y) int64 rows. A subclass
    says how long a split is and how to read rows at given starts; sampling is shared."""

    block_size: int
    source: str

    @abstractmethod
    def length(self, split: str) -> int:
        """Tokens in `split`."""

    @abstractmethod
    def rows(self, split: str, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): the windows beginning at `starts`, y shifted by one token."""

    def batch(self, split: str, batch_size: int, generator: torch.Generator):
        """Random windows, drawn as nanoGPT's get_batch draws them."""
        ix = torch.randint(self.length(split) - self.block_size, (batch_size,), generator=generator)
        return self.rows(split, ix.tolist())

    def consecutive(self, split: str, batch_size: int, position: int):
        """(batch, next position): rows starting at position, position + T, ... (T = block_size), each with its
        next-token targets; a batch that would run past the end of the split starts the split again (the next
        epoch), as llm.c's DataLoader does."""
        t = self.block_size
        need = batch_size * t + 1
        n = self.length(split)
        if need > n:
            raise ConfigError(f"data.order=sequential: the {split} split of data.path={self.source} has {n:,} "
                              f"tokens, fewer than one batch of {batch_size} x {t} + 1; use data.order=random "
                              "or a smaller train.batch_size")
        if position + need > n:
            position = 0
        return self.rows(split, [position + i * t for i in range(batch_size)]), position + batch_size * t


class TokenStream(Stream):
    """A corpus tokenised in memory, split into train/val (the last `val_fraction`)."""

    def __init__(self, ids: torch.Tensor, val_fraction: float, block_size: int, source: str):
        n = int(len(ids) * (1 - val_fraction))
        self.train, self.val = ids[:n], ids[n:]
        self.block_size, self.source = block_size, source
        check_lengths(source, {"train": len(self.train), "val": len(self.val)}, block_size)

    def length(self, split: str) -> int:
        return len(self.train if split == "train" else self.val)

    def rows(self, split, starts):
        data = self.train if split == "train" else self.val
        x = torch.stack([data[i:i + self.block_size] for i in starts])
        y = torch.stack([data[i + 1:i + 1 + self.block_size] for i in starts])
        return x, y


class ShardStream(Stream):
    """A token dataset on disk (trainers/shards.py), read through numpy memmap one batch at a time. A token id
    beyond the tokenizer's vocabulary (data tokenised with another tokenizer) is refused, not embedded."""

    def __init__(self, dataset: TokenDataset, block_size: int, vocab_size: int):
        self.dataset, self.block_size, self.source = dataset, block_size, dataset.path
        self.vocab_size = vocab_size
        self.splits: dict[str, Split] = {"train": dataset.train, "val": dataset.val}
        check_lengths(dataset.path, {k: len(v) for k, v in self.splits.items()}, block_size)

    def length(self, split: str) -> int:
        return len(self.splits[split])

    def rows(self, split, starts):
        tokens = self.splits[split].windows(starts, self.block_size + 1)
        top = int(tokens.max()) if tokens.size else 0
        if top >= self.vocab_size:
            raise ConfigError(f"data.path={self.source}: token id {top:,} is beyond the tokenizer's vocabulary of "
                              f"{self.vocab_size:,}: the data was tokenised with another tokenizer; set "
                              f"data.tokenizer={self.dataset.suggest()}")
        t = torch.from_numpy(tokens)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def text_info(source: str, stream: TokenStream, tokenizer) -> dict:
    """A text corpus as run_start records its dataset."""
    embedded = source.startswith("embedded ")
    return {"name": source.removeprefix("embedded ") if embedded else Path(source).name, "path": source,
            "format": "embedded" if embedded else "text",
            "tokens": {"train": stream.length("train"), "val": stream.length("val")},
            "tokenizer": describe(tokenizer.state_dict()),
            "vocab_size": tokenizer.vocab_size, "manifest": None}


def make_tokenizer(kind: str, text: str):
    """The tokenizer `data.tokenizer` names, for a text corpus (`char` is built from its characters)."""
    return load_spec(kind, text)


def download_tinyshakespeare(dest: str | Path) -> Path:
    """Fetch char-rnn's tinyshakespeare (for users with internet) and verify its sha256."""
    dest = Path(dest)
    with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=60) as r:
        data = r.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise ConfigError(f"{TINYSHAKESPEARE_URL}: sha256 {digest} does not match {TINYSHAKESPEARE_SHA256}; "
                          "the download is corrupt, try again")
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--download-tinyshakespeare":
        print(download_tinyshakespeare(sys.argv[2]))
    else:
        print("usage: python -m trainers.data --download-tinyshakespeare DEST", file=sys.stderr)
        raise SystemExit(2)
