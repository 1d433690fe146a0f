"""A LoRA run whose first source brings PaddleMIX's chat_template.json: the adapter folder, its checkpoints and the
merged model all carry that template (converted to Jinja) where transformers and our inference read it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from paddlemix.auto import AutoProcessorMIX
from paddlemix.datasets.conversation import Message
from paddlemix.processors.chat_template import PaddleMixChatTemplate, paddlemix_to_jinja, template_for
from paddlemix.processors.template_files import read_folder_template

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "tiny" / "lora_sft_argument.json"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
SPEC = {
    "system": "<|im_start|>system\nYou answer about shapes.<|im_end|>\n",
    "conversation": ["<|im_start|>user\n{{user}}<|im_end|>\n<|im_start|>assistant\n", "{{bot}}<|im_end|>\n"],
    "query": "<|im_start|>user\n{{query}}<|im_end|>\n<|im_start|>assistant\n",
}


def test_every_output_carries_the_trained_template(workspace: Path, run_tool) -> None:
    (workspace / "paddlemix_template.json").write_text(json.dumps(SPEC))
    args = json.loads(CONFIG.read_text())
    train = {"name": "chatml_dataset", "data_files": "shapes/train.jsonl"}
    args["dataset"] = {"train": [{**train, "chat_template": "paddlemix_template.json"}, train]}
    args.update(do_eval=False, max_steps=2, save_steps=1, output_dir="out")
    args.pop("evaluation_strategy"), args.pop("eval_steps")
    (workspace / "args.json").write_text(json.dumps(args))
    log = run_tool("supervised_finetune.py", "args.json", cwd=workspace).stderr
    assert log.count("different chat templates") == 1

    trained = paddlemix_to_jinja(SPEC, QWEN_IMAGE)
    out = workspace / "out"
    assert (out / "chat_template.jinja").read_text() == trained
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == trained
    assert json.loads((out / "chat_template.json").read_text())["chat_template"] == trained
    assert (out / "checkpoint-2" / "chat_template.jinja").read_text() == trained
    records = json.loads((out / "run_args.json").read_text())["chat_templates"]
    assert [r["chat_template"] for r in records] == ["paddlemix_template.json", None]
    assert records[0]["jinja"] == trained and records[1]["jinja"] == read_folder_template(
        workspace / "tiny_qwen2_5_vl"
    )

    run_tool("merge_lora_params.py", "--lora_path", "out", "--merge_model_path", "merged", cwd=workspace)
    assert read_folder_template(workspace / "merged") == trained
    # our inference renders the training format from the merged folder alone
    messages = (Message("user", QWEN_IMAGE + "What color is the circle?"),)
    template = template_for(AutoProcessorMIX.from_pretrained(workspace / "merged"))
    assert template.prompt(messages) == PaddleMixChatTemplate(SPEC).prompt(messages)

    ref_python = os.environ.get("PADDLEMIX_REF_PYTHON")
    if ref_python:  # transformers' processor and tokenizer on the merged folder render the training format too
        full = (*messages, Message("assistant", "red"))
        hf = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]  # fmt: skip
        case = {"folder": str(workspace / "merged"), "messages": hf, "add_generation_prompt": False, "mask": False}
        (workspace / "request.json").write_text(json.dumps([case]))
        script = Path(__file__).resolve().parents[1] / "parity" / "hf_chat_template.py"
        proc = subprocess.run([ref_python, str(script), "request.json", "hf.json"], cwd=workspace, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        expected = "".join(text for text, _ in PaddleMixChatTemplate(SPEC).segments(full))
        assert json.loads((workspace / "hf.json").read_text()) == [
            {"processor": expected, "tokenizer": expected, "assistant_text": None, "ids": None}]  # fmt: skip

    (workspace / "other.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    infer = ("infer.py", "--model_name_or_path", "merged", "--question", "Hi?", "--max_new_tokens", "1")
    assert "differs from the chat template" in run_tool(*infer, "--chat_template", "other.jinja", cwd=workspace).stderr
    same = run_tool(*infer, "--chat_template", "paddlemix_template.json", cwd=workspace).stderr
    assert "differs from the chat template" not in same
    # base model + adapter: the prompt follows the adapter's (trained) template, not the base model's
    with_adapter = ("infer.py", "--model_name_or_path", "tiny_qwen2_5_vl", "--lora_path", "out", "--question", "Hi?",
                    "--max_new_tokens", "1")  # fmt: skip
    assert f"chat template: {Path('out') / 'chat_template.jinja'}" in run_tool(*with_adapter, cwd=workspace).stderr
