"""Run under `python -m paddle.distributed.launch --nproc_per_node 2` with model folders as arguments: each rank
loads every folder twice, whole and with tensor parallel degree 2, and checks that the split model gives the same
logits and that its gathered state equals the whole model's; then that a one-process LoRA adapter (random non-zero
A and B) loads into the split model with the same logits and gathers back to the same PEFT tensors. Rank 0 prints
one JSON line of results. Also: the tensor-parallel gradient norm equals the whole model's."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import paddle
from paddle.distributed import fleet

from paddlemix.distributed import cpu_collectives, grad_norm, tensor_parallel
from paddlemix.models import adapter_for
from paddlemix.peft.lora import adapter_state_dict, apply_lora, load_adapter, lora_modules, save_adapter
from paddlemix.testing.lora import perturb_lora
from paddlemix.utils.io import to_numpy


def gradient_norms(whole, split, ids) -> dict[str, float]:
    """The gradient norm of one backward of mean(logits^2): the whole model's, the split model's global one
    (`grad_norm.global_norm`) and what this rank's slices alone give."""
    for model in (whole, split):
        model.clear_gradients()
        (model(input_ids=ids).logits.astype("float32") ** 2).mean().backward()
    group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
    grads = grad_norm.step_gradients(split, None)
    out = {
        "grad_norm_whole": grad_norm.global_norm(grad_norm.step_gradients(whole, None), grad_norm.NormGroups()),
        "grad_norm_split": grad_norm.global_norm(grads, grad_norm.NormGroups(tensor=group)),
        "grad_norm_local": grad_norm.global_norm(grads, grad_norm.NormGroups()),
    }
    for model in (whole, split):
        model.clear_gradients()
    return out


def main(folders: list[str]) -> None:
    cpu_collectives.install("cpu", {"tensor": 2})
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": 1, "mp_degree": 2, "pp_degree": 1}
    fleet.init(is_collective=True, strategy=strategy)
    tp = tensor_parallel.current()
    results = {}
    for folder in folders:
        family = adapter_for(folder)
        whole = family.load_model(folder)
        split = family.load_model(folder, tensor_parallel=tp)
        ids = paddle.to_tensor(np.arange(3, 27, dtype="int64")[None])  # [1, 24] plain text tokens
        whole.eval(), split.eval()
        with paddle.no_grad():
            expected = whole(input_ids=ids).logits.numpy()
            got = split(input_ids=ids).logits.numpy()
        norms = gradient_norms(whole, split, ids)
        gathered = tensor_parallel.gather_state(split, family.tensor_parallel_parts, tp)
        state = {k: to_numpy(v) for k, v in whole.state_dict().items()}
        split_names = sorted(n for n, p in split.named_parameters() if tensor_parallel.split_of(n, p, {}))
        adapter_dir = Path(tempfile.mkdtemp())
        modules = lora_modules(folder, family, None)
        adapted = apply_lora(whole, modules, 4, 8)
        perturb_lora(adapted, seed=3)
        save_adapter(adapted, adapter_dir)
        split_adapted = load_adapter(split, adapter_dir)
        with paddle.no_grad():
            lora_expected = adapted(input_ids=ids).logits.numpy()
            lora_got = split_adapted(input_ids=ids).logits.numpy()
        ours, theirs = adapter_state_dict(adapted), adapter_state_dict(split_adapted)
        results[Path(folder).name] = {
            "lora_logits": float(np.abs(lora_got - lora_expected).max()),
            "lora_moved": float(np.abs(lora_expected - expected).max()),
            "lora_state": max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours),
            "lora_names": sorted(ours) == sorted(theirs),
            "logits": float(np.abs(got - expected).max()),
            **norms,
            "state": max(float(np.abs(gathered[k] - state[k]).max()) for k in state),
            "same_names": sorted(gathered) == sorted(state),
            "split": len(split_names),
            "split_elements": sum(int(np.prod(split.state_dict()[n].shape)) for n in split_names),
            "whole_elements": sum(int(np.prod(whole.state_dict()[n].shape)) for n in split_names),
        }
    if tp.rank == 0:
        print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
