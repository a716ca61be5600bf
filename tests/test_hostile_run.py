"""A trainer under hostile and unlucky conditions: runs started together, two trainers on one run, writes
onto things that are not files, memory and disk running out, its directory taken away, garbage on its
command pipe, signals at any moment. Nothing is lost, nothing hangs, and no traceback reaches the user.

Real processes, files and signals throughout; memory limits through resource.setrlimit in the trainer's own
process; a full disk through /dev/full (a real ENOSPC from the kernel) and a file-size limit (a real EFBIG).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_GPT, cockpit, events_of, train_in_process

LONG = (*TINY_GPT, "train.max_steps=100000", "train.log_interval=1", "train.checkpoint_interval=5",
        "train.eval_interval=1000000", "train.sample_interval=0", "train.system_interval=3600")


def trainer(*args: str, env: dict | None = None, stdin=subprocess.DEVNULL, driver: str | None = None,
            driver_args: tuple = ()) -> subprocess.Popen:
    """`python -m trainers nanogpt ARGS` as its own process (or the same main() under a driver script that
    first changes something about the process, e.g. a memory limit)."""
    head = [sys.executable, "-c", driver, *driver_args] if driver else [sys.executable, "-m", "trainers"]
    return subprocess.Popen([*head, "nanogpt", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(p: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def lenient(log: Path) -> list[dict]:
    """The complete lines of a log that may be being written."""
    out = []
    try:
        text = Path(log).read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def wait_for(pred, proc: subprocess.Popen | None = None, timeout: float = 180.0, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the trainer exited ({proc.returncode}) first: "
                                 f"{proc.stderr.read().decode(errors='replace')[-2000:]}")
        time.sleep(every)
    raise AssertionError("timed out waiting")


def steps(log: Path) -> int:
    s = [e["step"] for e in lenient(log) if e["type"] == "step"]
    return s[-1] if s else 0


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- 1. runs started in the same second -----------------------------------------------------------------
def test_trainers_started_together_without_log_each_get_their_own_directory_log_and_checkpoint(tmp_path):
    """A sweep from a shell loop: every run claims its own directory (exclusively), even where another run
    already took this second's name, and writes a complete log and checkpoint there."""
    runs = tmp_path / "runs"
    runs.mkdir()
    now = time.time()
    taken = [runs / f"nanogpt-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))}" for s in range(-2, 240)]
    for d in taken:  # every second of the next minutes already has a run: all must take -2, -3, ...
        d.mkdir()
    procs = [trainer(*TINY_GPT, "train.max_steps=12", "train.checkpoint_interval=4", "train.system_interval=3600",
                     env={"COCKPIT_RUNS": str(runs)}) for _ in range(3)]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0], [r[2][-1500:] for r in results]
    dirs = sorted(d for d in runs.iterdir() if d not in taken)
    assert len(dirs) == 3 and all(d.name.rsplit("-", 1)[1] in {"2", "3", "4"} for d in dirs), dirs
    assert all(not any(d.iterdir()) for d in taken), "a run wrote into a directory it did not create"
    pids = set()
    for d in dirs:
        log = d / "events.jsonl"
        starts, ends = events_of(log, "run_start"), events_of(log, "run_end")
        assert len(starts) == 1 and len(ends) == 1 and ends[0]["status"] == "completed", d
        pids.add(starts[0]["pid"])
        assert torch.load(d / "ckpt.pt", weights_only=True)["step"] == 12
        assert not list(d.glob(".ckpt.pt.tmp*"))
    assert len(pids) == 3


def test_a_checkpoint_write_keeps_the_temp_file_of_a_live_writer_and_removes_a_dead_ones(tmp_path):
    """A temporary checkpoint file is stale only when its writer is dead; a live writer's is its work."""
    from trainers import checkpoint

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        target = tmp_path / "ckpt.pt"
        live_tmp, dead_tmp = tmp_path / f".ckpt.pt.tmp-{live.pid}", tmp_path / f".ckpt.pt.tmp-{dead.pid}"
        live_tmp.write_bytes(b"half of another writer's checkpoint")
        dead_tmp.write_bytes(b"left by a writer killed mid-save")
        checkpoint.save(target, {"step": 3, "model": {}, "config": {}})
        assert torch.load(target, weights_only=True)["step"] == 3
        assert live_tmp.read_bytes() == b"half of another writer's checkpoint"
        assert not dead_tmp.exists()
    finally:
        live.kill()
        live.wait()


