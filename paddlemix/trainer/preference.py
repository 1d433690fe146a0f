"""`"stage": "dpo"`: the loss and metrics of preference training on pair batches (see `datasets.pair_packing`).

The trainer stays the one `MIXTrainer`; this stage only turns a pair batch into a summed loss over its pairs and
keeps the metrics users expect (`rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
`logps/chosen`, `logps/rejected`, `sft_loss`), averaged over the pairs of each logging interval on all ranks (and
over the eval pairs, each once), plus `logps/accuracies`: the fraction of pairs whose chosen answer is more likely
than the rejected one under the policy alone (the held-out preference accuracy of the demo).

The reference model: with LoRA it is the trained model with its adapters switched off (`adapters_off`, no copy);
for full fine-tuning a frozen copy loaded from `ref_model_name_or_path` (default: the starting model); none for the
reference-free losses (SimPO, ORPO); or, with `precompute_ref_log_probs`, the reference log-probs of every pair
computed once by that copy before training, stored as `output_dir/reference_logps.json` and reused on resume
(the copy is freed before training starts, and not loaded at all when the file exists).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F

from paddlemix.arguments import PREFERENCE_METRICS
from paddlemix.datasets.pair_packing import (
    ANSWER_INDEX,
    ANSWER_SEGMENT,
    ANSWER_TARGETS,
    PAIR_COUNT,
    PAIR_IDS,
)
from paddlemix.peft.layers import adapters_off
from paddlemix.trainer.dpo_loss import PreferenceLoss
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)
REFERENCE_LOGPS = "reference_logps.json"

FORWARD_KEYS = ("input_ids", "position_ids", "attn_mask_startend_row_indices", "pixel_values", "image_grid_thw")
METRICS = PREFERENCE_METRICS


def answer_logps(model: Any, inputs: dict[str, Any]) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Summed log-probabilities [2P] and scored token counts [2P] of every answer of a pair batch (index 2k the
    chosen, 2k + 1 the rejected answer of pair k), float32.

    The LM head runs on the scored positions only: the model runs with its head swapped for identity (through any
    wrapper's own forward) and the real head maps the gathered hidden states, so a batch never holds the
    [B, L, vocab] logits. A trained head under a multi-process wrapper keeps the full logits instead: the
    data-parallel gradient reducer accepts a parameter only inside the wrapper's forward.
    """
    pairs = int(inputs[PAIR_COUNT])
    forward = {k: inputs[k] for k in FORWARD_KEYS if k in inputs}  # not the bookkeeping entries of the batch
    forward["use_cache"] = False  # no KV cache in a loss forward (see chunked_loss.training_forward)
    owner = model
    while hasattr(owner, "_layers"):  # DataParallel / fleet wrappers
        owner = owner._layers
    head = getattr(owner, "lm_head", None)
    reduced = owner is not model and paddle.is_grad_enabled()  # gradients synchronised by the wrapper
    if head is None or (reduced and any(not p.stop_gradient for p in head.parameters())):
        logits = model(**forward).logits  # [B, L, vocab]
        picked = paddle.gather(logits.reshape([-1, logits.shape[-1]]), inputs[ANSWER_INDEX])  # [T, vocab]
    else:
        owner.lm_head = paddle.nn.Identity()
        try:
            hidden = model(**forward).logits  # [B, L, H]
        finally:
            owner.lm_head = head
        picked = head(paddle.gather(hidden.reshape([-1, hidden.shape[-1]]), inputs[ANSWER_INDEX]))  # [T, vocab]
    logp = F.log_softmax(picked.astype("float32"), axis=-1)
    token = paddle.take_along_axis(logp, inputs[ANSWER_TARGETS].unsqueeze(-1), axis=-1).squeeze(-1)  # [T]
    onehot = F.one_hot(inputs[ANSWER_SEGMENT], 2 * pairs).astype("float32")  # [T, 2P]
    return token @ onehot, onehot.sum(axis=0)


