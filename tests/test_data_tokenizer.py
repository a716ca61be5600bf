"""`cockpit data train-tokenizer`: a byte-level BPE that round-trips any text, which every language-model
preset takes as data.tokenizer=PATH, for text and for data prepared with it."""
from __future__ import annotations

import io
import json

import pytest
import torch

from tests.conftest import TINY_GPT, events_of, train_in_process
from tests.data_helpers import corpus_text, data_cli, one_error_line, write_text_corpus
from trainers import config
from trainers.dataprep import prepare
from trainers.shards import open_tokens
from trainers.tokenizer import HFTokenizer

QUIET = ("train.eval_interval=1000", "train.memory_interval=0", "train.system_interval=3600")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 350-token BPE trained on a text file and a JSON Lines file of made-up documents."""
    root = tmp_path_factory.mktemp("bpe")
    docs = corpus_text(400, seed=1)
    write_text_corpus(root / "a.txt", docs[:200])
    (root / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[200:]))
    r = data_cli("train-tokenizer", str(root / "a.txt"), str(root / "b.jsonl"), "--vocab", "350", "--out",
                 str(root / "tok" / "tokenizer.json"))
    assert r.returncode == 0, r.stderr
    assert "byte-level BPE of 350 tokens from 2 file(s)" in r.stderr
    return root, root / "tok" / "tokenizer.json", docs


@pytest.mark.parametrize("text", [
    "The cat sat on the mat.",
    "never   seen\twords,\n\n  with  odd   spacing  \n",
    "café naïve 東京 🙂 Ω≈ç√ and \x00 bytes \ufffd",
    "",
])
def test_a_trained_tokenizer_round_trips_text(trained, text):
    _, path, _ = trained
    tok = HFTokenizer.from_file(path, "tokenizer")
    assert tok.vocab_size == 350 and tok.eot == 0
    ids = tok.encode(text)
    assert all(0 <= i < 350 for i in ids)
    assert tok.decode(ids) == text


def test_it_learns_the_corpus_words(trained):
    _, path, _ = trained
    tok = HFTokenizer.from_file(path, "tokenizer")
    assert len(tok.encode(" children laughed under grey skies")) <= 6  # whole words, not bytes


def test_data_prepared_with_it_holds_each_document_tokenised_whole(trained, tmp_path):
    root, path, docs = trained
    m = prepare([str(root / "a.txt")], str(path), tmp_path / "d", val_fraction=0.0, workers=2, unit_bytes=2048,
                stream=io.StringIO())
    tok = HFTokenizer.from_file(path, "tokenizer")
    expected = [t for d in docs[:200] for t in (0, *tok.encode(d))]
    ds = open_tokens(str(tmp_path / "d"), 0.0)
    assert ds.train.read(0, len(ds.train)).tolist() == expected
    assert m["tokenizer"] == {"kind": "hf", "name": "tokenizer.json", "sha256": tok.sha256, "file": "tokenizer.json"}
    assert (tmp_path / "d" / "tokenizer.json").read_text() == path.read_text()


def test_every_language_model_preset_takes_it_as_data_tokenizer(trained):
    from trainers.tasks import check_task

    _, path, _ = trained
    presets = [name for name in config.preset_names() if config.load(name, has_cuda=False)["task"] == "lm"]
    assert {"nanogpt", "gpt2-124m", "mamba", "moe"} <= set(presets)
    for name in presets:
        cfg = config.load(name, [f"data.tokenizer={path}"], has_cuda=False)
        cfg["device"] = "cpu"
        check_task(cfg)
        assert cfg["data"]["tokenizer"] == str(path)


def test_a_run_trains_with_it_on_prepared_data_and_keeps_it_in_the_checkpoint(trained, tmp_path):
    root, path, _ = trained
    prepare([str(root / "a.txt"), str(root / "b.jsonl")], str(path), tmp_path / "d", val_fraction=0.05, workers=1,
            stream=io.StringIO())
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("nanogpt", *TINY_GPT, *QUIET, f"data.path={tmp_path / 'd'}", f"data.tokenizer={path}",
                            "train.max_steps=30", "train.eval_interval=30", "train.sample_interval=30",
                            "train.sample_tokens=40", log=log) == 0
    evals = events_of(log, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert isinstance(events_of(log, "sample")[-1]["text"], str)
    ck = torch.load(log.parent / "ckpt.pt", weights_only=True)
    state = ck["task"]["tokenizer"]
    assert state["kind"] == "hf" and state["json"] == path.read_text()
    # a plain text data.path with the same tokenizer, tokenised in memory
    text_log = tmp_path / "text" / "events.jsonl"
    assert train_in_process("nanogpt", *TINY_GPT, *QUIET, f"data.path={root / 'a.txt'}", f"data.tokenizer={path}",
                            "train.max_steps=3", log=text_log) == 0
    assert events_of(text_log, "run_start")[0]["dataset"]["vocab_size"] == 350


def test_another_tokenizer_json_than_the_datas_is_refused(trained, tmp_path, capsys):
    root, path, _ = trained
    other = tmp_path / "other.json"
    r = data_cli("train-tokenizer", str(root / "a.txt"), "--vocab", "5000", "--out", str(other))
    assert r.returncode == 0, r.stderr
    assert "no more pairs to merge" in r.stderr  # a small corpus: fewer tokens than asked for
    prepare([str(root / "a.txt")], str(path), tmp_path / "d", workers=1, stream=io.StringIO())
    code = train_in_process("nanogpt", *TINY_GPT, f"data.path={tmp_path / 'd'}", f"data.tokenizer={other}",
                            log=tmp_path / "r" / "events.jsonl")
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"was prepared with the tokenizer.json (sha256 {HFTokenizer.from_file(path, 't').sha256[:12]})" in line
    assert f"set data.tokenizer={tmp_path / 'd' / 'tokenizer.json'}" in line


@pytest.mark.parametrize("make, override, fragment", [
    (None, "data.tokenizer=bpe", "data.tokenizer='bpe' is not allowed; use char, gpt2 or the path of a tokenizer.json"),
    (None, "data.tokenizer={d}/missing.json", "data.tokenizer={d}/missing.json: not found"),
    ("{not json", "data.tokenizer={d}/bad.json", "data.tokenizer={d}/bad.json: not a Hugging Face tokenizer.json"),
])
def test_a_bad_data_tokenizer_is_one_line(tmp_path, capsys, make, override, fragment):
    if make is not None:
        (tmp_path / "bad.json").write_text(make)
    code = train_in_process("nanogpt", *TINY_GPT, override.format(d=tmp_path), log=tmp_path / "r" / "events.jsonl")
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cockpit: error: ") and fragment.format(d=tmp_path) in line


def test_train_tokenizer_refuses_a_vocabulary_below_the_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n")
    one_error_line(data_cli("train-tokenizer", str(tmp_path / "a.txt"), "--vocab", "100", "--out",
                            str(tmp_path / "t.json")), "--vocab 100 must be in [257, 1000000]")
    assert not (tmp_path / "t.json").exists()
