"""What benchmarks/step_profile.py and benchmarks/vs_torch.py share: the two model sizes, their packed batches and
the LoRA training step of this toolkit, phase by phase.

Sizes (random weights written by code, Hugging Face layout, float32):
  tiny  the demo's Qwen2.5-VL (paddlemix.testing.tiny_model.DEMO_SIZE, a 576-word vocabulary); 4 rows x 256 tokens
  cut   Qwen2.5-VL-3B's widths (hidden 2048, MLP 11008, 16 heads / 2 KV heads, vision 1280 wide with MLP 3420,
        151,936-word tied vocabulary) with 2 language layers and 2 vision blocks; 1 row x 1,024 tokens
Rows are MIXToken packs of synthetic chats (a third with one image) made by the toolkit's own encoder and packer.
The step is the trainer's: forward to the last hidden states, the language-model loss (chunked above the vocabulary
threshold of `paddlemix.trainer.chunked_loss`), backward, AdamW (lr 1e-4, no weight decay); LoRA r 8, alpha 16 on
every language-model projection, B drawn at random so every path carries gradient.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The package of this checkout, not another installed copy (a script's folder comes first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Bench batches per size: rows per step, tokens per row, samples drawn to fill them.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"rows": 4, "max_length": 256, "samples": 160},
    "cut": {"rows": 1, "max_length": 1024, "samples": 60},
}
CUT_VOCAB = 151936
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK, LORA_ALPHA, LEARNING_RATE = 8, 16.0, 1e-4
WORDS = "the a red blue green circle square triangle is on left right of and small large image shape colour".split()


def one_thread() -> None:
    """One compute thread for every math library (call before importing paddle or torch)."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = "1"


def build_folder(size: str, folder: Path) -> Path:
    """Write the model folder of `size` into `folder` (reused when it already holds one)."""
    if (folder / "model.safetensors").is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")  # renamed when complete, so a reused folder is whole
    shutil.rmtree(partial, ignore_errors=True)
    _write_folder(size, partial)
    partial.rename(folder)
    return folder


def _write_folder(size: str, folder: Path) -> None:
    from safetensors.numpy import save_file

    from paddlemix.testing.tiny_model import DEMO_SIZE, _random_weights, _weight_shapes, build_tiny_qwen2_5_vl

    if size == "tiny":
        build_tiny_qwen2_5_vl(folder, **DEMO_SIZE)
        return
    widths = {"hidden_size": 64, "num_layers": 2, "num_heads": 16, "num_kv_heads": 2, "intermediate_size": 64,
              "vision_hidden": 32, "vision_depth": 2, "vision_heads": 16}  # fmt: skip
    build_tiny_qwen2_5_vl(folder, **widths)  # tokenizer and processor files; config and weights replaced below
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=2048, intermediate_size=11008, vocab_size=CUT_VOCAB, tie_word_embeddings=True)
    config["rope_scaling"]["mrope_section"] = [16, 24, 24]
    config["vision_config"].update(hidden_size=1280, intermediate_size=3420, out_hidden_size=2048)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    save_file(_random_weights(_weight_shapes(config), 0), str(folder / "model.safetensors"), {"format": "pt"})


