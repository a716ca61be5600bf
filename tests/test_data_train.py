"""Training on token data on disk: memmap batches are the in-memory batches, llm.c shard sets and nanoGPT's
train.bin train unchanged, run_start and the run title name the dataset, sequential epochs resume exactly,
and data of another tokenizer or a truncated shard is one line, exit 2."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import TINY_GPT, events_of, train_in_process
from tests.data_helpers import corpus_text, llmc_write_datafile, nanogpt_shakespeare_char, write_text_corpus
from trainers import config
from trainers.data import ShardStream, TokenStream, asset_path
from trainers.dataprep import prepare
from trainers.shards import open_tokens
from trainers.tokenizer import GPT2Tokenizer

SHAKESPEARE = asset_path("shakespeare.txt").read_text(encoding="utf-8")
N_CHARS = len(set(SHAKESPEARE))
QUIET = ("train.eval_interval=1000", "train.sample_interval=0", "train.memory_interval=0",
         "train.system_interval=3600")


def load(preset: str, *overrides: str):
    from trainers.tasks import load_task

    cfg = config.load(preset, list(overrides), has_cuda=False)
    cfg["device"] = "cpu"
    torch.manual_seed(cfg["train"]["seed"])
    task = load_task(cfg, torch.device("cpu"))
    task.build_model()
    return task


def batches_of(task) -> list[torch.Tensor]:
    """A run's first batches, in the order the loop asks for them: train, the step-0 eval, train, train."""
    evals = task.eval_batches(step=0)
    got = [task.get_batch("train", 1)]
    got += [b for split in ("train", "val") for b in evals[split]]
    got += [task.get_batch("train", 2), task.get_batch("train", 3)]
    return [t for x, y in got for t in (x, y)]


@pytest.fixture(scope="module")
def gpt2_shakespeare():
    return torch.tensor(GPT2Tokenizer().encode(SHAKESPEARE), dtype=torch.long)


@pytest.fixture(scope="module")
def char_dataset(tmp_path_factory):
    """The embedded Shakespeare in documents of 40 lines, prepared with the char tokenizer in small shards."""
    root = tmp_path_factory.mktemp("char")
    lines = SHAKESPEARE.splitlines(keepends=True)
    docs = ["".join(lines[i:i + 40]).strip() for i in range(0, len(lines), 40)]
    src = write_text_corpus(root / "plays.txt", [d for d in docs if d])
    prepare([str(src)], "char", root / "plays", val_fraction=0.1, workers=1, shard_tokens=50_000,
            stream=io.StringIO())
    return root / "plays"


def test_memmap_batches_are_the_in_memory_batches_for_the_same_seed(tmp_path, gpt2_shakespeare):
    ids = gpt2_shakespeare
    memory = TokenStream(ids, 0.1, 64, "shakespeare")
    n = len(memory.train)
    # llm.c shards of uneven sizes, so that windows cross from one shard into the next
    cuts = [0, 1000, 1001, 25_000, 120_000, n]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        llmc_write_datafile(tmp_path / f"s_train_{i:06d}.bin", ids[a:b].tolist())
    llmc_write_datafile(tmp_path / "s_val_000000.bin", ids[n:n + 5000].tolist())
    llmc_write_datafile(tmp_path / "s_val_000001.bin", ids[n + 5000:].tolist())
    disk = ShardStream(open_tokens(str(tmp_path), 0.1), 64, 50257)
    assert disk.length("train") == n and disk.length("val") == len(memory.val)
    for split in ("train", "val"):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _ in range(20):
            (x1, y1), (x2, y2) = memory.batch(split, 16, g1), disk.batch(split, 16, g2)
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and x2.dtype == torch.long
    position = [0, 0]
    for _ in range(300):  # consecutive windows, around the end of the split and back to its start
        (b1, position[0]), (b2, position[1]) = (s.consecutive("val", 8, p) for s, p in
                                                ((memory, position[0]), (disk, position[1])))
        assert torch.equal(b1[0], b2[0]) and torch.equal(b1[1], b2[1]) and position[0] == position[1]


def test_nanogpt_shakespeare_char_bins_give_the_batches_of_the_embedded_text(tmp_path):
    """nanoGPT's own prepare.py output (train.bin, val.bin, meta.pkl) read through memmap: the very batches the
    in-memory path draws from the text, in nanoGPT's order, for the same seed."""
    chars, train_ids, val_ids = nanogpt_shakespeare_char(tmp_path / "shakespeare_char", SHAKESPEARE)
    small = ("model.n_layer=1", "train.batch_size=4", "train.eval_iters=2")
    memory = load("nanogpt", *small)
    disk = load("nanogpt", *small, f"data.path={tmp_path / 'shakespeare_char'}")
    assert disk.tokenizer.chars == memory.tokenizer.chars == chars
    assert disk.dataset["format"] == "nanogpt" and disk.dataset["tokens"] == {"train": len(train_ids),
                                                                              "val": len(val_ids)}
    assert all(torch.equal(a, b) for a, b in zip(batches_of(memory), batches_of(disk)))


