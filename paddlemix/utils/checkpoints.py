"""Which trainer checkpoints are complete, and rotation that never deletes the newest complete one.

paddleformers writes `checkpoint-N/` in many files; a process killed during that write leaves a partial folder.
A `.complete` marker is written (atomically) only after the whole folder is on disk, and resume and rotation only
trust marked folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

COMPLETE = ".complete"
PATTERN = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: Path) -> int:
    match = PATTERN.match(path.name)
    return int(match.group(1)) if match else -1


def checkpoints(folder: str | Path) -> list[Path]:
    """All `checkpoint-N` folders, oldest step first."""
    found = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and step_of(p) >= 0]
    return sorted(found, key=step_of)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def mark_complete(path: Path, step: int, **progress: int) -> None:
    """Write the marker via a temporary file and a rename, so the marker itself is never half-written. `progress`
    records where the data stream stands (`rows` consumed, the `global_batch` and `epoch_rows` they were read
    with), so a resume with other batch settings continues at the next unseen sample."""
    tmp = path / f"{COMPLETE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"step": step, "time": time.time(), **progress}))
    tmp.replace(path / COMPLETE)


def progress(path: str | Path) -> dict:
    """The marker's record of a complete checkpoint ({} for a checkpoint without one)."""
    marker = Path(path) / COMPLETE
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}


def complete_in_order(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first by the data they consumed (`rows` in the marker), then by step: after a
    resume with another global batch the step numbers restart on another scale, the consumed rows do not."""
    done = [p for p in checkpoints(folder) if is_complete(p)]
    return sorted(done, key=lambda p: (progress(p).get("rows", -1), step_of(p)))


def last_complete(folder: str | Path) -> Path | None:
    done = complete_in_order(folder)
    return done[-1] if done else None


def prune(folder: str | Path, keep: int | None, protect: str | Path | None = None) -> list[Path]:
    """Keep the newest `keep` complete checkpoints, plus `protect` (the best one, for `load_best_model_at_end`)
    outside that count; drop older complete ones and partial leftovers older than the newest complete
    checkpoint. Returns the deleted folders."""
    all_ = checkpoints(folder)
    done = complete_in_order(folder)
    if not done:
        return []
    newest = max(step_of(p) for p in done)
    doomed = [p for p in all_ if not is_complete(p) and step_of(p) < newest]
    if keep is not None and keep > 0:
        kept = Path(protect).resolve() if protect else None
        doomed += [p for p in done[:-keep] if p.resolve() != kept]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
