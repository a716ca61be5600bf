"""The run index (cockpit/runs/) and `cockpit runs`: built from the logs alone, fast, honest about status."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cockpit.compare import config_diff
from cockpit.runs import RunsError
from cockpit.runs import index as runs
from cockpit.runs.delete import delete_run
from cockpit.runs.index import RunInfo, index_runs, read_run
from cockpit.runs.query import filter_runs, sort_runs
from cockpit.runs.table import runs_table
from common.paths import runs_root
from common.state import load_state
from tests.conftest import FakeTty

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "runs"
FIXTURE_NAMES = ["mingpt-stopped", "nanogpt-completed", "nanogpt-killed"]
DEAD_PID = 4194305  # above Linux's PID_MAX_LIMIT: never a live process


@pytest.fixture(autouse=True)
def fresh_cache():
    runs._CACHE.clear()
    yield
    runs._CACHE.clear()


def events(name: str) -> list[dict]:
    return [json.loads(l) for l in (FIXTURES / name / "events.jsonl").read_text().splitlines()]


def write_log(path: Path, evs: list[dict], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in evs) + tail)
    return path


def padded(evs: list[dict], system_per_event: int) -> list[dict]:
    """A real log made long: each event followed by copies of a real system event, as a slow run with
    frequent system sampling writes them."""
    system = next(e for e in events("nanogpt-killed") if e["type"] == "system")
    out = []
    for e in evs:
        out.append(e)
        if e["type"] not in ("run_end",):
            out += [dict(system, time=e["time"])] * system_per_event
    return out


class CountingOpen:
    """Wraps open() in cockpit.runs.index to count the bytes the index reads."""

    def __init__(self):
        self.bytes = 0

    def __call__(self, *args, **kwargs):
        f = open(*args, **kwargs)
        counter = self
        real_read, real_readline = f.read, f.readline

        def read(n=-1):
            data = real_read(n)
            counter.bytes += len(data)
            return data

        def readline(n=-1):
            data = real_readline(n)
            counter.bytes += len(data)
            return data
        f.read, f.readline = read, readline
        return f


# --- status and fields of the real fixture runs --------------------------------------------------------

def test_each_fixture_run_gets_the_status_its_log_shows():
    got = {r.name: r.status for r in index_runs(FIXTURES)}
    assert got == {"nanogpt-completed": "completed", "mingpt-stopped": "stopped", "nanogpt-killed": "killed"}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_index_entry_agrees_with_the_full_replay_of_the_log(name):
    info = read_run(FIXTURES / name / "events.jsonl")
    s = load_state(FIXTURES / name / "events.jsonl")
    assert (info.run_id, info.preset, info.arch, info.task) == (s.run_id, s.preset, s.arch, s.task)
    assert info.status == s.status
    assert info.steps == s.step and info.max_steps == s.max_steps
    assert info.best_val == pytest.approx(s.best_val)
    assert info.params == s.n_params
    assert info.config == s.config
    assert info.started == pytest.approx(s.start_time)
    assert info.wall_time == pytest.approx(s.wall_time(), rel=0.05)
    assert info.throughput == pytest.approx(s.mean_throughput(), rel=0.05)


def test_fixture_logs_are_small_and_the_killed_one_has_a_dead_pid():
    for name in FIXTURE_NAMES:
        assert (FIXTURES / name / "events.jsonl").stat().st_size < 100_000
    killed = events("nanogpt-killed")
    assert not any(e["type"] == "run_end" for e in killed)
    assert killed[0]["type"] == "run_start" and killed[0]["pid"] == DEAD_PID


def test_the_presets_and_configs_of_the_fixtures_differ():
    infos = {r.name: r for r in index_runs(FIXTURES)}
    assert {r.preset for r in infos.values()} == {"nanogpt", "mingpt"}
    diff = config_diff([infos[n].config for n in FIXTURE_NAMES])
    assert diff["model.n_embd"] == [32, 32, 48]
    assert diff["train.lr"] == [0.001, 0.002, 0.003]


# --- killed / running ----------------------------------------------------------------------------------

def unended(name="nanogpt-completed", **start_fields) -> list[dict]:
    evs = [e for e in events(name) if e["type"] != "run_end"]
    evs[0] = {**evs[0], **start_fields}
    return evs


def test_a_log_without_run_end_whose_pid_is_gone_is_killed(tmp_path):
    log = write_log(tmp_path / "r" / "events.jsonl", unended(pid=DEAD_PID))
    assert read_run(log).status == "killed"


def test_a_log_without_run_end_whose_trainer_is_alive_is_running(tmp_path):
    log = write_log(tmp_path / "r" / "events.jsonl", unended(pid=os.getpid(), time=time.time()))
    info = read_run(log)
    assert info.status == "running"
    assert info.steps == 20 and info.best_val == pytest.approx(3.7370371222496033)


def test_a_live_pid_that_started_after_the_run_is_a_reused_pid_so_the_run_is_killed(tmp_path):
    # this test process is alive, but it started long after a run that began in 2001
    log = write_log(tmp_path / "r" / "events.jsonl", unended(pid=os.getpid(), time=1_000_000_000.0))
    assert read_run(log).status == "killed"


def test_a_live_pid_of_another_program_is_not_the_trainer(tmp_path):
    proc = subprocess.Popen(["sleep", "60"])
    try:
        log = write_log(tmp_path / "r" / "events.jsonl", unended(pid=proc.pid, time=time.time()))
        assert read_run(log).status == "killed"
    finally:
        proc.kill()
        proc.wait()


def test_a_trainer_killed_by_sigkill_reads_as_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        log = write_log(tmp_path / "r" / "events.jsonl", unended(pid=proc.pid, time=time.time()))
        assert read_run(log).status == "running"
        proc.kill()
        proc.wait()
        assert read_run(log).status == "killed"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_resumed_run_is_judged_by_its_latest_run_start(tmp_path):
    done = events("nanogpt-completed")
    resumed_start = {**done[0], "time": time.time(), "pid": os.getpid(), "resumed_from": 20, "max_steps": 40}
    more_steps = [dict(e, step=e["step"] + 20, time=time.time(), max_steps=40)
                  for e in done if e["type"] == "step"][-2:]
    log = write_log(tmp_path / "r" / "events.jsonl", done + [resumed_start] + more_steps)
    info = read_run(log)
    assert info.status == "running"          # the earlier run_end belongs to the first segment
    assert info.steps == 40 and info.max_steps == 40
    assert info.started == pytest.approx(done[0]["time"])   # the run began with its first segment
    runs._CACHE.clear()
    write_log(log, done + [dict(resumed_start, pid=DEAD_PID)] + more_steps)
    assert read_run(log).status == "killed"


def test_a_torn_last_line_from_a_killed_writer_is_ignored(tmp_path):
    log = write_log(tmp_path / "r" / "events.jsonl", events("nanogpt-killed"), tail='{"v":1,"type":"step","st')
    info = read_run(log)
    assert info.status == "killed" and info.steps == 16


def test_logs_without_a_run_start_are_listed_as_empty(tmp_path):
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "events.jsonl").write_text("")
    write_log(tmp_path / "junk" / "events.jsonl", [], tail="not json\n[1,2]\n")
    (tmp_path / "not-a-run").mkdir()
    got = {r.name: r.status for r in index_runs(tmp_path)}
    assert got == {"fresh": "empty", "junk": "empty"}


def test_a_missing_runs_directory_has_no_runs(tmp_path):
    assert index_runs(tmp_path / "nope") == []


def test_the_runs_directory_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    shutil.copytree(FIXTURES / "nanogpt-completed", tmp_path / "one")
    monkeypatch.setenv("COCKPIT_RUNS", str(tmp_path))
    assert [r.name for r in index_runs()] == ["one"]
    monkeypatch.delenv("COCKPIT_RUNS")
    assert runs_root() == Path("runs")


# --- reading only what is needed -----------------------------------------------------------------------

def test_hundreds_of_runs_index_in_under_a_second(tmp_path):
    n = 0
    for copy in range(100):
        for name in FIXTURE_NAMES:
            shutil.copytree(FIXTURES / name, tmp_path / f"{name}-{copy:03d}")
            n += 1
    # and a few long logs (~2 MB each), where only the head and tail may be read
    big = padded(events("nanogpt-completed"), 300)
    for i in range(5):
        write_log(tmp_path / f"long-{i}" / "events.jsonl", big)
    t0 = time.perf_counter()
    infos = index_runs(tmp_path)
    elapsed = time.perf_counter() - t0
    assert len(infos) == n + 5
    assert elapsed < 1.0, f"indexing {n + 5} runs took {elapsed:.2f} s"
    assert sum(r.status == "killed" for r in infos) == 100
    assert all(r.status == "completed" for r in infos if r.name.startswith("long-"))


def test_a_long_finished_log_is_read_only_at_its_head_and_tail(tmp_path, monkeypatch):
    log = write_log(tmp_path / "r" / "events.jsonl", padded(events("nanogpt-completed"), 300))
    size = log.stat().st_size
    assert size > 1_000_000
    counter = CountingOpen()
    monkeypatch.setattr(runs, "open", counter, raising=False)
    info = read_run(log)
    assert counter.bytes < 3 * runs.TAIL_BYTES
    assert (info.status, info.steps, info.max_steps) == ("completed", 20, 20)
    assert info.best_val == pytest.approx(3.7370371222496033)
    assert info.throughput == pytest.approx(905.4768751883702)


def test_a_long_killed_log_still_finds_the_best_val_loss_far_before_the_tail(tmp_path):
    evs = padded(events("nanogpt-killed"), 200)
    # the best eval sits at the start, megabytes before the tail
    best = {**next(e for e in evs if e["type"] == "eval"), "val_loss": 1.25}
    evs.insert(3, best)
    log = write_log(tmp_path / "r" / "events.jsonl", evs)
    assert log.stat().st_size > 4 * runs.WHOLE_BYTES
    info = read_run(log)
    state = load_state(log)
    assert info.status == state.status == "killed"
    assert info.best_val == state.best_val == 1.25
    assert info.steps == state.step == 16


def test_a_growing_log_is_rescanned_only_from_where_the_last_pass_stopped(tmp_path, monkeypatch):
    evs = padded(unended("nanogpt-killed", pid=os.getpid(), time=time.time()), 200)
    log = write_log(tmp_path / "r" / "events.jsonl", evs)
    first = read_run(log)
    assert first.status == "running" and first.best_val == pytest.approx(3.3241533637046814)
    size0 = log.stat().st_size
    step = next(e for e in reversed(evs) if e["type"] == "step")
    grown = [dict(step, step=18), {**next(e for e in evs if e["type"] == "eval"), "step": 18, "val_loss": 2.5}]
    with open(log, "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in padded(grown, 100)))
    counter = CountingOpen()
    monkeypatch.setattr(runs, "open", counter, raising=False)
    second = read_run(log)
    assert (second.steps, second.best_val) == (18, 2.5)
    grew = log.stat().st_size - size0
    assert counter.bytes < grew + 3 * runs.TAIL_BYTES < size0


def test_a_long_log_whose_tail_has_no_step_still_reports_its_last_step(tmp_path):
    system = next(e for e in events("nanogpt-killed") if e["type"] == "system")
    log = write_log(tmp_path / "r" / "events.jsonl", events("nanogpt-killed") + [system] * 1000)
    assert log.stat().st_size > runs.WHOLE_BYTES
    info = read_run(log)
    assert (info.status, info.steps, info.max_steps) == ("killed", 16, 200)
    assert info.best_val == pytest.approx(3.3241533637046814)


# --- sorting and filtering -----------------------------------------------------------------------------

def some_runs() -> list[RunInfo]:
    return [
        RunInfo(path=Path("runs/a"), run_id="nanogpt-a", preset="nanogpt", arch="gpt", status="completed", steps=2000,
                best_val=1.48, throughput=12000.0, params=800_000, config={"model": {"n_layer": 4}}, started=3.0),
        RunInfo(path=Path("runs/b"), run_id="mamba-b", preset="mamba", arch="mamba", status="killed", steps=300,
                best_val=None, throughput=9000.0, params=700_000, config={"model": {"n_layer": 2}}, started=1.0),
        RunInfo(path=Path("runs/c"), run_id="mingpt-c", preset="mingpt", arch="mingpt", status="failed", steps=10,
                best_val=2.9, throughput=None, params=900_000, config={"model": {"n_layer": 4}}, started=2.0),
    ]


def names(rs):
    return [r.name for r in rs]


def test_sorting_by_a_column_puts_runs_without_a_value_last_both_ways():
    rs = some_runs()
    assert names(sort_runs(rs, "best_val")) == ["a", "c", "b"]
    assert names(sort_runs(rs, "best_val", reverse=True)) == ["c", "a", "b"]
    assert names(sort_runs(rs, "preset")) == ["b", "c", "a"]
    assert names(sort_runs(rs, "steps", reverse=True)) == ["a", "b", "c"]
    assert names(rs) == ["a", "b", "c"]  # pure: the input is untouched


def test_sorting_by_an_unknown_column_names_the_valid_ones():
    with pytest.raises(RunsError, match="best_val"):
        sort_runs(some_runs(), "colour")


def test_filtering_by_words_fields_numbers_and_config_keys():
    rs = some_runs()
    assert names(filter_runs(rs, "")) == ["a", "b", "c"]
    assert names(filter_runs(rs, "MAMBA")) == ["b"]
    assert names(filter_runs(rs, "status:killed")) == ["b"]
    assert names(filter_runs(rs, "best_val<2")) == ["a"]
    assert names(filter_runs(rs, "steps>=300")) == ["a", "b"]
    assert names(filter_runs(rs, "model.n_layer=4")) == ["a", "c"]
    assert names(filter_runs(rs, "model.n_layer=4 gpt")) == ["a", "c"]   # every term must match
    assert names(filter_runs(rs, "arch=gpt")) == ["a"]                    # = is exact, : is a substring
    assert names(filter_runs(rs, "arch:gpt")) == ["a", "c"]
    assert names(filter_runs(rs, "tok/s>10000")) == ["a"]
    assert names(filter_runs(rs, "nothing-like-this")) == []


def test_the_text_table_has_a_row_per_run_with_its_status_and_best_val():
    text = runs_table(index_runs(FIXTURES))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["preset", "arch", "status", "steps"]
    assert len(lines) == 2 + 3
    killed = next(l for l in lines if "killed" in l)
    assert "16/200" in killed and "3.3242" in killed and "nanogpt-20261121-054810-795f" in killed


# --- config_diff ---------------------------------------------------------------------------------------

def test_config_diff_lists_only_the_dotted_keys_that_differ():
    a = {"name": "x", "model": {"n_layer": 2, "n_head": 4}, "train": {"lr": 1e-3, "betas": [0.9, 0.99]}}
    b = {"name": "x", "model": {"n_layer": 4, "n_head": 4}, "train": {"lr": 1e-3, "betas": [0.9, 0.95]}}
    c = {"name": "x", "model": {"n_layer": 2, "n_head": 4, "d_state": 16}, "train": {"lr": 1e-3, "betas": [0.9, 0.99]}}
    assert config_diff([a, b, c]) == {"model.n_layer": [2, 4, 2],
                                      "train.betas": [[0.9, 0.99], [0.9, 0.95], [0.9, 0.99]],
                                      "model.d_state": [None, None, 16]}
    assert config_diff([a, dict(a)]) == {}
    assert config_diff([{"x": 1}, {"x": True}, {"x": "1"}]) == {"x": [1, True, "1"]}


# --- delete_run ----------------------------------------------------------------------------------------

def make_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    for name in FIXTURE_NAMES:
        shutil.copytree(FIXTURES / name, root / name)
    (root / "nanogpt-completed" / "ckpt.pt").write_bytes(b"weights")
    return root


def test_delete_run_removes_that_run_directory_only(tmp_path):
    root = make_root(tmp_path)
    removed = delete_run(root / "nanogpt-completed", root)
    assert removed == (root / "nanogpt-completed").resolve()
    assert sorted(p.name for p in root.iterdir()) == ["mingpt-stopped", "nanogpt-killed"]
    delete_run(root / "nanogpt-killed" / "events.jsonl", root)   # the log's path means its run
    assert names(index_runs(root)) == ["mingpt-stopped"]


@pytest.mark.parametrize("target", ["root", "outside", "nested", "dotdot", "no-log", "symlink", "missing"])
def test_delete_run_refuses_anything_but_a_run_directory_under_the_root(tmp_path, target):
    root = make_root(tmp_path)
    outside = tmp_path / "precious"
    shutil.copytree(FIXTURES / "nanogpt-completed", outside)
    nested = root / "mingpt-stopped" / "inner"
    shutil.copytree(FIXTURES / "nanogpt-completed", nested)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me")
    (root / "link").symlink_to(outside, target_is_directory=True)
    path = {"root": root, "outside": outside, "nested": nested, "dotdot": root / ".." / "precious",
            "no-log": root / "notes", "symlink": root / "link", "missing": root / "gone"}[target]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(RunsError):
        delete_run(path, root)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_delete_run_refuses_a_run_that_is_still_running(tmp_path):
    root = tmp_path / "runs"
    write_log(root / "live" / "events.jsonl", unended(pid=os.getpid(), time=time.time()))
    with pytest.raises(RunsError, match="still running"):
        delete_run(root / "live", root)
    assert (root / "live" / "events.jsonl").is_file()


# --- cockpit runs --------------------------------------------------------------------------------------

def cockpit(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "cockpit", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, timeout=60)


def test_cockpit_runs_json_prints_one_object_per_run_without_a_terminal():
    p = cockpit("runs", "--json", "--dir", str(FIXTURES))
    assert p.returncode == 0, p.stderr
    objs = [json.loads(l) for l in p.stdout.splitlines()]
    by_dir = {Path(o["path"]).name: o for o in objs}
    assert {k: o["status"] for k, o in by_dir.items()} == {
        "nanogpt-completed": "completed", "mingpt-stopped": "stopped", "nanogpt-killed": "killed"}
    o = by_dir["nanogpt-completed"]
    assert (o["preset"], o["arch"], o["steps"], o["max_steps"], o["params"]) == ("nanogpt", "gpt", 20, 20, 15840)
    assert o["best_val"] == pytest.approx(3.7370371222496033)
    assert o["log"].endswith("nanogpt-completed/events.jsonl")
    assert [o["started"] for o in objs] == sorted((o["started"] for o in objs), reverse=True)  # newest first


def test_cockpit_runs_reads_the_runs_directory_from_the_environment_and_prints_a_table(tmp_path):
    shutil.copytree(FIXTURES / "mingpt-stopped", tmp_path / "m")
    p = cockpit("runs", env={"COCKPIT_RUNS": str(tmp_path)}, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].startswith("preset")
    assert "mingpt" in p.stdout and "stopped" in p.stdout


def test_cockpit_runs_with_a_missing_directory_is_bad_input():
    p = cockpit("runs", "--dir", "/no/such/runs")
    assert p.returncode == 2
    assert p.stderr.startswith("cockpit: error: --dir /no/such/runs") and len(p.stderr.splitlines()) == 1


def on_a_terminal(monkeypatch, app_module):
    import types

    monkeypatch.setattr(sys, "stdin", FakeTty(sys.stdin))
    monkeypatch.setattr(sys, "stdout", FakeTty(sys.stdout))
    if app_module is None:
        monkeypatch.setitem(sys.modules, "cockpit.app", None)   # import fails
    else:
        monkeypatch.setitem(sys.modules, "cockpit.app", types.SimpleNamespace(run_tui=app_module))


def test_cockpit_runs_on_a_terminal_opens_the_runs_browser_of_that_directory(monkeypatch):
    from cockpit.runs_cmd import main

    calls = []

    def run_tui(preset=None, runs=None, **kw):
        calls.append(runs)
        return 0
    on_a_terminal(monkeypatch, run_tui)
    assert main(["--dir", str(FIXTURES)]) == 0
    assert calls == [str(FIXTURES)]


@pytest.mark.parametrize("app", ["missing", "without-runs-keyword"])
def test_cockpit_runs_on_a_terminal_prints_the_table_until_the_browser_exists(monkeypatch, capsys, app):
    from cockpit.runs_cmd import main

    def old_run_tui(preset=None, watch=None):
        raise AssertionError("a TUI without the runs browser must not be opened")
    on_a_terminal(monkeypatch, None if app == "missing" else old_run_tui)
    assert main(["--dir", str(FIXTURES)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("preset") and "killed" in out and "stopped" in out


def test_a_resumed_run_without_run_end_is_rated_by_its_latest_segment(tmp_path):
    """`elapsed` restarts with each resumed segment: a rate over the whole curve would mix the two clocks."""
    done = events("nanogpt-completed")
    now = time.time()
    resumed_start = {**done[0], "time": now, "pid": os.getpid(), "resumed_from": 20, "max_steps": 40}
    step = next(e for e in done if e["type"] == "step")
    more = [dict(step, step=20 + i, tokens=20_000 + 1000 * i, elapsed=0.5 * i, time=now + 0.5 * i, max_steps=40)
            for i in (1, 2, 3)]
    log = write_log(tmp_path / "r" / "events.jsonl", [e for e in done if e["type"] != "run_end"] + [resumed_start]
                    + more)
    info = read_run(log)
    assert info.status == "running" and info.steps == 23
    assert info.throughput == pytest.approx(2000.0)            # 2000 tokens in 1 s of the latest segment
    assert load_state(log).mean_throughput() == pytest.approx(2000.0)


def test_config_diff_tells_an_empty_section_from_a_missing_one():
    assert config_diff([{"a": {}}, {}]) == {"a": [{}, None]}


def test_the_speed_column_says_each_runs_unit_in_full():
    """A diffusion run's 58.7 items/s is not cut to `58.7 it` under a `tok/s` title: each figure has its unit."""
    from types import SimpleNamespace

    from cockpit.runs.table import COLUMNS, run_cells

    base = dict(preset="p", arch="a", status="completed", steps=3, max_steps=3, best_val=1.0, params=10,
                wall_time=1.0, started=None, run_id="r", name="r")
    col = [k for k, _ in COLUMNS].index("throughput")
    assert dict(COLUMNS)["throughput"] == "speed"
    assert run_cells(SimpleNamespace(**base, throughput=58.7, unit="items"))[col] == "58.7 it/s"
    assert run_cells(SimpleNamespace(**base, throughput=41300.0, unit="tokens"))[col] == "41.3k tok/s"
    assert run_cells(SimpleNamespace(**base, throughput=None, unit="tokens"))[col] == "-"


