"""Qwen3-VL: the family checks on the tiny folder, plus what only Qwen3-VL has (DeepStack, its names, its template)."""

from __future__ import annotations

from pathlib import Path

import pytest
from family_checks import FamilyChecks

from paddlemix.datasets.conversation import Message
from paddlemix.models import adapter_for
from paddlemix.peft.freeze import matches
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.tiny_qwen3_vl import build_tiny_qwen3_vl
from paddlemix.utils.io import load_safetensors


class TestQwen3VL(FamilyChecks):
    @pytest.fixture(scope="class")
    def model_dir(self, tiny_qwen3_vl_dir: Path) -> Path:
        return tiny_qwen3_vl_dir

    def test_checkpoint_uses_hf_4_57_names(self, model_dir: Path) -> None:
        names = set(load_safetensors(model_dir / "model.safetensors"))
        assert {n.split(".")[0] for n in names} == {"model", "lm_head"}
        assert {n.split(".")[1] for n in names if n.startswith("model.")} == {"visual", "language_model"}
        assert "model.visual.deepstack_merger_list.1.linear_fc2.weight" in names

    def test_deepstack_mergers_are_projector(self, model, model_dir: Path) -> None:
        """LLaVA-style "freeze vision, train projector" must keep every merger trainable."""
        groups = adapter_for(model_dir).module_groups
        mergers = [n for n, _ in model.named_parameters() if "merger" in n]
        assert len(mergers) == 18  # the merger and two DeepStack mergers: norm, fc1, fc2 (weight and bias)
        assert all(matches(n, groups["projector"]) for n in mergers)

    def test_lora_targets_match_language_model_layers(self, model, model_dir: Path) -> None:
        from paddlemix.peft.lora import lora_modules

        modules = lora_modules(model_dir, adapter_for(model_dir), None)
        assert len(modules) == 7 * model.config.text_config.num_hidden_layers  # q, k, v, o, gate, up, down
        assert all(m.startswith("model.language_model.layers.") for m in modules)

    def test_chat_template_has_no_default_system_turn(self, processor) -> None:
        segments = template_for(processor).segments([Message("user", "hi"), Message("assistant", "hello")])
        assert segments == [
            ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False),
            ("hello<|im_end|>", True),
            ("\n", False),
        ]


class TestQwen3VLTiedEmbeddings(FamilyChecks):
    """Qwen3-VL 2B and 4B tie the head to the embeddings: their checkpoints have no lm_head.weight."""

    @pytest.fixture(scope="class")
    def model_dir(self, tmp_path_factory) -> Path:
        return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl_tied"), tie_word_embeddings=True)

    def test_head_is_the_embedding_table(self, model, model_dir: Path) -> None:
        assert "lm_head.weight" not in load_safetensors(model_dir / "model.safetensors")
        state = model.state_dict()
        embed = state["model.language_model.embed_tokens.weight"]
        assert (state["lm_head.weight"] == embed).all()
