from __future__ import annotations

from pathlib import Path

from PIL import Image

from paddlemix.trainer.report import plot_loss_curve, summarize

RECORDS = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.5},
           {"step": 3, "loss": 1.5}, {"step": 4, "loss": 1.0}, {"step": 4, "eval_loss": 1.2}]  # fmt: skip


def test_loss_curve_has_train_and_eval_lines(tmp_path: Path) -> None:
    fig = plot_loss_curve(RECORDS, tmp_path / "curve.png")
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["train loss", "eval loss"]
    assert list(lines[0].get_xdata()) == [1, 2, 3, 4] and list(lines[1].get_ydata()) == [2.5, 1.2]
    with Image.open(tmp_path / "curve.png") as image:
        assert image.format == "PNG" and image.size == (700, 400)


def test_summary_takes_final_losses_and_metrics() -> None:
    summary = summarize(RECORDS, {"train_runtime": 9.5, "tokens_per_second": 100.0, "other": 1})
    assert summary == {"steps": 4, "final_train_loss": 1.0, "final_eval_loss": 1.2, "train_runtime": 9.5,
                       "tokens_per_second": 100.0}  # fmt: skip


def test_summary_steps_are_the_runs_not_the_last_logged() -> None:
    """logging_steps 10 and 492 steps: the last log is at step 490, the run has 492."""
    records = [{"step": s, "loss": 1.0} for s in range(10, 491, 10)]
    assert summarize(records, {"train_steps": 492})["steps"] == 492


def test_preference_run_plots_its_rewards_beside_the_loss(tmp_path: Path) -> None:
    records = [{"step": 1, "loss": 0.69, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
                "rewards/accuracies": 0.0},
               {"step": 2, "loss": 0.5, "rewards/chosen": 0.1, "rewards/rejected": -0.3, "rewards/margins": 0.4,
                "rewards/accuracies": 0.75},
               {"step": 2, "eval_loss": 0.55, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 0.8}]  # fmt: skip
    fig = plot_loss_curve(records, tmp_path / "curve.png")
    assert len(fig.axes) == 2
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert labels == ["rewards/chosen", "rewards/rejected", "rewards/margins", "eval rewards/margins",
                      "rewards/accuracies", "eval rewards/accuracies"]  # fmt: skip
    assert list(fig.axes[1].get_lines()[2].get_ydata()) == [0.0, 0.4]
    summary = summarize(records, {})
    assert summary["final_eval_rewards/accuracies"] == 0.8 and summary["final_eval_rewards/margins"] == 0.3
