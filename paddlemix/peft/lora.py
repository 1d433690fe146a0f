"""LoRA on a Paddle model: resolve targets before loading, apply, save and load adapters in Hugging Face PEFT format,
merge.

Adapters live in the model itself as `LoRALinear` layers (paddlemix.peft.layers, which says why paddleformers'
LoRAModel is not used); `model.lora_spec` records what was applied. Module paths everywhere are transformers 4.57's
in-memory names of the unfused layers (`model.language_model.layers.0.self_attn.q_proj`), which is what PEFT files
carry; `apply_lora` places each on the Paddle layer that holds it (itself, or the q/k/v or gate/up slice of a fused
layer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from paddlemix.distributed import tensor_parallel
from paddlemix.models.hf_layout import FUSED_LAYERS, TENSOR_PARALLEL_PARTS, fused_columns, is_linear_weight
from paddlemix.peft.peft_format import (
    ADAPTER_WEIGHTS,
    LORA_A,
    LORA_B,
    PREFIX,
    PeftAdapter,
    merge_lora,
    read_adapter,
    write_adapter,
)
from paddlemix.peft.targets import checkpoint_shapes, linear_modules, peft_target_modules, resolve_targets
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import to_numpy

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_WEIGHTS",
    "LoraSpec",
    "adapter_state_dict",
    "apply_lora",
    "base_model",
    "load_adapter",
    "lora_modules",
    "fold_adapter",
    "merge_lora",
    "save_adapter",
]


@dataclass(frozen=True)
class LoraSpec:
    """What `apply_lora` put on a model: adapted modules (in-memory paths), fully trained modules, hyper-parameters,
    and PEFT's `target_modules` selecting exactly these modules (names, or a regex)."""

    modules: tuple[str, ...]
    rank: int
    alpha: float
    dropout: float = 0.0
    use_rslora: bool = False
    modules_to_save: tuple[str, ...] = ()
    target_modules: str | list[str] = ""
    base_model_name_or_path: str | None = None


def lora_modules(model_dir: str | Path, family: Any, targets: Sequence[str] | None, where: str = "") -> list[str]:
    """The module paths that `targets` (or the family's default `lora_targets`) select in the checkpoint at
    `model_dir`, from the safetensors headers alone, so a bad target fails before any weight is read. Layers of
    tensors no model holds (the family's `unused_tensors`, e.g. PaddleOCR-VL's SigLIP pooling head) are never
    selected.

    Raises:
        UserError: see `paddlemix.peft.targets.resolve_targets`.
    """
    unused = family.unused_tensors
    shapes = {n: s for n, s in checkpoint_shapes(model_dir).items() if not family.parameter_name(n).startswith(unused)}
    modules = linear_modules(shapes, family.parameter_name)
    targets = family.lora_targets if targets is None else targets  # [] is an error, not the default
    return resolve_targets(list(targets), modules, family.module_groups, where)


def _linear_classes() -> tuple[type, ...]:
    """Layer classes LoRA can adapt: Paddle's Linear and fleet's tensor-parallel Linear layers."""
    import paddle
    from paddle.distributed.fleet.meta_parallel import ColumnParallelLinear, RowParallelLinear

    return paddle.nn.Linear, ColumnParallelLinear, RowParallelLinear


def parallel_kind(layer: Any) -> str | None:
    """How a tensor-parallel Linear is split: "column" (output columns), "row" (input rows), or None for a layer
    every rank holds whole (a plain Linear, or a parallel one at degree 1)."""
    from paddle.distributed.fleet.meta_parallel import ColumnParallelLinear, RowParallelLinear

    if not getattr(layer.weight, "is_distributed", False):
        return None
    if isinstance(layer, ColumnParallelLinear):
        return "column"
    return "row" if isinstance(layer, RowParallelLinear) else None


def _all_linear(model: Any) -> list[str]:
    """The unfused in-memory paths of every Linear of a loaded model (fused layers counted as their parts)."""
    out = []
    for name, layer in model.named_sublayers():
        if not isinstance(layer, (*_linear_classes(), _lora_layer_class())):
            continue
        parent, _, leaf = name.rpartition(".")
        out.extend(f"{parent}.{part}" for part in FUSED_LAYERS.get(leaf, (leaf,)))
    return sorted(out)


def _lora_layer_class() -> type:
    from paddlemix.peft.layers import LoRALinear

    return LoRALinear


