"""`cockpit data prepare|train-tokenizer|inspect`: tokenise a corpus once into llm.c shards a trainer reads
through memmap; train a byte-level BPE; look at what was prepared. No torch.

    cockpit data prepare SRC... --tokenizer gpt2|char|PATH --out DIR [--val-fraction F] [--workers N]
    cockpit data train-tokenizer SRC... --vocab N --out tokenizer.json
    cockpit data inspect DIR

Sources are text files (one document each; a line `<|endoftext|>` inside one separates documents, as in
TinyStories' .txt files), JSON Lines (a document per line, its `text` field or --field) and Parquet (its
`text` column or --field; needs pyarrow), given as files or folders of them (read recursively, in name
order; hidden files left out). A folder that holds Parquet or JSON Lines files is a dataset download: only
those are read (not its README), and a .json without the text field there (dataset_info.json) is skipped.

How a prepare works, and why its output is the same however it is run:
- The sources are cut into work units: 4 MiB byte ranges of text and JSON Lines files, row groups of
  Parquet files. A text range ends at a newline that follows a letter or digit (JSON Lines: at a line end),
  found by the workers of both neighbouring units alike. Worker processes read, decode and tokenise units;
  the main process takes their tokens in unit order and writes them.
- Every document starts with the end-of-text token (llm.c's fineweb.py puts it first). A document is
  tokenised in pieces of at most 64 Ki characters cut at a space or newline that follows a letter or digit:
  GPT-2's pre-tokenizer (and a byte-level BPE's) never merges across such a point, so the tokens are those of
  the whole document.
- Pieces go to val or train by their running number: piece i goes to val when floor((i + 1) F) > floor(i F),
  an even F of them, spread through the corpus. (A corpus of fewer than 1 / F pieces has no val split; the
  trainer then takes the last data.val_fraction of train.)
- Each split fills shards of --shard-tokens tokens (100M: llm.c's size is 100M too), NAME_SPLIT_000000.bin,
  in llm.c's layout (trainers/shards.py). A shard is written as NAME.bin.partial, given its header, flushed
  and renamed when full: no reader takes a partial file for a shard. After every unit, prepare.json records
  where the run is (the next unit, the tokens in each partial shard); stopped (Ctrl-C, a kill, a crash) and
  run again with the same arguments, prepare cuts the partial shards back to what it recorded and goes on
  from there. manifest.json, written last, marks the dataset complete.
- Binary files (a NUL byte in their first 8 KiB) are skipped, bytes that are not UTF-8 are decoded as U+FFFD,
  JSON Lines that are not an object with the text field are skipped: each counted in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import BadInput, Parser
from trainers.config import ConfigError, open_regular
from trainers.shards import (
    HEADER_BYTES,
    LAYOUTS,
    MANIFEST,
    MAX_SHARD_TOKENS,
    PROGRESS,
    TOKENIZER_FILE,
    header_bytes,
    open_tokens,
    read_header,
    token_dtype,
)
from trainers.tokenizer import (
    EOT_TEXT,
    SPECS,
    CharTokenizer,
    check_spec,
    describe,
    identity,
    load_spec,
    tokenizer_from_state,
)

FORMAT_VERSION = 1
UNIT_BYTES = 4 << 20            # a work unit of a text or JSON Lines file
PIECE_CHARS = 64 << 10          # the most characters tokenised at once; the unit of the val/train choice
SHARD_TOKENS = 100_000_000
VAL_FRACTION = 0.01
SNIFF_BYTES = 8192
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
STRUCTURED = (".parquet", ".jsonl", ".ndjson")
TEXT_BOUNDARY = re.compile(rb"[A-Za-z0-9]\n")     # a unit of text ends at the newline of such a pair
LINE_END = re.compile(rb"\n")
SOURCES_HELP = "text files, JSON Lines (.jsonl) or Parquet files, or folders of them"


# --- sources -------------------------------------------------------------------------------------------------
@dataclass
class Source:
    path: str
    format: str          # text, jsonl or parquet
    bytes: int
    mtime_ns: int
    units: int
    unit_sizes: list | None = None   # Parquet: compressed bytes of each row group (for progress)

    def key(self) -> list:
        return [self.path, self.bytes, self.mtime_ns]


def find_sources(srcs: list[str], field: str, out: Path | None = None,
                 unit_bytes: int = UNIT_BYTES) -> tuple[list[Source], list[dict]]:
    """(sources, skipped) for SRC arguments: files as given, folders read recursively in name order. Bad input
    (a missing path, an empty file or folder named, JSON Lines or Parquet without the field) is a ConfigError
    naming the file and the fix; binary files are skipped and listed."""
    if not srcs:
        raise BadInput(f"no sources; give {SOURCES_HELP}")
    sources: list[Source] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    out_resolved = out.resolve() if out is not None else None
    for src in srcs:
        p = Path(src).expanduser()
        if not p.exists():
            raise ConfigError(f"{src}: not found; give {SOURCES_HELP}")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts)
                           and (out_resolved is None or out_resolved not in f.resolve().parents))
            if not files:
                raise ConfigError(f"{src}: an empty folder; give {SOURCES_HELP}")
            if any(f.suffix.lower() in STRUCTURED for f in files):  # a dataset download: its README is no text
                for f in files:
                    if f.suffix.lower() not in STRUCTURED:
                        skipped.append({"path": str(f.resolve()), "reason": "beside Parquet / JSON Lines files"})
                files = [f for f in files if f.suffix.lower() in STRUCTURED]
            named = False
        else:
            files, named = [p], True
        for f in files:
            key = str(f.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                source = _source(f, field, named, skipped, unit_bytes)
            except ConfigError as e:
                if named or f.suffix.lower() not in STRUCTURED + (".json",):
                    raise
                skipped.append({"path": key, "reason": str(e).removeprefix(f"{f}: ")})  # e.g. dataset_info.json
                continue
            if source is not None:
                sources.append(source)
    if not sources:
        reasons = ", ".join(f"{s['path']} ({s['reason']})" for s in skipped[:3])
        raise ConfigError(f"no text to prepare in {' '.join(srcs)}: every file was skipped ({reasons}"
                          f"{', ...' if len(skipped) > 3 else ''}); give {SOURCES_HELP}")
    return sources, skipped


def _source(f: Path, field: str, named: bool, skipped: list[dict], unit_bytes: int) -> Source | None:
    with open_regular(f, str(f), f"give {SOURCES_HELP}") as fh:
        st = os.fstat(fh.fileno())
        head = fh.read(SNIFF_BYTES)
    path = str(f.resolve())
    if st.st_size == 0:
        if named:
            raise ConfigError(f"{f}: is empty; give a file with text in it")
        skipped.append({"path": path, "reason": "empty"})
        return None
    suffix = f.suffix.lower()
    if suffix == ".parquet":
        return _parquet_source(f, path, st, field, named, skipped)
    if b"\0" in head:
        skipped.append({"path": path, "reason": "binary (NUL bytes)"})
        return None
    if suffix in JSONL_SUFFIXES:
        _check_jsonl(f, head, field)
        kind = "jsonl"
    else:
        kind = "text"
    return Source(path, kind, st.st_size, st.st_mtime_ns, max(1, math.ceil(st.st_size / unit_bytes)))


def _check_jsonl(f: Path, head: bytes, field: str) -> None:
    """The first line of a JSON Lines file must be an object with a string `field`."""
    import msgspec

    if head.lstrip()[:1] == b"[":
        raise ConfigError(f"{f}: a JSON array, not JSON Lines; write one JSON object per line")
    with open(f, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as e:
                raise ConfigError(f"{f}: line {number} is not JSON ({e}); give JSON Lines, one object per "
                                  "line") from None
            if not isinstance(obj, dict) or field not in obj:
                fields = ", ".join(list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
                raise ConfigError(f"{f}: line {number} has no `{field}` field (it has: {fields}); pass "
                                  "--field NAME to read another")
            if not isinstance(obj[field], str):
                raise ConfigError(f"{f}: line {number}: `{field}` is {type(obj[field]).__name__}, not text; "
                                  "pass --field NAME to read another field")
            return
    raise ConfigError(f"{f}: only blank lines; give a file with text in it")


def _parquet_source(f: Path, path: str, st, field: str, named: bool, skipped: list[dict]) -> Source | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{f}: reading Parquet needs pyarrow; pip install 'cockpit[data]' (or pyarrow)") from None
    try:
        meta = pq.ParquetFile(f).metadata
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(f"{f}: not a readable Parquet file ({str(e).splitlines()[0][:160]}); give a "
                          "Parquet file, or rename a file that is not one") from None
    if field not in schema.names:
        raise ConfigError(f"{f}: no column `{field}` (its columns: {', '.join(schema.names[:8])}); pass "
                          "--field NAME to read another")
    typ = schema.field(field).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise ConfigError(f"{f}: column `{field}` holds {typ}, not text; pass --field NAME to read another")
    if meta.num_rows == 0:
        if named:
            raise ConfigError(f"{f}: has no rows; give a file with text in it")
        skipped.append({"path": path, "reason": "empty"})
        return None
    col = schema.names.index(field)
    sizes = [meta.row_group(i).column(col).total_compressed_size for i in range(meta.num_row_groups)]
    return Source(path, "parquet", st.st_size, st.st_mtime_ns, meta.num_row_groups, sizes)


# --- reading a unit (in workers) -----------------------------------------------------------------------------
def _boundary(f, offset: int, size: int, pattern: re.Pattern) -> int:
    """The first boundary at or after `offset`: for text, the newline of a letter-or-digit + newline pair; for
    JSON Lines, the start of a line. 0 at the start, `size` when none follows."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    pos = offset - 1  # the pair may start one byte before offset
    while pos < size:
        f.seek(pos)
        chunk = f.read(min(1 << 16, size - pos))
        m = pattern.search(chunk)
        if m:
            return pos + m.end() - (1 if pattern is TEXT_BOUNDARY else 0)
        if len(chunk) < 2:
            break
        pos += len(chunk) - 1
    return size


