"""Helpers of the data tests: corpora generated here (nothing is downloaded), llm.c's and nanoGPT's writers
re-implemented as their scripts write files, and `cockpit data` run as a user runs it."""
from __future__ import annotations

import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import ROOT

WORDS = ("the a cat dog sat on mat while birds sang in trees and rivers ran past old stone walls under grey "
         "skies of autumn when children laughed").split()


def corpus_text(n_docs: int, seed: int = 0, words: tuple[int, int] = (20, 200)) -> list[str]:
    """Documents of made-up sentences (letters, punctuation, newlines, some non-ASCII)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines = []
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(*words) // 3 + 1
            lines.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + rng.choice(".!?;") +
                         rng.choice(["", " café", " naïve", " 東京", "  (x2)"]))
        docs.append("\n".join(lines))
    return docs


def write_text_corpus(path: Path, docs: list[str]) -> Path:
    """TinyStories' .txt form: documents separated by `<|endoftext|>` lines."""
    path.write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    return path


def llmc_write_datafile(filename: Path, toks, model_desc: str = "gpt-2") -> None:
    """llm.c's dev/data/data_common.py write_datafile, re-implemented: a header of 256 int32 (magic, version,
    token count), then the tokens as uint16 (gpt-2) or uint32 (llama-3)."""
    info = {"gpt-2": (20240520, 1, np.uint16), "llama-3": (20240801, 7, np.uint32)}[model_desc]
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = info[0], info[1], len(toks)
    toks_np = np.array(toks, dtype=info[2])
    with open(filename, "wb") as f:
        f.write(header.tobytes())
        f.write(toks_np.tobytes())


def nanogpt_shakespeare_char(directory: Path, text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """nanoGPT's data/shakespeare_char/prepare.py, re-implemented: sorted characters, the first 90% of the
    text as train.bin and the rest as val.bin (bare uint16), and meta.pkl with vocab_size, itos and stoi."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    train_ids = np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16)
    directory.mkdir(parents=True, exist_ok=True)
    train_ids.tofile(directory / "train.bin")
    val_ids.tofile(directory / "val.bin")
    with open(directory / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return chars, train_ids, val_ids


def data_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cockpit", "data", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(r: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run ended with exit 2 and one `cockpit: error:` line holding every fragment; that line."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error: "), r.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]
