"""Multi-device settings checked and completed before the model loads: parallel degrees against the launched
processes and the model's shapes, sharding stages and what they need, all problems of a file in one message."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from paddlemix.utils.errors import Problems

SHARDING_STAGES = ("stage1", "stage2", "stage3")


def launched_processes() -> int:
    """Processes paddle.distributed.launch started for this run (1 for a plain `python` run)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def parallel_degrees(training: dict[str, Any], world: int | None = None) -> dict[str, int]:
    """Tensor, pipeline and sharding degrees of paddleformers' training keywords, as paddleformers resolves them:
    a `sharding` stage without `sharding_parallel_size` (or with -1) shards over every process the tensor and
    pipeline degrees leave; without `sharding` the sharding degree is 1. Returns also `data`, the processes that
    read different batches (sharding ranks included)."""
    world = launched_processes() if world is None else world
    tp = max(training.get("tensor_model_parallel_size", 1) or 1, 1)
    pp = max(training.get("pipeline_model_parallel_size", 1) or 1, 1)
    sharding = 1
    if training.get("sharding"):
        asked = training.get("sharding_parallel_size", -1)
        sharding = max(world // (tp * pp), 1) if asked in (None, -1, 0) else max(asked, 1)
    return {"tensor": tp, "pipeline": pp, "sharding": sharding, "data": max(world // (tp * pp), 1)}


def sharding_notes(kwargs: dict[str, Any]) -> list[str]:
    """Complete `kwargs` (paddleformers' training keywords) for the asked sharding stage; one note per choice.

    Stage 1 splits parameters across ranks (`split_param`, paddleformers' default) only with `amp_master_grad`,
    which is on with fp16/bf16 alone; otherwise stage 1 keeps whole parameters and shards the optimizer state,
    which is what stage 1 means. Stages 2 and 3 never split that way. An explicit `"split_param": true` is left
    for `check_parallel` to refuse.
    """
    notes = []
    stage = str(kwargs.get("sharding") or "")
    if stage and not kwargs.get("amp_master_grad") and "split_param" not in kwargs:
        # paddleformers asserts amp_master_grad whenever split_param is on, for stages 2 and 3 too (where it has
        # no effect); only stage 1 is worth a note
        kwargs["split_param"] = False
        if "stage1" in stage:
            notes.append(
                'sharding stage1: "split_param": false (parameters whole, optimizer state sharded); paddleformers '
                'splits parameters only with "amp_master_grad", which is on with fp16/bf16'
            )
    return notes


def check_parallel(
    training: dict[str, Any], model_dir: Path, problems: Problems, lora: bool = False, world_size: int | None = None
) -> None:
    """Add to `problems` every way the parallel settings cannot work for this model and these processes.

    Args:
        training: paddleformers' training keywords as given (degrees already under paddleformers' names).
        model_dir: the model folder; its config.json gives heads, KV heads, layers and vocabulary.
        problems: collects one message per problem, each naming the key and the fix.
        lora: the run trains LoRA adapters.
        world_size: the processes about to be launched (train.sh checks before launching); default: this launch's.
    """
    world = world_size or launched_processes()
    degrees = parallel_degrees(training, world)
    tp, pp, sharding = degrees["tensor"], degrees["pipeline"], degrees["sharding"]
    words = str(training.get("sharding") or "").split()
    stage = words[0] if words else ""
    if words and (stage not in SHARDING_STAGES or any(w != "offload" for w in words[1:])):
        problems.add(
            f'"sharding" must be one of {", ".join(SHARDING_STAGES)} (stage2 and stage3 may add " offload"), or '
            f"empty; got {training['sharding']!r}.",
            "sharding",
        )
    if world % (tp * pp * sharding):
        problems.add(
            f"tensor x pipeline x sharding parallel degrees = {tp} x {pp} x {sharding} do not divide the "
            f"{world} launched process(es); launch a multiple of {tp * pp * sharding} (NPROC=... or GPUS=... for "
            "train.sh) or lower them.",
            "tensor_parallel_degree",
        )
    if stage and training.get("split_param") and not training.get("amp_master_grad"):
        problems.add(
            f'"split_param": true with sharding {stage} needs "amp_master_grad": true (with "bf16" or "fp16"); '
            'remove "split_param" to shard only the optimizer state.',
            "split_param",
        )
    if stage == "stage3" and tp > 1:
        problems.add(
            '"sharding": "stage3" cannot be combined with "tensor_parallel_degree" > 1 (paddleformers supports '
            "stage1 and stage2 with tensor parallel); use stage2, or tensor_parallel_degree 1.",
            "sharding",
        )
    if stage in ("stage2", "stage3") and pp > 1:
        problems.add(
            f'"sharding": "{stage}" cannot be combined with "pipeline_parallel_degree" > 1 (pipeline parallel runs '
            'with sharding stage1 only); use "sharding": "stage1".',
            "sharding",
        )
    if not (model_dir / "config.json").is_file():
        return
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config", config)

    def size(name: str) -> Any:
        return text.get(name) or config.get(name)

    for name, degree, key in (
        ("num_attention_heads", tp, "tensor"),
        ("num_key_value_heads", tp, "tensor"),
        ("intermediate_size", tp, "tensor"),
        ("vocab_size", tp, "tensor"),
        ("num_hidden_layers", pp, "pipeline"),
    ):
        value = size(name)
        if degree > 1 and value and value % degree:
            problems.add(
                f'"{key}_parallel_degree" = {degree} does not divide the model\'s {name} = {value} '
                f"({model_dir / 'config.json'}); choose a degree that divides it.",
                f"{key}_parallel_degree",
            )
    # Tensor parallel: LoRA targets that cannot be split are checked once they are resolved from the checkpoint's
    # tensor names, still before the weights load (trainer/sft.py: tensor_parallel.check_lora_targets).


PIPELINE_ALTERNATIVES = (
    'use data parallelism (launch more processes), "sharding" or "tensor_parallel_degree" instead, and set '
    '"pipeline_parallel_degree": 1'
)


def check_pipeline(training: dict[str, Any], model_dir: Path, problems: Problems, lora: bool = False) -> None:
    """Add to `problems` what pipeline parallelism cannot run, before the model loads: a family without a pipeline
    description (`ModelAdapter.pipeline`), LoRA and evaluation. Each message names the alternatives."""
    pp = max(training.get("pipeline_model_parallel_size", 1) or 1, 1)
    if pp <= 1 or not (model_dir / "config.json").is_file():
        return
    from paddlemix.models import ADAPTERS

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    adapter = ADAPTERS.get(model_type)
    key = "pipeline_parallel_degree"
    if adapter is not None and adapter.pipeline is None:
        described = ", ".join(sorted(t for t, a in ADAPTERS.items() if a.pipeline is not None))
        problems.add(
            f'"{key}" = {pp}: {model_dir} is a {model_type} model, which has no pipeline description (families '
            f"with one: {described}); {PIPELINE_ALTERNATIVES}.",
            key,
        )
        return
    if lora:
        problems.add(
            f'"{key}" = {pp} with "lora": true is not supported (adapters are not placed on pipeline stages); '
            f"{PIPELINE_ALTERNATIVES}, or train without LoRA.",
            key,
        )
    if training.get("do_eval"):
        problems.add(
            f'"{key}" = {pp} with "do_eval": true is not supported (evaluation does not run through the pipeline '
            'stages); set "do_eval": false and evaluate the saved model in a one-process run.',
            key,
        )
