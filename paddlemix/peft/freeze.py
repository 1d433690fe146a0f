"""Choose trainable parameters by glob patterns on their names, and report what is trainable."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def apply_freeze(model: Any, include: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Freeze parameters matching `include` unless they match `exclude` (exclude wins); return the frozen names."""
    frozen = []
    for name, param in model.named_parameters():
        if matches(name, include) and not matches(name, exclude):
            param.stop_gradient = True
            frozen.append(name)
    return frozen


def module_of(name: str, depth: int = 2) -> str:
    """Group a parameter under its top-level module (`model.visual.blocks.0.x` -> `model.visual`)."""
    parts = name.split(".")
    return ".".join(parts[: min(depth, len(parts) - 1)]) or name


def trainable_table(model: Any) -> str:
    """A text table of trainable and frozen parameter counts per top-level module."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        counts[module_of(name)][0 if not param.stop_gradient else 1] += int(param.numel())
    total_t = sum(t for t, _ in counts.values())
    total_f = sum(f for _, f in counts.values())
    width = max([len(k) for k in counts] + [6])
    lines = [f"{'module':<{width}}  {'trainable':>12}  {'frozen':>12}"]
    lines += [f"{k:<{width}}  {t:>12,}  {f:>12,}" for k, (t, f) in sorted(counts.items())]
    share = total_t / max(total_t + total_f, 1)
    lines.append(f"{'total':<{width}}  {total_t:>12,}  {total_f:>12,}  ({share:.2%} trainable)")
    return "\n".join(lines)
