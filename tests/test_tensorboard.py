"""TensorBoard interop (docs/tensorboard.md): a cockpit run exported with `cockpit export --tensorboard` reads
back in TensorBoard's own reader; a run any trainer logged to TensorBoard replays, is watched live and is
listed by the runs browser; damaged and truncated event files are counted as damaged logs are."""
from __future__ import annotations

import math
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cockpit.app import CockpitApp
from cockpit.cli import main
from cockpit.runs.index import index_runs
from cockpit.widgets.metrics_grid import MetricsGrid
from cockpit.widgets.samples_pane import SamplesPane
from cockpit.widgets.status_line import StatusLine
from common import tfevents
from common.reader import ReadStats
from common.state import fold_available, load_state
from tests.conftest import ROOT
from tests.fixtures.tensorboard import make_fixture

FIXTURES = Path(__file__).parent / "fixtures"
TB_FIXTURE = FIXTURES / "tensorboard" / make_fixture.RUN
LONG_AGO = 1_700_000_300    # a modification time long past: the fixture's writer is taken as gone
MISSING_READER = ('cockpit: error: reading TensorBoard files needs the tensorboard extra: '
                  'pip install -e ".[tensorboard]"\n')
MISSING_WRITER = ('cockpit: error: writing TensorBoard files needs the tensorboard extra: '
                  'pip install -e ".[tensorboard]"\n')


def summary_writer(directory: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(directory))


def hf_loss(step: int) -> float:
    return 2.0 + 1.0 / step


def log_hf_steps(writer, steps) -> None:
    """Scalars as Hugging Face's Trainer logs them (its TensorBoardCallback names them train/..., eval/...)."""
    for step in steps:
        writer.add_scalar("train/loss", hf_loss(step), step)
        writer.add_scalar("train/learning_rate", 1e-3 * (1 - step / 1000), step)
        writer.add_scalar("train/grad_norm", 0.5 + 1 / step, step)
        writer.add_scalar("train/epoch", step / 100, step)
        if step % 50 == 0:
            writer.add_scalar("eval/loss", hf_loss(step) + 0.1, step)
            writer.add_scalar("eval/accuracy", step / 200, step)
    writer.flush()


def hf_run(directory: Path, steps=range(10, 101, 10)) -> Path:
    """A finished Hugging Face-style run; returns its event file."""
    w = summary_writer(directory)
    log_hf_steps(w, steps)
    w.add_text("generation", "once upon a time", steps[-1])
    w.close()
    (f,) = tfevents.event_files(directory)
    return f


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length of the record's data) of each record of an intact event file."""
    spans, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        spans.append((i, n))
        i += 12 + n + 4
    return spans


def as_if_written_long_ago(directory: Path) -> Path:
    for f in directory.iterdir():
        os.utime(f, (LONG_AGO, LONG_AGO))
    return directory


def as_if_written_elsewhere_long_ago(f: Path) -> Path:
    """The event file renamed as another machine's (no process here is its writer), untouched for long."""
    renamed = f.with_name(f"events.out.tfevents.1700000000.elsewhere.{os.getpid()}.0")
    f.rename(renamed)
    return as_if_written_long_ago(renamed.parent)


def shown_lines(widget) -> list[str]:
    """The rows of `widget` as the terminal shows them."""
    from textual.geometry import Region

    return [strip.text for strip in widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))]