# --- 2. one trainer per run -----------------------------------------------------------------------------
def test_a_second_trainer_on_a_live_run_is_refused_in_one_line_and_the_lock_dies_with_its_holder(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    first = trainer(*LONG, "--log", str(log))
    try:
        wait_for(lambda: steps(log) >= 6, first)
        for args in (["--log", str(log)],  # the same log
                     ["--log", str(log.parent / "other.jsonl")],  # another log beside it: the same checkpoint
                     ["--resume", str(log.parent)]):  # resuming a run whose trainer still runs
            code, _, err = finish(trainer(*TINY_GPT, *args))
            line = one_error_line(err)
            assert code == 2 and f"in use by the trainer pid {first.pid}" in line and str(log) in line, line
        assert not (log.parent / "other.jsonl").exists()  # refused before creating anything there
        # readers need no lock and take none
        assert cockpit("--replay", str(log)).returncode == 0
        listing = cockpit("runs", "--json", env={"COCKPIT_RUNS": str(tmp_path)})
        assert listing.returncode == 0, listing.stderr
        assert [(r["path"], r["status"]) for r in map(json.loads, listing.stdout.splitlines())] == [
            (str(log.parent), "running")]
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)  # a crash: the kernel releases the lock
        first.wait()
    finally:
        first.kill()
        first.wait()
    assert len(events_of(log, "run_start")) == 1  # nothing interleaved
    resumed = torch.load(log.parent / "ckpt.pt", weights_only=True)["step"]
    code, _, err = finish(trainer(*TINY_GPT, f"train.max_steps={resumed + 3}", "--resume", str(log.parent)))
    assert code == 0, err
    assert events_of(log, "run_end")[-1]["status"] == "completed"


