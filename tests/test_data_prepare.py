"""`cockpit data prepare`: llm.c's shard layout to the byte, the tokens of every document as if tokenised
whole (whatever the work units), JSON Lines and Parquet sources, a prepare killed with SIGKILL that goes on
to the same shards, and bad input as one line."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.data_helpers import corpus_text, data_cli, llmc_write_datafile, one_error_line, write_text_corpus
from trainers.config import ConfigError
from trainers.dataprep import pieces, prepare
from trainers.shards import open_tokens, write_shard
from trainers.tokenizer import GPT2Tokenizer

EOT = 50256


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


def expected_tokens(docs: list[str], tok) -> np.ndarray:
    """Each document tokenised whole, led by the end-of-text token (llm.c's fineweb.py order)."""
    out = []
    for d in docs:
        out += [EOT, *tok.encode(d)]
    return np.array(out)


def all_tokens(directory, split: str = "train") -> np.ndarray:
    ds = open_tokens(str(directory), 0.0)
    s = ds.train if split == "train" else ds.val
    return s.read(0, len(s))


def quiet_prepare(*args, **kwargs):
    import io

    return prepare(*args, stream=io.StringIO(), **kwargs)


@pytest.mark.parametrize("model_desc, vocab", [("gpt-2", 50257), ("llama-3", 128256)])
def test_a_shard_is_byte_for_byte_what_llmc_writes(tmp_path, model_desc, vocab):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, vocab, size=5000)
    llmc_write_datafile(tmp_path / "llmc.bin", toks.tolist(), model_desc)
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    write_shard(tmp_path / "ours.bin", toks.astype(dtype))
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "llmc.bin").read_bytes()


def test_prepared_shards_are_llmc_files_holding_every_document_tokenised_whole(tmp_path, gpt2):
    docs = corpus_text(400)
    src = write_text_corpus(tmp_path / "stories.txt", docs)
    out = tmp_path / "tiny"
    manifest = quiet_prepare([str(src)], "gpt2", out, val_fraction=0.0, workers=2, shard_tokens=3000,
                             unit_bytes=2048)
    expected = expected_tokens(docs, gpt2)
    assert np.array_equal(all_tokens(out), expected)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) == -(-len(expected) // 3000) and all(s["tokens"] == 3000 for s in shards[:-1])
    start = 0
    for s in shards:  # each file is what llm.c's own writer makes of its tokens
        llmc_write_datafile(tmp_path / "ref.bin", expected[start:start + s["tokens"]].tolist())
        assert (out / s["file"]).read_bytes() == (tmp_path / "ref.bin").read_bytes()
        start += s["tokens"]
    assert manifest["documents"] == len(docs) and manifest["tokens"] == len(expected)
    assert manifest["tokenizer"] == {"kind": "gpt2"} and manifest["vocab_size"] == 50257
    assert manifest["sources"][0]["sha256"] and manifest["sources"][0]["bytes"] == src.stat().st_size
    assert not list(out.glob("*.partial")) and not (out / "prepare.json").exists()


def test_val_takes_an_even_share_of_pieces_and_units_do_not_change_the_tokens(tmp_path, gpt2):
    docs = corpus_text(300, seed=3)
    src = write_text_corpus(tmp_path / "c.txt", docs)
    small = quiet_prepare([str(src)], "gpt2", tmp_path / "a" / "d", val_fraction=0.1, workers=2, unit_bytes=1024)
    large = quiet_prepare([str(src)], "gpt2", tmp_path / "b" / "d", val_fraction=0.1, workers=1)
    # with one document per piece, every tenth document is val: the 10th, 20th, ...
    expected_val = expected_tokens(docs[9::10], gpt2)
    assert np.array_equal(all_tokens(tmp_path / "b" / "d", "val"), expected_val)
    assert large["splits"]["val"]["tokens"] == len(expected_val)
    # a unit ends inside a document, the document's tokens do not change (the val choice is by piece)
    assert small["tokens"] == large["tokens"] == len(expected_tokens(docs, gpt2))


def test_long_documents_are_cut_where_gpt2_splits_anyway(gpt2):
    text = " ".join(corpus_text(60, seed=5, words=(200, 400)))
    parts = pieces(text, 2000)
    assert "".join(parts) == text and len(parts) > 5 and max(map(len, parts)) <= 2000
    assert sum((gpt2.encode(p) for p in parts), []) == gpt2.encode(text)


def test_json_lines_and_parquet_sources_with_a_field_of_their_own(tmp_path, gpt2):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = corpus_text(120, seed=7)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "content": d}) + "\n" for i, d in enumerate(docs[:60])) +
                     "not json\n" + json.dumps({"other": 1}) + "\n")
    pq.write_table(pa.table({"content": docs[60:], "n": list(range(60))}), tmp_path / "b.parquet",
                   row_group_size=16)
    (tmp_path / "README.md").write_text("# a dataset card, not text to learn\n")
    (tmp_path / "dataset_info.json").write_text('{"features": {"content": "string"}}\n')
    m = quiet_prepare([str(tmp_path)], "gpt2", tmp_path / "out", val_fraction=0.0, workers=2, field="content",
                      unit_bytes=4096)
    assert np.array_equal(all_tokens(tmp_path / "out"), expected_tokens(docs, gpt2))
    assert [s["format"] for s in m["sources"]] == ["jsonl", "parquet"]
    assert m["bad_lines"] == 2 and m["documents"] == 120
    assert {Path(s["path"]).name: s["reason"] for s in m["skipped"]} == {
        "README.md": "beside Parquet / JSON Lines files",
        "dataset_info.json": "beside Parquet / JSON Lines files"}


