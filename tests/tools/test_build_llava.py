"""paddlemix/tools/build_llava.py run as a user would: the files it writes, what it logs, and how it fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from paddlemix.models.llava.build import build_llava

OUTPUT_FILES = {
    "config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json",
    "processor_config.json", "chat_template.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.json", "merges.txt",
}  # fmt: skip


def test_cli_builds_the_same_folder_as_the_function(run_tool, tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path) -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "template.jinja").write_text(template)
    args = ["--vision_model", str(tiny_clip_dir), "--language_model", str(tiny_qwen2_lm_dir), "--output_dir", "llava",
            "--vision_feature_select_strategy", "full", "--vision_feature_layer", "-1", "--seed", "3",
            "--chat_template", "template.jinja"]  # fmt: skip
    proc = run_tool("build_llava.py", *args, cwd=tmp_path)
    out = tmp_path / "llava"
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    config = json.loads((out / "config.json").read_text())
    index = config["image_token_index"]
    logs = proc.stderr
    assert f"tokenizer: {index} -> {index + 1} tokens" in logs
    assert f"vocab_size (embedding rows): 576 -> {config['text_config']['vocab_size']}" in logs
    assert f"image_token_index {index} (<image>); pad token <|endoftext|>" in logs
    assert "visual tokens per image: 17 (full strategy)" in logs
    assert f"LLaVA model written to {Path('llava')}" in proc.stdout
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-1, "full")
    assert json.loads((out / "chat_template.json").read_text())["chat_template"] == template
    expected = build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path / "direct", vision_feature_layer=-1,
                           vision_feature_select_strategy="full", chat_template=template, seed=3)  # fmt: skip
    ours, direct = load_file(str(out / "model.safetensors")), load_file(str(expected / "model.safetensors"))
    assert set(ours) == set(direct)
    counts = [sum(v.size for k, v in direct.items() if k.startswith(p)) for p in ("vision_", "multi_", "language_")]
    assert "parameters: vision {}, projector {}, language model {}, total {}".format(*counts, sum(counts)) in logs
    for name, value in direct.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_cli_errors_are_one_paragraph_with_exit_code_2(run_tool, tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = ["--vision_model", str(tiny_qwen2_lm_dir), "--language_model", str(tiny_qwen2_lm_dir)]
    proc = run_tool("build_llava.py", *args, "--output_dir", "new", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f'{tiny_qwen2_lm_dir / "config.json"}: model_type "qwen2" cannot be the vision_model' in proc.stderr
    args = ["--vision_model", str(tiny_clip_dir), "--language_model", str(tiny_qwen2_lm_dir), "--output_dir", "out"]
    proc = run_tool("build_llava.py", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "error: output folder out exists and is not empty" in proc.stderr
    proc = run_tool("build_llava.py", *args[:4], "--output_dir", "x", "--chat_template", "none.json", cwd=tmp_path,
                    check=False)  # fmt: skip
    assert proc.returncode == 2 and "chat template none.json does not exist" in proc.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "x").exists()
