"""The training loop, the same for every preset: the task supplies data, model, loss, eval and samples.

AdamW (or Muon + AdamW, train.optimizer), linear warm-up then cosine decay to min_lr (or warmup-stable-decay,
train.schedule), gradient accumulation and clipping, bf16 autocast on
CUDA, torch.compile of the training steps (train.compile), eval on a held-out split, samples at each eval
and at the end, measured activation memory, atomic checkpoints with exact resume, NaN/inf detection, stdin
commands (pause/resume/stop/sample/checkpoint) and SIGINT/SIGTERM meaning stop (trainers/controls.py).
Every observation goes out as an event (trainers/events.py).

A failure the user can act on (out of memory on any device, a full or unwritable disk under the log or the
checkpoint, the run directory moved away) ends the run with `run_end` failed and a readable error (no
traceback), one `cockpit: error:` line on stderr, exit 1, and the last complete checkpoint kept.
"""
from __future__ import annotations

import contextlib
import math
import os
import stat
import sys
import time
import traceback
import uuid
from pathlib import Path

import torch

from common.atomic import NotAFileTarget, describe, file_kind, remedy
from common.cli import BadInput
from common.paths import ENV_ROOT, default_log_path, runs_root
from trainers import checkpoint as ckpt_io
from trainers.checkpoint import is_out_of_memory
from trainers.config import AUTO, ConfigError, flatten, strip_private
from trainers.controls import STOPPED_EXIT, Controls
from trainers.events import EventWriter, RunLock
from trainers.internals import UpdateWatch
from trainers.memory import ActivationProbe, param_bytes_by_layer, totals
from trainers.system import SystemSampler
from trainers.tasks import load_task
from trainers.threads import ThreadGovernor

OOM_HINT = ("try a smaller train.batch_size (with train.grad_accum to keep the token batch), "
            "train.activation_checkpointing=true, a shorter model.block_size, a smaller model (model.n_layer, "
            "model.n_embd), or QLoRA for fine-tuning")


def lr_at(step: int, t: dict) -> float:
    """Linear warm-up for warmup_steps, then (train.schedule) cosine decay from lr to min_lr (nanoGPT's
    get_lr), or wsd: warm-up, stable at lr, then a linear cool-down to min_lr over the last cooldown_frac of
    the steps (the GPT-2 speedrun's trapezoid: lr x w + min_lr x (1 - w), w = min(1, steps left / cooldown))."""
    decay_steps = t["lr_decay_steps"] or t["max_steps"]
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / (t["warmup_steps"] + 1)
    if step > decay_steps:
        return t["min_lr"]
    if t.get("schedule", "cosine") == "wsd":
        left = 1.0 - step / decay_steps
        w = min(1.0, left / t["cooldown_frac"]) if t["cooldown_frac"] > 0 else 1.0
        return t["min_lr"] + w * (t["lr"] - t["min_lr"])
    ratio = (step - t["warmup_steps"]) / max(1, decay_steps - t["warmup_steps"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(1.0, ratio)))
    return t["min_lr"] + coeff * (t["lr"] - t["min_lr"])


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