def test_the_run_directory_is_free_again_once_a_run_has_ended(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    for max_steps in (3, 6):  # the second run appends to the first's log, as --log to an old run does
        assert train_in_process("nanogpt", *TINY_GPT, f"train.max_steps={max_steps}", log=log) == 0
    assert [e["status"] for e in events_of(log, "run_end")] == ["completed", "completed"]


@pytest.mark.slow
def test_a_ddp_run_on_a_live_runs_log_is_refused_by_rank_0_and_no_rank_prints_a_traceback(tmp_path):
    """Rank 0 alone takes the lock; the other ranks learn it was refused and leave quietly (torchrun then
    reports its failed workers in its own words)."""
    from cockpit.launch import torchrun_argv

    log = tmp_path / "run" / "events.jsonl"
    first = trainer(*LONG, "--log", str(log))
    try:
        wait_for(lambda: steps(log) >= 2, first)
        ddp = subprocess.run(torchrun_argv(2, ["nanogpt", *TINY_GPT, "--log", str(log)]),
                             cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    finally:
        first.kill()
        first.wait()
    assert ddp.returncode != 0
    assert f"cockpit: error: {log} is in use by the trainer pid {first.pid}" in ddp.stderr
    assert "[rank1]: Traceback" not in ddp.stderr and "[rank0]: Traceback" not in ddp.stderr
    assert len(events_of(log, "run_start")) == 1


# --- 3. writes onto paths that are not regular files ----------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """A fine-tune run directory (lora on a tiny nanogpt base), trained by the real loop."""
    d = tmp_path_factory.mktemp("lora")
    assert train_in_process("nanogpt", *TINY_GPT, "train.max_steps=3", log=d / "base" / "events.jsonl") == 0
    assert train_in_process("lora", f"finetune.base={d / 'base' / 'ckpt.pt'}", "train.max_steps=2",
                            "train.batch_size=2", "train.eval_iters=1", "train.system_interval=3600",
                            "train.sample_tokens=4", "finetune.compare_memory=false",
                            log=d / "ft" / "events.jsonl") == 0
    return d / "ft"


def special(kind: str, path: Path) -> Path:
    """A directory, FIFO, socket or character device at `path` (the device: a node when allowed to make
    one, else a link to /dev/null: either way the path names a device)."""
    if kind == "directory":
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            os.symlink("/dev/null", path)
    return path


def kind_of(path: Path) -> str:
    mode = os.stat(path).st_mode
    return {stat.S_IFDIR: "directory", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
            stat.S_IFCHR: "device"}.get(stat.S_IFMT(mode), "file")


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "device"])
def test_export_merged_onto_a_directory_fifo_socket_or_device_refuses_in_one_line_and_leaves_it(
        lora_run, tmp_path, kind, capsys):
    from trainers.export_merged import main

    out = special(kind, tmp_path / "out")
    assert main([str(lora_run), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line and "not a regular file" in line, line
    assert kind_of(out) == kind
    if kind == "directory":
        assert (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("damage, fragment", [
    (lambda c: c.update(config=[1]), "the checkpoint's config is damaged (a list, not a mapping)"),
    (lambda c: c["task"]["base"].pop("arch"), "the checkpoint's fine-tune state is damaged (KeyError"),
    (lambda c: c["task"]["base"]["model"].update(n_layer="x"), "model.n_layer='x' must be an integer"),
    (lambda c: c["model"].clear(), "the checkpoint's fine-tune state is damaged (RuntimeError"),
], ids=["config", "base-arch", "base-model", "weights"])
def test_export_merged_from_a_damaged_checkpoint_is_one_line(lora_run, tmp_path, capsys, damage, fragment):
    from trainers.export_merged import main

    ck = torch.load(lora_run / "ckpt.pt", weights_only=True)
    damage(ck)
    torch.save(ck, tmp_path / "ckpt.pt")
    assert main([str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "merged.pt")]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "merged.pt").exists()


def test_export_merged_onto_a_device_node_from_the_cli_leaves_the_node(lora_run, tmp_path):
    out = special("device", tmp_path / "null")
    r = cockpit("export-merged", str(lora_run), "--out", str(out), timeout=240)
    assert r.returncode == 2 and "is a character device, not a regular file" in one_error_line(r.stderr)
    assert stat.S_ISCHR(os.stat(out).st_mode)


def test_export_merged_never_replaces_the_checkpoint_it_reads_nor_writes_hf_onto_a_file(lora_run, capsys,
                                                                                          tmp_path):
    from trainers.export_merged import main

    ckpt = lora_run / "ckpt.pt"
    before = ckpt.read_bytes()
    assert main([str(lora_run), "--out", str(ckpt)]) == 2
    assert "is the checkpoint being exported" in one_error_line(capsys.readouterr().err)
    assert ckpt.read_bytes() == before
    afile = tmp_path / "hf"
    afile.write_text("not a directory")
    assert main([str(lora_run), "--out", str(tmp_path / "m.pt"), "--hf", str(afile)]) == 2
    assert "is not a directory" in one_error_line(capsys.readouterr().err)
    assert afile.read_text() == "not a directory" and not (tmp_path / "m.pt").exists()
    hf_dir = tmp_path / "hfdir"
    hf_dir.mkdir()
    special("directory", hf_dir / "config.json")  # a directory where the directory's config.json goes
    assert main([str(lora_run), "--out", str(tmp_path / "m.pt"), "--hf", str(hf_dir)]) == 2
    assert "config.json is a directory" in one_error_line(capsys.readouterr().err)
    assert main([str(lora_run), "--out", str(tmp_path / "m.pt"), "--hf", str(tmp_path / "good")]) == 0
    assert (tmp_path / "good" / "config.json").is_file() and (tmp_path / "m.pt").is_file()


def test_export_merged_onto_a_full_disk_fails_in_one_line_and_leaves_no_temp_file(lora_run, tmp_path,
                                                                                    monkeypatch, capsys):
    from trainers import checkpoint
    from trainers.export_merged import main

    real_open = open
    monkeypatch.setattr(checkpoint, "open", lambda path, mode="r", *a, **k: real_open("/dev/full", mode),
                        raising=False)
    (tmp_path / "m.pt").write_bytes(b"the previous export")
    assert main([str(lora_run), "--out", str(tmp_path / "m.pt")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "the disk is full" in line and "No space left on device" in line, line
    assert (tmp_path / "m.pt").read_bytes() == b"the previous export"
    assert not list(tmp_path.glob(".m.pt.tmp-*"))


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_every_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, kind):
    """The one helper behind checkpoints, merged weights, Hugging Face files and the presets cache."""
    from common.atomic import NotAFileTarget, write_atomic

    target = special(kind, tmp_path / "target")
    with pytest.raises(NotAFileTarget, match="not a regular file"):
        write_atomic(target, "data")
    assert kind_of(target) == kind
    assert write_atomic(tmp_path / "sub" / "file.json", "data").read_text() == "data"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "sub" / "file.json")  # a link to a regular file is fine: the link is replaced
    write_atomic(link, "new")
    assert link.read_text() == "new" and not link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "sub", "target"]


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_the_presets_cache_is_never_written_onto_a_directory_or_a_device(tmp_path, monkeypatch, kind):
    from cockpit import presets_info

    measured = [{"name": "nanogpt", "n_params": 10}]
    monkeypatch.setenv("COCKPIT_CACHE", str(tmp_path))
    monkeypatch.setattr(presets_info, "_fingerprint", lambda: "fixed")
    monkeypatch.setattr(presets_info.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 0, stdout=json.dumps(measured) + "\n", stderr=""))  # what `python -m trainers.inspect --json` prints
    cache = special(kind, tmp_path / "presets-fixed.json")
    assert presets_info.presets_info() == measured
    assert kind_of(cache) == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["presets-fixed.json"]


