"""Hostile and unlucky starts: a configuration the model cannot be built with, a data path that is a pipe or a
device, a preset that is an alias bomb or contains itself, a name that is a path, a signal while starting.
Each is refused with one `cockpit: error:` line and exit 2 before a run directory exists, or ends the start at
once (exit 0, as every stop by a signal): never a traceback, never a hang."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.paths import default_log_path, name_problem, safe_name
from tests.conftest import ROOT, TINY_GPT, FakeTty, cockpit
from trainers import config

MEMORY_LIMIT = 3 * 2**30  # address space for a trainer under test: what reads "until memory runs out" stops here
TINY_PRESET = """name: tiny
arch: gpt
task: lm
model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32, dropout: 0.0}
train: {max_steps: 1, batch_size: 4, eval_iters: 1, eval_interval: 1, system_interval: 0.5}
"""


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def trainer(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m trainers ARGS`, a process of its own with a bounded address space."""
    return subprocess.run([sys.executable, "-m", "trainers", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          preexec_fn=limit_memory)


def start_in_process(*args: str, capsys) -> tuple[int, str]:
    """`python -m trainers ARGS` in this process (torch is already imported): (exit code, stderr)."""
    from trainers.__main__ import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = main(list(args))
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return code, capsys.readouterr().err


def one_error_line(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error: "), stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def refused(r: subprocess.CompletedProcess, *fragments: str) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stdout
    return one_error_line(r.stderr, *fragments)


def preset_file(tmp_path, text: str, name: str = "p.yaml") -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """The runs root of this test ($COCKPIT_RUNS, for runs started here and for the processes started here)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("COCKPIT_RUNS", str(root))
    return root


def run_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# --- 6: configurations the model cannot be built with: refused before anything exists ------------------------
@pytest.mark.parametrize("preset, overrides, fragments", [
    ("nanogpt", ["model.n_embd=100", "model.n_head=6"],
     ["model.n_embd=100 must be divisible by model.n_head=6", "use model.n_embd=96 or 102"]),
    ("moe", ["model.top_k=9"], ["model.top_k=9 must be at most model.n_expert=8"]),
    ("bitnet", ["model.n_embd=132", "model.n_head=4"], ["model.n_embd=132 must be divisible by 2 x model.n_head"]),
    ("retnet", ["model.n_embd=100", "model.n_head=4"], ["model.n_embd=100 must be divisible by 2 x model.n_head"]),
    ("rwkv", ["model.head_size=48"], ["model.n_embd=128 must be divisible by model.head_size=48"]),
    ("mamba", ["model.expand=0"], ["model.expand=0 must be at least 1"]),
    ("dit", ["model.image_size=15"], ["model.image_size=15 must be divisible by model.patch_size=2"]),
    ("dit", ["model.mlp_ratio=inf"], ["model.mlp_ratio=inf must be a finite number"]),
    ("unet", ["model.channel_mult=1,x"], ["model.channel_mult='1,x' must be positive whole numbers"]),
    ("unet", ["model.n_head=5"], ["model.n_head=5 must divide the"]),
    ("mingpt-sort", ["model.n_head=5"], ["model.n_embd=48 must be divisible by model.n_head=5"]),
])
def test_a_model_that_cannot_be_built_is_bad_input_before_a_run_directory_exists(preset, overrides, fragments,
                                                                                runs, capsys):
    code, err = start_in_process(preset, *overrides, "train.max_steps=1", capsys=capsys)
    assert code == 2, err[-3000:]
    one_error_line(err, *fragments)
    assert run_dirs(runs) == []


@pytest.mark.parametrize("value, fragments", [
    ('"four"', ["model.n_layer='four' must be an integer", "e.g. model.n_layer=6"]),
    ("1.5", ["model.n_layer=1.5 must be an integer", "e.g. model.n_layer=6"]),
    ("true", ["model.n_layer=True must be an integer"]),  # a bool is never a number
    ("[1, 2]", ["model.n_layer=[1, 2] must be a single value"]),
    (".nan", ["model.n_layer=nan must be a finite number"]),
])
def test_a_model_key_of_the_wrong_type_in_a_preset_file_is_bad_input(value, fragments, tmp_path, runs, capsys):
    path = preset_file(tmp_path, TINY_PRESET.replace("n_layer: 1,", f"n_layer: {value},"))
    code, err = start_in_process(path, capsys=capsys)
    assert code == 2, err[-3000:]
    one_error_line(err, *fragments)
    assert run_dirs(runs) == []


def test_model_keys_are_typed_by_the_architecture_not_by_the_preset(tmp_path, runs, capsys):
    """A preset that spells a number as a string still gets a number, and an override of it too."""
    path = preset_file(tmp_path, TINY_PRESET.replace("n_layer: 1,", 'n_layer: "1",').replace("dropout: 0.0",
                                                                                           "dropout: 0"))
    code, err = start_in_process(path, "model.n_embd=32", "--check", capsys=capsys)
    assert (code, err) == (0, "")
    from trainers.models import make_config

    cfg = make_config("gpt", {"n_layer": "2", "dropout": 0, "n_embd": 64.0, "n_head": 4})
    assert (cfg.n_layer, cfg.dropout, cfg.n_embd) == (2, 0.0, 64)
    assert type(cfg.n_layer) is int and type(cfg.dropout) is float and type(cfg.n_embd) is int


def test_sort_data_that_would_enumerate_for_ever_is_bad_input(tmp_path, runs):
    r = trainer("mingpt-sort", "data.num_digits=10", "data.length=12", timeout=60)
    refused(r, "data.num_digits=10 and data.length=12 make 10^12 possible inputs")
    path = preset_file(tmp_path, (ROOT / "presets" / "mingpt-sort.yaml").read_text().replace("length: 6",
                                                                                                'length: "six"'))
    refused(trainer(path, timeout=60), "data.length='six' must be an integer")
    assert run_dirs(runs) == []


@pytest.mark.parametrize("env, fragments", [
    ({"CUDA_VISIBLE_DEVICES": ""}, ["device=cuda, but this machine has no CUDA device"]),
    # the driver probe says yes (forced) but torch finds no device: the trainer's own check
    ({"CUDA_VISIBLE_DEVICES": "", "COCKPIT_FORCE_CUDA": "1"}, ["device=cuda, but", "use device=cpu"]),
])
def test_device_cuda_without_cuda_is_bad_input(env, fragments, runs):
    r = cockpit("train", "nanogpt", "device=cuda", *TINY_GPT, "train.max_steps=1", "--headless",
                env={**env, "COCKPIT_RUNS": str(runs)})
    refused(r, *fragments)
    assert run_dirs(runs) == []


@pytest.fixture
def ui(monkeypatch):
    """`cockpit ARGV` on a terminal, in this process, the UI itself replaced by a recorder of its launches:
    (run(argv) -> exit code, the launches)."""
    import types

    from cockpit import cli

    launched = []
    monkeypatch.setitem(sys.modules, "cockpit.app",
                        types.SimpleNamespace(run_tui=lambda **kw: launched.append(kw) or 0))

    def run(argv):
        # the streams of this moment (pytest swaps in its own captures when a test starts)
        monkeypatch.setattr(sys, "stdin", FakeTty(sys.stdin))
        monkeypatch.setattr(sys, "stdout", FakeTty(sys.stdout))
        return cli.main(argv)
    return run, launched


async def test_a_model_the_ui_launches_that_cannot_be_built_ends_it_with_the_trainers_line_and_exit_2(runs):
    """`cockpit nanogpt model.n_embd=100 model.n_head=6`: the UI opens at once (no torch in its process to check
    the model), the trainer refuses in one line, and the cockpit ends with that line, exit 2, nothing left."""
    from cockpit.app import CockpitApp

    app = CockpitApp(preset="nanogpt", overrides=["model.n_embd=100", "model.n_head=6"])
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(600):
            if app.farewell:
                break
            await pilot.pause(0.1)
    assert app.exit_status == 2
    one_error_line(app.farewell, "model.n_embd=100 must be divisible by model.n_head=6")
    assert run_dirs(runs) == []


def test_the_ui_still_opens_for_a_good_preset_and_keeps_torch_out_of_its_process(tmp_path):
    code = ("import sys, types\n"
            "class T:\n"
            "    def __init__(self, s): self.s = s\n"
            "    def isatty(self): return True\n"
            "    def __getattr__(self, n): return getattr(self.s, n)\n"
            "sys.stdin, sys.stdout = T(sys.stdin), T(sys.stdout)\n"
            "sys.modules['cockpit.app'] = types.SimpleNamespace(run_tui=lambda **kw: print('UI', kw['preset']) or 0)\n"
            "from cockpit.cli import main\n"
            "code = main(['nanogpt', 'train.max_steps=1'])\n"
            "print('torch' in sys.modules, code)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["UI", "nanogpt", "False", "0"]


# --- 11: data that is a pipe or a device; a signal while starting --------------------------------------------
def test_a_data_path_that_is_a_named_pipe_is_refused_not_waited_on(tmp_path, runs):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    r = trainer("nanogpt", *TINY_GPT, f"data.path={fifo}", timeout=60)
    refused(r, f"data.path={fifo}: is a named pipe (FIFO), not a regular file")
    npz = tmp_path / "images.npz"
    os.mkfifo(npz)
    refused(trainer("unet", f"data.path={npz}", timeout=60), "is a named pipe (FIFO)")
    assert run_dirs(runs) == []


def test_a_data_path_that_is_a_device_is_refused_not_read_until_memory_runs_out(runs):
    r = trainer("nanogpt", *TINY_GPT, "data.path=/dev/zero", timeout=60)
    refused(r, "data.path=/dev/zero: is a character device, not a regular file")


def test_a_log_or_a_preset_that_is_a_named_pipe_is_refused(tmp_path, runs):
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    r = trainer("nanogpt", *TINY_GPT, "train.max_steps=1", "--log", str(fifo), timeout=60)
    refused(r, f"--log {fifo}: is a named pipe (FIFO), not a regular file")
    preset = tmp_path / "preset.yaml"
    os.mkfifo(preset)
    refused(cockpit("train", str(preset), "--headless", timeout=60), "is a named pipe (FIFO)")


def test_bad_data_found_while_starting_leaves_no_empty_run_directory(tmp_path, runs, capsys):
    small = tmp_path / "tiny.txt"
    small.write_text("to be or not to be\n")
    code, err = start_in_process("nanogpt", *TINY_GPT, f"data.path={small}", capsys=capsys)
    assert code == 2
    one_error_line(err, "fewer than one block")
    assert run_dirs(runs) == []


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """Text that takes the trainer seconds to tokenise: a start long enough to be interrupted in."""
    path = tmp_path_factory.mktemp("corpus") / "big.txt"
    path.write_text("the quick brown fox jumps over the lazy dog, and the dog sleeps on\n" * 600_000)
    return path


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler of its own for `sig` (Linux: the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def start_and_signal(args: list[str], runs: Path, sig: int, when) -> tuple[subprocess.Popen, float]:
    """Start a trainer, wait until when(pid) holds, send it `sig`: (the process, when the signal went)."""
    proc = subprocess.Popen([sys.executable, "-m", "trainers", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COCKPIT_RUNS": str(runs)},
                            preexec_fn=limit_memory)
    deadline = time.time() + 120
    while not when(proc.pid) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    return proc, time.time()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 0), (signal.SIGTERM, 0)])
def test_one_signal_ends_a_start_at_once_and_leaves_nothing_behind(sig, code, big_corpus, runs):
    """The run directory exists (the log was claimed) and the corpus is being read and tokenised: one signal
    ends it there, without training a step first."""
    args = ["nanogpt", *TINY_GPT, "train.max_steps=1", f"data.path={big_corpus}"]
    proc, sent = start_and_signal(args, runs, sig, lambda pid: list(runs.glob("*/events.jsonl")))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-3000:]
    assert time.time() - sent < 30
    assert err.strip().splitlines() == [f"cockpit: stopped by {signal.Signals(sig).name} while starting, before "
                                        "the first step; nothing was trained"]
    assert run_dirs(runs) == []  # the empty log and its run directory are gone


def test_more_signals_while_a_start_ends_change_nothing(big_corpus, runs):
    """Ctrl-C pressed again, then SIGTERM from a supervisor, while the trainer is already ending its start."""
    args = ["nanogpt", *TINY_GPT, "train.max_steps=1", f"data.path={big_corpus}"]
    proc, _ = start_and_signal(args, runs, signal.SIGINT, lambda pid: list(runs.glob("*/events.jsonl")))
    for sig in (signal.SIGINT, signal.SIGTERM):
        time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert err.strip().splitlines() == ["cockpit: stopped by SIGINT while starting, before the first step; "
                                        "nothing was trained"]
    assert run_dirs(runs) == []


def test_ctrl_c_as_soon_as_the_trainer_listens_ends_it_without_a_traceback(runs):
    """Signalled the moment it handles SIGTERM (the first thing it does): it is still importing torch."""
    proc, _ = start_and_signal(["nanogpt", *TINY_GPT, "train.max_steps=1"], runs, signal.SIGINT,
                               lambda pid: catches(pid, signal.SIGTERM))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert run_dirs(runs) == []


# --- 6 (siblings): a Hugging Face config.json that is not what it says ------------------------------------
@pytest.mark.parametrize("text, fragment", [
    ("[1, 2]", "config.json holds a JSON list, not an object"),
    ('{"n_embd": "768"}', "n_embd='768' is not a whole number in [1, 65536]"),
    ('{"n_embd": true}', "n_embd=True is not a whole number"),
    ('{"n_layer": 1e400}', "n_layer=inf is not a whole number in [1, 1000]"),
    ('{"n_head": 5}', "n_embd=768 is not divisible by n_head=5"),
    ('{"resid_pdrop": "x"}', "resid_pdrop='x' is not a number in [0, 1)"),
    ('{"n_positions": -1}', "n_positions=-1 is not a whole number"),
    ("[" * 100_000, "config.json is unreadable (nested too deeply)"),
    ("\udcff".encode("utf-8", "surrogateescape").decode("latin-1"), "config.json is unreadable"),
], ids=["list", "string", "bool", "huge", "indivisible", "pdrop", "negative", "deep", "not-utf8"])
def test_a_hugging_face_config_json_with_wrong_types_is_refused_in_one_line(tmp_path, text, fragment):
    from trainers import hf
    from trainers.config import ConfigError

    (tmp_path / "config.json").write_text(text, encoding="latin-1")
    with pytest.raises(ConfigError) as e:
        hf.read_config(tmp_path)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_fine_tune_from_a_broken_config_json_exits_2_before_a_run_directory_exists(tmp_path, runs):
    (tmp_path / "config.json").write_text('{"n_layer": "twelve"}')
    refused(trainer("lora", f"finetune.base={tmp_path}", timeout=120),
            "config.json: n_layer='twelve' is not a whole number")
    assert run_dirs(runs) == []


# --- 12: presets that would hang or crash the loader --------------------------------------------------------
def billion_laughs(levels: int = 9) -> str:
    lines = ["name: laughs", "arch: gpt", "task: lm", "data:",
             "  l0: &l0 {" + ", ".join(f"k{i}: lol" for i in range(9)) + "}"]
    for n in range(1, levels):
        lines.append(f"  l{n}: &l{n} {{" + ", ".join(f"k{i}: *l{n - 1}" for i in range(9)) + "}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, fragment", [
    pytest.param(billion_laughs(), "holds more than 100,000 values with its aliases expanded", id="alias-bomb"),
    pytest.param("name: loop\narch: gpt\ntask: lm\nmodel: &m {n_layer: 1, again: *m}\n",
                 "the mapping at line 4, column 8 contains itself through an alias", id="contains-itself"),
    pytest.param("name: deep\nmodel: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 50 levels deep",
                 id="deep-flow"),
    pytest.param("name: deep\n" + "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n",
                 "nested more than 50 levels deep", id="deep-block"),
    pytest.param("name: big\ntrain: {max_steps: " + "9" * 5000 + "}\n",
                 "line 2, column 20: YAML syntax error: cannot read this value", id="5000-digits"),
    pytest.param("name: when\ndescription: 2001-13-45\n",
                 "line 2, column 14: YAML syntax error: cannot read this value", id="13th-month"),
    pytest.param("name: both\narch: gpt\ntask: lm\nmodel: {n_layer: 1, 'n_layer.x': 2}\n",
                 "'model.n_layer' is a value and also the section of 'model.n_layer.x'", id="value-and-section"),
    pytest.param("name: huge\ntrain: {lr: " + "9" * 400 + "}\n", " must be a finite number", id="400-digit-float"),
    pytest.param("name: long\n" + "# padding\n" * 120_000, "more than the 1,048,576 this file may have",
                 id="over-1-MiB"),
])
def test_a_preset_that_would_hang_or_crash_the_loader_is_one_line(text, fragment, tmp_path):
    path = preset_file(tmp_path, text)
    r = cockpit("train", path, "--headless", "--log", str(tmp_path / "run" / "events.jsonl"), timeout=60)
    refused(r, fragment)
    assert not (tmp_path / "run").exists()


def test_aliases_that_stay_small_are_still_yaml(tmp_path):
    path = preset_file(tmp_path, "name: ok\nx: &a [1, 2]\ny: *a\nz: &m {k: *a}\nw: [*m, *m]\n")
    assert config.read_yaml(Path(path)) == {"name": "ok", "x": [1, 2], "y": [1, 2], "z": {"k": [1, 2]},
                                            "w": [{"k": [1, 2]}, {"k": [1, 2]}]}


# --- 14: names are names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fragment", [
    ("../../escape", "name='../../escape' contains '/'"),
    ("/tmp/abs", "name='/tmp/abs' contains '/'"),
    ("..", "name='..' starts with '.'"),
    ("a\\0b", "name='a\\x00b' contains '\\x00'"),
    ("x" * 300, "is 300 bytes long"),
])
def test_a_preset_name_that_is_a_path_is_bad_input(name, fragment, tmp_path, runs):
    path = preset_file(tmp_path, TINY_PRESET.replace("name: tiny", f'name: "{name}"'))
    r = cockpit("train", path, "--headless", timeout=60)
    refused(r, fragment, "a name is letters, digits")
    assert run_dirs(runs) == [] and not (tmp_path / "escape").exists()
    with pytest.raises(config.ConfigError, match="contains '/'"):
        config.load("nanogpt", ["name=../x"])


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "..", ".", "a\x00b", "x" * 300, "模" * 200, "", "-rf",
                                  "a\nb"])
def test_a_run_directory_is_always_one_sane_directory_inside_the_runs_root(name, tmp_path):
    log = default_log_path(name, tmp_path)
    assert log.parent.parent == tmp_path and log.parent.is_dir()
    assert name_problem(log.parent.name.rsplit("-", 2)[0]) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=150))
def test_safe_name_always_gives_a_name_the_rule_accepts(name):
    fixed = safe_name(name)
    assert name_problem(fixed) is None
    if name_problem(name) is None:
        assert fixed == name


def test_a_preset_file_without_a_name_is_named_after_its_file_as_a_name(tmp_path):
    path = preset_file(tmp_path, TINY_PRESET.replace("name: tiny\n", ""), "my preset.yaml")
    assert config.load(path)["name"] == "my-preset"
