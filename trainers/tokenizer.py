"""Tokenizers, without torch (the trainer and `cockpit data` both use them): characters (nanoGPT's
shakespeare_char), GPT-2's byte-level BPE through tiktoken from the vendored ranks file, and any Hugging Face
`tokenizer.json` (such as one `cockpit data train-tokenizer` writes).

A tokenizer is chosen by `data.tokenizer` (or `--tokenizer`): `char`, `gpt2`, or the path of a tokenizer.json.
Its `state_dict()` goes into checkpoints and dataset manifests: {"kind": "char", "chars": ..., "eot": true},
{"kind": "gpt2"}, or {"kind": "hf", "name": ..., "sha256": ..., "json": ...} (a manifest keeps the file beside
the shards instead of "json"). Two states name the same tokenizer when `identity()` agrees.
"""
from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from trainers.config import ConfigError, read_regular

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TEXT = "<|endoftext|>"
# the end-of-text token of a tokenizer.json: the first of these its vocabulary has
EOT_NAMES = (EOT_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
MAX_TOKENIZER_BYTES = 64 << 20
SPECS = "char, gpt2 or the path of a tokenizer.json (`cockpit data train-tokenizer`)"


def asset_path(name: str) -> Path:
    return Path(str(resources.files("trainers") / "assets" / name))


class CharTokenizer:
    """One token per distinct character of the corpus (nanoGPT's shakespeare_char). With `eot`, one more id
    after the characters ends each document (datasets `cockpit data prepare` writes)."""

    kind = "char"

    def __init__(self, chars: list[str], eot: bool = False):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot = len(self.chars) if eot else None
        self.vocab_size = len(self.chars) + (1 if eot else 0)

    @classmethod
    def from_text(cls, text: str, eot: bool = False) -> "CharTokenizer":
        return cls(sorted(set(text)), eot)

    def encode(self, s: str) -> list[int]:
        # characters unseen in the corpus map to a space-like fallback rather than crashing a prompt
        fallback = self.stoi.get(" ", 0)
        return [self.stoi.get(c, fallback) for c in s]

    def decode(self, ids) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else EOT_TEXT if i == self.eot else "?" for i in ids)

    def state_dict(self) -> dict:
        state = {"kind": "char", "chars": "".join(self.chars)}
        if self.eot is not None:
            state["eot"] = True
        return state


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (r50k_base) from the vendored ranks file: no network access."""

    kind = "gpt2"
    vocab_size = 50257

    def __init__(self):
        import tiktoken
        import tiktoken.load

        ranks = tiktoken.load.load_tiktoken_bpe(str(asset_path("gpt2.tiktoken")))
        self.enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={EOT_TEXT: 50256})
        self.eot = 50256

    def encode(self, s: str) -> list[int]:
        return self.enc.encode_ordinary(s)

    def decode(self, ids) -> str:
        return self.enc.decode([i for i in ids if 0 <= i < self.vocab_size])

    def state_dict(self) -> dict:
        return {"kind": "gpt2"}


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json. Special tokens are never added by encode; the first of
    EOT_NAMES in its vocabulary separates documents."""

    kind = "hf"

    def __init__(self, json_text: str, name: str = "tokenizer.json", what: str = "tokenizer"):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_str(json_text)
        except Exception as e:  # the Rust side raises plain Exceptions with one line of reason
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ConfigError(f"{what}: not a Hugging Face tokenizer.json ({reason}); give a file "
                              "`cockpit data train-tokenizer` wrote, or one saved with Tokenizer.save") from None
        self.json, self.name = json_text, name
        self.sha256 = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values(), default=-1) + 1
        if self.vocab_size < 1:
            raise ConfigError(f"{what}: the tokenizer has an empty vocabulary; train it on some text first")
        self.eot = next((vocab[t] for t in EOT_NAMES if t in vocab), None)

    @classmethod
    def from_file(cls, path: str | Path, what: str) -> "HFTokenizer":
        data = read_regular(Path(path).expanduser(), what, "give the path of a tokenizer.json",
                            limit=MAX_TOKENIZER_BYTES)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{what}: not a tokenizer.json (not UTF-8 text); give the path of a "
                              "tokenizer.json") from None
        return cls(text, Path(path).name, what)

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=False)

    def state_dict(self) -> dict:
        return {"kind": "hf", "name": self.name, "sha256": self.sha256, "json": self.json}


def tokenizer_from_state(state: dict):
    kind = state.get("kind")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "hf":
        return HFTokenizer(state["json"], state.get("name") or "tokenizer.json")
    return CharTokenizer(list(state["chars"]), bool(state.get("eot")))


def check_spec(spec: str, key: str = "data.tokenizer") -> None:
    """ConfigError unless `spec` is char, gpt2 or a path ending in .json (whether the file is there is checked
    where it is read)."""
    if spec not in ("char", "gpt2") and not spec.endswith(".json"):
        raise ConfigError(f"{key}{' ' if key.startswith('--') else '='}{spec!r} is not allowed; use {SPECS}")


def load_spec(spec: str, text: str | None = None, key: str = "data.tokenizer"):
    """The tokenizer `spec` names. `char` needs the text whose characters it holds."""
    check_spec(spec, key)
    if spec == "gpt2":
        return GPT2Tokenizer()
    if spec == "char":
        if text is None:
            raise ValueError("a char tokenizer is built from its corpus")
        return CharTokenizer.from_text(text)
    return HFTokenizer.from_file(spec, f"{key}={spec}")


def identity(state: dict) -> tuple:
    """What makes two tokenizer states the same tokenizer."""
    kind = state.get("kind")
    if kind == "hf":
        return ("hf", state.get("sha256"))
    if kind == "char":
        return ("char", state.get("chars"), bool(state.get("eot")))
    return (kind,)


def describe(state: dict) -> str:
    """A tokenizer in a few words, for messages: `gpt2`, `char (65 characters)`, `tok.json (sha256 1a2b3c4d5e6f)`."""
    kind = state.get("kind")
    if kind == "hf":
        return f"{state.get('name') or 'tokenizer.json'} (sha256 {str(state.get('sha256'))[:12]})"
    if kind == "char":
        return f"char ({len(state.get('chars', ''))} characters{' + end-of-text' if state.get('eot') else ''})"
    return str(kind)