@pytest.mark.parametrize("what", ["checkpoint", "log"])
def test_a_directory_or_fifo_where_the_runs_files_go_is_bad_input_before_training(tmp_path, what):
    run = tmp_path / "run"
    run.mkdir()
    if what == "checkpoint":
        special("directory", run / "ckpt.pt")
    else:
        special("fifo", run / "events.jsonl")  # opening it to append would block for ever
    code, _, err = finish(trainer(*TINY_GPT, "--log", str(run / "events.jsonl")), timeout=120)
    line = one_error_line(err)
    assert code == 2 and ("ckpt.pt is a directory" if what == "checkpoint" else "is a named pipe (FIFO)") in line, line


def test_a_runs_folder_that_is_a_file_is_bad_input(tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    code, _, err = finish(trainer(*TINY_GPT, env={"COCKPIT_RUNS": str(runs)}), timeout=120)
    line = one_error_line(err)
    assert code == 2 and "COCKPIT_RUNS" in line and str(runs) in line, line


# --- 4. out of memory on the CPU --------------------------------------------------------------------------
MEMORY_LIMITED = r"""
import resource, sys
import torch  # the interpreter and torch are mapped before the limit is measured

def address_space():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

when, headroom, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (address_space() + headroom, resource.RLIM_INFINITY))
if when == "now":
    limit()
else:  # the limit arrives after step `when`, as when other processes fill the memory during a run
    from trainers import events
    emit = events.EventWriter.emit
    def emit_then_limit(self, type_, **fields):
        line = emit(self, type_, **fields)
        if type_ == "step" and fields.get("step") == int(when):
            limit()
        return line
    events.EventWriter.emit = emit_then_limit
from trainers.__main__ import main
sys.exit(main(argv))
"""


def limited_trainer(when: str, headroom: int, *args: str) -> tuple[int, str, str]:
    # a fixed thread count: libgomp, starting a thread it cannot map a stack for, exits the process itself
    return finish(trainer(*args, driver=MEMORY_LIMITED, driver_args=(when, str(headroom)),
                          env={"OMP_NUM_THREADS": "1"}), timeout=300)


def test_cpu_out_of_memory_mid_run_ends_failed_with_the_measured_memory_and_the_hint(tmp_path):
    log = tmp_path / "oom" / "events.jsonl"
    big_steps = ("model.n_layer=1", "model.n_head=2", "model.n_embd=256", "model.block_size=256",
                 "train.batch_size=64", "train.eval_iters=1", "train.log_interval=1", "train.max_steps=50",
                 "train.checkpoint_interval=2", "train.eval_interval=1000", "train.sample_interval=0",
                 "train.system_interval=3600")
    code, _, err = limited_trainer("3", 8 * 2**20, *big_steps, "--log", str(log))
    assert code == 1, err[-3000:]
    line = one_error_line(err)
    assert line.startswith("cockpit: error: out of memory at step 4") and "hint: try a smaller" in line, line
    end = events_of(log, "run_end")[-1]
    assert end["status"] == "failed" and "Traceback" not in end["error"]
    assert "can't allocate memory" in end["error"] or "MemoryError" in end["error"], end["error"]
    assert "hint:" in end["error"] and "batch_size" in end["error"]
    assert "measured memory at step 0" in end["error"] and "transformer.h.0" in end["error"]
    assert "ulimit -v" in end["error"]  # what the process was allowed, beside what it measured
    assert torch.load(log.parent / "ckpt.pt", weights_only=True)["step"] == 2  # the last checkpoint stays


def test_a_batch_too_large_for_memory_fails_at_once_with_the_hint(tmp_path):
    log = tmp_path / "big" / "events.jsonl"
    code, _, err = limited_trainer("now", 768 * 2**20, *TINY_GPT, "model.block_size=256",
                                   "train.batch_size=8192", "train.max_steps=5", "train.system_interval=3600",
                                   "--log", str(log))
    assert code == 1, err[-3000:]
    assert "out of memory" in one_error_line(err) and "hint:" in err
    end = events_of(log, "run_end")[-1]
    assert end["status"] == "failed" and "Traceback" not in end["error"]
    assert "activations not measured before the failure; params" in end["error"], end["error"]


def test_a_model_too_big_to_build_is_one_line_with_the_hint(tmp_path):
    code, _, err = limited_trainer("now", 512 * 2**20, "model.n_layer=2", "model.n_head=8", "model.n_embd=4096",
                                   "--log", str(tmp_path / "huge" / "events.jsonl"))
    line = one_error_line(err)
    assert code == 2 and line.startswith("cockpit: error: out of memory before training"), line
    assert "hint: try a smaller" in line and "model.n_embd" in line and "ulimit -v" in line


def test_a_checkpoint_too_big_for_memory_says_so_instead_of_calling_it_corrupt(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(32 * 2**20)}, "config": {}}, ckpt)  # 128 MiB of weights
    code, _, err = limited_trainer("now", 32 * 2**20, "--resume", str(ckpt))
    line = one_error_line(err)
    assert code == 2 and "not enough memory to load this checkpoint (128 MiB on disk)" in line, line
    assert "corrupt" not in line


