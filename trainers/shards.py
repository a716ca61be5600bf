"""Token shards on disk, without torch: llm.c's .bin layout, nanoGPT's raw train.bin/val.bin, and the
directories `cockpit data prepare` writes (llm.c shards plus manifest.json).

llm.c's layout (its dev/data/data_common.py write_datafile, read by llmc/dataloader.h): a header of 256
little-endian int32 (header[0] the magic, [1] the version, [2] the number of tokens, the rest zero), then the
tokens: uint16 for vocabularies up to 65,535 ids (magic 20240520, version 1: GPT-2's), uint32 beyond (magic
20240801, version 7: how llm.c writes LLaMA 3's). nanoGPT's prepare.py writes bare uint16 tokens, no header,
and for a character corpus a meta.pkl with the characters.

Reading never maps a whole corpus for the life of a run: each read maps the shards it touches and lets the
mapping go when it returns (nanoGPT recreates its np.memmap every batch for the same reason), so the
trainer's resident memory does not grow with the pages a run has visited.
"""
from __future__ import annotations

import bisect
import glob as globlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainers.config import ConfigError, open_regular
from trainers.tokenizer import describe, identity

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
LAYOUTS = {np.dtype(np.uint16): (20240520, 1), np.dtype(np.uint32): (20240801, 7)}  # dtype -> (magic, version)
DTYPES = {layout: dtype for dtype, layout in LAYOUTS.items()}
MAX_SHARD_TOKENS = 2**31 - 1  # header[2] is an int32
MANIFEST = "manifest.json"
PROGRESS = "prepare.json"      # an unfinished `cockpit data prepare` (no manifest yet)
TOKENIZER_FILE = "tokenizer.json"
PREPARE_AGAIN = "run the same `cockpit data prepare` again to write it anew"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocabularies up to 65,535), uint32 beyond."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def header_bytes(n_tokens: int, dtype) -> bytes:
    """llm.c's 1024-byte header for a shard of `n_tokens` tokens of `dtype`."""
    if not 0 <= n_tokens <= MAX_SHARD_TOKENS:
        raise ValueError(f"a shard holds at most {MAX_SHARD_TOKENS:,} tokens, not {n_tokens:,}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1] = LAYOUTS[np.dtype(dtype)]
    header[2] = n_tokens
    return header.tobytes()


def write_shard(path: str | Path, tokens: np.ndarray) -> Path:
    """One complete shard, atomically: written beside `path`, flushed to disk, then renamed into place."""
    path = Path(path)
    tokens = np.ascontiguousarray(tokens)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(header_bytes(len(tokens), tokens.dtype))
        f.write(tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_header(path: Path, what: str) -> tuple[np.dtype, int]:
    """(dtype, token count) of an llm.c shard, checked against the file's size; ConfigError naming the file."""
    with open_regular(path, what, "give llm.c .bin shards") as f:
        head = f.read(HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
    if len(head) < HEADER_BYTES:
        raise ConfigError(f"{path}: {size} bytes, shorter than llm.c's {HEADER_BYTES}-byte header; the file is "
                          f"truncated or not a shard: {PREPARE_AGAIN}, or remove it")
    magic, version, count = (int(v) for v in np.frombuffer(head[:12], dtype="<i4"))
    dtype = DTYPES.get((magic, version))
    if dtype is None:
        raise ConfigError(f"{path}: header magic {magic} version {version} is not llm.c's (20240520 version 1, "
                          "20240801 version 7); give shards llm.c's or cockpit's prepare wrote")
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ConfigError(f"{path}: {state}: its header says {count:,} tokens ({expected:,} bytes) but the file "
                          f"has {size:,} bytes; {PREPARE_AGAIN}, or remove the shard")
    return dtype, count


def has_llmc_header(path: Path) -> bool:
    try:
        with open_regular(path, str(path), "give a .bin file") as f:
            head = f.read(8)
    except ConfigError:
        return False
    return len(head) == 8 and tuple(int(v) for v in np.frombuffer(head, dtype="<i4")) in DTYPES


# --- reading -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenFile:
    path: Path
    offset: int       # bytes before the first token
    count: int        # tokens
    dtype: np.dtype


class Split:
    """One split of a corpus: the concatenation of its files' tokens, or a range [start, stop) of it."""

    def __init__(self, files: list[TokenFile], start: int = 0, stop: int | None = None):
        self.files = files
        self.ends = np.cumsum([f.count for f in files]).tolist()
        total = self.ends[-1] if self.ends else 0
        self.start, self.stop = start, total if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def part(self, start: int, stop: int) -> "Split":
        """Tokens [start, stop) of this split, as a split over the same files."""
        return Split(self.files, self.start + start, self.start + stop)

    def windows(self, starts, length: int) -> np.ndarray:
        """Tokens [s, s + length) for each s of `starts`, as an int64 array [len(starts), length]."""
        out = np.empty((len(starts), length), dtype=np.int64)
        maps: dict[int, np.memmap] = {}  # the shards this call maps; released when it returns
        for row, s in enumerate(starts):
            if s < 0 or s + length > len(self):
                raise IndexError(f"window [{s}, {s + length}) outside a split of {len(self)} tokens")
            pos, filled = self.start + int(s), 0
            while filled < length:
                k = bisect.bisect_right(self.ends, pos)
                begin = self.ends[k - 1] if k else 0
                if k not in maps:
                    f = self.files[k]
                    maps[k] = np.memmap(f.path, dtype=f.dtype.newbyteorder("<"), mode="r", offset=f.offset,
                                        shape=(f.count,))
                take = min(length - filled, self.ends[k] - pos)
                out[row, filled:filled + take] = maps[k][pos - begin:pos - begin + take]
                filled += take
                pos += take
        return out

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) as int64."""
        return self.windows([start], n)[0]


@dataclass
class TokenDataset:
    """A tokenised corpus on disk: its splits, the tokenizer it was made with (None: not recorded), and how it
    came to be (`format`: prepared, llm.c or nanogpt; a prepared one's manifest)."""

    path: str
    format: str
    train: Split
    val: Split
    tokenizer: dict | None = None
    manifest: dict | None = None
    expects: str = ""  # for data without a recorded tokenizer: which tokenizers can have written it
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.manifest and self.manifest.get("name"):
            return str(self.manifest["name"])
        p = Path(self.path.rstrip("/"))
        return p.name if p.is_dir() else p.parent.name or p.name

    @property
    def dtype(self) -> np.dtype:
        return self.train.files[0].dtype

    def info(self, tokenizer_state: dict, vocab_size: int) -> dict:
        """The dataset as run_start records it."""
        return {"name": self.name, "path": self.path, "format": self.format,
                "tokens": {"train": len(self.train), "val": len(self.val)},
                "shards": {"train": len(self.train.files), "val": len(self.val.files)},
                "tokenizer": describe(tokenizer_state), "vocab_size": vocab_size, "manifest": self.manifest}

    def check_tokenizer(self, state: dict | None, shown: str, fix: str, key: str = "data.tokenizer") -> None:
        """ConfigError unless the tokenizer `state` (None: a char tokenizer without characters yet), which
        `key` names and `shown` describes, can be the one this data was made with."""
        made = self.tokenizer
        if made is not None:
            if state is None or identity(made) != identity(state):
                raise ConfigError(f"data.path={self.path} was prepared with the {describe(made)} tokenizer, but "
                                  f"{key} is {shown}; {fix}")
        elif self.expects and (state or {"kind": "char"}).get("kind") not in self.expects_kinds():
            raise ConfigError(f"data.path={self.path}: {self.expects}, but {key} is {shown}; {fix}")

    def expects_kinds(self) -> tuple[str, ...]:
        return ("gpt2", "hf") if self.dtype == np.uint16 else ("hf",)

    def suggest(self) -> str:
        """The data.tokenizer value that fits this data."""
        made = self.tokenizer
        if made is None:
            return "gpt2" if self.dtype == np.uint16 else "PATH/tokenizer.json"
        if made.get("kind") == "hf":
            return str(Path(self.path) / TOKENIZER_FILE)
        return str(made.get("kind"))


def _split_of(paths: list[Path], what: str) -> Split:
    files = []
    for p in paths:
        dtype, count = read_header(p, what)
        files.append(TokenFile(p, HEADER_BYTES, count, dtype))
    if len({f.dtype for f in files}) > 1:
        raise ConfigError(f"{what}: its shards mix uint16 and uint32 tokens; give shards of one tokenizer")
    return Split(files)


def _raw_split(path: Path, what: str) -> Split:
    with open_regular(path, what, "give nanoGPT's train.bin/val.bin or llm.c shards") as f:
        size = os.fstat(f.fileno()).st_size
    if size % 2:
        raise ConfigError(f"{path}: {size:,} bytes, an odd number for uint16 tokens: the file is truncated; "
                          "write it again with nanoGPT's prepare.py")
    return Split([TokenFile(path, 0, size // 2, np.dtype(np.uint16))])


class _NoCode(pickle.Unpickler):
    """Unpickles plain data only (dicts, strings, numbers): a meta.pkl that names any class or function is
    refused instead of run."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _nanogpt_meta(directory: Path, what: str) -> dict | None:
    """The char tokenizer of nanoGPT's meta.pkl ({vocab_size, itos, stoi}), or None without one."""
    meta_path = directory / "meta.pkl"
    if not meta_path.is_file():
        return None
    try:
        with open_regular(meta_path, what, "give nanoGPT's meta.pkl") as f:
            meta = _NoCode(f).load()
        itos = meta["itos"]
        chars = [itos[i] for i in range(int(meta["vocab_size"]))]
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as e:
        raise ConfigError(f"{meta_path}: not nanoGPT's meta.pkl of a character corpus ({e}); remove it to "
                          "read the tokens as GPT-2's") from None
    if not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise ConfigError(f"{meta_path}: its itos is not one character per id; remove it to read the tokens "
                          "as GPT-2's")
    return {"kind": "char", "chars": "".join(chars)}


def _val_for(train_paths: list[Path]) -> list[Path]:
    """llm.c names a set's shards NAME_train_000001.bin ... and NAME_val_000000.bin: the val shards of a train
    set are the files named like its first one with `train` read as `val` and any shard number."""
    first = train_paths[0]
    if "train" not in first.name:
        return []
    head, _, tail = first.name.rpartition("train")
    pattern = globlib.escape(head) + "val" + re.sub(r"\d+(?=\.bin$)", "*", globlib.escape(tail))
    return sorted(p for p in first.parent.glob(pattern) if p.is_file())


def _manifest_dataset(directory: Path, what: str) -> TokenDataset:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        splits = {name: [directory / s["file"] for s in manifest["splits"][name]["shards"]]
                  for name in ("train", "val")}
        counts = {name: [int(s["tokens"]) for s in manifest["splits"][name]["shards"]] for name in splits}
        tokenizer = dict(manifest["tokenizer"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{directory / MANIFEST}: unreadable ({type(e).__name__}: {e}); {PREPARE_AGAIN}") from None
    out = {}
    for name, paths in splits.items():
        for p, n in zip(paths, counts[name]):
            if not p.exists():
                raise ConfigError(f"{p}: listed in {directory / MANIFEST} but missing; {PREPARE_AGAIN}")
        out[name] = _split_of(paths, what) if paths else Split([])
        for f, n in zip(out[name].files, counts[name]):
            if f.count != n:
                raise ConfigError(f"{f.path}: {f.count:,} tokens, but {MANIFEST} lists {n:,}; {PREPARE_AGAIN}")
    if not out["train"].files:
        raise ConfigError(f"{directory / MANIFEST}: no train shards; {PREPARE_AGAIN}")
    if tokenizer.get("kind") == "hf":
        tok_path = directory / tokenizer.get("file", TOKENIZER_FILE)
        with open_regular(tok_path, f"{what} ({TOKENIZER_FILE})", PREPARE_AGAIN) as f:
            tokenizer["json"] = f.read().decode("utf-8", errors="replace")
    return TokenDataset(str(directory), "prepared", out["train"], out["val"], tokenizer, manifest)


def _from_bins(path: str, train_paths: list[Path], val_paths: list[Path], what: str) -> TokenDataset:
    if has_llmc_header(train_paths[0]):
        train, val = _split_of(train_paths, what), _split_of(val_paths, what) if val_paths else Split([])
        ds = TokenDataset(path, "llm.c", train, val)
        ds.expects = ("its llm.c shards hold GPT-2 tokens (uint16; or another tokenizer's of up to 65,535 ids)"
                      if ds.dtype == np.uint16 else "its llm.c shards hold uint32 tokens (LLaMA 3's)")
        return ds
    train = Split([f for p in train_paths for f in _raw_split(p, what).files])
    val = Split([f for p in val_paths for f in _raw_split(p, what).files])
    meta = _nanogpt_meta(train_paths[0].parent, what)
    ds = TokenDataset(path, "nanogpt", train, val, tokenizer=meta)
    if meta is None:
        ds.expects = "it holds bare uint16 tokens without a meta.pkl, GPT-2's as nanoGPT's prepare.py writes them"
    return ds


def open_tokens(path: str, val_fraction: float) -> TokenDataset | None:
    """The token dataset `data.path` names, or None when it names text (or nothing: the embedded corpus).

    A directory with manifest.json (`cockpit data prepare`), with nanoGPT's train.bin (and val.bin, meta.pkl)
    or with llm.c shards (NAME_train_*.bin, NAME_val_*.bin); a .bin file (llm.c's, or nanoGPT's bare uint16) or
    a glob of llm.c shards (`DIR/fineweb_train_*.bin`). Val shards are found by reading `train` as `val` in the
    names; without any, val is the last `val_fraction` of train. Reads headers only (the manifest, each shard's
    1 KB, meta.pkl)."""
    if not path:
        return None
    what = f"data.path={path}"
    p = Path(path).expanduser()
    if not p.exists() and any(c in path for c in "*?["):
        train_paths = sorted(Path(q) for q in globlib.glob(str(p)) if Path(q).is_file())
        if not train_paths:
            raise ConfigError(f"{what}: no files match; give a directory, a .bin file or a glob of llm.c shards")
        ds = _from_bins(path, train_paths, _val_for(train_paths), what)
    elif p.is_dir():
        if (p / MANIFEST).is_file():
            ds = _manifest_dataset(p, what)
        elif (p / PROGRESS).is_file():
            raise ConfigError(f"{what}: its preparation is unfinished (no {MANIFEST} yet); run `cockpit data "
                              "prepare` with the same sources again to finish it")
        elif (p / "train.bin").is_file():
            ds = _from_bins(path, [p / "train.bin"], [p / "val.bin"] if (p / "val.bin").is_file() else [], what)
        else:
            train_paths = sorted(q for q in p.glob("*train*.bin") if q.is_file())
            if not train_paths:
                raise ConfigError(f"{what}: a directory without {MANIFEST}, train.bin or *train*.bin shards; prepare "
                                  f"text with `cockpit data prepare FILES --out {path}`, or give a text file")
            ds = _from_bins(path, train_paths, _val_for(train_paths), what)
    elif p.suffix == ".bin":
        if p.name == "train.bin":
            val = [p.with_name("val.bin")] if p.with_name("val.bin").is_file() else []
        else:
            val = _val_for([p])
        ds = _from_bins(path, [p], val, what)
    else:
        return None
    if len(ds.train) == 0:
        raise ConfigError(f"{what}: its train split holds no tokens; prepare it again from text")
    if len(ds.val) == 0:
        n = int(len(ds.train) * (1 - val_fraction))
        ds.train, ds.val = ds.train.part(0, n), ds.train.part(n, len(ds.train))
        ds.notes.append(f"no val split there: val is the last {val_fraction:g} of train (data.val_fraction)")
    return ds
