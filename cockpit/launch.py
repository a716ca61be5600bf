"""Launching trainers: the subprocess command line, plain or under torchrun (`--nproc N`), and what the runs
browser needs to resume a run or relaunch one with its config. No torch, no Textual."""
from __future__ import annotations

import sys


def trainer_argv(preset: str, overrides: list[str], log: str, resume: str | None = None,
                 commands: bool = True) -> list[str]:
    argv = [sys.executable, "-u", "-m", "trainers", preset, *overrides, "--log", log]
    if resume:
        argv += ["--resume", resume]
    if commands:
        argv.append("--commands")
    return argv


def torchrun_argv(nproc: int, trainer_args: list[str], rdzv: list[str] | None = None) -> list[str]:
    """`python -m torch.distributed.run --nproc_per_node N [rendezvous flags] -m trainers ...`"""
    rdzv = list(rdzv or [])
    if not rdzv:
        rdzv = ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *rdzv,
            "-m", "--", "trainers", *trainer_args]  # `--`: torchrun would read --log as its --log-dir


# --- from the runs browser ---------------------------------------------------------------------------------

RESUMABLE = ("stopped", "killed", "failed")  # a completed run has nothing left; a running one is still going


TENSORBOARD_RUN = "{name}: a TensorBoard run, logged by another trainer; the cockpit resumes and relaunches its own runs"


def resume_refusal(run) -> str | None:
    """Why `run` (a RunInfo) cannot be resumed from its directory, in one line for the user; None when it can:
    it ended stopped, killed or failed and its checkpoint is there."""
    from common.paths import CKPT_NAME

    name = run.run_id or run.name
    if run.tensorboard:
        return TENSORBOARD_RUN.format(name=name)
    if run.status not in RESUMABLE:
        hint = ("; l starts a new run with its config" if run.status == "completed" else
                "; stop it first" if run.status == "running" else "")
        return f"{name} is {run.status}: only a stopped, killed or failed run resumes{hint}"
    if not (run.path / CKPT_NAME).is_file():
        return (f"{name} has no checkpoint ({run.path / CKPT_NAME}): it ended before writing one; l starts a new "
                "run with its config")
    if not run.preset:
        return f"{name}: its log names no preset to resume it with"
    from trainers.config import ConfigError, preset_path

    try:
        preset_path(run.preset)   # the trainer loads it before the checkpoint's config replaces it
    except ConfigError as e:
        return f"cannot resume {name}: {e}"
    return None


# keys a relaunch leaves to the preset: its text, not what trains
NOT_CARRIED = ("description",)


def relaunch_overrides(preset: str, config: dict) -> tuple[list[str], list[str]]:
    """The `k=v` overrides that make `preset`, as it loads here now, the resolved `config` of an earlier run
    (its run_start's): its profile, then every key whose value differs. Also the keys that cannot be carried
    over (the preset no longer has them, or they hold more than one value). ConfigError when the preset does
    not load."""
    from trainers.config import PROFILES, flatten, load, strip_private

    profile = config.get("profile") if config.get("profile") in PROFILES else None
    base = flatten(strip_private(load(preset, profile=profile)))
    overrides = [f"profile={profile}"] if profile else []
    left_out = []
    for key, value in flatten(config).items():
        if key in NOT_CARRIED or key == "profile" or base.get(key, object()) == value:
            continue
        if key not in base or not isinstance(value, (bool, int, float, str, type(None))):
            left_out.append(key)
            continue
        text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        overrides.append(f"{key}={text}")
    return overrides, left_out