# --- 5. the disk fills up during a checkpoint write --------------------------------------------------------
def test_disk_full_during_a_checkpoint_write_stops_cleanly_and_keeps_the_previous_checkpoint(
        tmp_path, monkeypatch, capsys):
    """The second checkpoint's bytes go to /dev/full: a real ENOSPC from the kernel mid torch.save."""
    from trainers import checkpoint

    real_open = open
    writes = []

    def open_second_on_full_disk(path, mode="r", *a, **k):
        writes.append(path)
        return real_open("/dev/full" if len(writes) == 2 else path, mode, *a, **k)
    monkeypatch.setattr(checkpoint, "open", open_second_on_full_disk, raising=False)
    log = tmp_path / "full" / "events.jsonl"
    code = train_in_process("nanogpt", *TINY_GPT, "train.max_steps=40", "train.checkpoint_interval=5",
                            "train.log_interval=1", log=log)
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write the checkpoint" in line and "the disk is full (No space left on device)" in line
    assert "the last complete checkpoint is" in line and "(step 5)" in line, line
    end = events_of(log, "run_end")[-1]
    assert end["status"] == "failed" and end["step"] == 10 and "Traceback" not in end["error"]
    assert torch.load(log.parent / "ckpt.pt", weights_only=True)["step"] == 5
    assert not list(log.parent.glob(".ckpt.pt.tmp*"))
    assert cockpit("--replay", str(log)).returncode == 0


FILE_SIZE_LIMITED = r"""
import resource, sys
from trainers import events
emit = events.EventWriter.emit
def emit_then_limit(self, type_, **fields):
    line = emit(self, type_, **fields)
    if type_ == "checkpoint":  # after the first checkpoint: files may not grow past 64 KiB (ulimit -f)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    return line
events.EventWriter.emit = emit_then_limit
from trainers.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_checkpoint_larger_than_the_file_size_limit_stops_cleanly_instead_of_killing_the_trainer(tmp_path):
    """`ulimit -f`: by default the kernel kills a process writing past it (SIGXFSZ); the trainer takes the
    write error instead, a real EFBIG on the checkpoint's temporary file."""
    log = tmp_path / "fsize" / "events.jsonl"
    code, _, err = finish(trainer(*LONG, "--log", str(log), driver=FILE_SIZE_LIMITED))
    assert code == 1, err[-2000:]
    line = one_error_line(err)
    assert "cannot write the checkpoint" in line and "File too large" in line and "(step 5)" in line, line
    assert events_of(log, "run_end")[-1]["status"] == "failed"
    assert torch.load(log.parent / "ckpt.pt", weights_only=True)["step"] == 5
    assert not list(log.parent.glob(".ckpt.pt.tmp*"))


