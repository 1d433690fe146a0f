"""The tensor-parallel slicing plan in one process: which slice each rank holds, that the slices go back together,
and that ranks computing on their slices reproduce the whole layer (checked in numpy on a tiny model's weights).
The 2-process runs are in tests/e2e/test_tensor_parallel_runs.py and `test_every_family_splits_exactly` below."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from paddlemix.distributed.checks import check_parallel
from paddlemix.distributed.tensor_parallel import Split, TensorParallel, check_lora_targets, parts_of, split_of
from paddlemix.models.hf_layout import TENSOR_PARALLEL_PARTS, _fuse_qkv, _split_qkv
from paddlemix.utils.errors import Problems, UserError

HERE = Path(__file__).parent


def test_fused_gate_up_is_cut_part_by_part() -> None:
    """The module docstring's example: intermediate size 4, columns 0..3 gate, 4..7 up."""
    split = Split(axis=1, parts=2)
    assert split.indices(8, 2, 0).tolist() == [0, 1, 4, 5]
    assert split.indices(8, 2, 1).tolist() == [2, 3, 6, 7]
    assert Split(axis=0).indices(6, 3, 2).tolist() == [4, 5]


@pytest.mark.parametrize("degree", [2, 4])
@pytest.mark.parametrize(("axis", "parts"), [(0, 1), (1, 1), (1, 2), (0, 2)])
def test_slices_join_back_to_the_whole(degree: int, axis: int, parts: int) -> None:
    full = np.random.default_rng(0).normal(size=(16, 24)).astype("float32")
    split = Split(axis, parts)
    pieces = [split.take(full, TensorParallel(degree, r)) for r in range(degree)]
    assert all(p.shape[axis] == full.shape[axis] // degree for p in pieces)
    np.testing.assert_array_equal(split.join(pieces), full)
    held = np.concatenate([split.indices(full.shape[axis], degree, r) for r in range(degree)])
    assert sorted(held.tolist()) == list(range(full.shape[axis])), "every row or column on exactly one rank"


def test_uneven_split_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot split"):
        Split(axis=1, parts=2).indices(10, 2, 0)  # parts of 5 columns over 2 ranks


def test_only_distributed_parameters_are_split() -> None:
    column = SimpleNamespace(is_distributed=True, split_axis=1)
    assert split_of("model.language_model.layers.0.mlp.up_gate_proj.weight", column, TENSOR_PARALLEL_PARTS) == Split(
        1, 2
    )
    assert split_of("model.language_model.layers.0.self_attn.qkv_proj.weight", column, TENSOR_PARALLEL_PARTS) == Split(
        1, 1
    )
    assert split_of("model.language_model.norm.weight", SimpleNamespace(), TENSOR_PARALLEL_PARTS) is None
    assert parts_of("lm_head.weight", TENSOR_PARALLEL_PARTS) == 1


@pytest.mark.parametrize(("heads", "kv_heads", "degree"), [(4, 2, 2), (8, 2, 2), (8, 4, 4), (4, 4, 2)])
def test_a_block_of_fused_qkv_holds_whole_kv_groups(heads: int, kv_heads: int, degree: int) -> None:
    """paddleformers interleaves q/k/v per KV group, so rank r's contiguous block of columns is exactly the fused
    q/k/v of heads r*H/N .. and KV heads r*KV/N .. (what its attention, built for H/N and KV/N heads, expects)."""
    head_dim, hidden = 3, 5
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(hidden, n * head_dim)) for n in (heads, kv_heads, kv_heads))
    fused = _fuse_qkv(q, k, v, kv_heads)
    for rank in range(degree):
        block = Split(axis=1).take(fused, TensorParallel(degree, rank))
        hq, hk = heads // degree * head_dim, kv_heads // degree * head_dim
        local = _fuse_qkv(q[:, rank * hq : (rank + 1) * hq], k[:, rank * hk : (rank + 1) * hk],
                          v[:, rank * hk : (rank + 1) * hk], kv_heads // degree)  # fmt: skip
        np.testing.assert_array_equal(block, local)
        np.testing.assert_array_equal(_split_qkv(block, heads // degree, kv_heads // degree, head_dim)[0],
                                      q[:, rank * hq : (rank + 1) * hq])  # fmt: skip


def test_ranks_on_their_slices_reproduce_the_whole_mlp(tiny_model_dir: Path) -> None:
    """Column-parallel up_gate (per-part slices) then row-parallel down, summed over ranks (the allreduce), equals
    the whole MLP of the tiny model's first layer."""
    from paddlemix.models import adapter_for
    from paddlemix.models.hf_layout import from_hf_layout
    from paddlemix.models.qwen_vl_common import paddle_name
    from paddlemix.utils.io import load_safetensors

    family = adapter_for(tiny_model_dir)
    config = family.load_config(tiny_model_dir)
    hf = {k: v for k, v in load_safetensors(tiny_model_dir / "model.safetensors").items() if ".layers.0.mlp." in k}
    prefix = "model.language_model.layers.0.mlp."
    target = {prefix + "up_gate_proj.weight", prefix + "down_proj.weight"}
    state = from_hf_layout(hf, config, target, paddle_name)
    up_gate, down = state[prefix + "up_gate_proj.weight"], state[prefix + "down_proj.weight"]  # [H, 2I], [I, H]
    x = np.random.default_rng(2).normal(size=(3, up_gate.shape[0])).astype("float32")

    def mlp(up_gate: np.ndarray, down: np.ndarray) -> np.ndarray:
        gate, up = np.split(x @ up_gate, 2, axis=-1)
        return (gate / (1 + np.exp(-gate)) * up) @ down

    parts = family.tensor_parallel_parts
    total = sum(
        mlp(Split(1, parts_of(prefix + "up_gate_proj.weight", parts)).take(up_gate, TensorParallel(2, r)),
            Split(0).take(down, TensorParallel(2, r)))
        for r in range(2)
    )  # fmt: skip
    np.testing.assert_allclose(total, mlp(up_gate, down), atol=1e-5)
    wrong = sum(
        mlp(Split(1).take(up_gate, TensorParallel(2, r)), Split(0).take(down, TensorParallel(2, r))) for r in range(2)
    )
    assert np.abs(wrong - mlp(up_gate, down)).max() > 1e-3, "one block per rank would pair gate with the wrong up"


def test_degree_checks_name_every_size_that_does_not_divide(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "3")
    text = {"num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 151936}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "text_config": text}))
    problems = Problems("args.json")
    check_parallel({"tensor_model_parallel_size": 3}, tmp_path, problems)
    with pytest.raises(UserError) as raised:
        problems.raise_if_any()
    message = str(raised.value)
    for name in ("num_key_value_heads = 2", "intermediate_size = 128", "vocab_size = 151936"):
        assert name in message
    assert "num_attention_heads" not in message


def test_lora_targets_outside_the_split_layers_are_named() -> None:
    modules = ["model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.0.mlp.fc_extra"]
    problems = check_lora_targets(modules, ("q_proj", "k_proj"), 2)
    assert len(problems) == 1 and "fc_extra" in problems[0] and '"tensor_parallel_degree" = 2' in problems[0]
    assert check_lora_targets(modules, ("q_proj",), 1) == []


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_family_splits_exactly(
    tiny_model_dir, tiny_qwen2_vl_dir, tiny_qwen3_vl_dir, tiny_llava_dir, tmp_path
) -> None:
    """2 CPU processes load each family whole and at degree 2: same logits, and the gathered state is the whole
    model's (names and values), with half of each split layer on a rank; the global gradient norm is the whole
    model's."""
    folders = [tiny_model_dir, tiny_qwen2_vl_dir, tiny_qwen3_vl_dir, tiny_llava_dir]
    proc = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "logs"),
         str(HERE / "tp_families.py"), *map(str, folders)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ),
    )  # fmt: skip
    log = (tmp_path / "logs" / "workerlog.0").read_text() if (tmp_path / "logs" / "workerlog.0").is_file() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + log[-3000:]
    results = json.loads(log.strip().splitlines()[-1])
    assert len(results) == 4
    for name, result in results.items():
        assert result["logits"] < 1e-5 and result["state"] == 0.0 and result["same_names"], name
        assert result["split"] > 0 and 2 * result["split_elements"] == result["whole_elements"], name
        # a one-process adapter loads at degree 2 (its matrices sliced) and gathers back unchanged
        assert result["lora_moved"] > 1e-3 and result["lora_logits"] < 1e-5, name
        assert result["lora_names"] and result["lora_state"] == 0.0, name
        # the global gradient norm: split slices summed over the tensor group, replicated tensors once
        assert result["grad_norm_split"] == pytest.approx(result["grad_norm_whole"], rel=1e-4), name
        assert result["grad_norm_local"] < 0.99 * result["grad_norm_whole"], name  # one rank alone falls short
