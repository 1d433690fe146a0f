"""Resolve LoRA target names of the whole field onto one model's Linear layers, from checkpoint headers alone.

What users bring, and what each means here (PEFT's rules where PEFT has one):
- a module name or dotted suffix (`q_proj`, `self_attn.v_proj`, `qkv`, `fc1`): every Linear whose path is that
  name or ends with "." + it (PEFT's rule for a list of names);
- `all-linear` (PEFT) or `all` (LLaMA-Factory, ms-swift): every Linear of the language model except the output head;
- a regex (any target with regex characters, e.g. `.*down_proj.*`, PaddleMIX's `model.layers.*q_proj.*` or
  `llama.layer.*q_proj.*`): matched in full (PEFT's rule for a string) against the module path in transformers 4.57's
  in-memory model (`model.language_model.layers.0.self_attn.q_proj`) and against the older spellings of the same
  language-model layer (`model.layers.0...`, `llama.layers.0...`, `language_model.model.layers.0...`);
- a comma-separated string (`"q_proj,v_proj"`, LLaMA-Factory's form): the names it lists;
- paddleformers' fused names (`qkv_proj`, `up_gate_proj`, as this toolkit's earlier argument files used them):
  all the Hugging Face layers they hold.

Scope: a target reaches the language model only, unless its text names another part of the model (`visual`,
`vision_tower`, `multi_modal_projector`: the second component of the family's module-group globs) or it matches
nothing in the language model (a vision-only name such as `qkv` or `fc1`). So `.*down_proj.*` adapts the language
model's down_proj and not the Qwen2.5-VL vision blocks' down_proj, while `model.visual.*qkv` adapts the vision tower.

Module paths are transformers' in-memory names, which are also our Paddle parameter names except that paddleformers
fuses q/k/v (`qkv_proj`) and gate/up (`up_gate_proj`); resolution works on the unfused names, so `q_proj` means
exactly the q slice of a fused layer (see `paddlemix.peft.layers`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from paddlemix.models.hf_layout import FUSED_LAYERS, both_generations, is_linear_weight
from paddlemix.utils.errors import UserError
from paddlemix.utils.safetensors_stream import checkpoint_entries, checkpoint_files

ALL_LINEAR = ("all-linear", "all")
OUTPUT_HEAD = "lm_head"
# Older names of the language model's layers that PaddleMIX argument files use in their regexes.
LM_ALIASES = ("model.", "llama.", "language_model.model.", "")
_REGEX_CHARS = re.compile(r"[\\*+?^$()\[\]{}|]")
# Leaf names of vision-tower and projector Linear layers across the field (Qwen2/2.5/3-VL, CLIP, LLaVA): a target
# that is one of them but matches nothing here gets this family's own vision layer names as examples too.
VISION_NAMES = {"qkv", "proj", "fc1", "fc2", "linear_fc1", "linear_fc2", "out_proj", "linear_1", "linear_2"}


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a safetensors checkpoint folder with its shape, read from the file headers only.

    Raises:
        UserError: the folder has no *.safetensors files, or one is missing or broken (`checkpoint_entries`).
    """
    folder = Path(model_dir)
    if not checkpoint_files(folder):
        raise UserError(f"{folder} has no *.safetensors weight files to find LoRA target layers in.")
    return {entry.name: entry.shape for entry in checkpoint_entries(folder)}


def linear_modules(shapes: Mapping[str, Sequence[int]], parameter_name: Callable[[str], str]) -> list[str]:
    """In-memory module paths of the checkpoint's Linear layers (unfused, as transformers names them), sorted.

    `parameter_name` maps a checkpoint tensor name to the model's parameter name (the family's rule).
    """
    names = {parameter_name(n) for n, shape in shapes.items() if is_linear_weight(n, shape)}
    return sorted(n[: -len(".weight")] for n in names)


def language_model_prefix(module_groups: Mapping[str, Sequence[str]]) -> str:
    """`model.language_model.` from the family's llm group glob `model.language_model.*`."""
    return next(g[:-1] for g in module_groups["llm"] if g.endswith(".*") and g != OUTPUT_HEAD + ".*")


def other_part_words(module_groups: Mapping[str, Sequence[str]]) -> set[str]:
    """Words that name a non-language-model part in a pattern: `visual`, `vision_tower`, `multi_modal_projector`
    (the component after `model.`), or `mlp_AR` for a family whose parts are top-level modules."""
    words = set()
    for group, globs in module_groups.items():
        for parts in (g.split(".") for g in globs if "." in g and group != "llm"):
            words.add(parts[1] if parts[0] == "model" else parts[0])
    return words


def is_regex(target: str) -> bool:
    return bool(_REGEX_CHARS.search(target))


def _spellings(path: str, lm_prefix: str) -> list[str]:
    """The names a target may use for one module: its path, the fused layer holding it (`qkv_proj` for q/k/v,
    `up_gate_proj` for gate/up: this toolkit's earlier argument files), and the older language-model prefixes."""
    if not path.startswith(lm_prefix):
        return [path, path.removeprefix("model.")]
    parent, _, leaf = path.rpartition(".")
    paths = [path] + [f"{parent}.{fused}" for fused, parts in FUSED_LAYERS.items() if leaf in parts]
    return paths + [alias + p[len(lm_prefix) :] for p in paths for alias in LM_ALIASES]


def _matches(target: str, path: str, lm_prefix: str) -> bool:
    names = _spellings(path, lm_prefix)
    if is_regex(target):
        return any(re.fullmatch(target, name) for name in names)
    return any(name == target or name.endswith("." + target) for name in names)