def _placements(model: Any, modules: Sequence[str]) -> dict[str, dict[str, str]]:
    """Paddle layer path -> {part name: module path} for each module, found as itself or inside a fused layer."""
    layers = dict(model.named_sublayers())
    placed: dict[str, dict[str, str]] = {}
    for module in modules:
        parent, _, leaf = module.rpartition(".")
        fused = next((f for f, parts in FUSED_LAYERS.items() if leaf in parts and f"{parent}.{f}" in layers), None)
        path = module if module in layers else f"{parent}.{fused}" if fused else None
        if path is None or not isinstance(layers[path], _linear_classes()):
            raise UserError(
                f"LoRA target {module} is not a Linear layer of this model (examples of its layers: "
                f"{', '.join(_all_linear(model)[:4])}); the adapter was made for another model."
            )
        placed.setdefault(path, {})[leaf] = module
    return placed


def check_not_fully_trained(modules: Sequence[str], modules_to_save: Sequence[str]) -> None:
    """A layer is either adapted by LoRA or trained fully (PEFT's modules_to_save), never both.

    Raises:
        UserError: a module lies inside a fully trained one.
    """
    both = sorted(m for m in modules if any(m.startswith(s + ".") for s in modules_to_save))
    if both:
        raise UserError(
            f"LoRA targets {both[:3]} lie inside {sorted(modules_to_save)}, which this run trains fully; drop them "
            'from "lora_target_modules", or set "freeze_projector"/"freeze_vision": true to adapt them with LoRA.'
        )


def apply_lora(
    model: Any,
    modules: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] = (),
    seed: int = 42,
    use_rslora: bool = False,
    base_model_name_or_path: str | None = None,
) -> Any:
    """Put LoRA adapters on `modules` (in-memory paths, e.g. from `lora_modules`) of `model`, in place, and make only
    the adapters and the parameters of `modules_to_save` (module paths such as `model.multi_modal_projector`)
    trainable. Returns `model`, with `model.lora_spec` set.

    Init follows PEFT: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt(5)), B = 0, so a fresh adapter
    changes nothing. A is drawn by paddle's uniform op with an explicit seed derived from `seed` and the
    adapter's position in sorted module order: the same seed and targets give the same adapter on any device,
    without touching the global random state. On a tensor-parallel layer each rank keeps its slice of the same
    adapter (see paddlemix.peft.layers), so any degree starts from the one-process adapter.

    Raises:
        UserError: a module is not in the model, or a module is also inside `modules_to_save` (PEFT cannot hold
            both).
    """
    import paddle

    from paddlemix.peft.layers import LoRALinear

    tp = tensor_parallel.current()
    check_not_fully_trained(modules, modules_to_save)
    config = base_model(model).config
    layers = dict(model.named_sublayers())
    placements = _placements(model, sorted(modules))
    for param in model.parameters():
        param.stop_gradient = True
    draw = 0
    for path, parts in sorted(placements.items()):
        parent_path, _, leaf = path.rpartition(".")
        kind = parallel_kind(layers[path])
        cols = _part_columns(layers[path], leaf, parts, config, kind, tp)
        layer = LoRALinear(layers[path], cols, rank, alpha, dropout, use_rslora, kind)
        layer.part_modules = {p: parts[p] for p in cols}
        in_features = layer.weight.shape[0] * (tp.degree if kind == "row" else 1)
        bound = 1.0 / float(np.sqrt(in_features))
        rows = tensor_parallel.Split(0).indices(in_features, tp.degree, tp.rank) if kind == "row" else None
        for p in layer.parts:
            draw += 1
            a = layer.lora_A[p]
            full = paddle.uniform([in_features, rank], "float32", -bound, bound, seed=_seed(seed, draw))
            a.set_value((full if rows is None else paddle.gather(full, paddle.to_tensor(rows))).astype(a.dtype))
        layers[parent_path]._sub_layers[leaf] = layer
    saved = tuple(sorted(modules_to_save))
    for name, param in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name or any(name.startswith(m + ".") for m in saved):
            param.stop_gradient = False
    peft_name = _family(model).peft_name
    all_linear = [peft_name(m) for m in _all_linear(model)]
    model.lora_spec = LoraSpec(
        tuple(sorted(modules)), rank, alpha, dropout, use_rslora, saved,
        peft_target_modules(sorted(peft_name(m) for m in modules), all_linear), base_model_name_or_path,
    )  # fmt: skip
    logger.info("LoRA r=%d alpha=%s on %d modules, e.g. %s", rank, alpha, len(modules), ", ".join(sorted(modules)[:3]))
    return model