def test_an_llmc_shard_set_trains_unchanged(tmp_path, gpt2_shakespeare):
    ids = gpt2_shakespeare.tolist()
    d = tmp_path / "tinyshakespeare"
    d.mkdir()
    llmc_write_datafile(d / "tiny_shakespeare_val_000000.bin", ids[:32_768])   # llm.c's split: val first
    llmc_write_datafile(d / "tiny_shakespeare_train_000001.bin", ids[32_768:200_000])
    llmc_write_datafile(d / "tiny_shakespeare_train_000002.bin", ids[200_000:])
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("nanogpt", *TINY_GPT, *QUIET, "data.tokenizer=gpt2", "train.max_steps=30",
                            "train.eval_interval=30", f"data.path={d}/tiny_shakespeare_train_*.bin", log=log) == 0
    dataset = events_of(log, "run_start")[0]["dataset"]
    assert dataset["format"] == "llm.c" and dataset["shards"] == {"train": 2, "val": 1}
    assert dataset["tokens"] == {"train": len(ids) - 32_768, "val": 32_768}
    evals = events_of(log, "eval")
    assert evals[0]["val_loss"] == pytest.approx(math.log(50257), abs=0.5)
    assert evals[-1]["step"] == 30 and evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert events_of(log, "run_end")[-1]["status"] == "completed"


def test_nanogpt_openwebtext_bins_train_unchanged(tmp_path, gpt2_shakespeare):
    """nanoGPT's openwebtext/prepare.py output: bare uint16 GPT-2 tokens written through np.memmap, no meta.pkl."""
    ids = gpt2_shakespeare.numpy()
    d = tmp_path / "openwebtext"
    d.mkdir()
    n = int(len(ids) * 0.9)
    for split, part in (("train", ids[:n]), ("val", ids[n:])):
        arr = np.memmap(d / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(len(part),))
        arr[:] = part
        arr.flush()
        del arr
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("nanogpt", *TINY_GPT, *QUIET, "data.tokenizer=gpt2", "train.max_steps=30",
                            "train.eval_interval=30", f"data.path={d}", log=log) == 0
    dataset = events_of(log, "run_start")[0]["dataset"]
    assert dataset["format"] == "nanogpt" and dataset["tokens"] == {"train": n, "val": len(ids) - n}
    evals = events_of(log, "eval")
    assert evals[0]["val_loss"] == pytest.approx(math.log(50257), abs=0.5)
    assert evals[-1]["step"] == 30 and evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert events_of(log, "run_end")[-1]["status"] == "completed"


