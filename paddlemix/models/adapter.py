"""What differs between model families, as data: classes to load, module groups, LoRA targets, vision tokens.

The trainer, collator and tools are generic; each family file ends with one `ADAPTER = ModelAdapter(...)`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paddlemix.distributed.tensor_parallel import SINGLE, TensorParallel
from paddlemix.models.hf_layout import TENSOR_PARALLEL_PARTS
from paddlemix.processors.sample_processor import SampleProcessor, VisionTokens
from paddlemix.processors.video_tokens import VideoTokens
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

PICKLE_WEIGHTS = ("*.pdparams", "*.bin", "*.pt", "*.pth", "*.ckpt")


def import_object(path: str) -> Any:
    """Import `package.module:Name` on first use, so choosing a family does not import every model."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_safe_weights(model_dir: str | Path, allow_pickle: bool = False) -> None:
    """Refuse folders whose weights exist only in pickle-based formats, which can run code when loaded."""
    folder = Path(model_dir)
    if any(folder.glob("*.safetensors")):
        return
    pickled = [p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)]
    if pickled and not allow_pickle:
        raise UserError(
            f"{folder} holds weights only in pickle-based files ({', '.join(sorted(pickled)[:3])}), which can run "
            'arbitrary code when loaded. Convert them to safetensors, or set "allow_pickle_weights": true if you '
            "trust the source."
        )
    if not pickled:
        raise UserError(f"{folder} has no *.safetensors weight files.")


def prefix_aliases(table: tuple[tuple[str, tuple[str, ...]], ...]) -> Callable[[str], tuple[str, ...]]:
    """Names of one parameter in another code base, from (our prefix, their prefixes) pairs; the first pair whose
    prefix fits wins, so list the most specific first. Names outside the table have no alias."""

    def aliases(name: str) -> tuple[str, ...]:
        for ours, theirs in table:
            if name.startswith(ours):
                return tuple(t + name[len(ours) :] for t in theirs)
        return ()

    return aliases


def no_aliases(name: str) -> tuple[str, ...]:
    return ()


def same_name(name: str) -> str:
    return name


def merged_patch_tokens(processor: Any) -> tuple[int, int]:
    """(merge size, extra tokens) of an image processor that merges `merge_size`^2 patches into one token."""
    return int(getattr(processor.image_processor, "merge_size", 2)), 0