def read_unit(source: dict, k: int, field: str, unit_bytes: int = UNIT_BYTES) -> tuple[list[tuple[str, bool]], dict]:
    """The documents of unit k of a source (units of `unit_bytes` for text and JSON Lines), as (text, starts a
    document) segments, and its counts."""
    stats = {"documents": 0, "replaced": 0, "bad_lines": 0, "null_rows": 0, "bytes": 0}
    segments: list[tuple[str, bool]] = []
    if source["format"] == "parquet":
        import pyarrow.parquet as pq

        column = pq.ParquetFile(source["path"]).read_row_group(k, columns=[field]).column(0)
        for value in column.to_pylist():
            if value is None:
                stats["null_rows"] += 1
            elif value:
                segments.append((value, True))
        stats["bytes"] = source["unit_sizes"][k]
        stats["documents"] = len(segments)
        return segments, stats
    size = source["bytes"]  # as it was when the prepare began: a file that grows is read no further
    pattern = TEXT_BOUNDARY if source["format"] == "text" else LINE_END
    with open(source["path"], "rb") as f:
        start = _boundary(f, k * unit_bytes, size, pattern)
        end = _boundary(f, (k + 1) * unit_bytes, size, pattern)
        f.seek(start)
        data = f.read(end - start)
    stats["bytes"] = len(data)
    if source["format"] == "jsonl":
        import msgspec

        decode = msgspec.json.decode
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = decode(line)
                text = obj.get(field) if isinstance(obj, dict) else None
            except msgspec.DecodeError:
                text = None
            if not isinstance(text, str):
                stats["bad_lines"] += 1
            elif text:
                segments.append((text, True))
        stats["documents"] = len(segments)
        return segments, stats
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        stats["replaced"] = text.count("\ufffd") - data.count("\ufffd".encode())
    parts = text.split(EOT_TEXT)
    for i, part in enumerate(parts):
        starts = i > 0 or start == 0
        if i > 0:
            part = part.lstrip()   # what follows a separator line
        if i < len(parts) - 1:
            part = part.rstrip()   # what precedes one
        if part:
            segments.append((part, starts))
            stats["documents"] += starts
    return segments, stats


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """`text` in pieces of at most `limit` characters, each cut before a space or newline that follows an ASCII
    letter or digit (where the GPT-2 pre-tokenizer splits anyway), in the last half of the window; a window
    without one is cut at its end."""
    out, i, n = [], 0, len(text)
    while n - i > limit:
        lo, cut = i + limit // 2, -1
        hi = i + limit
        while hi > lo:
            j = max(text.rfind(" ", lo, hi), text.rfind("\n", lo, hi))
            if j <= lo:
                break
            prev = text[j - 1]
            if prev.isascii() and prev.isalnum():
                cut = j
                break
            hi = j
        cut = cut if cut > i else i + limit
        out.append(text[i:cut])
        i = cut
    out.append(text[i:])
    return out


