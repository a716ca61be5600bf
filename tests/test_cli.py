"""The `cockpit` command line: every subcommand answers --help under its own name, every option says what it
does, a usage error is one `cockpit: error:` line naming the help to read (exit 2), and `cockpit train` keeps
its spellings: options between overrides, everything after --rdzv for torchrun."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cockpit

SUBCOMMANDS = ("train", "watch", "presets", "kernels", "runs", "export-merged", "data")
HEAVY = ("torch", "triton", "textual")


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [*SUBCOMMANDS, "--replay"])
def test_help_of_every_subcommand_names_it_and_imports_nothing_heavy(command):
    r = run_python("-X", "importtime", "-m", "cockpit", command, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: cockpit {command} "), r.stdout[:300]
    assert "python -m" not in r.stdout
    imported = [line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert not [m for m in imported if m.split(".")[0] in HEAVY]
    assert [line for line in r.stderr.splitlines() if not line.startswith("import time:")] == []


def test_cockpit_help_lists_every_subcommand_with_a_one_line_description():
    r = cockpit("--help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "usage: cockpit [PRESET [k=v ...]]"
    assert "cockpit --replay FILE [FILE ...]" in r.stdout
    for name in SUBCOMMANDS:
        described = [line for line in lines if line.split()[:1] == [name] and len(line.split()) > 2]
        assert len(described) == 1, name


def test_export_merged_keeps_its_own_name_when_run_as_a_module():
    r = run_python("-m", "trainers.export_merged", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m trainers.export_merged ")


def every_parser():
    """Every argument parser of the project, each cockpit subcommand with its arguments."""
    from cockpit import runs_cmd
    from cockpit.cli import SUBCOMMANDS as registered
    from cockpit.cli import build_parser, replay_parser
    from kernels import bench
    from trainers import __main__ as trainer
    from trainers import export_merged

    def walk(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)

    yield from walk(build_parser(*registered))
    yield from (replay_parser(), runs_cmd.build_parser(), bench.build_parser(), trainer.build_parser(),
                export_merged.build_parser())


def test_every_option_of_every_parser_has_help_text():
    parsers = list(every_parser())
    progs = {p.prog for p in parsers}
    assert {f"cockpit {name}" for name in [*SUBCOMMANDS, "--replay"]} <= progs
    assert {"python -m trainers", "python -m trainers.export_merged", "python -m kernels.bench"} <= progs
    undocumented = []
    for parser in parsers:
        assert parser.format_help()  # a stray % in a help text fails here
        if parser.prog.startswith("cockpit "):
            assert any(not isinstance(a, argparse._HelpAction) for a in parser._actions), parser.prog
        for action in parser._actions:
            subactions = action._get_subactions() if isinstance(action, argparse._SubParsersAction) else []
            for a in [action, *subactions]:
                if not a.help or a.help is argparse.SUPPRESS:
                    undocumented.append(f"{parser.prog}: {'/'.join(a.option_strings) or a.dest or a.metavar}")
    assert undocumented == []


@pytest.mark.parametrize("argv, prog", [
    (["-m", "cockpit", "--bogus"], "cockpit"),
    (["-m", "cockpit", "train"], "cockpit train"),
    (["-m", "cockpit", "train", "nanogpt", "--nproc", "two"], "cockpit train"),
    (["-m", "cockpit", "watch"], "cockpit watch"),
    (["-m", "cockpit", "presets", "--bogus"], "cockpit presets"),
    (["-m", "cockpit", "kernels", "--device", "tpu"], "cockpit kernels"),
    (["-m", "cockpit", "runs", "--bogus"], "cockpit runs"),
    (["-m", "cockpit", "export-merged"], "cockpit export-merged"),
    (["-m", "cockpit", "data"], "cockpit data"),
    (["-m", "cockpit", "data", "prepare", "corpus.txt", "--out", "d"], "cockpit data prepare"),
    (["-m", "cockpit", "data", "train-tokenizer", "corpus.txt", "--vocab", "many", "--out", "t.json"],
     "cockpit data train-tokenizer"),
    (["-m", "cockpit", "--replay"], "cockpit --replay"),
    (["-m", "cockpit", "--replay", "events.jsonl", "--x", "epochs"], "cockpit --replay"),
    (["-m", "trainers", "nanogpt", "--bogus"], "python -m trainers"),
    (["-m", "trainers.export_merged"], "python -m trainers.export_merged"),
    (["-m", "kernels.bench", "--reps", "many"], "python -m kernels.bench"),
])
def test_a_usage_error_is_one_line_naming_the_help_to_read(argv, prog):
    r = run_python(*argv)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cockpit: error: ") and lines[0].endswith(f"; see `{prog} --help`"), lines[0]
    assert r.stdout == ""


def test_train_reads_options_between_overrides_and_hands_what_follows_rdzv_to_torchrun(monkeypatch, tmp_path):
    import cockpit.cli as cli

    launched = []
    monkeypatch.setattr(cli, "run_torchrun", lambda argv: launched.append(argv) or 0)
    log = str(tmp_path / "events.jsonl")
    rdzv = ["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29500", "--log-dir=torchrun-logs"]
    assert cli.main(["train", "nanogpt", "model.n_layer=1", "--nproc", "2", "train.max_steps=3", "--headless",
                     "--log", log, "--rdzv", *rdzv]) == 0
    (argv,) = launched
    assert "--nproc_per_node=2" in argv
    assert argv[argv.index(rdzv[0]):][:len(rdzv)] == rdzv
    assert argv[argv.index("trainers") + 1:] == ["nanogpt", "model.n_layer=1", "train.max_steps=3", "--progress",
                                                  "--log", log]