class Trainer:
    def __init__(self, cfg: dict, log_path: str | Path | None, resume: dict | None = None, echo=None,
                 controls: Controls | None = None, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.t = cfg["train"]
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.resume = resume
        self.controls = controls or Controls()
        self.signal_controls = self.controls  # where signals land (under DDP self.controls becomes the agreed)
        self.log_path = Path(log_path) if log_path else None
        self.ckpt_path = (self.log_path.parent if self.log_path else Path(".")) / ckpt_io.CKPT_NAME
        self.lock = self._claim_run_dir()  # first: a second trainer on this run is refused before building
        try:
            self._build(echo)
        except BaseException as e:
            self._release_run_dir()
            if isinstance(e, Exception) and is_out_of_memory(e):
                raise ConfigError(f"out of memory before training, building the model and loading the data "
                                  f"({one_line(e)}); hint: {OOM_HINT}; memory: not measured before the failure; "
                                  f"{machine_memory(getattr(self, 'device', None))}") from None
            raise

    def _build(self, echo):
        cfg, world_size = self.cfg, self.world_size
        self.device = torch.device(cfg["device"] if cfg["device"] != "cuda" else f"cuda:{torch.cuda.current_device() if world_size > 1 else 0}")
        self.pending_logs: list[tuple[str, str]] = []
        self.amp_dtype = self._amp_dtype()
        torch.manual_seed(self.t["seed"])
        if cfg.get("kernels") == "triton":
            from kernels import integrate

            b = integrate.backend()
            self._log("info" if b != "torch" else "warning", integrate.describe())  # one line, fused or not
        # Build everything that can fail on bad input before the log file exists.
        self.task = load_task(cfg, self.device, self._log, self.amp_dtype)
        if self.t["batch_size"] == AUTO:  # the fit planner sets batch_size, grad_accum, checkpointing in cfg
            from trainers.plan import apply_auto

            self._log("info", apply_auto(cfg, self.task, self.device, self.amp_dtype, world_size))
        self.raw_model = self.task.build_model().to(self.device)  # weights: optimizer, eval, samples, checkpoints
        self.model = self.raw_model  # what training steps run: wrapped below for DDP and torch.compile
        self.optimizer = self.task.configure_optimizer(self.raw_model)
        self.step = 0
        self.best_val = float("inf")
        self.last_val = None
        self.units = 0
        self.last_ckpt: str | None = None
        self.last_ckpt_step: int | None = None
        self.last_memory: dict | None = None
        self.skipped = 0
        self.elapsed_before = 0.0  # seconds the run trained before this segment (its checkpoint's count)
        self.segment_t0: float | None = None
        self.run_id = new_run_id(cfg["name"])
        if self.resume is not None:
            self._load_resume(self.resume)
        self.writer = EventWriter(self.log_path, echo=echo, enabled=self.is_main)
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            # commands and signals land in the inbox; the loop acts on flags all ranks agreed on (distributed.py)
            self.inbox, self.controls = self.controls, Controls()
        # the steps the activation probe watches run eagerly: a compiled graph calls no module hooks, so the
        # probe could not say which layer saved what
        self.eager_model = self.model
        if self.t["compile"]:
            self.model = torch.compile(self.model)

    def _claim_run_dir(self) -> RunLock | None:
        """Check the log's directory (check_log_writable) and lock it, the log and the checkpoint, for this
        run's life: LogInUse when a live trainer holds it. Under DDP rank 0 does both and every rank learns
        whether it could, so that none is left waiting for a rank that has exited."""
        lock, refused = None, None
        if self.is_main and self.log_path is not None:
            try:
                check_log_writable(str(self.log_path))
                lock = RunLock(self.log_path)
            except OSError as e:
                refused = ConfigError(f"--log {self.log_path}: cannot lock the run directory ({describe(e)}); "
                                      "choose a writable directory")
            except BadInput as e:  # ConfigError, LogInUse: raised below, once the ranks agree
                refused = e
        if self.world_size > 1:
            from trainers.distributed import mean_over_ranks

            if mean_over_ranks(1.0 if refused is not None else 0.0) > 0 and refused is None:
                raise SystemExit(2)  # rank 0 says why, in one line
        if refused is not None:
            raise refused
        return lock

    def _release_run_dir(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # --- helpers -------------------------------------------------------------------------------------
    def _amp_dtype(self):
        want = self.t["dtype"]
        if self.device.type != "cuda":
            if want in ("bfloat16", "float16"):
                self.pending_logs.append(("warning", f"train.dtype={want} ignored on CPU: training in float32"))
            return None
        if want == "float32":
            return None
        if want == "float16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _log(self, level: str, message: str):
        if getattr(self, "writer", None) is None:
            self.pending_logs.append((level, message))
        else:
            self.writer.emit("log", level=level, message=message)

    def _load_resume(self, ckpt: dict):
        self.task.load_state_dict(ckpt.get("task") or {})  # first: it refuses data of another tokenizer
        try:
            self.raw_model.load_state_dict(ckpt["model"])
        except RuntimeError as e:  # missing, unexpected or differently shaped weights
            raise ConfigError(self._shape_differs(ckpt, e)) from None
        if ckpt.get("optimizer"):
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise ConfigError(f"--resume: the checkpoint's optimizer state does not fit this run's optimizer "
                                  f"({one_line(e)[:160]}); resume with the checkpoint's own settings (drop the "
                                  "train.* and finetune.* overrides that change what trains)") from None
        self.step = int(ckpt["step"])
        self.run_id = ckpt.get("run_id", self.run_id)
        m = ckpt.get("metrics") or {}
        self.best_val = m.get("best_val_loss", float("inf")) if m.get("best_val_loss") is not None else float("inf")
        self.units = int(m.get("units", 0))
        self.skipped = int(m.get("skipped_nonfinite", 0))
        self.elapsed_before = ckpt_io.elapsed_of(m)
        ckpt_io.set_rng_state(ckpt.get("rng") or {}, self.device)
        # DDP: rank r takes rows [r*B, (r+1)*B) of a global batch of B*world (distributed.py)
        was = int(ckpt.get("world_size", 1)) * int((ckpt.get("config") or {}).get("train", {}).get(
            "batch_size", self.t["batch_size"]))
        now = self.world_size * self.t["batch_size"]
        if was != now:
            keep = f"; set train.batch_size={was // self.world_size} to keep it" if was % self.world_size == 0 else ""
            self.pending_logs.append(("warning", f"resumed with a global batch of {now} (train.batch_size x "
                                                 f"{self.world_size} processes), was {was}{keep}"))

    def _shape_differs(self, ckpt: dict, e: RuntimeError) -> str:
        """Why the checkpoint's weights do not load into the model these settings build, in one line."""
        was = flatten(ckpt.get("config") or {})
        now = flatten(strip_private(self.cfg))
        changed = [f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now))
                   if k.startswith(("model.", "finetune.", "arch")) and was.get(k) != now.get(k)]
        if changed:
            return (f"--resume: these settings build another model than the checkpoint's ({'; '.join(changed)}); a "
                    "resumed run keeps its model's shape: drop those overrides, or start a new run without --resume")
        ours, theirs = self.raw_model.state_dict(), ckpt["model"]
        missing = [k for k in ours if k not in theirs]
        extra = [k for k in theirs if k not in ours]
        shaped = [f"{k} {tuple(getattr(theirs[k], 'shape', ()))} here {tuple(ours[k].shape)}" for k in ours
                  if k in theirs and tuple(getattr(theirs[k], "shape", ())) != tuple(ours[k].shape)]
        parts = [f"{len(v)} {what} ({', '.join(v[:2])}{', ...' if len(v) > 2 else ''})"
                 for v, what in ((missing, "missing"), (extra, "unexpected"), (shaped, "of another shape")) if v]
        why = "; ".join(parts) or one_line(e)[:200]
        return (f"--resume: the checkpoint's weights do not fit the model its own config builds: {why}; it may "
                "come from another version of this architecture: resume from another checkpoint")

    def n_params(self) -> int:
        if self.cfg["task"] == "finetune":  # 4-bit weights count as the weights they stand for
            from trainers.lora import count_params

            return count_params(self.raw_model)["total"]
        return sum(p.numel() for p in {id(p): p for p in self.raw_model.parameters()}.values())

    def save_checkpoint(self, reason: str = "interval") -> str | None:
        """Rank 0 writes the checkpoint beside the log; under DDP the other ranks wait until it is complete
        and learn whether it could be written. OutputWriteFailed (on every rank) when it could not: the
        previous checkpoint is untouched."""
        failure = None
        if self.is_main and self.log_path is not None:
            try:
                self._write_checkpoint()
            except OutputWriteFailed as e:
                failure = e
        if self.world_size > 1:
            from trainers.distributed import mean_over_ranks

            if mean_over_ranks(1.0 if failure is not None else 0.0) > 0 and failure is None:
                failure = OutputWriteFailed("rank 0 could not write the checkpoint (the run's log says why)")
        if failure is not None:
            raise failure
        if not self.is_main or self.log_path is None:
            return None
        self.writer.emit("checkpoint", step=self.step, path=self.last_ckpt, reason=reason)
        return self.last_ckpt

    def _log_moved(self) -> OutputWriteFailed:
        return OutputWriteFailed(f"the event log {self.log_path} was moved, replaced or deleted while the run "
                                 "wrote it (was its directory renamed or removed?); no checkpoint written "
                                 "there: the log and its checkpoints are wherever its directory went")

    def _write_checkpoint(self):
        if self.writer.moved():
            raise self._log_moved()
        state = {
            "step": self.step, "run_id": self.run_id, "config": strip_private(self.cfg),
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "task": self.task.state_dict(), "rng": ckpt_io.rng_state(self.device), "world_size": self.world_size,
            "metrics": {"best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                        "units": self.units, "skipped_nonfinite": self.skipped, "elapsed": self.elapsed()},
        }
        try:
            path = ckpt_io.save(self.ckpt_path, state)
        except NotAFileTarget as e:
            if self.writer.moved():  # the directory went away while the checkpoint was being written
                raise self._log_moved() from None
            raise OutputWriteFailed(f"cannot write the checkpoint: {e}; {self._kept()}") from None
        except OSError as e:
            if self.writer.moved():
                raise self._log_moved() from None
            raise OutputWriteFailed(f"cannot write the checkpoint {self.ckpt_path}: {describe(e)}; "
                                    f"{self._kept(e)}") from None
        if self.writer.moved():  # written into whatever replaced the run directory: not left apart from its log
            Path(path).unlink(missing_ok=True)
            raise self._log_moved()
        self.last_ckpt, self.last_ckpt_step = str(path), self.step

    def _kept(self, e: OSError | None = None) -> str:
        """What is still there to resume from, and (for a failed write) what to do first."""
        if self.last_ckpt is None:
            return "no checkpoint was written before"
        kept = f"the last complete checkpoint is {self.last_ckpt} (step {self.last_ckpt_step})"
        if e is None:
            return kept
        return f"{kept}: {remedy(e)}, then resume with --resume {Path(self.last_ckpt).parent}"

    def memory_event(self, probe: ActivationProbe | None, step: int | None = None):
        """Measured memory of the step whose forward/backward the probe watched (step 0 = the first)."""
        acts = probe.total if probe else 0
        layers = probe.table(param_bytes_by_layer(self.raw_model)) if probe else []
        tot = totals(self.raw_model, self.optimizer, acts, self.device)
        extra = self.task.memory_fields(self.raw_model, self.optimizer)
        tot.update(extra.pop("totals", {}))
        self.last_memory = {"step": self.step if step is None else step, "layers": layers, "totals": tot}
        self.writer.emit("memory", step=self.step if step is None else step, layers=layers, totals=tot,
                         budget_bytes=int(self.cfg["vram_budget_gb"] * 2**30), **extra)
        return tot, layers

    def evaluate(self):
        batch_size = self.t["batch_size"] * self.world_size  # DDP: the global batch, as one process would
        if not self.is_main:  # DDP: rank 0 evaluates (no collectives); the others wait at the next step's sync,
            self.task.skip_eval(self.step, batch_size)  # after drawing the same eval batches: data stays in step
            return
        self.raw_model.eval()
        try:
            res = self.task.evaluate(self.raw_model, self.step, batch_size)
        finally:
            self.raw_model.train()
        val = float(res.pop("val_loss"))
        self.last_val = val
        if math.isfinite(val) and val < self.best_val:
            self.best_val = val
        self.writer.emit("eval", step=self.step, val_loss=val, metrics=res.pop("metrics", {}), **res)

    def internals_due(self, step: int) -> bool:
        """Rank 0 probes the model's internals at the first step and every train.internals_interval steps."""
        every = self.t["internals_interval"]
        return self.is_main and every > 0 and (step % every == 0 or step == 1)

    def internals_event(self, watch: UpdateWatch):
        """The `internals` event of the step just taken: its gradients and update (watch), then the model's own
        arrays on the task's fixed probe, computed without gradients in eval mode (trainers/internals.py)."""
        arrays = watch.arrays()
        self.raw_model.eval()
        try:
            with torch.no_grad():
                probe = self.task.internals(self.raw_model, self.step)
        finally:
            self.raw_model.train()
        self.writer.emit("internals", step=self.step, arch=self.cfg["arch"],
                         arrays=arrays + probe.pop("arrays", []), **probe)

    def samples(self, prompt: str | None = None):
        """The task's samples; `prompt` (the `sample` command's): generated from that caption by a
        text-conditioned task (`takes_prompts`); another task says it cannot and samples as usual."""
        if not self.is_main:
            return
        if prompt is not None and not getattr(self.task, "takes_prompts", False):
            self.writer.emit("log", level="warning",
                             message=f"this run is not text-conditioned: prompt {prompt!r} is ignored")
            prompt = None
        self.raw_model.eval()
        try:
            for payload in (self.task.samples(self.raw_model, self.step, prompt=prompt) if prompt is not None
                            else self.task.samples(self.raw_model, self.step)):
                self.writer.emit("sample", step=self.step, **payload)
        finally:
            self.raw_model.train()

    # --- the loop ------------------------------------------------------------------------------------
    def train_step(self, step: int, probe: ActivationProbe | None):
        t = self.t
        lr = lr_at(step - 1, t)
        lr = self.task.on_step(self.raw_model, self.optimizer, step, lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        total_loss, units = 0.0, 0
        model = self.model if probe is None else self.eager_model
        for micro in range(t["grad_accum"]):
            batch = self.task.rank_batch("train", step, micro, self.rank, self.world_size)
            units += self.task.batch_units(batch)
            sync = micro == t["grad_accum"] - 1 or self.world_size == 1
            ctx = model.no_sync() if (self.world_size > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                if probe is not None and micro == 0:
                    with probe.capture(), self.task.autocast():
                        loss = self.task.loss(model, batch)
                else:
                    with self.task.autocast():
                        loss = self.task.loss(model, batch)
                (loss / t["grad_accum"]).backward()
            total_loss += loss.item() / t["grad_accum"]
        if self.world_size > 1:  # the loss of the global batch: the mean of the ranks' shares (distributed.py)
            from trainers.distributed import mean_over_ranks
            total_loss = mean_over_ranks(total_loss)
        grad_norm = None
        if t["grad_clip"] > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), t["grad_clip"]))
        else:
            sq = [p.grad.detach().float().norm() ** 2 for p in self.raw_model.parameters() if p.grad is not None]
            grad_norm = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
        return total_loss, lr, grad_norm, units * self.world_size

    def run(self) -> int:
        """Train to max_steps or until stopped, and end the log with run_end whatever happens. Returns the
        exit code: 0 completed or stopped (STOPPED_EXIT), 1 failed."""
        t = self.t
        controls = self.signal_controls
        controls.training()  # the log starts: from now on a signal asks for a clean stop
        cfg_public = strip_private(self.cfg)
        start_step = self.step
        self.writer.emit("run_start", run_id=self.run_id, preset=self.cfg["name"], arch=self.cfg["arch"],
                         task=self.cfg["task"], config=cfg_public, n_params=self.n_params(),
                         device=str(self.device), profile=self.cfg["profile"], pid=os.getpid(),
                         unit=self.task.unit, max_steps=t["max_steps"], world_size=self.world_size,
                         resumed_from=start_step if self.resume is not None else None,
                         torch=torch.__version__, amp_dtype=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
                         dataset=self.task.dataset_info())
        for level, message in self.pending_logs:
            self.writer.emit("log", level=level, message=message)
        self.pending_logs.clear()
        if self.world_size > 1:  # who trains: every rank's host (all ranks take part in the gather)
            from trainers.distributed import describe as describe_ranks
            self.writer.emit("log", level="info", **describe_ranks(self.t["batch_size"]))
        sampler = None
        if self.is_main and t["system_interval"] > 0:
            sampler = SystemSampler(self.writer.emit, t["system_interval"])
            self.writer.emit("system", **sampler.sample())
            sampler.start()
        self.segment_t0 = time.time()
        status, error, exit_code = "completed", None, 0
        try:
            with controls.insistable():
                status = self._train(start_step)
                self.save_checkpoint("end" if status == "completed" else "stop")
                self._on_end(status)
        except (NonFinite, LogWriteFailed, OutputWriteFailed) as e:
            status, error, exit_code = "failed", str(e), 1
        except KeyboardInterrupt:  # the third signal: what was in progress is abandoned (trainers/controls.py)
            status, exit_code = "stopped", STOPPED_EXIT
            self.writer.emit("log", level="warning", message=f"stopped at once by a repeated signal at step "
                                                             f"{self.step}; {self._kept()}")
        except Exception as e:  # noqa: BLE001 — every failure becomes a run_end the UI can show
            status, exit_code = "failed", 1
            if is_out_of_memory(e):  # on any device: the hint and the memory table, no traceback
                error = (f"out of memory at step {self.step + 1} ({one_line(e)})\nhint: {OOM_HINT}\n"
                         f"{self._oom_memory_table()}")
            else:
                error = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        finally:
            if sampler is not None:
                sampler.stop()
        wall = self.elapsed()
        metrics = {"best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                   "final_val_loss": self.last_val, "wall_time": wall,
                   "throughput": (self.units / wall) if wall > 0 else None, "unit": self.task.unit,
                   "skipped_nonfinite": self.skipped, "checkpoint": self.last_ckpt}
        if self.device.type == "cuda":
            metrics["peak_allocated"] = torch.cuda.max_memory_allocated(self.device)
        if self.writer.failed is not None:
            status, exit_code = "failed", 1
            error = error or self._log_failure()
        end = {"status": status, "step": self.step, "metrics": metrics, "error": error, "exit_code": exit_code}
        if self.last_memory is not None and status == "failed":
            end["memory"] = self.last_memory
        if self.writer.failed is not None:
            self.writer.retry("run_end", **end)  # space may have been freed meanwhile
        else:
            self.writer.emit("run_end", **end)
        self.writer.close()
        if status == "failed" and self.is_main:
            print(f"cockpit: error: {error_line(error)}", file=sys.stderr)
        controls.ended()  # recorded: later signals change nothing
        self._release_run_dir()
        return exit_code

    def elapsed(self, now: float | None = None) -> float:
        """Seconds the run has trained, across resumes: what its checkpoint counted before this segment, then
        this segment's time (pauses included, as on a wall clock)."""
        if self.segment_t0 is None:
            return self.elapsed_before
        return self.elapsed_before + ((time.time() if now is None else now) - self.segment_t0)

    def _train(self, start_step: int) -> str:
        """The steps, until max_steps ("completed") or a stop ("stopped")."""
        t = self.t
        status = "completed"
        last_log_t, last_log_units = time.time(), self.units
        self.paused_seconds = last_log_paused = 0.0
        last_log_step = self.step  # for each rank's step time under DDP
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.raw_model.train()
        if start_step == 0 and self.task.eval_at_start:
            self.evaluate()  # the untrained (or, fine-tuning, the base) model's loss starts the curve
        governor = ThreadGovernor(torch, log=self._log) if self.device.type == "cpu" else None
        while self.step < t["max_steps"]:
            if governor is not None:
                governor.tick()
            if self._handle_controls():
                status = "stopped"
                break
            step = self.step + 1
            mi = t["memory_interval"]
            probe_now = self.step == start_step and start_step == 0 or (mi > 0 and self.step % mi == 0)
            probe = ActivationProbe(self.raw_model) if (probe_now and self.is_main) else None
            loss, lr, grad_norm, units = self.train_step(step, probe)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(loss) else "gradient norm"
                if t["skip_nonfinite"]:
                    self.skipped += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step = step
                    self.writer.emit("log", level="warning",
                                     message=f"step {step}: non-finite {what} ({loss}); update skipped "
                                             f"({self.skipped} so far)", step=step, skipped=self.skipped)
                    continue
                where = f"; last good checkpoint: {self.last_ckpt}" if self.last_ckpt else "; no checkpoint yet"
                raise NonFinite(f"non-finite {what} at step {step} (loss={loss}, grad_norm={grad_norm}){where}")
            watch = UpdateWatch(self.raw_model) if self.internals_due(step) else None
            self.optimizer.step()
            if probe is not None:  # before zero_grad, so grads and optimizer state are counted
                self.memory_event(probe, step - 1)
            self.optimizer.zero_grad(set_to_none=True)
            self.step = step
            if watch is not None:
                self.internals_event(watch)
            self.units += units
            if self.writer.failed is not None:
                raise LogWriteFailed(self._log_failure())
            if step % t["log_interval"] == 0 or step == t["max_steps"] or step == start_step + 1:
                now = time.time()
                dt = max(now - last_log_t - (self.paused_seconds - last_log_paused), 1e-9)
                per_rank = {}
                if self.world_size > 1:  # `ranks`: each rank's own throughput and step time (distributed.py)
                    from trainers.distributed import rank_stats
                    per_rank["ranks"] = rank_stats((self.units - last_log_units) / self.world_size, dt,
                                                   step - last_log_step)
                self.writer.emit("step", step=step, loss=loss, lr=lr, grad_norm=grad_norm,
                                 **{self.task.unit: self.units},
                                 throughput=(self.units - last_log_units) / dt,
                                 elapsed=self.elapsed(now), max_steps=t["max_steps"], **per_rank)
                last_log_t, last_log_units, last_log_step = now, self.units, step
                last_log_paused = self.paused_seconds
            last = step == t["max_steps"]
            if step % t["eval_interval"] == 0 or last:
                self.evaluate()
                self.samples()
            elif t["sample_interval"] and step % t["sample_interval"] == 0:
                self.samples()
            if t["checkpoint_interval"] and step % t["checkpoint_interval"] == 0 and not last:
                self.save_checkpoint()
        return status

    def _log_failure(self) -> str:
        e = self.writer.failed
        return f"cannot write the event log {self.log_path}: {describe(e)}; {self._kept(e)}"

    def _on_end(self, status: str):
        """The task's files beside the checkpoint (e.g. merged weights), with the same care as a checkpoint."""
        if not self.is_main or self.log_path is None:
            return
        where = self.ckpt_path.parent
        try:
            self.task.on_end(self.raw_model, where, status)
        except NotAFileTarget as e:
            raise OutputWriteFailed(f"cannot write the run's exported weights: {e}") from None
        except OSError as e:
            raise OutputWriteFailed(f"cannot write the run's exported weights into {where}: {describe(e)}; the "
                                    f"checkpoint {self.last_ckpt} holds the trained weights") from None

    def _oom_memory_table(self) -> str:
        """The last measured memory (totals and the largest layers) as text for an OOM error, and what the
        machine has. Before the first measurement: the weights, gradients and optimizer state as they are."""
        from common.fmt import fmt_bytes

        keys = ("params", "grads", "optimizer", "activations", "peak_allocated")
        if self.last_memory is None:
            tot = totals(self.raw_model, self.optimizer, 0, self.device)
            lines = ["memory: activations not measured before the failure; " + ", ".join(
                f"{k} {fmt_bytes(tot[k])}" for k in keys[:3])]
        else:
            tot = self.last_memory["totals"]
            lines = ["measured memory at step %s: " % self.last_memory["step"] + ", ".join(
                f"{k} {fmt_bytes(tot.get(k))}" for k in keys if tot.get(k) is not None)]
            top = sorted(self.last_memory["layers"], key=lambda r: -r["activation_bytes"])[:5]
            lines += [f"  {r['name']}: activations {fmt_bytes(r['activation_bytes'])}" for r in top]
        lines.append(machine_memory(self.device))
        return "\n".join(lines)

    def _service_commands(self):
        c = self.controls
        if c.checkpoint.is_set():
            c.checkpoint.clear()
            self.save_checkpoint("command")
        if c.sample.is_set():
            c.sample.clear()
            prompts = []
            while c.prompts:
                prompts.append(c.prompts.popleft())
            for prompt in prompts or [None]:
                self.samples(prompt)

    def _sync_controls(self):
        """DDP: turn every rank's inbox of commands and signals into the same flags on all ranks."""
        if self.world_size > 1:
            from trainers.distributed import sync_controls
            sync_controls(self.inbox, self.controls)

    def _handle_controls(self) -> bool:
        """Serve pending commands; block while paused. True when the run must stop."""
        c = self.controls
        self._sync_controls()
        self._service_commands()
        if c.paused.is_set() and not c.stop.is_set():
            self.writer.emit("log", level="info", message=f"paused at step {self.step}", state="paused",
                             step=self.step)
            t_pause = time.time()
            while c.paused.is_set() and not c.stop.is_set():
                c.wake.wait(0.5)
                c.wake.clear()
                self._sync_controls()
                self._service_commands()
            self.paused_seconds += time.time() - t_pause  # not training time: left out of throughput
            if not c.stop.is_set():
                self.writer.emit("log", level="info", message=f"resumed at step {self.step}",
                                 state="running", step=self.step)
        return c.stop.is_set()