def test_a_prepared_dataset_trains_and_run_start_and_the_title_name_it(tmp_path, char_dataset):
    from cockpit.widgets.loss_plot import run_title
    from common.state import load_state

    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("nanogpt", *TINY_GPT, *QUIET, f"data.path={char_dataset}", "train.max_steps=40",
                            "train.eval_interval=40", log=log) == 0
    start = events_of(log, "run_start")[0]
    manifest = json.loads((char_dataset / "manifest.json").read_text())
    assert start["dataset"]["manifest"] == manifest and start["dataset"]["format"] == "prepared"
    total = manifest["tokens"]
    chars = manifest["tokenizer"]["chars"]
    assert chars == "".join(sorted(set(SHAKESPEARE))) and manifest["tokenizer"]["eot"] is True
    assert sum(start["dataset"]["tokens"].values()) == total and start["dataset"]["vocab_size"] == len(chars) + 1
    evals = events_of(log, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8
    title = run_title(load_state(log))
    assert f"plays ({total / 1e6:.2f}M tokens)" in title, title
    ck = torch.load(log.parent / "ckpt.pt", weights_only=True)
    assert ck["task"]["tokenizer"] == manifest["tokenizer"]


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_training_on_shards_resumes_with_identical_losses(tmp_path, char_dataset, order):
    common = (*TINY_GPT, *QUIET, f"data.path={char_dataset}", f"data.order={order}", "train.log_interval=1",
              "train.eval_interval=7", "train.checkpoint_interval=0", "model.block_size=64", "train.batch_size=64")
    full = tmp_path / "full" / "events.jsonl"
    assert train_in_process("nanogpt", *common, "train.max_steps=30", log=full) == 0
    part = tmp_path / "part" / "events.jsonl"
    assert train_in_process("nanogpt", *common, "train.max_steps=13", log=part) == 0
    assert train_in_process("nanogpt", "train.max_steps=30", log=part, resume=str(part.parent)) == 0
    want = {e["step"]: e["loss"] for e in events_of(full, "step")}
    got = [e for e in events_of(part, "step") if e["step"] > 13]
    assert [e["step"] for e in got] == list(range(14, 31))
    for e in got:
        assert abs(e["loss"] - want[e["step"]]) <= 1e-6, (e["step"], e["loss"], want[e["step"]])


def test_sequential_order_walks_the_split_and_starts_a_new_epoch(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    llmc_write_datafile(d / "x_train_000000.bin", list(range(1000)))
    llmc_write_datafile(d / "x_val_000000.bin", list(range(500)))
    task = load("nanogpt", *TINY_GPT, "data.tokenizer=gpt2", f"data.path={d}", "data.order=sequential",
                "train.batch_size=4", "model.block_size=50")
    logs = []
    task.log = lambda level, message: logs.append(message)
    starts = [task.get_batch("train", s)[0][:, 0].tolist() for s in range(1, 7)]
    assert starts == [[0, 50, 100, 150], [200, 250, 300, 350], [400, 450, 500, 550], [600, 650, 700, 750],
                      [0, 50, 100, 150], [200, 250, 300, 350]]  # 800..999 is less than a batch: epoch 2
    assert logs == ["data: epoch 2 of the train split begins"]
    val = task.eval_batches(step=7)["val"]
    assert [x[:, 0].tolist() for x, _ in val] == [[0, 50, 100, 150], [200, 250, 300, 350]]
    assert task.data_state()["position"] == 600 and task.data_state()["epoch"] == 1  # 7 drawn: one ahead


def test_data_of_another_tokenizer_is_refused_before_the_run(tmp_path, char_dataset, capsys):
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("nanogpt", *TINY_GPT, f"data.path={char_dataset}", "data.tokenizer=gpt2", log=log) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cockpit: error: data.path={char_dataset} was prepared with the char ({N_CHARS} characters + "
                   "end-of-text) tokenizer, but data.tokenizer is gpt2; set data.tokenizer=char, or prepare the "
                   "data again with --tokenizer gpt2"]
    assert not log.parent.exists()
    nanogpt_raw = tmp_path / "owt"
    nanogpt_raw.mkdir()
    np.arange(1000, dtype=np.uint16).tofile(nanogpt_raw / "train.bin")
    assert train_in_process("nanogpt", *TINY_GPT, f"data.path={nanogpt_raw}", log=log) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "bare uint16 tokens without a meta.pkl" in line and line.endswith("set data.tokenizer=gpt2, or prepare "
                                                                             "the data again with --tokenizer char")


def test_resuming_on_data_of_another_tokenizer_is_refused(tmp_path, char_dataset, capsys):
    text_run = tmp_path / "text" / "events.jsonl"
    small = write_text_corpus(tmp_path / "small.txt", corpus_text(60))
    assert train_in_process("nanogpt", *TINY_GPT, *QUIET, f"data.path={small}", "train.max_steps=2",
                            log=text_run) == 0
    capsys.readouterr()
    code = train_in_process("nanogpt", "train.max_steps=4", f"data.path={char_dataset}", log=text_run,
                            resume=str(text_run.parent))
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cockpit: error: --resume: the checkpoint was trained with the char (")
    assert f"but data.path={char_dataset} with data.tokenizer=char gives char ({N_CHARS} characters + end-of-text)" in line


def test_a_truncated_shard_is_refused_naming_it(tmp_path, char_dataset, capsys):
    import shutil

    copy = tmp_path / "plays"
    shutil.copytree(char_dataset, copy)
    shard = sorted(copy.glob("plays_train_*.bin"))[1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 10)
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("nanogpt", *TINY_GPT, f"data.path={copy}", log=log) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cockpit: error: {shard}: truncated: its header says 50,000 tokens")
    assert "prepare" in line


def test_an_unfinished_prepare_is_not_data(tmp_path, capsys):
    d = tmp_path / "half"
    d.mkdir()
    (d / "prepare.json").write_text("{}")
    (d / "half_train_000000.bin.partial").write_bytes(b"\0" * 2048)
    assert train_in_process("nanogpt", *TINY_GPT, f"data.path={d}", log=tmp_path / "r" / "events.jsonl") == 2
    assert "its preparation is unfinished (no manifest.json yet)" in capsys.readouterr().err