def make_packs(folder: Path, size: str, seed: int = 0) -> list[list[dict[str, np.ndarray]]]:
    """The packs of each step of `size` (lists of `rows` packs), from synthetic chats of long-tailed lengths."""
    from paddlemix.auto import AutoConfigMIX, AutoProcessorMIX
    from paddlemix.datasets.conversation import Message, Sample, SampleError
    from paddlemix.datasets.packing import BestFitPacker, build_pack
    from paddlemix.models import adapter_for
    from paddlemix.processors.chat_template import template_for
    from paddlemix.testing.shapes import make_shapes_dataset

    spec = SIZES[size]
    rng = np.random.default_rng(seed)
    files = make_shapes_dataset(folder / "shapes", n_train=16, n_eval=1)
    images = sorted(str(p) for p in (files["train"].parent / "images").glob("train_*.png"))
    processor = AutoProcessorMIX.from_pretrained(folder)
    adapter = adapter_for(folder)
    encoder, template = adapter.sample_processor(processor, spec["max_length"]), template_for(processor)
    positions = adapter.position_fn(AutoConfigMIX.from_pretrained(folder))
    encoded = []
    for i in range(spec["samples"]):
        words = int(np.clip(rng.lognormal(3.6, 0.8), 4, 300))
        answer = " ".join(rng.choice(WORDS, size=max(words // 3, 1)))
        question = " ".join(rng.choice(WORDS, size=words))
        image = (images[i % len(images)],) if i % 3 == 0 else ()
        user = ("<image>" if image else "") + question
        try:
            encoded.append(encoder(Sample((Message("user", user), Message("assistant", answer)), image), template))
        except SampleError:
            pass
    plans = BestFitPacker(spec["max_length"], 1000).pack(enumerate(len(e["input_ids"]) for e in encoded))
    packs = [build_pack([encoded[i] for i in plan], positions) for plan in plans]
    return [packs[i : i + spec["rows"]] for i in range(0, len(packs) - spec["rows"] + 1, spec["rows"])]


def lora_model(folder: Path, seed: int = 0) -> Any:
    """The folder's model with LoRA on every language-model projection; B set to seeded N(0, 0.01) values."""
    import paddle

    from paddlemix.auto import AutoModelMIX
    from paddlemix.models import adapter_for
    from paddlemix.peft.lora import apply_lora, lora_layers, lora_modules

    model = AutoModelMIX.from_pretrained(folder)
    modules = lora_modules(folder, adapter_for(folder), LORA_TARGETS)
    apply_lora(model, modules, LORA_RANK, LORA_ALPHA, seed=seed, base_model_name_or_path=str(folder))
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        for part in layer.parts:
            b = layer.lora_B[part]
            b.set_value(paddle.to_tensor(rng.normal(0, 0.01, b.shape).astype("float32")))
    model.train()
    return model


@dataclass
class PaddleStep:
    """The toolkit's LoRA training step on one model, timed phase by phase (seconds, wall clock; CPU work is
    synchronous, so no device sync is needed)."""

    model: Any
    pad_token_id: int
    loss_fn: Callable[..., Any]

    def __post_init__(self) -> None:
        import paddle

        from paddlemix.datasets.collator import Collator

        params = [p for p in self.model.parameters() if not p.stop_gradient]
        self.optimizer = paddle.optimizer.AdamW(LEARNING_RATE, parameters=params, weight_decay=0.0)
        self.collator = Collator(self.pad_token_id)

    def run(self, packs: list[dict[str, np.ndarray]], times: dict[str, float] | None = None) -> float:
        """One optimizer step on `packs`; adds each phase's seconds to `times`; returns the loss."""
        import paddle

        from paddlemix.datasets.collator import BATCH_META, LABEL_TOKENS, to_tensors
        from paddlemix.trainer.chunked_loss import _Identity

        times = times if times is not None else {}
        clock = _Clock(times)
        batch = self.collator(packs)
        labelled = float(batch[LABEL_TOKENS])
        inputs = to_tensors({k: v for k, v in batch.items() if k not in BATCH_META})
        clock.lap("collate")
        head = self.model.lm_head
        self.model.lm_head = _Identity()
        try:
            hidden = self.model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
        finally:
            self.model.lm_head = head
        clock.lap("forward")
        detached = hidden.detach()
        detached.stop_gradient = False
        loss = self.loss_fn(head, detached, inputs["labels"]) / labelled
        loss.backward()
        value = float(loss)
        clock.lap("loss")
        paddle.autograd.backward([hidden], [detached.grad])
        clock.lap("backward")
        self.optimizer.step()
        self.optimizer.clear_grad()
        clock.lap("optimizer")
        return value


class _Clock:
    def __init__(self, times: dict[str, float]):
        self.times, self.last = times, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.last
        self.last = now


def paddle_step(folder: Path) -> PaddleStep:
    """The toolkit's step on the LoRA model of `folder`, with the loss the trainer picks for its vocabulary."""
    from paddlemix.auto import AutoProcessorMIX
    from paddlemix.trainer import chunked_loss

    model = lora_model(folder)
    pad = AutoProcessorMIX.from_pretrained(folder).tokenizer.pad_token_id
    chunk = 256 if chunked_loss.uses_chunked_loss(chunked_loss.vocab_size(model.config), 256) else 0  # the trainer's
    return PaddleStep(model, pad, lambda head, h, labels: chunked_loss.chunked_lm_loss(head, h, labels, chunk, "sum"))


def count_tokens(packs: list[dict[str, np.ndarray]]) -> int:
    return sum(len(p["input_ids"]) for p in packs)


def save_batches(steps: list[list[dict[str, np.ndarray]]], pad_token_id: int, path: Path) -> None:
    """The collated batches of `steps` as one .npz (keys `<step>/<name>`), for the PyTorch side."""
    from paddlemix.datasets.collator import Collator

    collator, arrays = Collator(pad_token_id), {}
    for i, packs in enumerate(steps):
        batch = collator(packs)
        for key in ("input_ids", "labels", "position_ids", "attn_mask_startend_row_indices", "pixel_values",
                    "image_grid_thw"):  # fmt: skip
            if key in batch:
                arrays[f"{i}/{key}"] = batch[key]
    np.savez(path, **arrays)


def micro_benchmark_paddle(steps: int = 30, width: int = 128, rows: int = 64) -> float:
    """Median seconds of one step of 8 x (Linear + SiLU) + AdamW (forward, mean, backward, update) in Paddle."""
    import paddle

    paddle.seed(0)
    layers = [m for _ in range(8) for m in (paddle.nn.Linear(width, width), paddle.nn.Silu())]
    net = paddle.nn.Sequential(*layers)
    opt = paddle.optimizer.AdamW(1e-3, parameters=net.parameters(), weight_decay=0.0)
    x = paddle.randn([rows, width])
    out = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        net(x).mean().backward()
        opt.step()
        opt.clear_grad()
        out.append(time.perf_counter() - start)
    return float(np.median(out[3:]))