def test_a_char_corpus_gets_its_characters_and_an_end_of_text_id(tmp_path):
    docs = ["abc cab", "bad dab"]
    src = write_text_corpus(tmp_path / "c.txt", docs)
    m = quiet_prepare([str(src)], "char", tmp_path / "out", val_fraction=0.0, workers=1)
    assert m["tokenizer"] == {"kind": "char", "chars": " abcd", "eot": True} and m["vocab_size"] == 6
    assert all_tokens(tmp_path / "out").tolist() == [5, 1, 2, 3, 0, 3, 1, 2, 5, 2, 1, 4, 0, 4, 1, 2]


def test_binary_and_non_utf8_files_are_skipped_or_replaced_and_counted(tmp_path, gpt2):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("plain words here\n")
    (src / "b.txt").write_bytes(b"caf\xe9 au lait\n")       # Latin-1, not UTF-8
    (src / "c.bin").write_bytes(b"\x00\x01\x02" * 100)       # binary
    (src / "d.txt").write_bytes(b"")                          # empty
    (src / ".hidden.txt").write_text("never read\n")
    m = quiet_prepare([str(src)], "gpt2", tmp_path / "out", val_fraction=0.0, workers=1)
    assert [Path(s["path"]).name for s in m["sources"]] == ["a.txt", "b.txt"]
    assert [s["replaced"] for s in m["sources"]] == [0, 1] and m["decoded_with_replacement"] == 1
    assert {Path(s["path"]).name: s["reason"] for s in m["skipped"]} == {"c.bin": "binary (NUL bytes)",
                                                                         "d.txt": "empty"}
    assert np.array_equal(all_tokens(tmp_path / "out"),
                          expected_tokens(["plain words here\n", "caf\ufffd au lait\n"], gpt2))


def test_a_rerun_of_a_finished_prepare_does_nothing_and_other_settings_are_refused(tmp_path):
    src = write_text_corpus(tmp_path / "c.txt", corpus_text(20))
    out = tmp_path / "out"
    quiet_prepare([str(src)], "gpt2", out, workers=1)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    quiet_prepare([str(src)], "gpt2", out, workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match="already holds a dataset prepared from other sources or settings"):
        quiet_prepare([str(src)], "char", out, workers=1)


def wait_for(predicate, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.005)