# --- tokenising (in workers) ---------------------------------------------------------------------------------
_worker: dict = {}


def _init_worker(tokenizer_state: dict | None, field: str, unit_bytes: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _worker.clear()
    _worker["field"], _worker["unit_bytes"] = field, unit_bytes
    if tokenizer_state is None:
        return
    tok = tokenizer_from_state(tokenizer_state)
    _worker["tok"], _worker["dtype"] = tok, token_dtype(tok.vocab_size)
    if isinstance(tok, CharTokenizer):  # a lookup table from code points: no Python loop per character
        table = np.zeros(max(map(ord, tok.chars), default=0) + 1, dtype=np.int64)
        for i, c in enumerate(tok.chars):
            table[ord(c)] = i
        _worker["table"] = table


def _encode(text: str) -> np.ndarray:
    table = _worker.get("table")
    if table is not None:
        return table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    return np.asarray(_worker["tok"].encode(text), dtype=np.int64)


def tokenise_unit(task: tuple) -> tuple:
    """(unit, tokens, piece lengths, counts) for one unit: each piece's tokens, a document's first piece
    led by the end-of-text token."""
    unit, source, k = task
    segments, stats = read_unit(source, k, _worker["field"], _worker["unit_bytes"])
    tok, dtype = _worker["tok"], _worker["dtype"]
    arrays, lengths = [], []
    eot = np.asarray([tok.eot], dtype=np.int64)
    for text, starts in segments:
        for j, piece in enumerate(pieces(text)):
            ids = _encode(piece)
            if starts and j == 0:
                ids = np.concatenate([eot, ids])
            arrays.append(ids)
            lengths.append(len(ids))
    tokens = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
    return unit, tokens, np.asarray(lengths, dtype=np.int64), stats


def characters_of_unit(task: tuple) -> tuple[int, str]:
    """(unit, its distinct characters): the first pass of a char tokenizer."""
    unit, source, k = task
    segments, _ = read_unit(source, k, _worker["field"], _worker["unit_bytes"])
    chars: set[str] = set()
    for text, _ in segments:
        chars.update(text)
    return unit, "".join(sorted(chars))


def _pool(workers: int, tokenizer_state: dict | None, field: str, unit_bytes: int):
    """Worker processes from a fork server (a clean process: no threads of this one are copied), or spawned
    where there is none."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload(["trainers.dataprep"])
    return ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_state, field, unit_bytes))


# --- writing (in the main process) ---------------------------------------------------------------------------
class SplitWriter:
    """The shards of one split: tokens go into NAME_SPLIT_i.bin.partial, which becomes NAME_SPLIT_i.bin (its
    header written, flushed, renamed) when it holds `shard_tokens`. Opened on what a saved state says: the
    completed shards and the tokens of the partial one (a partial file is cut back to that)."""

    def __init__(self, out: Path, prefix: str, split: str, dtype: np.dtype, shard_tokens: int, saved: dict):
        self.out, self.prefix, self.split, self.dtype, self.shard_tokens = out, prefix, split, dtype, shard_tokens
        self.shards: list[dict] = list(saved.get("shards", []))
        self.partial = int(saved.get("partial", 0))
        final, partial = self._paths()
        if self.partial and not partial.exists() and final.exists():
            os.replace(final, partial)  # stopped after the rename, before prepare.json said so
        if partial.exists():
            have = (partial.stat().st_size - HEADER_BYTES) // self.dtype.itemsize
            if have < self.partial:
                raise ConfigError(f"{partial}: holds {max(have, 0):,} tokens, fewer than the {self.partial:,} "
                                  f"{PROGRESS} recorded (written by another program?); delete {out} and prepare again")
            self.f = open(partial, "r+b")
            self.f.truncate(HEADER_BYTES + self.partial * self.dtype.itemsize)
            self.f.seek(0, os.SEEK_END)
        elif self.partial:
            raise ConfigError(f"{partial}: missing, though {PROGRESS} records {self.partial:,} tokens in it; delete "
                              f"{out} and prepare again")
        else:
            self._open_new()

    def _paths(self) -> tuple[Path, Path]:
        final = self.out / f"{self.prefix}_{self.split}_{len(self.shards):06d}.bin"
        return final, final.with_name(final.name + ".partial")

    def _open_new(self):
        self.f = open(self._paths()[1], "w+b")
        self.f.write(header_bytes(0, self.dtype))

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self.partial

    def add(self, tokens: np.ndarray) -> None:
        while len(tokens):
            take = tokens[:self.shard_tokens - self.partial]
            self.f.write(take.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
            self.partial += len(take)
            tokens = tokens[len(take):]
            if self.partial == self.shard_tokens:
                self._close_shard()
                self._open_new()

    def _close_shard(self) -> None:
        final, partial = self._paths()
        self.f.seek(0)
        self.f.write(header_bytes(self.partial, self.dtype))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(partial, final)
        self.shards.append({"file": final.name, "tokens": self.partial})
        self.partial = 0

    def flush(self) -> None:
        self.f.flush()

    def finish(self) -> None:
        """The last shard, with what it holds (none when empty)."""
        if self.partial:
            self._close_shard()
        else:
            self.f.close()
            self._paths()[1].unlink(missing_ok=True)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()

    def state(self) -> dict:
        return {"shards": self.shards, "partial": self.partial}


def write_json(path: Path, data: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sha256_files(paths: list[str], results: list) -> None:
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        results.append(h.hexdigest())


class ProgressLine:
    """`prepare: [#####.....] 45%  1.2 GB of 2.6 GB · 310M tokens · 1.9M tokens/s · ETA 1m12s` on stderr:
    redrawn in place on a terminal, one line every 10 s otherwise."""

    def __init__(self, total_bytes: int, done_bytes: int, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.start_bytes = total_bytes, done_bytes
        self.t0 = self.last = time.monotonic()
        self.tokens = 0

    def update(self, done_bytes: int, tokens_total: int, new_tokens: int, final: bool = False) -> None:
        self.tokens += new_tokens
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        frac = done_bytes / self.total if self.total else 1.0
        rate = self.tokens / elapsed
        byte_rate = (done_bytes - self.start_bytes) / elapsed
        eta = (self.total - done_bytes) / byte_rate if byte_rate > 0 else None
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        line = (f"prepare: [{bar}] {100 * frac:3.0f}%  {_size(done_bytes)} of {_size(self.total)} · "
                f"{tokens_total:,} tokens · {_count(rate)} tokens/s · "
                f"{'done in ' + _duration(elapsed) if final else 'ETA ' + (_duration(eta) if eta is not None else '-')}")
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _size(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def _count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# --- prepare -------------------------------------------------------------------------------------------------
def prepare(srcs: list[str], tokenizer: str, out: str | Path, val_fraction: float = VAL_FRACTION,
            workers: int | None = None, field: str = "text", shard_tokens: int = SHARD_TOKENS,
            unit_bytes: int = UNIT_BYTES, stream=None) -> dict:
    """Tokenise `srcs` into `out` (see the module docstring); returns the manifest. Resumes an unfinished
    prepare of the same sources and settings in `out`."""
    stream = stream or sys.stderr
    check_spec(tokenizer, "--tokenizer")
    if not 0.0 <= val_fraction <= 0.5:
        raise BadInput(f"--val-fraction {val_fraction} must be in [0, 0.5]")
    if not 1 <= shard_tokens <= MAX_SHARD_TOKENS:
        raise BadInput(f"--shard-tokens {shard_tokens} must be in [1, {MAX_SHARD_TOKENS}] (llm.c's header is int32)")
    if not 1024 <= unit_bytes <= 1 << 30:
        raise BadInput(f"--unit-bytes {unit_bytes} must be in [1024, {1 << 30}]")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers < 1:
        raise BadInput(f"--workers {workers} must be at least 1")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a directory for the shards")
    sources, skipped = find_sources(srcs, field, out, unit_bytes)
    tok = None if tokenizer == "char" else load_spec(tokenizer, key="--tokenizer")
    if tok is not None and tok.eot is None:
        raise ConfigError(f"--tokenizer {tokenizer}: has no end-of-text token ({', '.join(('<|endoftext|>', '</s>'))} "
                          "...) to separate documents; add one, or train one with `cockpit data train-tokenizer`")
    settings = {"format": FORMAT_VERSION, "sources": [s.key() for s in sources], "field": field,
                "tokenizer": list(identity(tok.state_dict())) if tok is not None else ["char"],
                "val_fraction": val_fraction, "shard_tokens": shard_tokens, "unit_bytes": unit_bytes,
                "piece_chars": PIECE_CHARS}
    manifest_path, state_path = out / MANIFEST, out / PROGRESS
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("settings") != settings:
            raise ConfigError(f"--out {out}: already holds a dataset prepared from other sources or settings; "
                              "choose another --out, or delete it")
        stream.write(f"{out}: already prepared ({manifest['tokens']:,} tokens); nothing to do\n")
        return manifest
    state = None
    if state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("settings") != settings:
            raise ConfigError(f"--out {out}: holds an unfinished prepare of other sources or settings; run that one "
                              "again to finish it, or choose another --out (or delete it)")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and holds other files; choose a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", out.resolve().name) or "data"
    units = [(s, k) for s in range(len(sources)) for k in range(sources[s].units)]
    source_dicts = [vars(s) for s in sources]
    if state is None:
        if tok is not None and tok.kind == "hf":
            (out / TOKENIZER_FILE).write_text(tok.json, encoding="utf-8")
        state = {"settings": settings, "next_unit": 0, "pieces": 0, "bytes": 0, "tokenizer": None,
                 "splits": {"train": {}, "val": {}},
                 "sources": [{"documents": 0, "replaced": 0, "bad_lines": 0, "null_rows": 0} for _ in sources]}
        write_json(state_path, state)
    t0 = time.time()
    if state["tokenizer"] is None:
        if tok is None:  # char: the characters of the whole corpus first
            chars: set[str] = set()
            with _pool(workers, None, field, unit_bytes) as pool:
                for _, found in pool.imap(characters_of_unit, [(i, source_dicts[s], k) for i, (s, k) in enumerate(units)]):
                    chars.update(found)
            tok = CharTokenizer(sorted(chars), eot=True)
        state["tokenizer"] = tok.state_dict()
        write_json(state_path, state)
    tok_state = state["tokenizer"]
    vocab = tokenizer_from_state(tok_state).vocab_size if tok is None else tok.vocab_size
    dtype = token_dtype(vocab)
    writers = {split: SplitWriter(out, prefix, split, dtype, shard_tokens, state["splits"][split])
               for split in ("train", "val")}
    progress = ProgressLine(sum(s.bytes for s in sources), state["bytes"], stream)
    hashes: list[str] = []
    hasher = threading.Thread(target=sha256_files, args=([s.path for s in sources], hashes), daemon=True)
    try:
        todo = [(i, source_dicts[s], k) for i, (s, k) in enumerate(units) if i >= state["next_unit"]]
        if todo:
            with _pool(workers, tok_state, field, unit_bytes) as pool:
                hasher.start()
                for unit, tokens, lengths, stats in pool.imap(tokenise_unit, todo):
                    route(tokens, lengths, state["pieces"], val_fraction, writers)
                    state["pieces"] += len(lengths)
                    counts = state["sources"][units[unit][0]]
                    for key in counts:
                        counts[key] += stats[key]
                    state["bytes"] += stats["bytes"]
                    state["next_unit"] = unit + 1
                    for split, w in writers.items():
                        w.flush()
                        state["splits"][split] = w.state()
                    write_json(state_path, state)
                    progress.update(state["bytes"], writers["train"].tokens + writers["val"].tokens, len(tokens))
        else:
            hasher.start()
        for w in writers.values():
            w.finish()
    except BaseException:
        for w in writers.values():
            w.close()
        if sys.exc_info()[0] is KeyboardInterrupt:
            stream.write(f"\nprepare stopped; run the same command again to go on from unit {state['next_unit']} "
                         f"of {len(units)}\n")
        raise
    total = writers["train"].tokens + writers["val"].tokens
    progress.update(state["bytes"], total, 0, final=True)
    if total == 0:
        raise ConfigError(f"no text in {' '.join(srcs)}: {len(sources)} file(s) read, no document with text in them; "
                          f"give {SOURCES_HELP}")
    hasher.join()
    manifest = make_manifest(out, prefix, state, sources, skipped, hashes, writers, vocab, dtype, time.time() - t0)
    write_json(manifest_path, manifest)
    state_path.unlink(missing_ok=True)
    summary = ", ".join(f"{split} {w.tokens:,} tokens in {len(w.shards)} shard(s)" for split, w in writers.items())
    stream.write(f"prepared {out}: {summary} ({describe(tok_state)} tokenizer)\n")
    if not writers["val"].tokens:
        why = "--val-fraction 0" if not val_fraction else "fewer than 1 / --val-fraction pieces of text"
        stream.write(f"{out}: no val split ({why}); a run takes the last data.val_fraction of train as val\n")
    return manifest


def route(tokens: np.ndarray, lengths: np.ndarray, first_piece: int, val_fraction: float,
          writers: dict[str, SplitWriter]) -> None:
    """Pieces to val or train by their running number (an even `val_fraction` of them to val)."""
    if not len(lengths):
        return
    i = np.arange(first_piece, first_piece + len(lengths), dtype=np.float64)
    to_val = np.floor((i + 1) * val_fraction) > np.floor(i * val_fraction)
    if not to_val.any():
        writers["train"].add(tokens)
        return
    mask = np.repeat(to_val, lengths)
    writers["train"].add(tokens[~mask])
    writers["val"].add(tokens[mask])


def make_manifest(out: Path, prefix: str, state: dict, sources: list[Source], skipped: list[dict], hashes: list[str],
                  writers: dict[str, SplitWriter], vocab: int, dtype: np.dtype, seconds: float) -> dict:
    tok_state = dict(state["tokenizer"])
    if tok_state.get("kind") == "hf":
        tok_state.pop("json", None)
        tok_state["file"] = TOKENIZER_FILE
    magic, version = LAYOUTS[dtype]
    total = sum(w.tokens for w in writers.values())
    srcs = []
    for s, counts, digest in zip(sources, state["sources"], hashes):
        entry = {"path": s.path, "format": s.format, "bytes": s.bytes, "sha256": digest, **counts}
        srcs.append(entry)
    return {
        "format": "cockpit-tokens", "version": FORMAT_VERSION, "name": prefix,
        "tokenizer": tok_state, "vocab_size": vocab, "eot": tokenizer_from_state(state["tokenizer"]).eot,
        "dtype": dtype.name, "layout": {"magic": magic, "version": version, "header_bytes": HEADER_BYTES},
        "tokens": total, "documents": sum(c["documents"] for c in state["sources"]), "pieces": state["pieces"],
        "splits": {split: {"tokens": w.tokens, "shards": w.shards} for split, w in writers.items()},
        "sources": srcs, "skipped": skipped,
        "decoded_with_replacement": sum(1 for c in state["sources"] if c["replaced"]),
        "bad_lines": sum(c["bad_lines"] for c in state["sources"]),
        "settings": state["settings"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 3),
    }


# --- train-tokenizer -----------------------------------------------------------------------------------------
def train_tokenizer(srcs: list[str], vocab: int, out: str | Path, field: str = "text", stream=None) -> Path:
    """A byte-level BPE (GPT-2's pre-tokenizer, 256 byte symbols, `<|endoftext|>` as id 0) of at most `vocab`
    tokens, trained on `srcs` with Hugging Face `tokenizers`, written to `out` as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stream = stream or sys.stderr
    if not 257 <= vocab <= 1_000_000:
        raise BadInput(f"--vocab {vocab} must be in [257, 1000000]: 256 byte symbols and <|endoftext|> at least")
    out = Path(out).expanduser()
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a directory; give the path of the tokenizer.json to write")
    sources, skipped = find_sources(srcs, field)

    def texts():
        for s in sources:
            for k in range(s.units):
                for text, _ in read_unit(vars(s), k, field)[0]:
                    yield text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.time()
    tok.train_from_iterator(texts(), trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(tok.to_str(), encoding="utf-8")
    os.replace(tmp, out)
    note = f"; {len(skipped)} file(s) skipped" if skipped else ""
    if tok.get_vocab_size() < vocab:
        note += f"; not {vocab:,}: the text has no more pairs to merge"
    stream.write(f"wrote {out}: byte-level BPE of {tok.get_vocab_size():,} tokens from {len(sources)} file(s) in "
                 f"{time.time() - t0:.1f} s{note}; use it with --tokenizer {out} and data.tokenizer={out}\n")
    return out


# --- inspect -------------------------------------------------------------------------------------------------
def inspect(path: str, tokenizer: str | None = None, sample: int = 64, top: int = 10, as_json: bool = False,
            stream=None) -> dict:
    """Counts, a decoded sample of train, the most frequent tokens (of up to 10M tokens read evenly across
    the shards) and the manifest of a prepared directory (or llm.c / nanoGPT token files)."""
    stream = stream or sys.stdout
    ds = open_tokens(path, 0.0)
    if ds is None:
        raise ConfigError(f"{path}: a text file, not token data; prepare it with `cockpit data prepare {path} "
                          "--tokenizer gpt2 --out DIR`")
    for split in (ds.train, ds.val):
        for f in split.files:
            if f.offset:
                read_header(f.path, path)
    if tokenizer is not None:
        tok = load_spec(tokenizer, key="--tokenizer") if tokenizer != "char" else None
        if tok is None:
            raise BadInput("--tokenizer char needs the characters; a prepared char dataset carries them, give no "
                           "--tokenizer")
    elif ds.tokenizer:
        tok = tokenizer_from_state(ds.tokenizer)
    elif ds.dtype == np.uint16:
        tok = load_spec("gpt2")
    else:
        raise BadInput(f"{path}: uint32 tokens of an unrecorded tokenizer; pass --tokenizer PATH/tokenizer.json")
    n = len(ds.train)
    head = ds.train.read(0, min(sample, n))
    reads = min(10, len(ds.train.files))
    per = min(1_000_000, n // max(reads, 1))
    counts = np.zeros(max(tok.vocab_size, 1), dtype=np.int64)
    sampled = 0
    for r in range(reads):
        start = (n - per) * r // max(reads - 1, 1) if reads > 1 else 0
        ids = ds.train.read(start, per)
        ids = ids[ids < len(counts)]
        counts += np.bincount(ids, minlength=len(counts))
        sampled += per
    order = np.argsort(-counts, kind="stable")[:top]
    report = {"path": ds.path, "format": ds.format, "name": ds.name, "dtype": ds.dtype.name,
              "tokenizer": describe(tok.state_dict()), "vocab_size": tok.vocab_size,
              "tokens": {"train": len(ds.train), "val": len(ds.val)},
              "shards": {"train": len(ds.train.files), "val": len(ds.val.files)},
              "sample": tok.decode(head.tolist()),
              "frequent": [{"id": int(i), "token": tok.decode([int(i)]), "count": int(counts[i])} for i in order
                           if counts[i]],
              "sampled": sampled, "manifest": ds.manifest}
    if as_json:
        stream.write(json.dumps(report) + "\n")
        return report
    m = ds.manifest or {}
    lines = [f"{ds.path}: {ds.format} token data, {ds.dtype.name} tokens",
             f"  tokenizer  {report['tokenizer']}, vocabulary {tok.vocab_size:,}",
             f"  train      {len(ds.train):,} tokens in {len(ds.train.files)} shard(s)",
             f"  val        {len(ds.val):,} tokens in {len(ds.val.files)} shard(s)" if len(ds.val) else
             "  val        none: a run takes the last data.val_fraction of train"]
    if m:
        srcs = m.get("sources", [])
        lines.append(f"  sources    {len(srcs)} file(s), {_size(sum(s.get('bytes', 0) for s in srcs))}, "
                     f"{m.get('documents', 0):,} documents; {len(m.get('skipped', []))} skipped, "
                     f"{m.get('decoded_with_replacement', 0)} decoded with replacement, "
                     f"{m.get('bad_lines', 0)} bad JSON lines")
        lines.append(f"  prepared   {m.get('created', '?')} in {m.get('seconds', 0):.1f} s, val fraction "
                     f"{m.get('settings', {}).get('val_fraction')}, shards of {m.get('settings', {}).get('shard_tokens', 0):,} tokens")
        for s in m.get("skipped", [])[:5]:
            lines.append(f"  skipped    {s['path']} ({s['reason']})")
    lines.append(f"  sample     the first {len(head)} tokens of train:")
    lines += ["    " + line for line in report["sample"].splitlines()[:12] or [""]]
    lines.append(f"  frequent   the {len(report['frequent'])} most frequent of {sampled:,} tokens read:")
    for rank, row in enumerate(report["frequent"], 1):
        lines.append(f"    {rank:2d}. {row['token']!r:<16} id {row['id']:<7} {100 * row['count'] / max(sampled, 1):5.2f}%")
    stream.write("\n".join(lines) + "\n")
    return report


# --- command line --------------------------------------------------------------------------------------------
def add_arguments(p: Parser) -> None:
    """`cockpit data`'s actions, each with its options."""
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                           help="prepare, train-tokenizer or inspect; see `cockpit data ACTION --help`")
    look = {"formatter_class": p.formatter_class, "epilog": p.epilog}
    pp = sub.add_parser("prepare", help="tokenise text, JSON Lines or Parquet into llm.c shards", **look,
                        description="Tokenise a corpus once into llm.c .bin shards and a manifest, for "
                                    "data.path=DIR. Run again after a stop to go on where it stopped.")
    pp.add_argument("sources", nargs="+", metavar="SRC", help=f"{SOURCES_HELP}")
    pp.add_argument("--tokenizer", required=True, metavar="gpt2|char|PATH", help=f"the tokenizer: {SPECS}")
    pp.add_argument("--out", required=True, metavar="DIR", help="the directory for the shards and manifest.json")
    pp.add_argument("--val-fraction", type=float, default=VAL_FRACTION, metavar="F",
                    help=f"the share of the text that goes to the val split, in [0, 0.5] (default {VAL_FRACTION})")
    pp.add_argument("--workers", type=int, default=None, metavar="N",
                    help="tokenising processes (default: one per core)")
    pp.add_argument("--field", default="text", metavar="NAME",
                    help="the JSON Lines field or Parquet column with the text (default text)")
    pp.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, metavar="N",
                    help=f"tokens per shard (default {SHARD_TOKENS:,})")
    pp.add_argument("--unit-bytes", type=int, default=UNIT_BYTES, metavar="N",
                    help=f"bytes of a text or JSON Lines file one worker reads at a time (default {UNIT_BYTES:,}); "
                         "a prepare goes on from the last unit it finished")
    pt = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer.json on a corpus", **look,
                        description="Train a byte-level BPE (GPT-2's pre-tokenizer) with Hugging Face tokenizers; "
                                    "use the file as --tokenizer PATH and data.tokenizer=PATH.")
    pt.add_argument("sources", nargs="+", metavar="SRC", help=f"{SOURCES_HELP}")
    pt.add_argument("--vocab", type=int, required=True, metavar="N",
                    help="vocabulary size, 256 byte symbols and <|endoftext|> included (GPT-2 has 50257)")
    pt.add_argument("--out", required=True, metavar="FILE", help="the tokenizer.json to write")
    pt.add_argument("--field", default="text", metavar="NAME",
                    help="the JSON Lines field or Parquet column with the text (default text)")
    pi = sub.add_parser("inspect", help="counts, a decoded sample and frequent tokens of prepared data", **look,
                        description="Counts, a decoded sample, the most frequent tokens and the manifest of a "
                                    "prepared directory (or llm.c shards, nanoGPT's train.bin).")
    pi.add_argument("path", metavar="DIR", help="a prepared directory, llm.c shards or nanoGPT's train.bin")
    pi.add_argument("--tokenizer", metavar="gpt2|PATH", default=None,
                    help="decode with this tokenizer (default: the one the data was prepared with, else gpt2)")
    pi.add_argument("--sample", type=int, default=64, metavar="N", help="tokens of the decoded sample (default 64)")
    pi.add_argument("--top", type=int, default=10, metavar="K", help="frequent tokens to list (default 10)")
    pi.add_argument("--json", action="store_true", help="one JSON object: counts, sample, frequent tokens, manifest")


def main(argv: list[str], parser: Parser) -> int:
    """`cockpit data ...`; `parser` is the `cockpit data` subparser."""
    a = parser.parse_args(argv)
    if a.action == "prepare":
        if a.workers is not None and a.workers < 1:
            raise BadInput(f"--workers {a.workers} must be at least 1")
        prepare(a.sources, a.tokenizer, a.out, a.val_fraction, a.workers, a.field, a.shard_tokens, a.unit_bytes)
    elif a.action == "train-tokenizer":
        train_tokenizer(a.sources, a.vocab, a.out, a.field)
    else:
        if a.sample < 0 or a.top < 0:
            raise BadInput("--sample and --top must be at least 0")
        inspect(a.path, a.tokenizer, a.sample, a.top, a.json)
    return 0

