"""The documentation names only files that exist: every repository path in README.md and docs/*.md."""
from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the repository's own top level (runs/ is where runs are written: its paths are examples, not files)
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name == ".ci"} - {"runs"}


def repo_paths(text: str) -> set[str]:
    """Backquoted paths that start at the top of the repository (`cockpit/app.py`, `docs/`, `README.md`)."""
    out = set()
    for quoted in re.findall(r"`([^`\s]+)`", text):
        path = quoted.rstrip(".,:;)").split("::")[0]
        if "<" in path or "*" in path or "{" in path:
            continue  # a pattern (runs/<run>/events.jsonl, presets/*.yaml), not a file
        if path.split("/")[0] in TOP and ("/" in path or "." in path):
            out.add(path)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_document_names_exists(doc):
    paths = repo_paths(doc.read_text())
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_the_path_finder_sees_paths_and_skips_patterns():
    assert repo_paths("see `cockpit/app.py`, `docs/` and `runs/<run>/events.jsonl` or `presets/*.yaml`") == \
        {"cockpit/app.py", "docs/"}