# --- the browser's columns, resume and relaunch ------------------------------------------------------------

def test_narrow_tables_shrink_the_preset_and_start_columns_first_and_never_the_run_id():
    from cockpit.runs.table import SHRINK, cut, fit_widths

    natural = {"preset": 11, "arch": 6, "status": 9, "steps": 7, "best_val": 8, "throughput": 11, "params": 6,
               "wall_time": 4, "started": 11, "run_id": 32}
    assert fit_widths(natural, sum(natural.values())) == natural
    tight = fit_widths(natural, sum(natural.values()) - 9)
    assert tight == {**natural, "preset": 4, "arch": 4}
    least = fit_widths(natural, 0)
    assert least["run_id"] == 32 and least["wall_time"] == 4
    assert all(least[k] == w for k, w in SHRINK)
    assert cut("nanogpt", 4) == "nan…" and cut("gpt", 4) == "gpt"


def test_the_browser_dates_this_years_runs_by_day_and_time_and_older_ones_by_date():
    from cockpit.runs.table import fmt_started

    t = time.mktime((2026, 11, 21, 5, 47, 0, 0, 0, -1))
    assert fmt_started(t) == "2026-11-21 05:47"                         # `cockpit runs`: in full
    assert fmt_started(t, now=t + 86400) == "11-21 05:47"
    assert fmt_started(t, now=t + 400 * 86400) == "2026-11-21"
    assert fmt_started(None, now=t) == "-"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_relaunch_overrides_turn_the_preset_into_the_runs_config(name):
    from cockpit.launch import relaunch_overrides
    from trainers.config import flatten, load, strip_private

    start = events(name)[0]
    overrides, left_out = relaunch_overrides(start["preset"], start["config"])
    assert overrides[0] == "profile=cpu" and not left_out
    again = flatten(strip_private(load(start["preset"], overrides)))
    was = flatten(start["config"])
    assert {k: v for k, v in again.items() if k in was and k != "description"} == \
           {k: v for k, v in was.items() if k != "description"}


