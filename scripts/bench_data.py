"""Real corpora: `cockpit data prepare` against nanoGPT's openwebtext prepare.py method, and the trainer's memory
and start-up on a 2 GB prepared corpus against the embedded Shakespeare.

    python scripts/bench_data.py [--dir runs/bench-data] [--gb 1.0] [--workers 2] [--repeats 2] [--text-mb 100]
                                 [--regen] [--out benchmarks/results/data.md]

The corpus is generated once (DIR/corpus-<GB>GB.parquet, reused until --regen; give --dir a disk with a few GB
free): documents of 1-12 kB cut from the embedded plays and Paradise Lost at random lines, in Parquet row groups
of 2,000 documents, like a FineWeb download.

Tokenisation, on that corpus:
- nanoGPT's data/openwebtext/prepare.py, re-implemented without Hugging Face `datasets` but as it works:
  load_dataset (here: the Parquet file converted to an Arrow file, which `datasets` memory-maps; timed apart),
  train_test_split(test_size=0.0005, seed=2357, shuffle=True), `map(process, num_proc=N)` (each of N
  processes takes a contiguous share of each split, runs tiktoken's encode_ordinary on every document and
  appends the end-of-text token, and writes its ids and lengths to an Arrow cache file), then train.bin and
  val.bin written through np.memmap in 1024 batches. Timed: the map and the writing.
- `cockpit data prepare corpus.parquet --tokenizer gpt2 --val-fraction 0.0005 --workers N`, timed from launch
  to exit (Parquet decoding, hashing the source and writing the manifest included).
Both use the same GPT-2 BPE (tiktoken, the vendored ranks) and N worker processes; the token counts must
agree (one end-of-text token per document).

The trainer: the nanogpt preset's CPU model with the GPT-2 tokenizer for a few steps, on the embedded
Shakespeare (tokenised in memory at start) and on a 2 GB prepared corpus (the shards of the prepared corpus
above, linked as often as it takes, with their manifest), and on a --text-mb slice of the corpus as a text
data.path (read and tokenised by the trainer, the path that was there before). Peak RSS is the kernel's
rusage of the trainer process (wait4); "launch to first step" runs from starting `python -m trainers` to the
time of its first step event.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import ROOT, machine_line, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data.md"
ROWS_PER_GROUP = 2_000
WRITER_BATCH = 1_000  # datasets.map writer_batch_size
EOT = 50256
TRAINER = ["train.max_steps=20", "train.log_interval=1", "train.eval_interval=1000", "train.eval_iters=5",
           "train.sample_interval=0", "train.memory_interval=0", "train.checkpoint_interval=0",
           "train.system_interval=3600", "data.tokenizer=gpt2", "profile=cpu", "device=cpu"]


# --- the corpus ------------------------------------------------------------------------------------------------
def generate(path: Path, gigabytes: float, seed: int = 0) -> Path:
    """Documents of 1-12 kB of the embedded texts, cut at random lines, until the text column holds `gigabytes`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainers.data import asset_path

    lines = []
    for name in ("shakespeare.txt", "milton.txt"):
        lines += asset_path(name).read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    target = int(gigabytes * 1e9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    written = 0
    with pq.ParquetWriter(tmp, pa.schema([("text", pa.string())])) as w:
        while written < target:
            docs = []
            for _ in range(ROWS_PER_GROUP):
                start, size, parts = rng.randrange(len(lines)), rng.randint(1000, 12000), []
                n = 0
                while n < size:
                    parts.append(lines[start % len(lines)])
                    n += len(parts[-1])
                    start += 1
                docs.append("".join(parts).strip())
                written += n
            w.write_table(pa.table({"text": docs}), row_group_size=ROWS_PER_GROUP)
    os.replace(tmp, path)
    return path


# --- nanoGPT's openwebtext/prepare.py, re-implemented ----------------------------------------------------------
_enc = None


def _init_tiktoken():
    global _enc
    from trainers.tokenizer import GPT2Tokenizer

    _enc = GPT2Tokenizer().enc  # tiktoken.get_encoding("gpt2"), from the vendored ranks: no download


def _map_shard(task):
    """One `datasets.map(process, num_proc=N)` process: its contiguous share of a split, each document through
    process(), the results written to an Arrow cache file (ids: list<int64>, len: int64) in record batches of
    1,000 rows, as datasets' writer_batch_size does."""
    import pyarrow as pa

    arrow_path, indices, cache = task
    with pa.memory_map(str(arrow_path)) as source:
        column = pa.ipc.open_file(source).read_all().column("text")
        schema = pa.schema([("ids", pa.list_(pa.int64())), ("len", pa.int64())])
        with pa.OSFile(str(cache), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for lo in range(0, len(indices), WRITER_BATCH):
                texts = column.take(pa.array(indices[lo:lo + WRITER_BATCH])).to_pylist()
                ids_col, len_col = [], []
                for text in texts:
                    ids = _enc.encode_ordinary(text)  # process(example)
                    ids.append(EOT)
                    ids_col.append(ids)
                    len_col.append(len(ids))
                writer.write_table(pa.table({"ids": pa.array(ids_col, type=pa.list_(pa.int64())),
                                             "len": pa.array(len_col, pa.int64())}, schema=schema))
    return cache


def nanogpt_prepare(parquet: Path, work: Path, num_proc: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    arrow_path = work / "dataset.arrow"  # load_dataset: the corpus as the Arrow file datasets memory-maps
    table = pq.read_table(parquet)
    with pa.OSFile(str(arrow_path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    n = table.num_rows
    del table
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    perm = np.random.default_rng(2357).permutation(n)  # train_test_split(test_size=0.0005, seed=2357, shuffle)
    n_val = math.ceil(0.0005 * n)
    splits = {"train": perm[n_val:], "val": perm[:n_val]}
    tasks = []
    for split, idx in splits.items():
        for k, part in enumerate(np.array_split(idx, num_proc)):
            tasks.append((arrow_path, part.tolist(), work / f"cache-{split}-{k:05d}.arrow"))
    with mp.get_context("fork").Pool(num_proc, initializer=_init_tiktoken) as pool:
        caches = pool.map(_map_shard, tasks, chunksize=1)
    t_map = time.perf_counter() - t0

    t0 = time.perf_counter()
    tokens = 0
    for split in splits:
        parts = []
        for cache in [c for c in caches if f"cache-{split}-" in c.name]:
            with pa.memory_map(str(cache)) as source:
                parts.append(pa.ipc.open_file(source).read_all())
        dset = pa.concat_tables(parts)
        arr_len = int(np.sum(dset.column("len").to_numpy(), dtype=np.uint64))
        arr = np.memmap(work / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
        total_batches = 1024
        idx = 0
        rows = dset.num_rows
        for batch_idx in range(total_batches):  # dset.shard(num_shards=1024, index=i, contiguous=True)
            lo = rows * batch_idx // total_batches
            hi = rows * (batch_idx + 1) // total_batches
            if hi <= lo:
                continue
            arr_batch = dset.column("ids").slice(lo, hi - lo).combine_chunks().flatten().to_numpy()
            arr[idx:idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
        tokens += arr_len
        del arr
    t_write = time.perf_counter() - t0
    return {"load": t_load, "map": t_map, "write": t_write, "seconds": t_map + t_write, "tokens": tokens,
            "documents": n}


# --- cockpit data prepare --------------------------------------------------------------------------------------
def cockpit_prepare(parquet: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cockpit", "data", "prepare", str(parquet), "--tokenizer", "gpt2",
                        "--val-fraction", "0.0005", "--workers", str(workers), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"cockpit data prepare failed:\n{r.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": seconds, "tokens": manifest["tokens"], "documents": manifest["documents"],
            "shards": sum(len(s["shards"]) for s in manifest["splits"].values())}


def replicated(prepared: Path, out: Path, gigabytes: float) -> Path:
    """A prepared directory of about `gigabytes` of shards: those of `prepared`, hard-linked as often as it takes,
    listed in a manifest of their own."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    size = sum((prepared / s["file"]).stat().st_size for s in shards)
    copies = max(1, math.ceil(gigabytes * 1e9 / size))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    train = []
    for c in range(copies):
        for s in shards:
            name = f"{out.name}_train_{len(train):06d}.bin"
            os.link(prepared / s["file"], out / name)
            train.append({"file": name, "tokens": s["tokens"]})
    val = []
    for s in manifest["splits"]["val"]["shards"]:
        os.link(prepared / s["file"], out / s["file"])
        val.append(s)
    manifest["splits"] = {"train": {"tokens": sum(s["tokens"] for s in train), "shards": train},
                          "val": {"tokens": sum(s["tokens"] for s in val), "shards": val}}
    manifest["tokens"] = manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]
    manifest["name"] = out.name
    manifest["replicated"] = {"from": str(prepared), "copies": copies}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


# --- the trainer -----------------------------------------------------------------------------------------------
# Run by a fresh interpreter that imports nothing big: Linux counts the RSS high-water mark of the process a
# child is forked from (here: this one, after the tokenising runs) into the child's ru_maxrss at exec, so the
# trainer is started from a process whose own peak stays a few MB.
LAUNCHER = """
import json, os, subprocess, sys, time
argv = json.loads(sys.argv[1])
launched = time.time()
p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "rss": usage.ru_maxrss * 1024, "launched": launched,
                  "stderr": err.decode(errors="replace")[-3000:]}))
"""


def trainer_run(data_path: str, log: Path) -> dict:
    """Peak RSS and launch-to-first-step of `python -m trainers nanogpt ...` on `data_path`."""
    shutil.rmtree(log.parent, ignore_errors=True)
    argv = [sys.executable, "-m", "trainers", "nanogpt", *TRAINER, f"data.path={data_path}", "--log", str(log)]
    r = subprocess.run([sys.executable, "-c", LAUNCHER, json.dumps(argv)], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    out = json.loads(r.stdout)
    if out["code"] != 0:
        raise SystemExit(f"trainer on {data_path} failed:\n{out['stderr']}")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    first = next(e for e in events if e["type"] == "step")
    start = next(e for e in events if e["type"] == "run_start")
    return {"rss": out["rss"], "first_step": first["time"] - out["launched"],
            "tokens": sum(start["dataset"]["tokens"].values())}


def median_run(data_path: str, log: Path, repeats: int) -> dict:
    runs = [trainer_run(data_path, log) for _ in range(repeats)]
    for r in runs:
        print(f"  {data_path or 'embedded'}: peak RSS {r['rss'] / 2**20:.0f} MiB, first step {r['first_step']:.1f} s",
              flush=True)
    return {"rss": statistics.median(r["rss"] for r in runs),
            "first_step": statistics.median(r["first_step"] for r in runs), "tokens": runs[0]["tokens"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "runs" / "bench-data"),
                    help="where the corpus, the prepared shards and the runs go (several GB)")
    ap.add_argument("--gb", type=float, default=1.0, help="size of the generated corpus's text, in GB")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="worker processes of both")
    ap.add_argument("--repeats", type=int, default=2, help="trainer runs of each kind (the median is reported)")
    ap.add_argument("--prepared-gb", type=float, default=2.0, help="size of the prepared corpus the trainer reads")
    ap.add_argument("--text-mb", type=int, default=100, help="a slice of the corpus as a text data.path (0: none)")
    ap.add_argument("--regen", action="store_true", help="generate the corpus again even if it exists")
    ap.add_argument("--trainer-only", action="store_true",
                    help="measure the trainer again; take the tokenising figures from DIR/tokenise.json, which "
                         "the last full run wrote with the prepared corpus")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    header = machine_line()
    base = Path(a.dir).expanduser().resolve()
    parquet = base / f"corpus-{a.gb:g}GB.parquet"
    if a.regen or not parquet.exists():
        t0 = time.perf_counter()
        generate(parquet, a.gb)
        print(f"generated {parquet} ({parquet.stat().st_size / 1e9:.2f} GB on disk) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(parquet).metadata
    text_bytes = sum(meta.row_group(i).column(0).total_uncompressed_size for i in range(meta.num_row_groups))

    saved = base / "tokenise.json"
    if a.trainer_only:
        tokenise = json.loads(saved.read_text())
    else:
        ours = cockpit_prepare(parquet, base / "prepared", a.workers)
        print(f"cockpit data prepare: {ours['tokens']:,} tokens in {ours['seconds']:.1f} s", flush=True)
        nano = nanogpt_prepare(parquet, base / "nanogpt", a.workers)
        print(f"nanoGPT method: {nano['tokens']:,} tokens, map {nano['map']:.1f} s + write {nano['write']:.1f} s "
              f"(load {nano['load']:.1f} s apart)", flush=True)
        if nano["tokens"] != ours["tokens"]:
            raise SystemExit(f"token counts differ: nanoGPT {nano['tokens']:,}, cockpit {ours['tokens']:,}")
        shutil.rmtree(base / "nanogpt", ignore_errors=True)
        tokenise = {"machine": header, "workers": a.workers, "gb": a.gb, "ours": ours, "nano": nano}
        saved.write_text(json.dumps(tokenise, indent=1))
    ours, nano = tokenise["ours"], tokenise["nano"]
    rate = {k: v["tokens"] / v["seconds"] for k, v in (("ours", ours), ("nano", nano))}

    header = machine_line()  # the load now, as the trainer runs begin
    big = replicated(base / "prepared", base / "prepared2g", a.prepared_gb)
    big_bytes = sum(p.stat().st_size for p in big.glob("*.bin"))
    rows = [("embedded Shakespeare (tokenised in memory)", "", median_run("", base / "run-embedded" / "events.jsonl",
                                                                         a.repeats)),
            (f"prepared corpus, {big_bytes / 1e9:.1f} GB of shards (memmap)", str(big),
             median_run(str(big), base / "run-prepared" / "events.jsonl", a.repeats))]
    if a.text_mb:
        text = base / f"corpus-{a.text_mb}MB.txt"
        if not text.exists():
            docs, n = [], 0
            for batch in pq.ParquetFile(parquet).iter_batches(batch_size=1000, columns=["text"]):
                for d in batch.column(0).to_pylist():
                    docs.append(d)
                    n += len(d) + 2
                if n >= a.text_mb * 1e6:
                    break
            text.write_text("\n\n".join(docs), encoding="utf-8")
        rows.append((f"a {a.text_mb} MB text file as data.path (tokenised in memory; one run)", str(text),
                     median_run(str(text), base / "run-text" / "events.jsonl", 1)))
    base_rss = rows[0][2]["rss"]

    workers = tokenise["workers"]
    with_load = nano["seconds"] + nano["load"]
    body = [
        "## Real corpora: tokenise once, train on memmap shards", "",
        f"Measured by `python scripts/bench_data.py --gb {a.gb:g} --workers {workers} --repeats {a.repeats} "
        f"--text-mb {a.text_mb}`. The corpus: {meta.num_rows:,} documents, {text_bytes / 1e9:.2f} GB of text (cut "
        "from the embedded plays and Paradise Lost at random lines), one Parquet file of "
        f"{parquet.stat().st_size / 1e9:.2f} GB; both methods tokenise it with GPT-2's BPE (tiktoken's "
        f"encode_ordinary, the vendored ranks) in {workers} worker processes and agree on its "
        f"{ours['tokens']:,} tokens.", "",
        f"Tokenising, on {tokenise['machine']}:", "",
        "| tokenising the corpus | seconds | tokens/s | MB of text/s | vs nanoGPT |", "| --- | --- | --- | --- | --- |",
        f"| nanoGPT's openwebtext prepare.py method (map + write) | {nano['seconds']:.1f} | "
        f"{rate['nano'] / 1e6:.2f}M | {text_bytes / 1e6 / nano['seconds']:.1f} | 1.00x |",
        f"| `cockpit data prepare` (launch to exit: Parquet decoding, {ours['shards']} shards, sha256 of the "
        f"source, manifest) | {ours['seconds']:.1f} | {rate['ours'] / 1e6:.2f}M | "
        f"{text_bytes / 1e6 / ours['seconds']:.1f} | {rate['ours'] / rate['nano']:.2f}x |", "",
        f"nanoGPT's figure leaves out its load_dataset step (here the Parquet file converted to the Arrow file "
        f"`datasets` memory-maps, {nano['load']:.1f} s); counting it, nanoGPT's method takes {with_load:.1f} s and "
        f"`cockpit data prepare` is {with_load / ours['seconds']:.2f}x as fast.", "",
        f"The trainer, on {header}: nanogpt's CPU model with the GPT-2 tokenizer for 20 steps, median of "
        f"{a.repeats} runs; peak RSS is the kernel's (wait4's ru_maxrss of the trainer process), launch to first "
        "step runs from starting `python -m trainers` to its first step event.", "",
        "| data.path | tokens | peak RSS | vs Shakespeare | launch to first step |", "| --- | --- | --- | --- | --- |",
        *[f"| {label} | {r['tokens']:,} | {r['rss'] / 2**20:.0f} MiB | {(r['rss'] - base_rss) / 2**20:+.0f} MiB | "
          f"{r['first_step']:.1f} s |" for label, _, r in rows], ""]
    write_section(a.out, "bench_data", "\n".join(body), title="# Data")
    print("\n".join(body))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