# --- 8. the run directory becomes unwritable or goes away mid-run ----------------------------------------
def make_read_only(d: Path) -> str:
    """Make a directory unwritable for this test's trainer, as far as this machine allows; which way."""
    os.chmod(d, 0o555)
    try:
        (d / ".probe").touch()
    except PermissionError:
        return "chmod"  # not root: the permission bits hold
    (d / ".probe").unlink()
    os.chmod(d, 0o755)
    # root ignores permission bits: a read-only bind mount over the directory (the trainer's open log keeps
    # its descriptor on the writable mount underneath, as a log opened before a remount would)
    r = subprocess.run(["mount", "--bind", str(d), str(d)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"cannot make {d} read-only here (root without mount rights): {r.stderr}"
    for _ in range(50):  # EBUSY while the trainer has a file open for writing there (a checkpoint being written)
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(d), str(d)], capture_output=True, text=True,
                           check=False)
        if r.returncode == 0:
            return "mount"
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(d)], check=False)
    raise AssertionError(f"cannot remount {d} read-only here: {r.stderr}")


def test_the_run_directory_turning_read_only_mid_run_stops_cleanly_with_the_log_and_checkpoint_kept(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    p = trainer(*LONG, "--log", str(log))
    how = None
    try:
        wait_for(lambda: any(e["type"] == "checkpoint" for e in lenient(log)), p)
        how = make_read_only(log.parent)
        code, _, err = finish(p)
    finally:
        p.kill()
        if how == "mount":
            subprocess.run(["umount", "-l", str(log.parent)], check=False)  # lazily: never left mounted
        os.chmod(log.parent, 0o755)
    assert code == 1, err
    line = one_error_line(err)
    assert "cannot write the checkpoint" in line and ("read-only" in line or "permission denied" in line), line
    events = lenient(log)
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "failed"
    kept = [e["step"] for e in events if e["type"] == "checkpoint"][-1]
    assert torch.load(log.parent / "ckpt.pt", weights_only=True)["step"] == kept
    assert cockpit("--replay", str(log)).returncode == 0


@pytest.mark.parametrize("replace_with", ["nothing", "an empty directory", "a file"])
def test_the_run_directory_moved_away_mid_run_stops_cleanly_and_writes_nowhere_else(tmp_path, replace_with):
    log = tmp_path / "run" / "events.jsonl"
    p = trainer(*LONG, "--log", str(log))
    try:
        wait_for(lambda: any(e["type"] == "checkpoint" for e in lenient(log)), p)
        moved = tmp_path / "moved"
        log.parent.rename(moved)
        if replace_with == "an empty directory":
            log.parent.mkdir()
        elif replace_with == "a file":
            log.parent.write_text("in the way")
        code, _, err = finish(p)
    finally:
        p.kill()
    assert code == 1, err
    line = one_error_line(err)
    assert f"the event log {log} was moved, replaced or deleted" in line, line
    events = lenient(moved / "events.jsonl")  # the log went on in its file, wherever that is now
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "failed"
    kept = [e["step"] for e in events if e["type"] == "checkpoint"][-1]
    assert torch.load(moved / "ckpt.pt", weights_only=True)["step"] == kept
    if replace_with == "an empty directory":
        assert list(log.parent.iterdir()) == []  # no checkpoint split off from its log
    elif replace_with == "a file":
        assert log.parent.read_text() == "in the way"
    else:
        assert not log.parent.exists()


# --- 13. garbage on the command pipe ----------------------------------------------------------------------
def test_garbage_command_lines_are_skipped_and_the_commands_after_them_still_work(tmp_path):
    """Binary garbage, a 100000-deep JSON, a 1 MiB line, a command of the wrong type: each skipped; then
    checkpoint and stop still work. The trainer reads as a strict UTF-8 locale would decode."""
    log = tmp_path / "cmd" / "events.jsonl"
    p = trainer(*LONG, "train.checkpoint_interval=0", "--commands", "--log", str(log), stdin=subprocess.PIPE,
                env={"PYTHONIOENCODING": "utf-8:strict"})
    try:
        wait_for(lambda: steps(log) >= 3, p)
        for junk in (b"\xff\xfe\x00\x80 garbage \xc3\x28\n", b"[" * 100_000 + b"\n",
                     b'{"cmd": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", b"x" * 2**20 + b"\n",
                     b'{"cmd": ["stop"]}\n', b'{"cmd": {"a": 1}}\n', b"\n"):
            p.stdin.write(junk)
            p.stdin.flush()
        p.stdin.write(b'{"cmd": "checkpoint"}\n')
        p.stdin.flush()
        wait_for(lambda: any(e["type"] == "checkpoint" for e in lenient(log)), p, timeout=60)
        p.stdin.write(b'{"cmd": "stop"}\n')
        p.stdin.flush()
        code = p.wait(timeout=60)
    finally:
        p.kill()
    assert code == 0
    assert "Traceback" not in p.stderr.read().decode(errors="replace")
    assert [e["reason"] for e in events_of(log, "checkpoint")] == ["command", "stop"]
    assert events_of(log, "run_end")[-1]["status"] == "stopped"


def test_the_command_reader_skips_lines_it_cannot_use_and_keeps_reading():
    import io

    from trainers.controls import Controls, command_lines

    c = Controls()
    lines = list(command_lines(io.BytesIO(b"a" * 300_000 + b"\npause\n" + b"\xff" * 10 + b"\nstop").read))
    assert lines == [b"pause\n", b"\xff" * 10 + b"\n", b"stop"]
    for line in lines:
        c.command(line)
    assert c.paused.is_set() and c.stop.is_set()


# --- 15. signals at any moment ----------------------------------------------------------------------------
def catches(pid: int, sig: signal.Signals) -> bool:
    """The process has a handler for `sig` (Linux: SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (FileNotFoundError, StopIteration):
        return False
    return bool(mask >> (sig - 1) & 1)


CKPT_HEAVY = ("model.n_layer=4", "model.n_head=4", "model.n_embd=256", "model.block_size=32", "train.batch_size=2",
              "train.eval_iters=1", "train.max_steps=100000", "train.log_interval=1", "train.checkpoint_interval=1",
              "train.eval_interval=1000000", "train.sample_interval=0", "train.system_interval=3600")
MOMENTS = {
    # the trainer's handlers are in place; it is still importing torch, reading data, building the model
    "starting": (TINY_GPT, lambda p, log: catches(p.pid, signal.SIGTERM)),
    "mid-step": (LONG, lambda p, log: steps(log) >= 3),
    # a checkpoint of a 3M-parameter model (with AdamW state) is on its way to disk
    "checkpoint write": (CKPT_HEAVY, lambda p, log: steps(log) >= 1 and any(log.parent.glob(".ckpt.pt.tmp-*"))),
    # the run has ended and recorded its end; the interpreter is shutting down
    "exiting": ((*TINY_GPT, "train.max_steps=2"), lambda p, log: any(e["type"] == "run_end" for e in lenient(log))),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("times", [1, 2, 3])
def test_sigterm_once_or_repeatedly_at_any_moment_exits_0_without_a_traceback(tmp_path, moment, times):
    args, ready = MOMENTS[moment]
    log = tmp_path / "run" / "events.jsonl"
    p = trainer(*args, "--log", str(log))
    try:
        wait_for(lambda: ready(p, log), p, every=0.005)
        for _ in range(times):
            p.send_signal(signal.SIGTERM)
            time.sleep(0.02)
        code, _, err = finish(p)
    finally:
        p.kill()
    assert code == 0, (code, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    events = lenient(log)
    if any(e["type"] == "run_start" for e in events):  # once a run has started, its log ends it
        assert events[-1]["type"] == "run_end" and events[-1]["status"] in ("stopped", "completed")
        ckpts = [e["step"] for e in events if e["type"] == "checkpoint"]
        if ckpts:  # whole, and at least the one the log names last (a signal may fall just after a rename)
            assert torch.load(log.parent / "ckpt.pt", weights_only=True)["step"] >= ckpts[-1]
    assert not list(log.parent.glob(".ckpt.pt.tmp-*"))


def test_ctrl_c_while_starting_stops_at_once_with_the_same_code(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    p = trainer(*TINY_GPT, "--log", str(log))
    try:
        wait_for(lambda: catches(p.pid, signal.SIGTERM), p, every=0.005)  # ours: Python catches SIGINT from the start
        p.send_signal(signal.SIGINT)
        code, _, err = finish(p, timeout=60)
    finally:
        p.kill()
    assert code == 0 and "Traceback" not in err, err
    assert not log.exists() or not events_of(log, "run_start")