def _part_columns(
    base: Any, leaf: str, parts: dict[str, str], config: Any, kind: str | None, tp: tensor_parallel.TensorParallel
) -> dict[str, np.ndarray]:
    """Output columns of `base` (its local columns on a column-parallel layer) each adapted part owns, in the
    Hugging Face layer's order: {part: int64 array}.

    On a column-parallel layer rank r's columns of part p must be the r-th contiguous block of p's rows in the
    Hugging Face layer (true of every fused layout paddleformers uses), so gathering B by rank gives PEFT's matrix.

    Raises:
        UserError: a fused layout that a rank does not hold in whole blocks.
    """
    local_out = base.weight.shape[1]
    full_out = local_out * (tp.degree if kind == "column" else 1)
    full = fused_columns(leaf, config) if leaf in FUSED_LAYERS else {leaf: np.arange(full_out)}
    order = [p for p in FUSED_LAYERS.get(leaf, (leaf,)) if p in parts]
    if kind != "column":
        return {p: full[p] for p in order}
    held = tensor_parallel.Split(1, tensor_parallel.parts_of(f"{leaf}.weight", TENSOR_PARALLEL_PARTS))
    position = {int(g): j for j, g in enumerate(held.indices(full_out, tp.degree, tp.rank))}
    out = {}
    for p in order:
        mine = [k for k, g in enumerate(full[p]) if int(g) in position]
        block = len(full[p]) // tp.degree
        if mine != list(range(tp.rank * block, (tp.rank + 1) * block)):
            raise UserError(
                f"LoRA on {leaf} cannot be split over {tp.degree} ranks: its {p} columns are not in blocks."
            )
        out[p] = np.asarray([position[int(full[p][k])] for k in mine], dtype="int64")
    return out


def _seed(seed: int, draw: int) -> int:
    """A non-zero int32 op seed for the `draw`-th adapter matrix of a run seeded with `seed` (0 means unseeded)."""
    return (seed * 100_003 + draw) % (2**31 - 1) or 1


def base_model(model: Any) -> Any:
    """The model itself: adapters live inside it (kept for callers written for wrapped LoRA models)."""
    return model


def lora_layers(model: Any) -> dict[str, Any]:
    """Paddle layer path -> LoRALinear, for every adapted layer of `model`."""
    cls = _lora_layer_class()
    return {name: layer for name, layer in model.named_sublayers() if isinstance(layer, cls)}


def _torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    return value.T if is_linear_weight(name, value.shape) else value


def to_peft(model: Any) -> PeftAdapter:
    """The model's adapter in PEFT's terms (torch layout, split per Hugging Face module, under the family's
    `peft_name`s: the names PEFT loads an adapter of this model by)."""
    spec: LoraSpec = model.lora_spec
    tp = tensor_parallel.current()
    peft_name = _family(model).peft_name
    lora_a, lora_b = {}, {}
    for layer in lora_layers(model).values():
        for part, module in layer.part_modules.items():
            lora_a[peft_name(module)] = _whole(layer.lora_A[part], tp).T  # [r, in]
            lora_b[peft_name(module)] = _whole(layer.lora_B[part], tp).T  # [out_part, r]
    saved = {
        peft_name(name): _torch_layout(name, _whole(param, tp, name))
        for name, param in model.named_parameters()
        if any(name.startswith(m + ".") for m in spec.modules_to_save)
    }
    return PeftAdapter(
        lora_a, lora_b, saved, spec.rank, spec.alpha, spec.dropout, spec.use_rslora, spec.target_modules,
        [peft_name(m) for m in spec.modules_to_save], spec.base_model_name_or_path,
    )  # fmt: skip


def _whole(param: Any, tp: tensor_parallel.TensorParallel, name: str = "") -> np.ndarray:
    """A parameter as a numpy array, gathered from every tensor-parallel rank when it is split (collective: all
    ranks of the group call it in the same order)."""
    split = tensor_parallel.split_of(name, param, TENSOR_PARALLEL_PARTS) if tp.enabled else None
    value = to_numpy(param)
    return split.join(tensor_parallel.all_gather(value, tp)) if split else value


def adapter_state_dict(model: Any) -> dict[str, np.ndarray]:
    """The adapter tensors exactly as `save_adapter` writes them (PEFT keys, torch layout)."""
    adapter = to_peft(model)
    out = {PREFIX + m + LORA_A: a for m, a in adapter.lora_A.items()}
    out.update({PREFIX + m + LORA_B: b for m, b in adapter.lora_B.items()})
    out.update({PREFIX + n: v for n, v in adapter.saved.items()})
    return out


def save_adapter(model: Any, folder: str | Path, base_model_name_or_path: str | None = None) -> None:
    """Write the model's adapter into `folder` as adapter_config.json + adapter_model.safetensors (PEFT format)."""
    adapter = to_peft(model)
    if base_model_name_or_path is not None:
        adapter = replace(adapter, base_model_name_or_path=str(base_model_name_or_path))
    write_adapter(adapter, folder)


def _family(model: Any) -> Any:
    """The model's family adapter (by config.json's model_type), or one with the default (identity) name rules."""
    from paddlemix.models import ADAPTERS

    family = ADAPTERS.get(getattr(base_model(model).config, "model_type", None))
    same = lambda name: name  # noqa: E731
    return family if family is not None else SimpleNamespace(parameter_name=same, peft_name=same)


