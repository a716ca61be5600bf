"""A 1,000,000-step run draws as fast as a short one, and no spike disappears from the chart."""
from __future__ import annotations

import time

import numpy as np
import pytest

from cockpit.series import GrowingArray, SmoothCache, series_for_plot
from common.state import RunState

N = 1_000_000
WIDTH = 120   # chart columns: two drawn points (min and max) per column


@pytest.mark.slow
def test_a_million_step_events_fold_and_downsample_in_under_5s_keeping_every_spike():
    rng = np.random.default_rng(7)
    loss = (4.0 / (1 + np.arange(N) * 1e-5) + rng.normal(0, 0.02, N)).tolist()
    # 40 spikes, one per 25,000 steps, at random offsets inside their stretch
    spikes = [k * 25_000 + int(rng.integers(0, 25_000)) for k in range(40)]
    for i in spikes:
        loss[i] = 50.0 + i / N
    events = [{"v": 1, "type": "step", "time": 1e9 + i * 0.01, "step": i + 1, "loss": loss[i], "lr": 1e-3,
               "grad_norm": 1.0, "tokens": (i + 1) * 512, "throughput": 5e4, "elapsed": i * 0.01}
              for i in range(N)]

    # CPU time of this process: the machine's 2 cores are shared, so wall time also measures the neighbours
    t0, w0 = time.process_time(), time.perf_counter()
    s = RunState()
    s.apply({"v": 1, "type": "run_start", "time": 1e9, "run_id": "r", "preset": "p", "arch": "gpt", "task": "lm",
             "config": {}, "n_params": 1, "device": "cpu", "profile": "cpu", "pid": 1, "max_steps": N})
    for ev in events:
        s.apply(ev)
    t_reduce = time.process_time() - t0
    # the chart's data path, as the LossPlot widget runs it: list->array, EMA on the full data, min/max buckets
    epoch = (s.out_of_order, len(s.resumes))
    x = GrowingArray().get(s.train.steps, epoch)
    y = GrowingArray().get(s.train.values, epoch)
    xs, ys = series_for_plot(x, y, WIDTH, 0.0, False, SmoothCache(), epoch)
    xe, ye = series_for_plot(x, y, WIDTH, 0.9, False, SmoothCache(), epoch)
    elapsed, wall = time.process_time() - t0, time.perf_counter() - w0
    print(f"\n1e6 step events: reducer {t_reduce:.2f} s, reducer + plot data {elapsed:.2f} s CPU ({wall:.2f} s wall)")

    assert len(s.train) == N and s.step == N
    assert elapsed < 5.0, f"reducer {t_reduce:.2f} s + plot data path took {elapsed:.2f} s for 1e6 steps"
    assert xs.size <= 2 * WIDTH and xe.size <= 2 * WIDTH
    drawn = dict(zip(xs.tolist(), ys.tolist()))
    for i in spikes:
        assert drawn.get(float(i + 1)) == loss[i], f"spike at step {i + 1} is not drawn"
    # the smoothed curve is computed on every point, then downsampled: it never reaches the raw spikes
    assert ye.max() < 50.0 and ye.min() > 0.0