class PreferenceStage:
    """Callable by the trainer: `(model, inputs, training)` -> the sum over the batch's pairs of their losses.

    `reference` computes the reference log-probs of a batch (None for reference-free losses); see
    `lora_reference` and `copy_reference`. Metrics: training sums per optimizer step on this rank
    (`finish_step` adds them over the ranks), then means per logging interval (`pop_metrics`); evaluation keeps
    one row per pair id (`take_eval_rows`, gathered over the ranks by the trainer, then `eval_metrics`).
    """

    def __init__(self, loss: PreferenceLoss, reference: Callable[[Any, dict[str, Any]], paddle.Tensor] | None):
        self.loss = loss
        self.reference = reference
        self.names = METRICS if loss.ftx > 0 or loss.kind == "orpo" else METRICS[:-1]
        self.step_sums = np.zeros(len(self.names) + 1)  # this rank, this optimizer step: [pairs, metric sums]
        self.train_sums = np.zeros(len(self.names) + 1)  # all ranks, since the last log
        self.eval_rows: dict[str, list[float]] = {}  # pair id -> metric values
        self.last_losses: paddle.Tensor | None = None  # [P] of the last call

    def __call__(self, model: Any, inputs: dict[str, Any], training: bool = True) -> paddle.Tensor:
        logps, counts = answer_logps(model, inputs)
        ref = None
        if self.loss.needs_reference:
            with paddle.no_grad():
                ref = self.reference(model, inputs).detach()
        losses, r_c, r_r, sft = self.loss(
            logps[0::2], logps[1::2], None if ref is None else ref[0::2], None if ref is None else ref[1::2],
            counts[0::2], counts[1::2],
        )  # fmt: skip
        rows = self.pair_metrics(logps.detach(), r_c.detach(), r_r.detach(), sft.detach())  # [P, metrics]
        if training:
            self.step_sums += np.concatenate([[len(rows)], rows.sum(axis=0)])
        else:
            self.eval_rows.update(zip(inputs[PAIR_IDS], rows.tolist()))
        self.last_losses = losses.detach()
        return losses.sum()

    def pair_metrics(self, logps: paddle.Tensor, r_c: paddle.Tensor, r_r: paddle.Tensor, sft: Any) -> np.ndarray:
        """Each pair's metrics in the order of `self.names` ([P, metrics], float64)."""
        chosen, rejected = logps[0::2], logps[1::2]
        columns = {
            "rewards/chosen": r_c, "rewards/rejected": r_r, "rewards/accuracies": (r_c > r_r).astype("float32"),
            "rewards/margins": r_c - r_r, "logps/chosen": chosen, "logps/rejected": rejected,
            "logps/accuracies": (chosen > rejected).astype("float32"), "sft_loss": sft,
        }  # fmt: skip
        return np.stack([columns[name].astype("float64").numpy() for name in self.names], axis=-1)

    def finish_step(self, reduce: Callable[[list[float]], list[float]]) -> None:
        """At the end of an optimizer step (every rank): add the step's sums of all ranks (`reduce`) to the
        interval's."""
        self.train_sums += np.asarray(reduce(self.step_sums.tolist()))
        self.step_sums[:] = 0

    def pop_metrics(self) -> dict[str, float]:
        """The mean of each training metric over the pairs (of all ranks) since the last call."""
        sums, self.train_sums = self.train_sums, np.zeros_like(self.train_sums)
        pairs = sums[0]
        return {k: round(float(v / pairs), 6) for k, v in zip(self.names, sums[1:])} if pairs else {}

    def take_eval_rows(self) -> dict[str, list[float]]:
        rows, self.eval_rows = self.eval_rows, {}
        return rows

    def eval_metrics(self, rows: dict[str, list[float]], prefix: str = "eval") -> dict[str, float]:
        """The mean of each metric over the evaluated pairs, each counted once."""
        if not rows:
            return {}
        means = np.asarray(list(rows.values()), dtype="float64").mean(axis=0)
        return {f"{prefix}_{k}": round(float(v), 6) for k, v in zip(self.names, means)}


def lora_reference(model: Any, inputs: dict[str, Any]) -> paddle.Tensor:
    """The reference of a LoRA run: the same model with its adapters off (the base, bit for bit)."""
    with adapters_off(model):
        return answer_logps(model, inputs)[0]


def copy_reference(reference_model: Any) -> Callable[[Any, dict[str, Any]], paddle.Tensor]:
    """The reference of a full fine-tuning run: a frozen model of its own (eval mode, no gradients)."""
    reference_model.eval()
    for param in reference_model.parameters():
        param.stop_gradient = True

    def reference(model: Any, inputs: dict[str, Any]) -> paddle.Tensor:
        return answer_logps(reference_model, inputs)[0]

    return reference


def precompute_reference(
    load_reference: Callable[[], tuple[Any, float]], datasets: list[Any], collate: Callable, batch_size: int,
    path: Path, write: bool,
) -> dict[str, list[float]]:  # fmt: skip
    """{pair id: [chosen, rejected]} summed reference log-probs of every usable pair of `datasets` (encoded pair
    datasets), read from `path` when an earlier run (or a resumed one) wrote it, else computed by the model
    `load_reference` returns (with its size in MB), which is freed afterwards; written atomically by `write`."""
    if path.is_file():
        table = json.loads(path.read_text(encoding="utf-8"))
        logger.info("reference log-probs of %d pairs read from %s", len(table), path)
        return table
    reference_model, size = load_reference()
    logger.info("computing the reference log-probs of every pair once (%.1f MB for the reference model, freed "
                "before training)", size)  # fmt: skip
    reference_model.eval()
    table: dict[str, list[float]] = {}

    def add(items: list[dict[str, Any]]) -> None:
        batch = collate(items)
        tensors = {k: paddle.to_tensor(v) if hasattr(v, "dtype") else v for k, v in batch.items()}
        with paddle.no_grad():
            logps = answer_logps(reference_model, tensors)[0].numpy()  # [2P]
        for k, pair_id in enumerate(batch[PAIR_IDS]):
            table[pair_id] = [float(logps[2 * k]), float(logps[2 * k + 1])]

    items: list[dict[str, Any]] = []
    for data in datasets:  # every record of every source, whichever a fractional sampling_rate draws
        for records, template in zip(data.mix.datasets, data.templates):
            for i in range(len(records)):
                try:
                    items.append(data.processor(records[i], template))
                except Exception:  # noqa: BLE001 - a bad pair is skipped (and reported) when training reads it
                    continue
                if len(items) == batch_size:
                    add(items)
                    items = []
    if items:
        add(items)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table), encoding="utf-8")
        tmp.replace(path)
    logger.info("reference log-probs of %d pairs computed once and stored in %s", len(table), path)
    return table


def table_reference(table: dict[str, list[float]], path: Path) -> Callable[[Any, dict[str, Any]], paddle.Tensor]:
    """The reference of a run with precomputed log-probs: looked up by pair id, no model."""

    def reference(model: Any, inputs: dict[str, Any]) -> paddle.Tensor:
        try:
            values = [v for pair_id in inputs[PAIR_IDS] for v in table[pair_id]]
        except KeyError as err:
            raise UserError(
                f"{path} has no reference log-probs for pair {err}: the data changed since they were computed. "
                f"Delete {path} (it is computed again) or use the data of the first run."
            ) from None
        return paddle.to_tensor(values, dtype="float32")

    return reference
