"""End-of-run outputs: the loss curve picture and a one-file summary of the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOSS_CURVE = "loss_curve.png"
SUMMARY = "train_summary.json"


def read_log(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_loss_curve(records: list[dict[str, Any]], out: str | Path) -> Any:
    """Train loss (and eval loss, when there is any) over steps, saved as a PNG; returns the figure. A preference
    run gets a second panel with its rewards (chosen, rejected, margins) and reward accuracy, train and eval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preference = any("rewards/margins" in r or "eval_rewards/margins" in r for r in records)
    fig, axes = plt.subplots(1, 2 if preference else 1, figsize=(12 if preference else 7, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        _plot(ax, records, key, label)
    ax.set_ylabel("loss")
    if preference:
        ax = axes[0][1]
        for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            _plot(ax, records, name, name)
            _plot(ax, records, f"eval_{name}", f"eval {name}")
        ax.set_ylabel("reward")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if preference else None)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return fig


def _plot(ax: Any, records: list[dict[str, Any]], key: str, label: str) -> None:
    """One curve of `key` over steps (markers for evaluations); nothing when no record has it."""
    points = [(r["step"], r[key]) for r in records if key in r]
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if key.startswith("eval_") else None, markersize=4, label=label)


PREFERENCE_PREFIXES = ("eval_rewards/", "eval_logps/")


def summarize(records: list[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, Any]:
    """Runtime, throughput, final losses and skip counts in one dictionary."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    keys = ("train_runtime", "train_samples", "train_rows", "train_samples_per_second", "train_rows_per_second",
            "tokens_per_second", "text_tokens_per_second", "image_tokens_per_second", "peak_memory_mb", "fill",
            "skipped_samples", "skipped_by_source")  # fmt: skip
    return {
        # The run's own step count: the last logged step lags it whenever max_steps is not a multiple of logging_steps.
        "steps": metrics.get("train_steps", train[-1]["step"] if train else 0),
        "final_train_loss": train[-1]["loss"] if train else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else metrics.get("eval_loss"),
        **{k: metrics[k] for k in keys if k in metrics},
        # a preference run: the last evaluation's rewards and log-prob metrics (eval_rewards/accuracies, ...)
        **{f"final_{k}": v for k, v in (evals[-1] if evals else {}).items() if k.startswith(PREFERENCE_PREFIXES)},
    }
