"""Choose trainable parameters by glob patterns on their names, and report what is trainable."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase, translate
from typing import Any

GROUPS = ("vision", "projector", "llm")
# Which module groups each `train_type` freezes (the LLaVA recipe); with LoRA the llm group trains through its
# adapters. A bare "lora": true without a preset keeps LORA_ONLY: the adapters are all that trains.
PRESETS: dict[str | None, dict[str, bool]] = {
    "use_lora": {"vision": True, "projector": False, "llm": False},
    "freeze_vision": {"vision": True, "projector": False, "llm": False},
    "none": {"vision": False, "projector": False, "llm": False},
    None: {"vision": False, "projector": False, "llm": False},
}
LORA_ONLY = {"vision": True, "projector": True, "llm": False}


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


@dataclass(frozen=True)
class FreezePlan:
    """What to freeze by glob (`include` unless `exclude`), and which full tensors LoRA keeps trainable (regexes)."""

    include: list[str]
    exclude: list[str]
    lora_trainable: list[str]
    frozen_groups: list[str]
    # The same fully trained groups as module paths (`model.multi_modal_projector`), PEFT's `modules_to_save`.
    modules_to_save: list[str] = field(default_factory=list)


def freeze_plan(
    groups: Mapping[str, Sequence[str]],
    train_type: str | None,
    switches: Mapping[str, bool | None],
    lora: bool,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> FreezePlan:
    """Resolve the preset, the per-group switches (an explicit value wins) and the patterns into one plan.

    Without LoRA, frozen groups join `include`. With LoRA everything outside the adapters starts frozen, so the
    groups left unfrozen other than the llm become LoRA's fully trained modules.
    """
    defaults = LORA_ONLY if lora and train_type is None else PRESETS[train_type]
    frozen = {g: defaults[g] if switches.get(g) is None else bool(switches[g]) for g in GROUPS}
    frozen_groups = [g for g in GROUPS if frozen[g]]
    if lora:
        trained = [p for g in GROUPS if g != "llm" and not frozen[g] for p in groups[g]]
        modules = [p.removesuffix(".*") for p in trained]
        return FreezePlan(list(include), list(exclude), [translate(p) for p in trained], frozen_groups, modules)
    by_group = [p for g in frozen_groups for p in groups[g]]
    return FreezePlan([*by_group, *include], list(exclude), [], frozen_groups)


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