class NonFinite(RuntimeError):
    pass


class LogWriteFailed(RuntimeError):
    pass


class OutputWriteFailed(RuntimeError):
    """A checkpoint or an exported file could not be written (disk full, read-only, moved directory)."""


def one_line(e: BaseException) -> str:
    """`Type: first line of the message`."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def error_line(error: str | None) -> str:
    """A run_end error as one line for stderr: its first line, and the hint when there is one."""
    lines = (error or "the run failed").splitlines()
    hint = next((ln for ln in lines[1:] if ln.startswith("hint: ")), None)
    return lines[0] + (f"; {hint}" if hint else "")


def machine_memory(device: torch.device | None) -> str:
    """What the device has: the GPU's total and free memory, or the machine's RAM and any address-space
    limit (ulimit -v) of this process."""
    from common.fmt import fmt_bytes

    if device is not None and device.type == "cuda":
        try:
            free, total = torch.cuda.mem_get_info(device)
            return f"{device}: {fmt_bytes(total)} in all, {fmt_bytes(free)} free now"
        except RuntimeError:
            return f"{device}: its memory could not be read"
    import psutil

    vm = psutil.virtual_memory()
    out = f"this machine: {fmt_bytes(vm.total)} of RAM, {fmt_bytes(vm.available)} available now"
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            out += f"; this process may use {fmt_bytes(limit)} of address space (ulimit -v)"
    except (ImportError, OSError, ValueError):
        pass
    return out


def prepare(cfg: dict, log: str | None, resume: str | None, overrides=None, rank: int = 0):
    """(cfg, log_path, checkpoint) for a run; on resume the checkpoint's config wins, plus new overrides.
    Without --log, rank 0 claims a new run directory; the other ranks write no log (log_path None)."""
    from trainers.config import check_resolved, override_resolved

    ckpt = None
    if resume:
        ckpt = ckpt_io.load(resume)
        stored = check_resolved(ckpt["config"], f"--resume {resume}")
        cfg = override_resolved(stored, overrides or {})
        if not log:
            log = str(ckpt_io.resolve(resume).parent / "events.jsonl")
    if not log and rank == 0:
        try:
            log = str(default_log_path(cfg["name"]))
        except OSError as e:
            raise ConfigError(f"cannot create a run directory under {runs_root()} ({describe(e)}); set "
                              f"{ENV_ROOT} to a writable directory or give --log") from None
    return cfg, log, ckpt


MIN_FREE_BYTES = 64 * 2**20


def check_log_writable(log: str):
    """Before training: no live trainer may hold the log's directory, which must be writable and have room
    for logs and checkpoints."""
    import shutil

    p = Path(log)
    try:
        RunLock.check(p)  # a live trainer on this run: refused before anything is created beside it
    except OSError as e:
        raise ConfigError(f"--log {log}: cannot read the run directory's lock ({describe(e)}); choose a "
                          "writable directory") from None
    try:
        mode = os.stat(p).st_mode
    except OSError:  # missing (the usual case), or a path the open below explains
        mode = None
    if mode is not None and not stat.S_ISREG(mode):  # a FIFO would block the open for ever
        raise ConfigError(f"--log {log} is {file_kind(mode)}, not a regular file; give a file path for the "
                          "event log")
    ckpt = p.parent / ckpt_io.CKPT_NAME
    if ckpt.exists() and not ckpt.is_file():  # found now, not at the first checkpoint
        raise ConfigError(f"--log {log}: {ckpt} is {file_kind(ckpt.stat().st_mode)}, where the run's checkpoint "
                          "goes; move it away or choose another --log")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise ConfigError(f"--log {log}: cannot write the event log ({e.strerror}); choose a writable "
                          "directory") from None
    try:
        free = shutil.disk_usage(p.parent).free
    except OSError:
        return
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"--log {log}: only {free / 2**20:.0f} MiB free on that disk; free some space or "
                          "choose another directory")
