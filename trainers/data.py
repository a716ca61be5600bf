"""Text data: the embedded corpora, any text file, and two tokenizers (characters; GPT-2 BPE via tiktoken).

No download ever happens implicitly: `download_tinyshakespeare()` exists for users with internet and is
only called by `python -m trainers.data --download-tinyshakespeare DEST`.
"""
from __future__ import annotations

import hashlib
import sys
import urllib.request
from importlib import resources
from pathlib import Path

import torch

from trainers.config import ConfigError, open_regular, read_regular

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def asset_path(name: str) -> Path:
    return Path(str(resources.files("trainers") / "assets" / name))


def text_path(path: str) -> Path | None:
    """`data.path` checked without reading it (None: the embedded corpus): an existing regular file that can
    be opened; a named pipe, a device or a directory is refused (ConfigError) rather than read."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"data.path={path}: file not found; give an existing text file")
    if p.is_dir():
        raise ConfigError(f"data.path={path}: is a directory; give a text file")
    with open_regular(p, f"data.path={path}", "give a text file"):
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


class CharTokenizer:
    """One token per distinct character of the corpus (nanoGPT's shakespeare_char)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, s: str) -> list[int]:
        # characters unseen in the corpus map to a space-like fallback rather than crashing a prompt
        fallback = self.stoi.get(" ", 0)
        return [self.stoi.get(c, fallback) for c in s]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] if 0 <= i < self.vocab_size else "?" for i in ids)

    def state_dict(self) -> dict:
        return {"kind": "char", "chars": "".join(self.chars)}


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (r50k_base) from the vendored ranks file: no network access."""

    kind = "gpt2"
    vocab_size = 50257

    def __init__(self):
        import tiktoken
        import tiktoken.load

        ranks = tiktoken.load.load_tiktoken_bpe(str(asset_path("gpt2.tiktoken")))
        self.enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={"<|endoftext|>": 50256})
        self.eot = 50256

    def encode(self, s: str) -> list[int]:
        return self.enc.encode_ordinary(s)

    def decode(self, ids) -> str:
        return self.enc.decode([i for i in ids if 0 <= i < self.vocab_size])

    def state_dict(self) -> dict:
        return {"kind": "gpt2"}


def tokenizer_from_state(state: dict):
    if state.get("kind") == "gpt2":
        return GPT2Tokenizer()
    return CharTokenizer(list(state["chars"]))


def make_tokenizer(kind: str, text: str):
    return GPT2Tokenizer() if kind == "gpt2" else CharTokenizer.from_text(text)


class TokenStream:
    """A tokenised corpus split into train/val (the last `val_fraction`), sampled as random windows."""

    def __init__(self, ids: torch.Tensor, val_fraction: float, block_size: int, source: str):
        n = int(len(ids) * (1 - val_fraction))
        self.train, self.val = ids[:n], ids[n:]
        self.block_size = block_size
        for split, t in (("train", self.train), ("val", self.val)):
            if len(t) <= block_size + 1:
                raise ConfigError(
                    f"data.path={source}: the {split} split has {len(t)} tokens, fewer than one block "
                    f"(model.block_size={block_size}); use a longer text or a smaller model.block_size")

    def batch(self, split: str, batch_size: int, generator: torch.Generator):
        data = self.train if split == "train" else self.val
        ix = torch.randint(len(data) - self.block_size, (batch_size,), generator=generator)
        x = torch.stack([data[i:i + self.block_size] for i in ix.tolist()])
        y = torch.stack([data[i + 1:i + 1 + self.block_size] for i in ix.tolist()])
        return x, y


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
