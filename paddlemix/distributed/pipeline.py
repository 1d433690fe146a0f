"""Pipeline-parallel description of the Qwen-VL families: the model as a sequence of stages for Paddle's
`PipelineLayer`, which paddleformers' Trainer requires for `pipeline_parallel_degree` > 1.

    stage 0:  EmbeddingStage  token embeddings                                         -> inputs + inputs_embeds
              FirstStage      vision tower, image features merged into their placeholders, 3-D mRoPE positions
                              (the family's own rule)                                  -> (hidden, positions, mask)
              DecoderStage x num_hidden_layers, spread evenly over the stages        -> (hidden, positions, mask)
    last:     NormStage -> HeadStage -> TokenLoss (sum of token losses / the step's n0, as `MIXTrainer` computes)

With tied embeddings (`tie_word_embeddings`) the head is a second copy of the EmbeddingStage on the last stage
(`tied_head`), one shared layer for Paddle, which sums its gradients over both stages.

Between stages travel three tensors: hidden [B, L, H] (float), positions [3, B, L] (int64) and the mask source:
the padding mask [B, L] (int64) or, for MIXToken packs, FlashMask's `attn_mask_startend_row_indices` [B, 1, L]
(int32). Every decoder stage rebuilds the causal (per-sample, for packs) mask from it exactly as the one-process
model does; paddleformers' own pipeline decoders pass `attention_mask=None`, which its eager attention takes as
"no mask at all", not as causal.

What differs per family (classes) is a `PipelineParts` value returned by the family file; the layer names map to
the one-process parameter names (`one_process_name`), so loading reads only this stage's tensors from the
checkpoint and the final model is saved in the one-process layout.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paddle
import paddle.nn as nn
from paddle.distributed.fleet.meta_parallel import LayerDesc, PipelineLayer, SharedLayerDesc

from paddlemix.trainer.chunked_loss import token_loss_sum
from paddlemix.trainer.recompute import recompute_layer

# Inputs of the first stage, in the collator's names; labels go to the last stage.
FIRST_STAGE_KEYS = (
    "input_ids", "attention_mask", "position_ids", "attn_mask_startend_row_indices", "pixel_values", "image_grid_thw"
)  # fmt: skip


@dataclass(frozen=True)
class PipelineParts:
    """The classes a family's pipeline is built from.

    model_class: the family's `*Model` (vision + language model); its `get_image_features`,
        `get_placeholder_mask` and `get_rope_index` run on the first stage, which has the attributes they read.
    text_model_class: its language model; one without decoder layers gives the embeddings, final norm and
        `_prepare_decoder_attention_mask`.
    decoder_layer_class: one decoder layer, built as `decoder_layer_class(text_config, layer_idx)`.
    rotary_class: the mRoPE table, built as `rotary_class(config=text_config)` on every decoder stage.
    build_vision: vision config -> the vision tower (patch embedding, blocks, merger).
    """

    model_class: type
    text_model_class: type
    decoder_layer_class: type
    rotary_class: type
    build_vision: Callable[[Any], nn.Layer]


def _text_model_without_layers(parts: PipelineParts, text_config: Any) -> nn.Layer:
    config = copy.deepcopy(text_config)
    config.num_hidden_layers = 0
    return parts.text_model_class._from_config(config)


class EmbeddingStage(nn.Layer):
    """The token embeddings: adds `inputs_embeds` [B, L, H] to the first stage's inputs. With tied embeddings the
    last stage holds a second copy as the output head (`tied_head`), kept equal by Paddle's shared-weight sync."""

    PREFIXES = (("embed_tokens.", "model.language_model.embed_tokens."),)

    def __init__(self, config: Any, parts: PipelineParts):
        super().__init__()
        self.text_config = config.text_config
        self.embed_tokens = _text_model_without_layers(parts, config.text_config).embed_tokens

    @property
    def embedding_weight(self) -> Any:
        return self.embed_tokens.weight

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {**inputs, "inputs_embeds": self.embed_tokens(inputs["input_ids"])}


