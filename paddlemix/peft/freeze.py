"""Choose trainable parameters by glob patterns on their names, and report what is trainable."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase, translate
from pathlib import Path
from typing import Any

from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)
Aliases = Callable[[str], tuple[str, ...]]

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


def matches(name: str, patterns: Iterable[str], aliases: Aliases | None = None) -> bool:
    """Whether a glob of `patterns` matches the parameter `name` or one of its `aliases` (PaddleMIX's names)."""
    names = (name, *aliases(name)) if aliases else (name,)
    return any(fnmatchcase(n, p) for p in patterns for n in names)


def apply_freeze(
    model: Any, include: Sequence[str], exclude: Sequence[str] = (), aliases: Aliases | None = None
) -> list[str]:
    """Freeze parameters matching `include` unless they match `exclude` (exclude wins); return the frozen names.
    A pattern matches a parameter's own name or one of its `aliases`."""
    frozen = []
    for name, param in model.named_parameters():
        if matches(name, include, aliases) and not matches(name, exclude, aliases):
            param.stop_gradient = True
            frozen.append(name)
    return frozen


# paddleformers fuses q/k/v into `qkv_proj` and gate/up into `up_gate_proj` in some language models; before the
# model exists, a checkpoint name stands for both its own and the fused name.
_FUSED = ((re.compile(r"\.[qkv]_proj\."), ".qkv_proj."), (re.compile(r"\.(gate|up)_proj\."), ".up_gate_proj."))


def loaded_names(checkpoint_names: Iterable[str], parameter_name: Callable[[str], str]) -> set[str]:
    """The parameter names a model loaded from a checkpoint may have: each checkpoint name mapped by the family's
    `parameter_name`, with and without paddleformers' q/k/v and gate/up fusion."""
    out = set()
    for name in checkpoint_names:
        name = parameter_name(name)
        out.add(name)
        for pattern, fused in _FUSED:
            out.add(pattern.sub(fused, name))
    return out


def check_patterns(
    patterns: Mapping[str, Sequence[str]], names: Iterable[str], aliases: Aliases | None, where: str
) -> list[str]:
    """Check freeze patterns (key -> globs) against parameter names before anything is frozen.

    Raises:
        UserError: for every pattern that matches no name (directly or through PaddleMIX's names), listing the real
            module prefixes, so a pattern never silently freezes nothing.
    Returns:
        One note per pattern that matched only through PaddleMIX's names, saying what it matches here.
    """
    names = sorted(names)
    missing, notes = [], []
    for key, globs in patterns.items():
        for glob in globs:
            direct = [n for n in names if fnmatchcase(n, glob)]
            via = [n for n in names if not fnmatchcase(n, glob) and matches(n, [glob], aliases)]
            if not direct and not via:
                missing.append(f'"{glob}" ({key})')
            elif via and not direct:
                modules = sorted({module_of(n, 3) for n in via})
                notes.append(f'freeze pattern "{glob}" ({key}) uses PaddleMIX\'s module names; here it matches '
                             f"{len(via)} tensors in {', '.join(modules)}")  # fmt: skip
    if missing:
        prefixes = sorted({module_of(n, 3) for n in names})
        theirs = sorted({module_of(a, 3) for n in names for a in (aliases(n) if aliases else ())})
        raise UserError(
            f"{where}: freeze pattern{'s' if len(missing) > 1 else ''} {', '.join(missing)} match"
            f"{'' if len(missing) > 1 else 'es'} no parameter of this model, so nothing would be frozen or kept by "
            f"{'them' if len(missing) > 1 else 'it'}. Patterns are globs on full parameter names; this model's "
            f"modules are {', '.join(prefixes)} (PaddleMIX's names for them: {', '.join(theirs) or 'none'}); "
            f'e.g. "{prefixes[0]}.*" names the first of them.'
        )
    return notes


def check_checkpoint_patterns(
    model_dir: str | Path,
    patterns: Mapping[str, Sequence[str]],
    parameter_name: Callable[[str], str],
    aliases: Aliases | None,
    where: str,
) -> list[str]:
    """`check_patterns` against the tensor names in a model folder's safetensors headers, before it is loaded."""
    from paddlemix.utils.safetensors_stream import safetensors_names

    if not any(patterns.values()):
        return []
    names = loaded_names(safetensors_names(model_dir), parameter_name)
    return check_patterns(patterns, names, aliases, where)


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


def scale_learning_rate(model: Any, patterns: Sequence[str], ratio: float) -> int:
    """Train the trainable parameters matching `patterns` at `ratio` x the optimizer's learning rate (Paddle's
    per-parameter `optimize_attr["learning_rate"]`, which multiplies the scheduled rate); return how many."""
    count = 0
    for name, param in model.named_parameters():
        if not param.stop_gradient and matches(name, patterns):
            param.optimize_attr["learning_rate"] = ratio
            count += 1
    return count


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