async def wait_for(pilot, cond, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


# --- cockpit -> TensorBoard ----------------------------------------------------------------------------------

def same_points(events, steps, values):
    """TensorBoard's scalars are float32: the same points, to float32's precision."""
    assert [e.step for e in events] == list(steps)
    for e, v in zip(events, values):
        assert e.value == pytest.approx(v, rel=1e-6, abs=1e-30) or (math.isnan(e.value) and math.isnan(v))


def finite(steps, values):
    kept = [(st, v) for st, v in zip(steps, values) if math.isfinite(v)]
    return [st for st, _ in kept], [v for _, v in kept]


@pytest.mark.parametrize("name,has", [("nanogpt-tiny", "text samples"), ("mingpt-sort-tiny", "an accuracy"),
                                      ("dit-tiny", "image samples")])
def test_a_run_exported_to_tensorboard_reads_back_with_tensorboards_own_reader(name, has, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run = FIXTURES / "tui" / name
    out = tmp_path / "tb"
    assert main(["export", str(run), "--tensorboard", str(out)]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.parent == out and written.name.startswith("events.out.tfevents.")
    s = load_state(run / "events.jsonl")

    acc = EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    same_points(acc.Scalars("train/loss"), s.train.steps, s.train.values)
    same_points(acc.Scalars("train/learning_rate"), *finite(s.train.steps, s.lrs))
    same_points(acc.Scalars("train/grad_norm"), *finite(s.train.steps, s.grad_norms))
    same_points(acc.Scalars("train/throughput"), *finite(s.train.steps, s.rates))
    same_points(acc.Scalars("train/tokens" if s.unit == "tokens" else "train/items"), s.train.steps, s.train.units)
    same_points(acc.Scalars("eval/loss"), s.val.steps, s.val.values)
    for metric, curve in s.metrics.items():
        same_points(acc.Scalars(f"eval/{metric}"), *finite(curve.steps, curve.values))
    texts = [ev.text for ev in s.samples if ev.kind == "text"]
    images = [ev.image for ev in s.samples if ev.kind == "image"]
    tags = acc.Tags()
    shown_texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("samples/text_summary")] \
        if "samples/text_summary" in tags["tensors"] else []
    shown_images = acc.Images("samples/image") if "samples/image" in tags["images"] else []
    assert shown_texts == texts
    assert [(e.height, e.width) for e in shown_images] == [(im["h"], im["w"]) for im in images]
    assert {"text samples": texts, "an accuracy": "accuracy" in s.metrics, "image samples": images}[has]

    start = HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["arch"].string_value == s.arch and hp["run_id"].string_value == s.run_id
    assert hp["train.max_steps"].number_value == s.config["train"]["max_steps"]

    back = tfevents.load_state(out)   # and into the cockpit again: the same curves, the run's identity
    assert back.train.steps == s.train.steps and back.val.steps == s.val.steps
    assert back.train.values == pytest.approx(s.train.values, rel=1e-6)
    assert (back.arch, back.task, back.n_params, back.max_steps) == (s.arch, s.task, s.n_params, s.max_steps)
    assert back.config["train.max_steps"] == s.max_steps
    assert sorted(back.metrics) == sorted(f"eval/{m}" for m in s.metrics)


def test_an_export_never_writes_beside_an_earlier_one(tmp_path, capsys):
    run = FIXTURES / "tui" / "nanogpt-tiny"
    out = tmp_path / "tb"
    assert main(["export", str(run), "--tensorboard", str(out)]) == 0
    assert main(["export", str(run), "--tensorboard", str(out)]) == 2
    assert "already holds TensorBoard event files" in capsys.readouterr().err
    assert len(tfevents.event_files(out)) == 1


# --- TensorBoard -> cockpit ----------------------------------------------------------------------------------

def test_the_common_tag_names_fill_our_fields_and_every_other_scalar_is_a_metric():
    named = {"loss": "loss", "train/loss": "loss", "train_loss": "loss", "Loss/train": "loss",
             "eval_loss": "val_loss", "val/loss": "val_loss", "eval/loss": "val_loss", "val_loss": "val_loss",
             "learning_rate": "lr", "lr": "lr", "train/learning_rate": "lr", "lr-AdamW": "lr",
             "grad_norm": "grad_norm", "train/grad_norm": "grad_norm", "throughput": "throughput",
             "train/tokens_per_second": "throughput", "train/num_input_tokens_seen": "tokens"}
    assert {t: tfevents.scalar_field(t) for t in named} == named
    assert [tfevents.scalar_field(t) for t in ("eval/accuracy", "train/epoch", "train/train_loss")] == [None] * 3


def test_a_hugging_face_style_run_replays_with_its_scalars_and_samples(tmp_path, capsys):
    run = tmp_path / "hf-run"
    hf_run(run)
    assert main(["--replay", str(run), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert f"run      hf-run  ({run})" in out and "preset   tensorboard" in out
    assert "steps    100/?" in out
    assert f"loss     train {hf_loss(100):.4f}  best val {hf_loss(100) + 0.1:.4f} @ 100" in out
    assert "metrics  eval/accuracy 50.0%  train/epoch 1  grad norm 0.51  lr 9.00e-04" in out
    assert "--- sample @ step 100 (prompt 'generation')\nonce upon a time" in out
    s = tfevents.load_state(run)
    assert s.train.steps == list(range(10, 101, 10)) and s.val.steps == [50, 100]
    assert s.metrics["eval/accuracy"].values == pytest.approx([0.25, 0.5])
    assert s.lrs == pytest.approx([1e-3 * (1 - st / 1000) for st in s.train.steps])


def test_a_directory_of_tensorboard_runs_is_refused_with_their_names(tmp_path, capsys):
    root = tmp_path / "runs"     # as Hugging Face's Trainer fills output_dir/runs
    for name in ("Nov29_10-00-00_host", "Nov29_11-00-00_host"):
        shutil.copytree(TB_FIXTURE, root / name)
    for argv in (["--replay", str(root)], ["watch", str(root)]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            f"cockpit: error: {root}: holds TensorBoard runs in its subdirectories (Nov29_10-00-00_host, "
            f"Nov29_11-00-00_host); pass one of them (`cockpit runs --dir {root}` lists them)\n")


def test_replaying_a_tensorboard_run_never_imports_torch(tmp_path):
    run = tmp_path / "hf-trainer"
    shutil.copytree(TB_FIXTURE, run)
    code = ("import sys\nfrom cockpit.cli import main\nrc = main(['--replay', sys.argv[1]])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(as_if_written_long_ago(run))], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "steps    300/?  status completed" in r.stdout


def test_the_committed_fixture_is_what_its_script_makes(tmp_path):
    made = make_fixture.write_run(tmp_path / make_fixture.RUN)
    assert made.name == make_fixture.FILE_NAME
    assert made.read_bytes() == (TB_FIXTURE / make_fixture.FILE_NAME).read_bytes()


async def test_a_growing_tensorboard_run_is_watched_live(tmp_path):
    run = tmp_path / "live"
    writer = summary_writer(run)
    try:
        log_hf_steps(writer, range(10, 51, 10))
        app = CockpitApp(watch=str(run))
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: getattr(app.screen, "loaded", False) and app.screen.state.step == 50,
                           "the run so far")
            screen = app.screen
            assert screen.state.status == "running"   # its writer (this process) is alive
            log_hf_steps(writer, range(60, 101, 10))
            writer.add_text("generation", "a cat sat", 100)
            writer.flush()
            await wait_for(pilot, lambda: screen.state.step == 100 and screen.state.samples, "the new steps")
            await pilot.pause(0.3)
            assert screen.state.val.steps == [50, 100] and screen.state.status == "running"
            assert "step 100/?" in str(screen.query_one(StatusLine).render())
            shown = [key for key, _ in screen.query_one(MetricsGrid).available]
            assert shown[0] == "eval/accuracy" and {"lr", "grad_norm", "train/epoch"} <= set(shown)
            pane = screen.query_one(SamplesPane)
            await wait_for(pilot, lambda: "text sample 1/1 @ step 100" in str(pane.query_one("#sample-heading")
                                                                                .render()), "the text sample")
            assert "a cat sat" in shown_lines(pane.query_one("#sample-body"))[0]
            await pilot.press("x", "p")   # its trainer is not the cockpit's: no stop, no pause offered
            await pilot.pause(0.1)
            assert app.screen is screen and screen.state.status == "running"
    finally:
        writer.close()


def test_a_finished_run_from_another_machine_reads_as_completed_once_its_files_are_quiet(tmp_path):
    run = tmp_path / "elsewhere"
    shutil.copytree(TB_FIXTURE, run)   # its file names a host that is not this machine
    for f in run.iterdir():
        os.utime(f)                     # written a moment ago
    follower = tfevents.TfEventsFollower(run)
    assert follower.writer_alive()
    assert tfevents.load_state(run).status == "running"
    as_if_written_long_ago(run)
    s = tfevents.load_state(run)
    assert (s.status, s.step, s.end.synthetic) == ("completed", 300, True)


def test_the_runs_browser_lists_tensorboard_runs_beside_cockpit_runs(tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES / "tui" / "nanogpt-tiny", root / "nanogpt-tiny")
    as_if_written_long_ago(shutil.copytree(TB_FIXTURE, root / "hf-trainer"))
    live = summary_writer(root / "live")
    try:
        log_hf_steps(live, range(10, 31, 10))
        runs = {r.name: r for r in index_runs(root)}
        assert set(runs) == {"nanogpt-tiny", "hf-trainer", "live"}
        hf = runs["hf-trainer"]
        assert (hf.tensorboard, hf.preset, hf.status, hf.steps, hf.log) == (True, "tensorboard", "completed", 300,
                                                                          root / "hf-trainer")
        assert hf.best_val == pytest.approx(min(make_fixture.loss_at(s) + 0.12 for s in range(50, 301, 50)))
        assert (runs["live"].status, runs["live"].steps) == ("running", 30)
        assert not runs["nanogpt-tiny"].tensorboard and runs["nanogpt-tiny"].status == "completed"
        log_hf_steps(live, range(40, 61, 10))     # the next pass reads on from where the last stopped
        assert {r.name: r.steps for r in index_runs(root)}["live"] == 60
    finally:
        live.close()


async def test_the_browser_opens_a_tensorboard_run_and_will_not_resume_or_relaunch_it(tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES / "tui" / "nanogpt-tiny", root / "nanogpt-tiny")
    as_if_written_long_ago(shutil.copytree(TB_FIXTURE, root / "hf-trainer"))
    app = CockpitApp(start="runs", runs_dir=str(root))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen" and app.screen.loaded, "the index")
        screen = app.screen
        row = [r.name for r in screen.shown].index("hf-trainer")
        screen.query_one("#runs-table").move_cursor(row=row)
        await pilot.pause(0.05)
        for key in ("r", "l"):
            await pilot.press(key)
            await pilot.pause(0.05)
            assert app.screen is screen
            said = [n.message for n in app._notifications]
            assert sum("hf-trainer: a TensorBoard run, logged by another trainer" in m for m in said) == \
                ("r", "l").index(key) + 1
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunScreen" and app.screen.loaded, "the run")
        run = app.screen
        assert (run.state.preset, run.state.status, run.state.step) == ("tensorboard", "completed", 300)
        assert run.source.run_dir == root / "hf-trainer"


# --- damaged files -------------------------------------------------------------------------------------------

def test_a_damaged_record_is_skipped_and_counted(tmp_path, capsys):
    run = tmp_path / "damaged"
    f = hf_run(run)
    data = bytearray(f.read_bytes())
    spans = record_spans(data)
    off, n = spans[len(spans) // 2]
    data[off + 12 + n // 2] ^= 0xFF
    f.write_bytes(data)
    assert main(["--replay", str(run), "--color", "never"]) == 0
    assert f"note     skipped 1 of {len(spans)} lines (1 damaged record)" in capsys.readouterr().out
    s = tfevents.load_state(run)
    assert s.train.steps == list(range(10, 101, 10))


def test_after_a_damaged_length_the_reader_finds_the_next_record(tmp_path):
    run = tmp_path / "damaged"
    f = hf_run(run)
    data = bytearray(f.read_bytes())
    spans = record_spans(data)
    off, _ = spans[len(spans) // 2]
    data[off] ^= 0x40            # the record's length: its checksum fails, where it ends is unknown
    f.write_bytes(data)
    stats = ReadStats()
    s = tfevents.load_state(run, stats)
    assert (stats.skipped, stats.lines, stats.reasons) == (1, len(spans), {"damaged record": 1})
    assert s.step == 100 and s.samples[-1].text == "once upon a time"


def test_a_truncated_event_file_reads_up_to_its_torn_last_record(tmp_path, capsys):
    run = tmp_path / "truncated"
    f = hf_run(run)
    data = f.read_bytes()
    f.write_bytes(data[:-7])     # the writer died in the middle of its last record (the text sample)
    as_if_written_elsewhere_long_ago(f)
    assert main(["--replay", str(run), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "note     last line torn (writer stopped mid-line)" in out and "skipped" not in out
    assert "steps    100/?  status completed" in out
    s = tfevents.load_state(run)
    assert s.step == 100 and s.val.steps == [50, 100] and not s.samples


def test_a_torn_record_waits_for_the_rest_of_its_bytes(tmp_path):
    source = hf_run(tmp_path / "whole")
    data = source.read_bytes()
    run = tmp_path / "growing"
    run.mkdir()
    f = run / source.name
    cut = record_spans(data)[-3][0] + 5      # inside the header of the third record from the end
    f.write_bytes(data[:cut])
    follower = tfevents.TfEventsFollower(run)
    growing = fold_available(follower.poll)
    assert growing.step == 100 and growing.val.steps == [50]
    with open(f, "ab") as out:
        out.write(data[cut:])
    fold_available(follower.poll, growing)
    assert follower.stats.skipped == 0 and not follower.stats.torn_tail
    whole = fold_available(tfevents.TfEventsFollower(tmp_path / "whole").poll)
    for s in (growing, whole):
        assert s.val.steps == [50, 100] and s.samples[-1].text == "once upon a time" and not s.out_of_order
    assert growing.train == whole.train and growing.metrics == whole.metrics and growing.val == whole.val


@pytest.mark.parametrize("content", ["random bytes", "zeros", "a half record"])
def test_garbage_named_like_an_event_file_is_counted_never_a_crash(content, tmp_path, capsys):
    run = tmp_path / "garbage"
    run.mkdir()
    data = {"random bytes": random.Random(7).randbytes(20000), "zeros": bytes(5000),
            "a half record": struct.pack("<Q", 1000) + b"\x01\x02"}[content]
    (run / "events.out.tfevents.1700000000.elsewhere.1.0").write_bytes(data)
    assert main(["--replay", str(run), "--color", "never"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cockpit: error: {run}: not a cockpit event log") and err.count("\n") == 1
    follower = tfevents.TfEventsFollower(run)
    assert [ev.type for ev in follower.finish()] == ["run_start", "run_end"]


# --- the extra -----------------------------------------------------------------------------------------------

def test_without_the_tensorboard_extra_one_line_names_it(tmp_path, monkeypatch, capsys):
    run = as_if_written_long_ago(shutil.copytree(TB_FIXTURE, tmp_path / "hf-trainer"))
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto.event_pb2", None)   # as if not installed
    assert main(["--replay", str(run)]) == 2
    assert capsys.readouterr().err == MISSING_READER
    assert main(["watch", str(run)]) == 2
    assert capsys.readouterr().err == MISSING_READER
    (listed,) = index_runs(tmp_path)
    assert (listed.status, listed.error) == ("unreadable", MISSING_READER.removeprefix("cockpit: error: ").strip())

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "tb"
    assert main(["export", str(FIXTURES / "tui" / "nanogpt-tiny"), "--tensorboard", str(out)]) == 2
    assert capsys.readouterr().err == MISSING_WRITER
    assert not out.exists()
