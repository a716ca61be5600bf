"""Every metric a run produces, as named series for the metrics grid (and anything else that lists them).

From the step events: the learning rate, the gradient norm and the throughput of each logged step. From the
eval events: each entry of `metrics` (mingpt-sort's held-out `accuracy`, the diffusion presets'
`sample_accuracy` and EMA val loss, MoE's `balance_loss` and `dropped_frac`, BitNet's share of zero
weights ...), in the order the run first reported them. The loss itself has its own chart.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.fmt import fmt_rate

# The grid's order, most telling first (a small terminal shows the first few): the run's own eval metrics
# (held-out accuracy, sample accuracy, balance loss ...), then the step metrics, then eval metrics that
# restate something charted elsewhere or follow a schedule, then metrics that never changed.
STEP_METRICS = ("grad_norm", "throughput", "lr")
SECONDARY = ("train_loss", "train_accuracy", "ema_decay")
# Names people know these by (an eval metric's name is its own title).
TITLES = {"lr": "lr", "grad_norm": "grad norm", "throughput": "throughput",
          "accuracy": "held-out accuracy", "train_accuracy": "train accuracy", "train_loss": "train loss (eval)",
          "sample_accuracy": "sample accuracy", "balance_loss": "MoE balance loss",
          "dropped_frac": "MoE dropped tokens"}

# ... and shorter, for a narrow cell
SHORT = {"accuracy": "held-out acc", "train_accuracy": "train acc", "sample_accuracy": "sample acc",
         "balance_loss": "balance loss", "dropped_frac": "dropped", "train_loss": "train loss",
         "ema_val_loss": "EMA val"}


@dataclass(frozen=True)
class Series:
    key: str           # "lr", "grad_norm", "throughput" or an eval metric's name
    title: str
    steps: list        # x: the steps of the points
    values: list       # y: NaN where a point has no value
    unit: str = ""     # "tok/s", "it/s" for the throughput

    def last(self) -> float | None:
        """The latest finite value."""
        for v in reversed(self.values):
            if v is not None and v == v and abs(v) != float("inf"):
                return v
        return None

    def has_values(self) -> bool:
        return self.last() is not None


def title_of(key: str) -> str:
    return TITLES.get(key, key.replace("_", " "))


def run_series(s) -> list[Series]:
    """Every metric of the RunState `s` that has at least one finite value, in the grid's order."""
    unit = "tok/s" if s.unit == "tokens" else "it/s"
    steps = s.train.steps
    stepwise = [Series("grad_norm", title_of("grad_norm"), steps, s.grad_norms),
                Series("throughput", unit, steps, s.rates, unit),
                Series("lr", title_of("lr"), steps, s.lrs)]
    evals = [Series(name, title_of(name), curve.steps, curve.values) for name, curve in s.metrics.items()]
    # a count that never changes (a held-out set's size) says the least; an accuracy that holds still
    # (sorting learnt: 100% at every eval) is still what the run is for
    constant = [x for x in evals if len(x.values) > 1 and len(set(x.values)) == 1 and "accuracy" not in x.key]
    primary = [x for x in evals if x not in constant and x.key not in SECONDARY]
    primary.sort(key=lambda x: "accuracy" not in x.key)  # an accuracy is what a run of it is for
    secondary = [x for x in evals if x not in constant and x.key in SECONDARY]
    return [x for x in primary + stepwise + secondary + constant if x.has_values()]


def fmt_value(x: float | None, key: str = "", unit: str = "") -> str:
    """A metric's value in at most 8 characters: 3.00e-04 (lr), 41.3k tok/s, 97.5% (an accuracy or share),
    0.832."""
    if x is None or x != x:
        return "-"
    if abs(x) == float("inf"):
        return "inf" if x > 0 else "-inf"
    if unit:
        return fmt_rate(x)
    if key == "lr":
        return f"{x:.2e}"
    if ("accuracy" in key or key.endswith("_frac") or key.endswith("_share")) and 0 <= x <= 1:
        return f"{x * 100:.1f}%"
    return short_number(x)


def short_number(x: float) -> str:
    """At most 7 characters for any float: 0.832, 12.5, 1.2e+05, -3.4e-07."""
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e4:
        return f"{x:.4g}"
    return f"{x:.1e}"