def tied_head(stage: EmbeddingStage, hidden: Any) -> Any:
    """The output head of a model with tied embeddings: the embedding matrix [vocab, H] as the head's weight, the
    computation of paddleformers' LMHead."""
    from paddleformers.nn.criterion.loss_utils import calc_lm_head_logits

    return calc_lm_head_logits(stage.text_config, hidden, stage.embedding_weight, None, None, training=stage.training,
                               gather_hidden_states=True)  # fmt: skip


class FirstStage(nn.Layer):
    """Vision tower, image-feature merge and positions: the family model's own forward up to its first decoder
    layer, after the embeddings."""

    PREFIXES = (("visual.", "model.visual."),)

    def __init__(self, config: Any, parts: PipelineParts):
        super().__init__()
        self.config = config  # the family methods read `self.config` (token ids, vision merge size)
        self.visual = parts.build_vision(config.vision_config)
        self._model_class = parts.model_class

    def forward(self, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
        family = self._model_class
        input_ids = inputs["input_ids"]
        grid = inputs.get("image_grid_thw")
        embeds = inputs["inputs_embeds"]  # [B, L, H]
        if inputs.get("pixel_values") is not None:
            image_embeds = paddle.concat(family.get_image_features(self, inputs["pixel_values"], grid), axis=0)
            image_embeds = image_embeds.astype(embeds.dtype)  # [image tokens, H]
            image_mask, _ = family.get_placeholder_mask(
                self, input_ids, inputs_embeds=embeds, image_features=image_embeds
            )
            embeds = embeds.masked_scatter(image_mask, image_embeds)
        positions = inputs.get("position_ids")
        if positions is None:
            positions, _ = family.get_rope_index(
                self, input_ids=input_ids, image_grid_thw=grid, attention_mask=inputs.get("attention_mask")
            )  # [3, B, L]
        mask = inputs.get("attn_mask_startend_row_indices")
        if mask is None:
            mask = inputs.get("attention_mask")
        if mask is None:
            mask = paddle.ones(input_ids.shape, dtype="int64")
        positions.stop_gradient = True
        mask.stop_gradient = True
        return embeds, positions, mask


class DecoderStage(nn.Layer):
    """One decoder layer with the causal mask and rotary embeddings rebuilt from what the stages carry."""

    def __init__(self, config: Any, parts: PipelineParts, layer_idx: int):
        super().__init__()
        self.text_config = config.text_config
        self.layer = parts.decoder_layer_class(config.text_config, layer_idx)
        self.rotary = parts.rotary_class(config=config.text_config)
        self.layer_idx = layer_idx
        self._prepare_mask = parts.text_model_class._prepare_decoder_attention_mask
        self.PREFIXES = (("layer.", f"model.language_model.layers.{layer_idx}."),)

    def causal_mask(self, hidden: Any, mask: Any) -> tuple[Any, Any]:
        """(4-D additive mask, FlashMask indices) as the one-process language model builds them."""
        from paddleformers.transformers.masking_utils import (
            create_causal_mask_and_row_indices,
            create_sliding_window_causal_mask_and_row_indices,
        )

        packed = mask.dtype == paddle.int32
        build = create_causal_mask_and_row_indices
        if getattr(self.layer, "attention_type", "full_attention") == "sliding_attention":
            build = create_sliding_window_causal_mask_and_row_indices
        return build(
            config=self.text_config,
            inputs_embeds=hidden,
            batch_size=hidden.shape[0],
            seq_length=hidden.shape[1],
            cache_length=0,
            attention_mask=None if packed else mask,
            attn_mask_startend_row_indices=mask if packed else None,
            prepare_decoder_attention_mask=self._prepare_mask,
        )

    def forward(self, args: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        hidden, positions, mask = args
        full_mask, indices = self.causal_mask(hidden, mask)
        run = self.layer
        if (
            self.training
            and not hidden.stop_gradient
            and getattr(self.text_config, "recompute_granularity", None) == "full"
        ):
            run = functools.partial(recompute_layer, self.layer)  # `"recompute": true`, as the text model does
        hidden = run(
            hidden,
            attention_mask=full_mask,
            position_embeddings=self.rotary(hidden, positions),
            attn_mask_startend_row_indices=indices,
        )[0]
        return hidden, positions, mask


class NormStage(nn.Layer):
    """The language model's final norm; from here on only the hidden states travel."""

    PREFIXES = (("norm.", "model.language_model.norm."),)

    def __init__(self, config: Any, parts: PipelineParts):
        super().__init__()
        self.norm = _text_model_without_layers(parts, config.text_config).norm

    def forward(self, args: tuple[Any, Any, Any]) -> Any:
        return self.norm(args[0])


class HeadStage(nn.Layer):
    """The output head (logits [B, L, vocab])."""

    PREFIXES = (("head.", "lm_head."),)

    def __init__(self, config: Any):
        super().__init__()
        from paddleformers.nn.lm_head import LMHead

        self.head = LMHead(config.text_config)

    def forward(self, hidden: Any) -> Any:
        return self.head(hidden)


class TokenLoss(nn.Layer):
    """The last stage's loss: sum of the micro-batch's token losses divided by the step's n0 (`divisor`, set by the
    trainer before each step), as the one-process `MIXTrainer.compute_loss`. The sums are kept for the step's
    logged loss (`take_sums`)."""

    def __init__(self) -> None:
        super().__init__()
        self.divisor = 1.0
        self.sums: list[float] = []

    def forward(self, logits: Any, labels: Any) -> Any:
        loss_sum = token_loss_sum(logits, labels)
        self.sums.append(float(loss_sum))
        return loss_sum / self.divisor

    def take_sums(self) -> list[float]:
        sums, self.sums = self.sums, []
        return sums


def stage_descs(config: Any, parts: PipelineParts) -> list[LayerDesc]:
    """The model as the ordered layer list Paddle's PipelineLayer splits into stages. Tied input and output
    embeddings (`tie_word_embeddings`) become one shared layer on the first and the last stage: Paddle sums its
    gradients over both, so both copies take the same update, as the single tied weight does in one process."""
    tied = getattr(config.text_config, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False)
    if tied:
        embeddings = SharedLayerDesc(
            "embed_tokens", EmbeddingStage, shared_weight_attr="embedding_weight", config=config, parts=parts
        )
        head = SharedLayerDesc("embed_tokens", EmbeddingStage, forward_func=tied_head,
                               shared_weight_attr="embedding_weight", config=config, parts=parts)  # fmt: skip
    else:
        embeddings = LayerDesc(EmbeddingStage, config=config, parts=parts)
        head = LayerDesc(HeadStage, config=config)
    layers = [embeddings, LayerDesc(FirstStage, config=config, parts=parts)]
    layers += [
        LayerDesc(DecoderStage, config=config, parts=parts, layer_idx=i)
        for i in range(config.text_config.num_hidden_layers)
    ]
    return layers + [LayerDesc(NormStage, config=config, parts=parts), head]


def stage_bounds(num_layers: int, stages: int) -> list[tuple[int, int]]:
    """Decoder layers [start, end) of each stage: an even split, as Paddle's `layer:DecoderStage` segmentation
    makes it. The first stage also holds the vision tower and embeddings, the last the norm and head.

    Raises:
        ValueError: `stages` does not divide `num_layers` (the argument check refuses such a degree earlier).
    """
    if num_layers % stages:
        raise ValueError(f"{stages} pipeline stages do not divide {num_layers} decoder layers")
    size = num_layers // stages
    return [(stage * size, (stage + 1) * size) for stage in range(stages)]


def _prepare_inputs(inputs: Any) -> list[Any]:
    """The trainer's micro-batches (a dict, or a list of dicts) -> [first-stage inputs, last-stage labels], each
    holding one entry per micro-batch so micro-batches keep their own lengths and images."""
    batches = [inputs] if isinstance(inputs, dict) else list(inputs)
    first = {key: [batch.pop(key, None) for batch in batches] for key in FIRST_STAGE_KEYS}
    labels = [batch.pop("labels") for batch in batches]
    if isinstance(inputs, dict):
        return [{k: v[0] for k, v in first.items()}, labels[0]]
    return [first, labels]


class QwenVLPipeline(PipelineLayer):
    """A Qwen-VL model as pipeline stages; `one_process_state_dict` names its parameters as the one-process model
    does."""

    def __init__(self, config: Any, parts: PipelineParts, topology: Any):
        self.config = config
        super().__init__(
            layers=stage_descs(config, parts),
            loss_fn=TokenLoss(),
            topology=topology,
            seg_method="layer:DecoderStage",
        )
        self._prepare_pipeline_inputs_func = _prepare_inputs
        # A tied weight is one parameter in one process: gradient clipping (Paddle's HybridParallelClipGrad) and
        # the logged gradient norm count it on its first stage only.
        for comm in self.shared_comm.values():
            if self.global_rank != min(comm["ranks"]):
                for attr in comm["weight_attr"]:
                    getattr(comm["layer"], attr).is_firstly_shared = False

    def _synchronize_shared_weights(self) -> None:
        """Paddle broadcasts shared (tied) weights from their first stage while building the pipeline; here the
        parameters are still empty then (built lazily), and the loader fills every copy from the same checkpoint
        tensor instead. Once filled, the broadcast runs as Paddle's."""
        for comm in self.shared_comm.values():
            if any(not getattr(comm["layer"], attr)._is_initialized() for attr in comm["weight_attr"]):
                return
        super()._synchronize_shared_weights()

    def get_hardware_flops(self) -> float:
        """paddleformers' Trainer asks every model with a `config` for its FLOPs per token; not estimated here."""
        raise NotImplementedError

    @property
    def token_loss(self) -> TokenLoss:
        return self._loss_fn[0]

    def one_process_state_dict(self) -> dict[str, Any]:
        """This stage's parameters and persistable buffers by their one-process names."""
        return {one_process_name(self, name): value for name, value in self.state_dict().items()}

    def one_process_view(self) -> OneProcessView:
        """This stage's parameters under one-process names, for freezing patterns and the trainable table."""
        return OneProcessView(self)

    def owned_prefixes(self) -> tuple[str, ...]:
        """One-process name prefixes of the modules this stage holds (which checkpoint tensors it reads)."""
        return tuple(ours for layer in self._stage_layers() for _, ours in layer.PREFIXES)

    def _stage_layers(self) -> list[nn.Layer]:
        """The stage layers this process holds, the shared (tied) ones included."""
        layers = [layer for _, layer in self.named_children() if hasattr(layer, "PREFIXES")]
        return layers + list(self.shared_layers.values())


def one_process_name(pipeline: QwenVLPipeline, name: str) -> str:
    """`3.layer.self_attn.qkv_proj.weight` (layer index in the pipeline, then the stage's own names) -> the
    one-process name, `model.language_model.layers.2.self_attn.qkv_proj.weight`."""
    index, _, rest = name.partition(".")
    layer = getattr(pipeline, index)
    if index == "shared_layers":  # `shared_layers.<key>.<the layer's own name>`: a tied layer, Paddle keeps it here
        key, _, rest = rest.partition(".")
        layer = layer[key]
    for local, ours in layer.PREFIXES:
        if rest.startswith(local):
            return ours + rest[len(local) :]
    raise KeyError(f"pipeline parameter {name} has no one-process name")


class OneProcessView:
    """A pipeline stage seen through its one-process parameter names (`named_parameters`, `parameters`), so
    freeze patterns, module groups and logs written for the one-process model apply unchanged."""

    def __init__(self, pipeline: QwenVLPipeline):
        self.pipeline = pipeline
        self.config = pipeline.config

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        for name, param in self.pipeline.named_parameters():
            yield one_process_name(self.pipeline, name), param

    def parameters(self) -> list[Any]:
        return self.pipeline.parameters()


def gather_one_process_state(pipeline: QwenVLPipeline, to_numpy: Callable[[Any], Any]) -> dict[str, Any]:
    """The whole model's state by one-process names (numpy arrays) on the pipeline group's first rank, which writes
    it; the other stages get an empty dict. Every stage calls this. The stages hand their parts over one at a time,
    so besides the first rank (the whole model) a process holds its own part plus at most one other."""
    from paddle.distributed import fleet

    group = fleet.get_hybrid_communicate_group().get_pipe_parallel_group()
    first = group.ranks[0] == paddle.distributed.get_rank()
    gathered: dict[str, Any] = {}
    for src in group.ranks:
        own = src == paddle.distributed.get_rank()
        part = [{n: to_numpy(v) for n, v in pipeline.one_process_state_dict().items()} if own else None]
        paddle.distributed.broadcast_object_list(part, src=src, group=group)
        if first:
            gathered.update(part[0])
    return gathered