def resolve_targets(
    targets: Sequence[str], modules: Sequence[str], module_groups: Mapping[str, Sequence[str]], where: str = ""
) -> list[str]:
    """The sorted module paths (from `modules`, see `linear_modules`) that `targets` select, by the rules above.

    Raises:
        UserError: a target is not a valid regex, matches no layer, or names the output head.
    """
    lm_prefix = language_model_prefix(module_groups)
    words = other_part_words(module_groups)
    lm = [m for m in modules if m.startswith(lm_prefix)]
    if not targets:
        raise UserError(
            f'{where}"lora_target_modules": [] selects no layer, so LoRA would train nothing. Leave the key out for '
            f'this family\'s default, or name layers such as {", ".join(example_names(lm))} or "all-linear".'
        )
    chosen: set[str] = set()
    for target in split_commas(targets):
        if target.lower() in ALL_LINEAR:
            chosen.update(lm)
            continue
        if is_regex(target):
            try:
                re.compile(target)
            except re.error as err:
                raise UserError(f'{where}"lora_target_modules": {target!r} is not a valid regex ({err}).') from None
        if target == OUTPUT_HEAD or (is_regex(target) and re.fullmatch(target, OUTPUT_HEAD)):
            raise UserError(
                f'{where}"lora_target_modules": {target!r} names the output head "lm_head", which LoRA here does not '
                "adapt (its weight feeds the chunked loss directly); train it fully with a full fine-tune instead."
            )
        named_part = any(w in target for w in words)
        scope = modules if named_part else lm
        hits = [m for m in scope if _matches(target, m, lm_prefix)]
        if not hits and not named_part:
            hits = [m for m in modules if _matches(target, m, lm_prefix)]
        if not hits:
            raise UserError(
                f'{where}"lora_target_modules": {target!r} matches no Linear layer of this model.'
                f"{_unmatched_hint(target, modules, lm, lm_prefix)} Use module names such as "
                f'{", ".join(example_names(lm))}, "all-linear", or a regex matched in full against paths such as '
                f"{', '.join(lm[:2])}."
            )
        chosen.update(hits)
    return sorted(chosen)


def split_commas(targets: Sequence[str]) -> list[str]:
    """`["q_proj,v_proj"]` (LLaMA-Factory's comma-separated string) -> `["q_proj", "v_proj"]`, regexes too (PaddleMIX's
    Qwen2-VL recipe passes `"model.layers.*q_proj.*,model.layers.*v_proj.*"`), except commas inside a regex's
    `{m,n}` repetition, which belong to it."""
    out = []
    for target in targets:
        out.extend(p.strip() for p in re.split(r",(?![^{]*\})", target) if p.strip())
    return out


def _unmatched_hint(target: str, modules: Sequence[str], lm: Sequence[str], lm_prefix: str) -> str:
    """For a target that matches nothing: the right spelling if only its case is wrong, and this family's vision
    layer names if it is another family's vision layer name (`qkv` on LLaVA, `fc1` on Qwen3-VL)."""
    if (
        not is_regex(target)
        and target != target.lower()
        and any(_matches(target.lower(), m, lm_prefix) for m in modules)
    ):
        return f" Names are case-sensitive: did you mean {target.lower()!r}?"
    if target.rsplit(".", 1)[-1] not in VISION_NAMES:
        return ""
    other = [m for m in modules if m not in lm and not m.startswith(OUTPUT_HEAD)]
    names = dict.fromkeys(
        ".".join(m.split(".")[-2:]) if m.rsplit(".", 1)[-1].isdigit() else m.rsplit(".", 1)[-1] for m in other
    )
    if not names:
        return ""
    shared = [m for m in other if m.rsplit(".", 1)[-1] in set(example_names(lm))]
    note = ""
    if shared:
        part, leaf = ".".join(shared[0].split(".")[:2]), shared[0].rsplit(".", 1)[-1]
        note = f' (a name the language model shares reaches these only with their part named: "{part}.*{leaf}")'
    return f" This model's vision and projector layers are named {', '.join(names)}{note}."


def example_names(modules: Iterable[str]) -> list[str]:
    """The distinct leaf names of `modules` in first-seen order (`q_proj`, `k_proj`, ...)."""
    return list(dict.fromkeys(m.rsplit(".", 1)[-1] for m in modules))


def peft_target_modules(chosen: Sequence[str], modules: Sequence[str]) -> str | list[str]:
    """PEFT's `target_modules` for exactly `chosen` among `modules`: the list of layer names (`["q_proj", "v_proj"]`,
    the form most tools write and read) when PEFT's suffix rule selects exactly `chosen`, else `peft_target_regex`."""
    names = sorted({m.rsplit(".", 1)[-1] for m in chosen})
    if {m for m in modules if m.rsplit(".", 1)[-1] in names} == set(chosen):
        return names
    return peft_target_regex(chosen, modules)


def peft_target_regex(chosen: Sequence[str], modules: Sequence[str]) -> str:
    """A regex that PEFT's `re.fullmatch(target_modules, key)` makes select exactly `chosen` among `modules`.

    Layer numbers collapse to `\\d+` where every layer of that kind is chosen, so a 28-layer model's seven
    projections give seven alternatives, not 196. Paths that transformers 5.x spells differently match in both
    forms (`paddlemix.models.hf_layout.both_generations`).
    """
    by_template: dict[str, set[str]] = {}
    for m in modules:
        by_template.setdefault(re.sub(r"\.\d+\.", ".#.", m), set()).add(m)
    parts = []
    chosen_set = set(chosen)
    for template, members in sorted(by_template.items()):
        picked = members & chosen_set
        if not picked:
            continue
        if picked == members and "#" in template:
            parts.append(re.escape(template).replace(r"\#", r"\d+"))
        else:
            parts.extend(re.escape(m) for m in sorted(picked))
    return both_generations("(" + "|".join(parts) + ")")