@dataclass(frozen=True)
class ModelAdapter:
    """Everything family-specific the generic code needs; values only, no per-run state."""

    model_type: str
    config_class: str
    model_class: str
    processor_class: str
    vision_placeholder: str
    image_token: str
    lora_targets: tuple[str, ...]
    module_groups: dict[str, tuple[str, ...]]
    prepare_config: Callable[[Any, str], None]
    export_state_dict: Callable[[dict[str, Any], Any], dict[str, Any]]
    import_state_dict: Callable[[dict[str, Any], Any, set[str]], dict[str, Any]]
    image_grid: Callable[[Any, int, int], tuple[int, int, int]]
    positions: Callable[[Any, Any, Any], Any]
    # (merge size, extra tokens per image) of a loaded processor: visual tokens = t*h*w / merge^2 + extra.
    image_token_layout: Callable[[Any], tuple[int, int]] = merged_patch_tokens
    # Checkpoint tensor name -> this model's parameter name, which is also transformers 4.57's in-memory name of the
    # unfused layers (LoRA targets are resolved on these before the model loads, and PEFT adapters use them).
    parameter_name: Callable[[str], str] = same_name
    # One of our module or parameter paths -> its name in PEFT adapter files: transformers' in-memory name, which
    # PEFT matches `target_modules` against and loads tensors by (`parameter_name` maps it back on reading).
    peft_name: Callable[[str], str] = same_name
    # PaddleMIX's names for one of our parameters, so freeze patterns written for PaddleMIX's models still apply.
    paddlemix_names: Callable[[str], tuple[str, ...]] = no_aliases
    # The classes of the family's pipeline-parallel stages (`paddlemix.distributed.pipeline.PipelineParts`), or
    # None for a family without a pipeline description (refused with `pipeline_parallel_degree` > 1).
    pipeline: Callable[[], Any] | None = None
    # Tensor parallel: fused layer name -> parts cut separately (see paddlemix.distributed.tensor_parallel). Every
    # family here runs paddleformers' language models, whose gate/up are stored one after the other (2 parts) and
    # whose q/k/v are interleaved per KV group (1 part).
    tensor_parallel_parts: dict[str, int] = field(default_factory=lambda: dict(TENSOR_PARALLEL_PARTS))
    # How the family writes a video into text (paddlemix.processors.video_tokens); None: video records are skipped.
    video_tokens: VideoTokens | None = None
    # Prefixes of checkpoint tensors that no model of the family holds (e.g. a pooling head no forward pass uses):
    # the import leaves them out, LoRA targets never select their layers, full saves carry them unchanged
    # (paddlemix.models.carried) and merges copy them.
    unused_tensors: tuple[str, ...] = ()

    def load_config(self, path: str | Path, device: str = "cpu") -> Any:
        from paddlemix.models.hf_config import read_hf_config
        from paddlemix.models.loading import local_folder_logs

        with local_folder_logs():
            config = import_object(self.config_class).from_pretrained(str(path))
        read_hf_config(config, path)  # both transformers generations' keys (paddleformers reads only 4.x's)
        self.prepare_config(config, device)
        return config

    def load_model(
        self,
        path: str | Path,
        dtype: str | None = "float32",
        device: str = "cpu",
        allow_pickle: bool = False,
        tensor_parallel: TensorParallel = SINGLE,
    ) -> Any:
        """The family's model with the folder's safetensors weights, streamed in (see `paddlemix.models.loading`).

        Args:
            dtype: dtype of the floating parameters; None keeps the checkpoint's (config.json `torch_dtype`/`dtype`).
            allow_pickle: let a folder with only pickle-based weights pass `check_safe_weights`; such weights are
                still not loaded by this loader, which reads safetensors only.
            tensor_parallel: this process's degree and rank; above 1 the language model holds this rank's slices.

        Raises:
            UserError: no safetensors weights, or weights that do not fit config.json.
        """
        from paddlemix.models.loading import load_weights_into

        check_safe_weights(path, allow_pickle)
        config = self.load_config(path, device)
        cls = import_object(self.model_class)
        parts = self.tensor_parallel_parts
        model = load_weights_into(cls, config, path, self.import_state_dict, dtype, tensor_parallel, parts)
        logger.info("loaded %s from %s", self.model_type, path)
        return model

    def load_pipeline_stage(self, path: str | Path, dtype: str | None = "float32", device: str = "cpu") -> Any:
        """This process's stages of the family's pipeline (`paddlemix.distributed.pipeline`), filled from the
        folder's safetensors with only the tensors of the layers they hold. Needs an initialised fleet with a
        pipeline degree above 1 and a family whose `pipeline` is set."""
        from paddle.distributed import fleet

        from paddlemix.distributed.pipeline import QwenVLPipeline
        from paddlemix.models.loading import load_pipeline_stage

        check_safe_weights(path)
        config = self.load_config(path, device)
        parts, topology = self.pipeline(), fleet.get_hybrid_communicate_group().topology()
        model = load_pipeline_stage(lambda c: QwenVLPipeline(c, parts, topology), config, path,
                                    self.import_state_dict, self.parameter_name, dtype)  # fmt: skip
        logger.info("loaded %s pipeline stage %d from %s", self.model_type, model._stage_id, path)
        return model

    def load_processor(self, path: str | Path) -> Any:
        """The family's processor (tokenizer, image processor, chat template) from the folder; reads only."""
        from paddlemix.models.loading import local_folder_logs

        with local_folder_logs():
            processor = import_object(self.processor_class).from_pretrained(str(path), use_fast=False)
        # The tokenizer's "Token indices sequence length is longer than ... model_max_length" warning is moot here:
        # samples are measured against max_length (and prompts against max_position_embeddings) after vision
        # expansion, and skipped or refused with that reason. Marked as given, the way the tokenizer itself
        # silences its repeats.
        warned = getattr(getattr(processor, "tokenizer", processor), "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True
        return processor

    def vision_tokens(self, processor: Any) -> VisionTokens:
        image_processor = processor.image_processor
        merge_size, extra = self.image_token_layout(processor)
        return VisionTokens(
            self.vision_placeholder,
            self.image_token,
            merge_size,
            lambda width, height: self.image_grid(image_processor, width, height),
            extra,
            self.video_tokens,
            f"{self.model_type} models here take images only (video is for the Qwen-VL families)",
        )

    def sample_processor(self, processor: Any, max_length: int) -> SampleProcessor:
        """The encoder of samples for this family and loaded processor."""
        return SampleProcessor(
            processor.tokenizer, processor.image_processor, self.vision_tokens(processor), max_length
        )

    def position_fn(self, config: Any) -> Callable[..., Any]:
        """Per-sample position ids ([rows, L] numpy) for packing, from input ids, image grids and (keyword
        arguments, Qwen-VL families) `video_grid_thw` and `second_per_grid_ts`."""
        return lambda input_ids, grid_thw, **video: self.positions(config, input_ids, grid_thw, **video)