@pytest.mark.slow
def test_a_killed_prepare_goes_on_to_the_same_shards_as_one_never_stopped(tmp_path):
    src = write_text_corpus(tmp_path / "c.txt", corpus_text(3000, seed=11))
    args = [str(src), "--tokenizer", "gpt2", "--val-fraction", "0.05", "--shard-tokens", "20000",
            "--unit-bytes", "8192", "--workers", "2"]
    whole, killed = tmp_path / "a" / "data", tmp_path / "b" / "data"
    r = data_cli("prepare", *args, "--out", str(whole))
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen([sys.executable, "-m", "cockpit", "data", "prepare", *args, "--out", str(killed)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = killed / "prepare.json"

    def some_shards_written():
        try:
            done = json.loads(state.read_text())["splits"]["train"].get("shards", [])
        except (OSError, ValueError):
            return False
        return len(done) >= 3
    wait_for(some_shards_written, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    units = json.loads(state.read_text())["next_unit"]
    assert 0 < units < src.stat().st_size // 8192  # stopped part way
    assert list(killed.glob("*.bin.partial")) and not (killed / "manifest.json").exists()
    with pytest.raises(ConfigError, match="preparation is unfinished"):  # half-written is never complete
        open_tokens(str(killed), 0.1)

    r = data_cli("prepare", *args, "--out", str(killed))
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in killed.iterdir())
    for name in names:
        if name.endswith(".bin"):
            assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (whole, killed))
    for key in ("splits", "tokens", "documents", "pieces", "sources", "settings"):
        assert a[key] == b[key], key


def test_a_prepare_goes_on_after_a_stop_between_a_shard_and_its_record(tmp_path):
    """Stopped after a full shard was renamed into place but before prepare.json said so: the shard is taken
    back as the partial one, cut to what prepare.json recorded, and filled again."""
    from trainers import dataprep

    src = write_text_corpus(tmp_path / "c.txt", corpus_text(200, seed=2))
    opts = {"val_fraction": 0.0, "workers": 1, "shard_tokens": 5000, "unit_bytes": 2048}
    whole = quiet_prepare([str(src)], "gpt2", tmp_path / "a" / "d", **opts)
    out = tmp_path / "b" / "d"
    quiet_prepare([str(src)], "gpt2", out, **opts)
    # what prepare.json said after unit 0, when shard 0 was still partial
    dataprep._init_worker({"kind": "gpt2"}, "text", 2048)
    source = vars(dataprep.find_sources([str(src)], "text", None, 2048)[0][0])
    _, tokens, lengths, stats = dataprep.tokenise_unit((0, source, 0))
    assert 0 < len(tokens) < 5000
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").unlink()
    (out / "prepare.json").write_text(json.dumps({
        "settings": manifest["settings"], "next_unit": 1, "pieces": len(lengths), "bytes": stats["bytes"],
        "tokenizer": {"kind": "gpt2"}, "splits": {"train": {"shards": [], "partial": len(tokens)}, "val": {}},
        "sources": [{k: stats[k] for k in ("documents", "replaced", "bad_lines", "null_rows")}]}))
    for p in out.glob("d_train_*.bin"):
        if p.name != "d_train_000000.bin":
            p.unlink()
    again = quiet_prepare([str(src)], "gpt2", out, **opts)
    assert again["splits"] == whole["splits"] and again["documents"] == whole["documents"]
    assert np.array_equal(all_tokens(out), all_tokens(tmp_path / "a" / "d"))


@pytest.mark.parametrize("make, args, fragments", [
    (lambda d: None, ["missing.txt"], ["missing.txt: not found"]),
    (lambda d: (d / "empty.txt").write_text(""), ["empty.txt"], ["empty.txt: is empty"]),
    (lambda d: (d / "folder").mkdir(), ["folder"], ["folder: an empty folder"]),
    (lambda d: (d / "only").mkdir() or (d / "only" / "x.bin").write_bytes(b"\0" * 64), ["only"],
     ["every file was skipped", "x.bin (binary (NUL bytes))"]),
    (lambda d: (d / "a.jsonl").write_text('{"body": "hi"}\n'), ["a.jsonl"],
     ["a.jsonl: line 1 has no `text` field (it has: body)", "--field"]),
    (lambda d: (d / "a.jsonl").write_text('[{"text": "hi"}]\n'), ["a.jsonl"], ["a JSON array, not JSON Lines"]),
    (lambda d: __import__("pyarrow.parquet").parquet.write_table(
        __import__("pyarrow").table({"body": ["hi"]}), d / "a.parquet"), ["a.parquet"],
     ["a.parquet: no column `text` (its columns: body)", "--field"]),
    (lambda d: (d / "a.parquet").write_text("not parquet at all"), ["a.parquet"], ["a.parquet: not a readable Parquet"]),
    (lambda d: (d / "c.txt").write_text("hi there\n"), ["c.txt", "--tokenizer", "bpe"],
     ["--tokenizer 'bpe' is not allowed", "tokenizer.json"]),
    (lambda d: (d / "c.txt").write_text("hi there\n"), ["c.txt", "--tokenizer", "nope.json"],
     ["--tokenizer=nope.json: not found"]),
])
def test_bad_sources_are_one_line_naming_the_file_and_the_fix(tmp_path, make, args, fragments):
    make(tmp_path)
    args = [str(tmp_path / args[0]), *args[1:]]
    if "--tokenizer" not in args:
        args += ["--tokenizer", "gpt2"]
    one_error_line(data_cli("prepare", *args, "--out", str(tmp_path / "out")), *fragments)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_out_directory_holding_other_files_is_refused(tmp_path):
    (tmp_path / "c.txt").write_text("some words\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.md").write_text("mine")
    one_error_line(data_cli("prepare", str(tmp_path / "c.txt"), "--tokenizer", "gpt2", "--out",
                            str(tmp_path / "out")), "exists and holds other files")


def test_inspect_shows_counts_a_decoded_sample_and_frequent_tokens(tmp_path):
    src = write_text_corpus(tmp_path / "c.txt", ["the cat sat on the mat", "the dog sat"])
    quiet_prepare([str(src)], "gpt2", tmp_path / "out", val_fraction=0.0, workers=1)
    r = data_cli("inspect", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "train      11 tokens in 1 shard(s)" in r.stdout
    assert "<|endoftext|>the cat sat on the mat<|endoftext|>the dog sat" in r.stdout
    assert re.search(r" 1\. 'the' +id 1169 +18\.18%", r.stdout)  # 2 of 11, the lowest id of three such
    r = data_cli("inspect", str(tmp_path / "out"), "--json")
    report = json.loads(r.stdout)
    assert report["tokens"] == {"train": 11, "val": 0} and report["manifest"]["documents"] == 2
    assert [(row["token"], row["count"]) for row in report["frequent"][:3]] == [
        ("the", 2), (" sat", 2), ("<|endoftext|>", 2)]


def test_data_help_and_its_actions_import_no_torch():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "cockpit", "data", "prepare", "--help"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: cockpit data prepare ")
    modules = [line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "trainers.dataprep" in modules  # the action's own module was imported, without the heavy ones
    assert not [m for m in modules if m.split(".")[0] in ("torch", "textual", "triton")]
