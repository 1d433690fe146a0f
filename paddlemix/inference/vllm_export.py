"""What vLLM would do with our outputs, said when they are written rather than found out at serving time.

LoRA adapters (vLLM 0.33's LoRA loader):
- `--max-lora-rank` takes only the values of `VLLM_LORA_RANKS`; an adapter of rank r is served with the smallest of
  them >= r (smaller ranks are padded up to it), and an adapter above 512 cannot be served as an adapter at all.
- Adapters on the vision tower or the projector (the family's `vision` / `projector` module groups: Qwen's
  `visual.*`, LLaVA's `vision_tower.*` and `multi_modal_projector.*`) are skipped with a log line unless vLLM runs
  with `--enable-tower-connector-lora`: the answers then silently come from the base vision tower.
- `modules_to_save` (fully trained modules stored beside the adapter, e.g. a trainable projector) are refused.
The way round each of them is to serve the merged folder (tools/merge_lora_params.py), a plain model to vLLM.

Merged (or fully trained) folders: `check_model_folder` checks what vLLM's Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA
loaders read: `architectures[0]` of config.json picks the class and must be one of `VLLM_WEIGHT_PREFIXES`; every
tensor name must start with a prefix that class's weight-name mapper knows (else vLLM stops on an unexpected
weight); `lm_head.weight` must be there unless the embeddings are tied; weights are safetensors; the tokenizer,
the image processor's preprocessor_config.json and a chat template are present.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
TOWER_FLAG = "--enable-tower-connector-lora"

# config.json architectures[0] -> checkpoint-name prefixes its vLLM class maps (transformers >= 4.52 names first,
# then the names of the original releases).
VLLM_WEIGHT_PREFIXES: dict[str, tuple[str, ...]] = {
    "Qwen2VLForConditionalGeneration": ("model.language_model.", "model.visual.", "lm_head.", "visual.", "model."),
    "Qwen2_5_VLForConditionalGeneration": ("model.language_model.", "model.visual.", "lm_head.", "visual.", "model."),
    "Qwen3VLForConditionalGeneration": ("model.language_model.", "model.visual.", "lm_head."),
    # vLLM's PaddleOCR-VL reads the original names, `packing_position_embedding` included (PaddleFormers #3680).
    "PaddleOCRVLForConditionalGeneration": ("model.", "lm_head.", "visual.", "mlp_AR."),
    "LlavaForConditionalGeneration": ("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.",
                                      "lm_head.", "language_model.", "vision_tower.", "multi_modal_projector."),
}  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def smallest_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` value that fits `rank`, or None above 512."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def adapter_notes(rank: int, modules: Iterable[str], modules_to_save: Sequence[str] = (),
                  is_vision: Callable[[str], bool] | None = None) -> list[str]:  # fmt: skip
    """What vLLM would refuse or ignore in a LoRA adapter of `rank` on `modules` (module names, HF layout).

    `is_vision(module)` tells the vision-tower and projector modules apart (default: the names' usual prefixes).
    Returns one sentence per problem, each with the way round it; empty when vLLM serves the adapter as trained.
    """
    is_vision = is_vision or _vision_by_name
    notes = []
    fit = smallest_rank(rank)
    if fit is None:
        notes.append(f"LoRA rank {rank} is above 512, the largest --max-lora-rank vLLM accepts: vLLM cannot serve "
                     "this adapter; serve the merged model (merge_lora_params.py) instead.")  # fmt: skip
    elif fit != rank:
        notes.append(f"LoRA rank {rank} is not one of vLLM's --max-lora-rank values ({', '.join(map(str, VLLM_LORA_RANKS))}); "
                     f"serve it with --max-lora-rank {fit} (smaller ranks are padded), or merge it.")  # fmt: skip
    vision = sorted({m for m in modules if is_vision(m)})
    if vision:
        notes.append(f"{len(vision)} LoRA modules sit in the vision tower or projector (e.g. {vision[0]}); vLLM "
                     f"skips them unless started with {TOWER_FLAG}, and then answers with the base vision "
                     "weights. Pass that flag, or serve the merged model.")  # fmt: skip
    if modules_to_save:
        notes.append(f"the adapter carries fully trained modules (modules_to_save: {', '.join(modules_to_save)}), "
                     "which vLLM's LoRA loader refuses; serve the merged model (merge_lora_params.py) instead.")  # fmt: skip
    return notes


def _vision_by_name(module: str) -> bool:
    parts = module.split(".")
    return any(p in ("visual", "vision_tower", "multi_modal_projector") for p in parts)


def family_vision_test(family: Any) -> Callable[[str], bool]:
    """`is_vision` for `adapter_notes` from a family adapter's `vision` and `projector` module groups."""
    from paddlemix.peft.freeze import matches

    patterns = (*family.module_groups.get("vision", ()), *family.module_groups.get("projector", ()))

    def is_vision(module: str) -> bool:
        name = family.parameter_name(f"{module}.weight")
        return matches(name, patterns) or _vision_by_name(module)

    return is_vision


def adapter_folder_notes(folder: str | Path, family: Any = None) -> list[str]:
    """`adapter_notes` of a PEFT adapter folder (adapter_config.json and the tensor names of its weights)."""
    from paddlemix.peft.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_A, PREFIX
    from paddlemix.utils.safetensors_stream import read_header

    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    entries, _ = read_header(folder / ADAPTER_WEIGHTS)
    modules = [e.name.removeprefix(PREFIX).removesuffix(LORA_A) for e in entries if e.name.endswith(LORA_A)]
    return adapter_notes(int(config.get("r", 8)), modules, config.get("modules_to_save") or (),
                         family_vision_test(family) if family is not None else None)  # fmt: skip


def check_model_folder(folder: str | Path) -> list[str]:
    """What vLLM's loader would stop on in a model folder; one sentence per problem, empty when it would load."""
    from paddlemix.peft.merge import base_tensors
    from paddlemix.utils.errors import UserError

    folder = Path(folder)
    problems = []
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return [f"{folder}/config.json cannot be read ({err})."]
    architecture = (config.get("architectures") or [None])[0]
    prefixes = VLLM_WEIGHT_PREFIXES.get(architecture)
    if prefixes is None:
        problems.append(f'config.json "architectures" is {config.get("architectures")}; vLLM picks its model class '
                        f"from it and this toolkit checks only {', '.join(VLLM_WEIGHT_PREFIXES)}.")  # fmt: skip
    try:
        names = [entry.name for entry in base_tensors(folder)]
    except UserError as err:
        return [*problems, str(err)]
    if prefixes:
        odd = [n for n in names if not n.startswith(prefixes)]
        if odd:
            problems.append(f"{len(odd)} tensors have names vLLM's {architecture} does not map (e.g. {odd[0]}); "
                            f"expected names starting with {', '.join(prefixes)}.")  # fmt: skip
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings", False))
    if not tied and "lm_head.weight" not in names and "language_model.lm_head.weight" not in names:
        problems.append("lm_head.weight is missing while tie_word_embeddings is false; vLLM would start with an "
                        "uninitialised output layer. Save the folder again with its lm_head.")  # fmt: skip
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        problems.append(f"no tokenizer file ({', '.join(TOKENIZER_FILES)}); copy the base model's tokenizer files.")
    if not (folder / "preprocessor_config.json").is_file():
        problems.append("preprocessor_config.json is missing; vLLM's image processing reads it. Copy the base's.")
    tokenizer_config = folder / "tokenizer_config.json"
    in_tokenizer = tokenizer_config.is_file() and "chat_template" in tokenizer_config.read_text(encoding="utf-8")
    if not in_tokenizer and not any((folder / f).is_file() for f in TEMPLATE_FILES):
        problems.append("no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json); vLLM's "
                        "chat endpoint needs one, or pass --chat-template to vllm serve.")  # fmt: skip
    return problems
