from __future__ import annotations

from pathlib import Path

from paddlemix.utils import checkpoints


def make(folder: Path, step: int, complete: bool) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model_state").write_text("x")
    if complete:
        checkpoints.mark_complete(path, step)
    return path


def test_last_complete_ignores_a_partial_newer_checkpoint(tmp_path: Path) -> None:
    make(tmp_path, 2, True)
    make(tmp_path, 10, True)
    make(tmp_path, 12, False)  # killed while saving
    assert checkpoints.last_complete(tmp_path) == tmp_path / "checkpoint-10"
    assert checkpoints.last_complete(tmp_path / "nothing") is None


def test_prune_keeps_newest_complete_and_drops_stale_partials(tmp_path: Path) -> None:
    for step, complete in [(2, True), (4, False), (6, True), (8, True), (10, False)]:
        make(tmp_path, step, complete)
    deleted = checkpoints.prune(tmp_path, keep=1)
    assert sorted(p.name for p in deleted) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-10"]


def test_prune_without_any_complete_checkpoint_deletes_nothing(tmp_path: Path) -> None:
    make(tmp_path, 2, False)
    assert checkpoints.prune(tmp_path, keep=1) == []
    assert (tmp_path / "checkpoint-2").is_dir()


def test_prune_never_deletes_the_protected_best_checkpoint(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        make(tmp_path, step, True)
    deleted = checkpoints.prune(tmp_path, keep=1, protect=tmp_path / "checkpoint-4")
    assert sorted(p.name for p in deleted) == ["checkpoint-2", "checkpoint-6"]
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-8"]


def test_marker_records_the_data_position(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-3"
    path.mkdir()
    checkpoints.mark_complete(path, 3, rows=12, global_batch=4, epoch_rows=16)
    assert {k: checkpoints.progress(path)[k] for k in ("step", "rows", "global_batch", "epoch_rows")} == {
        "step": 3,
        "rows": 12,
        "global_batch": 4,
        "epoch_rows": 16,
    }
    assert checkpoints.progress(tmp_path / "checkpoint-9") == {}


def test_order_follows_consumed_rows_after_a_change_of_global_batch(tmp_path: Path) -> None:
    """checkpoint-4 of global batch 2 (8 rows) resumed at global batch 4 as step 2: its checkpoint-3 (12 rows) is
    the newest, and rotation keeps it."""
    for step, rows in ((2, 4), (4, 8), (3, 12)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        checkpoints.mark_complete(path, step, rows=rows)
    assert checkpoints.last_complete(tmp_path) == tmp_path / "checkpoint-3"
    assert sorted(p.name for p in checkpoints.prune(tmp_path, keep=1)) == ["checkpoint-2", "checkpoint-4"]
