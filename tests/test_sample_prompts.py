"""Prompts for text-to-image samples: the `sample` command carries the caption typed in the cockpit
(`s` on a text-conditioned run asks for it), the trainer queues it to the next step boundary, and a run that
is not text-conditioned says it ignores the prompt instead of failing."""
from __future__ import annotations

import json
import time

import pytest

from common import events as E
from trainers.controls import MAX_PENDING_PROMPTS, Controls


def test_a_sample_command_carries_its_prompt_cleaned_to_one_line():
    line = E.encode_command("sample", "a red\napple\x07 ")
    assert json.loads(line) == {"cmd": "sample", "prompt": "a red apple"}
    assert E.parse_command(line) == ("sample", "a red apple")
    assert E.decode_command(line) == "sample"                        # the command alone, as before
    assert E.parse_command('{"cmd": "sample", "prompt": 7}') == ("sample", None)      # not text: no prompt
    assert E.parse_command('{"cmd": "pause", "prompt": "x"}') == ("pause", None)      # only sample takes one
    assert E.parse_command("sample") == ("sample", None)
    assert len(E.parse_command(json.dumps({"cmd": "sample", "prompt": "x" * 5000}))[1]) == E.PROMPT_MAX
    with pytest.raises(E.ProtocolError):
        E.encode_command("pause", "a red apple")


def test_prompts_queue_in_order_and_the_oldest_give_way_to_a_flood():
    c = Controls()
    c.command(E.encode_command("sample", "the digit seven"))
    c.command(E.encode_command("sample"))
    c.command(E.encode_command("sample", "a thin 1"))
    assert c.sample.is_set() and list(c.prompts) == ["the digit seven", "a thin 1"]
    for k in range(MAX_PENDING_PROMPTS + 5):
        c.command(E.encode_command("sample", f"p{k}"))
    assert len(c.prompts) == MAX_PENDING_PROMPTS and c.prompts[-1] == f"p{MAX_PENDING_PROMPTS + 4}"


def text_run_log(path, conditioning="text"):
    lines = [{"v": 1, "type": "run_start", "time": 1.0, "run_id": "r", "preset": "pixart", "arch": "pixart",
              "task": "diffusion", "config": {"train": {"max_steps": 100}}, "max_steps": 100, "pid": 1,
              "dataset": {"conditioning": conditioning, "prompts": ["the digit zero", "a bold 3"]}},
             {"v": 1, "type": "step", "time": 2.0, "step": 1, "loss": 1.0, "lr": 1e-3, "items": 8,
              "throughput": 8.0, "elapsed": 1.0, "max_steps": 100}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


async def launched_run_screen(pilot, app, log):
    """The watched run's screen, made to behave as a launched trainer's whose commands are recorded."""
    from cockpit.trainer_proc import LogSource

    class Recording(LogSource):
        launched = True

        def __init__(self, path):
            super().__init__(path)
            self.sent = []

        def returncode(self):
            return None

        def send(self, cmd, pid=None, started=None, prompt=None):
            self.sent.append((cmd, prompt))
            return None

    deadline = time.monotonic() + 20
    while not (type(app.screen).__name__ == "RunScreen" and app.screen.loaded):
        assert time.monotonic() < deadline, "the run screen did not load"
        await pilot.pause(0.05)
    app.screen.source = Recording(log)
    return app.screen


async def test_s_on_a_text_conditioned_run_asks_for_a_prompt_and_sends_it(tmp_path):
    from cockpit.app import CockpitApp
    from cockpit.screens.prompt import PromptScreen

    log = text_run_log(tmp_path / "events.jsonl")
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await launched_run_screen(pilot, app, log)
        await pilot.press("s")
        await pilot.pause(0.2)
        assert isinstance(app.screen, PromptScreen)
        assert "the digit zero" in str(app.screen.query_one("#prompt-hint").render())   # the run's own prompts
        await pilot.press(*"a thin 7", "enter")
        await pilot.pause(0.2)
        assert screen.source.sent == [("sample", "a thin 7")]
        await pilot.press("s")                     # the last prompt is offered again
        await pilot.pause(0.2)
        assert app.screen.query_one("#prompt-input").value == "a thin 7"
        await pilot.press("ctrl+u", "enter")       # empty: the fixed prompts
        await pilot.pause(0.2)
        await pilot.press("s", "escape")           # cancelled: nothing sent
        await pilot.pause(0.2)
        assert screen.source.sent == [("sample", "a thin 7"), ("sample", None)]


async def test_s_on_a_class_conditioned_run_samples_at_once(tmp_path):
    from cockpit.app import CockpitApp

    log = text_run_log(tmp_path / "events.jsonl", conditioning="class")
    app = CockpitApp(watch=str(log))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await launched_run_screen(pilot, app, log)
        await pilot.press("s")
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "RunScreen" and screen.source.sent == [("sample", None)]