def test_relaunch_says_which_keys_the_preset_no_longer_has_and_refuses_an_unknown_preset():
    from cockpit.launch import relaunch_overrides
    from trainers.config import ConfigError

    start = events("nanogpt-completed")[0]
    config = {**start["config"], "model": {**start["config"]["model"], "n_gone": 3}}
    overrides, left_out = relaunch_overrides("nanogpt", config)
    assert left_out == ["model.n_gone"] and not any(o.startswith("model.n_gone") for o in overrides)
    with pytest.raises(ConfigError, match="unknown preset"):
        relaunch_overrides("no-such-preset", config)


def test_only_a_stopped_killed_or_failed_run_with_its_checkpoint_resumes(tmp_path):
    from cockpit.launch import resume_refusal

    run = RunInfo(path=tmp_path, run_id="nanogpt-x", preset="nanogpt", status="stopped")
    assert "has no checkpoint" in resume_refusal(run)
    (tmp_path / "ckpt.pt").write_bytes(b"")
    for status in ("stopped", "killed", "failed"):
        run.status = status
        assert resume_refusal(run) is None
    for status, hint in (("completed", "l starts a new run"), ("running", "stop it first"), ("empty", "")):
        run.status = status
        assert f"nanogpt-x is {status}" in resume_refusal(run) and hint in resume_refusal(run)
    run.status, run.preset = "stopped", "no-such-preset"
    assert "cannot resume nanogpt-x: unknown preset 'no-such-preset'" in resume_refusal(run)
