"""Presets load and validate; bad input exits 2 with one `cockpit: error:` line naming the field and fix."""
from __future__ import annotations

import json

import pytest

from tests.conftest import cockpit
from trainers import config


def test_every_shipped_preset_loads_on_cpu_and_full():
    for name in config.preset_names():
        cpu = config.load(name, has_cuda=False)
        full = config.load(name, has_cuda=True)
        assert cpu["profile"] == "cpu" and cpu["device"] == "cpu"
        assert full["profile"] == "full" and full["device"] == "cuda"
        assert cpu["name"] == name and cpu["description"].strip(), f"{name} needs a description"


def test_cpu_profile_applies_only_without_cuda():
    cpu = config.load("nanogpt", has_cuda=False)
    full = config.load("nanogpt", has_cuda=True)
    assert (cpu["model"]["n_embd"], full["model"]["n_embd"]) == (128, 384)
    forced = config.load("nanogpt", ["profile=full", "device=cpu"])
    assert forced["model"]["n_embd"] == 384 and forced["device"] == "cpu"


def test_overrides_are_typed_by_the_schema():
    cfg = config.load("nanogpt", ["train.max_steps=200", "train.lr=3e-4", "model.bias=true", "data.path=x.txt"])
    assert cfg["train"]["max_steps"] == 200 and isinstance(cfg["train"]["max_steps"], int)
    assert cfg["train"]["lr"] == 3e-4
    assert cfg["model"]["bias"] is True and cfg["data"]["path"] == "x.txt"


@pytest.mark.parametrize("bad, expected", [
    (["train.max_stpes=3"], "did you mean 'train.max_steps'"),
    (["train.max_steps=abc"], "must be an integer"),
    (["train.lr=-1"], "out of range"),
    (["model.n_layer=0"], "out of range"),
    (["device=tpu"], "use one of auto, cpu, cuda"),
    (["max_steps"], "must look like key=value"),
])
def test_bad_overrides_name_the_field_and_fix(bad, expected):
    with pytest.raises(config.ConfigError) as e:
        config.load("nanogpt", bad)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_suggests_a_close_name():
    with pytest.raises(config.ConfigError, match="did you mean 'nanogpt'"):
        config.load("nanogtp")


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\narch: gpt\ntrain:\n  max_steps: [1, 2\n")
    with pytest.raises(config.ConfigError, match=r"bad.yaml: line \d+, column \d+: YAML syntax error"):
        config.load(str(p))


def test_unknown_key_in_a_yaml_file_is_reported_with_its_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\narch: gpt\ntask: lm\nmodel: {n_layer: 1}\ntrain: {lerning_rate: 0.1}\n")
    with pytest.raises(config.ConfigError, match="mine.yaml: unknown key 'train.lerning_rate'"):
        config.load(str(p))


@pytest.mark.parametrize("args, fragment", [
    (["train", "nanogtp", "--headless"], "unknown preset 'nanogtp'; did you mean 'nanogpt'"),
    (["train", "nanogpt", "train.max_stpes=3", "--headless"], "did you mean 'train.max_steps'"),
    (["train", "nanogpt", "train.batch_size=big", "--headless"], "train.batch_size='big' must be an integer"),
    (["train", "nanogpt", "data.path=/nonexistent/corpus.txt", "--headless"], "data.path=/nonexistent/corpus.txt: file not found"),
    (["train", "nanogpt", "model.n_layr=2", "--headless"], "unknown key 'model.n_layr'"),
])
def test_cli_bad_input_exits_2_with_one_line_and_no_traceback(args, fragment, tmp_path):
    r = cockpit(*args, "--log", str(tmp_path / "x" / "events.jsonl"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit: error: "), r.stderr
    assert fragment in lines[0]
    assert "Traceback" not in r.stderr + r.stdout


def test_corpus_shorter_than_one_block_is_bad_input(tmp_path):
    small = tmp_path / "tiny.txt"
    small.write_text("to be or not to be\n")
    r = cockpit("train", "nanogpt", f"data.path={small}", "--headless", "--log", str(tmp_path / "l.jsonl"))
    assert r.returncode == 2
    assert "fewer than one block" in r.stderr and "model.block_size" in r.stderr


def test_presets_json_lists_params_vram_and_profile():
    r = cockpit("presets", "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["name"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert {"nanogpt", "mingpt-sort"} <= set(rows)
    nano = rows["nanogpt"]
    # nanoGPT's shakespeare_char model: 10.65M non-embedding params (+ 98k position embeddings)
    assert 10.6e6 < nano["n_params"] < 10.9e6
    assert nano["profile_here"] == "cpu" and nano["est_vram_bytes"] > nano["n_params"] * 16
    table = cockpit("presets")
    assert "nanogpt" in table.stdout and "est. VRAM" in table.stdout