def _renamer(model: Any) -> Callable[[str], str]:
    """The family's checkpoint-name -> parameter-name rule, so adapters saved against older transformers names
    (`model.layers.0...` for Qwen2.5-VL, `language_model.model.layers.0...` for LLaVA) load too."""
    return _family(model).parameter_name


def load_adapter(model: Any, folder: str | Path, trainable: bool = True, modules_to_save: Sequence[str] = ()) -> Any:
    """Apply the PEFT adapter in `folder` (ours or one made by PEFT elsewhere) to `model` and load its weights.

    Every tensor of the file must find its place: LoRA matrices on the named modules (with shapes checked), other
    tensors on parameters of the listed modules_to_save. `modules_to_save` adds fully trained modules (module
    paths) for continued training. Returns `model` (adapters trainable unless `trainable` is False, for inference).

    Raises:
        UserError: the folder is not a PEFT LoRA adapter, or it does not fit this model.
    """
    import paddle

    adapter = read_adapter(folder)
    rename = _renamer(model)

    def module_name(module: str) -> str:
        return rename(module + ".weight")[: -len(".weight")]

    lora_a = {module_name(m): v for m, v in adapter.lora_A.items()}
    lora_b = {module_name(m): v for m, v in adapter.lora_B.items()}
    saved = {rename(n): v for n, v in adapter.saved.items()}
    params = dict(model.named_parameters())
    unknown = sorted(n for n in saved if n not in params)
    if unknown:
        raise UserError(f"adapter {folder} does not fit this model: it holds {unknown[:3]}, which the model lacks.")
    owners = [*adapter.modules_to_save, *(module_name(m) for m in adapter.modules_to_save)]  # either spelling
    to_save = sorted({_owner(n, owners) for n in saved} | set(modules_to_save))
    apply_lora(
        model, sorted(lora_a), adapter.r, adapter.lora_alpha, adapter.lora_dropout, to_save,
        use_rslora=adapter.use_rslora, base_model_name_or_path=adapter.base_model_name_or_path,
    )  # fmt: skip
    tp = tensor_parallel.current()
    for layer in lora_layers(model).values():
        for part, module in layer.part_modules.items():
            for store, value in ((layer.lora_A[part], lora_a[module].T), (layer.lora_B[part], lora_b[module].T)):
                split = tensor_parallel.split_of("", store, {}) if tp.enabled else None
                if split is not None and value.shape[split.axis] == store.shape[split.axis] * tp.degree:
                    value = split.take(value, tp)  # this rank's slice of an adapter saved whole
                if tuple(store.shape) != value.shape:
                    raise UserError(
                        f"adapter {folder}: {module} has LoRA shape {value.T.shape} (torch layout), this model "
                        f"needs {tuple(store.shape[::-1])}; the adapter was made for another model."
                    )
                store.set_value(paddle.to_tensor(np.ascontiguousarray(value)).astype(store.dtype))
    for name, value in saved.items():
        param, value = params[name], _torch_layout(name, value)
        split = tensor_parallel.split_of(name, param, TENSOR_PARALLEL_PARTS) if tp.enabled else None
        value = split.take(value, tp) if split is not None else value
        param.set_value(paddle.to_tensor(np.ascontiguousarray(value)).astype(param.dtype))
    if not trainable:
        for param in model.parameters():
            param.stop_gradient = True
    logger.info("loaded adapter %s: %d LoRA modules, %d fully trained tensors", folder, len(lora_a), len(saved))
    return model


def _owner(name: str, modules_to_save: Sequence[str]) -> str:
    """The module a fully trained tensor belongs to: its shortest enclosing module whose path is, or ends with "."
    plus, an entry of the config's `modules_to_save` (PEFT's rule); else the tensor's own module."""
    parts = name.split(".")
    for end in range(1, len(parts)):
        path = ".".join(parts[:end])
        if any(path == m or path.endswith("." + m) for m in modules_to_save):
            return path
    return name.rpartition(".")[0]


def fold_adapter(model: Any) -> Any:
    """Fold every adapter into its Linear weight (W + scaling * scatter(A @ B)) and put the plain Linear layers back,
    in place; the result has exactly the base model's parameter names. Returns `model`."""
    import paddle

    layers = dict(model.named_sublayers())
    for path, layer in lora_layers(model).items():
        parent_path, _, leaf = path.rpartition(".")
        in_features, out_features = layer.weight.shape
        plain = paddle.nn.Linear(in_features, out_features, bias_attr=layer.bias is not None)
        with paddle.no_grad():
            merged = layer.weight.astype("float32") + layer.delta_weight().astype("float32")
            layer.weight.set_value(merged.astype(layer.weight.dtype))
        plain.weight = layer.weight
        if layer.bias is not None:
            plain.bias = layer.bias
        layers[parent_path]._sub_layers[leaf] = plain
    if hasattr(model, "lora_spec"):
        del model.lora_spec
    return model
