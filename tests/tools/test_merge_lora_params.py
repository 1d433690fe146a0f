"""merge_lora_params.py as users run it: only --lora_path, progress lines, and bounded memory on a sharded model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

from paddlemix.models import ADAPTERS
from paddlemix.peft.merge import INDEX
from paddlemix.testing.peft_adapter import write_peft_adapter

CANONICAL = ADAPTERS["qwen2_5_vl"].parameter_name


def test_only_lora_path_finds_the_base_and_prints_progress(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    adapter = tmp_path / "run"
    write_peft_adapter(adapter, tiny_model_dir, CANONICAL, ("q_proj", "v_proj"))
    proc = run_tool("merge_lora_params.py", "--lora_path", "run", "--max_shard_size", "300000", cwd=tmp_path)
    out = tmp_path / "run-merged"
    shards = json.loads((out / INDEX).read_text())["weight_map"].values()
    count = len(set(shards))
    assert count >= 3
    assert f"shard {count}/{count}" in proc.stdout and f"merged model written to {Path('run-merged')}" in proc.stdout
    assert "merging 4 LoRA modules and 0 fully trained tensors" in proc.stdout


def test_base_from_run_args_when_the_adapter_names_a_hub_id(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    adapter = tmp_path / "run"
    write_peft_adapter(adapter, tiny_model_dir, CANONICAL, ("down_proj",))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "Qwen/Qwen2.5-VL"}))
    proc = run_tool("merge_lora_params.py", "--lora_path", "run", "--merge_model_path", "m", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "'Qwen/Qwen2.5-VL'" in proc.stderr and "--model_name_or_path" in proc.stderr
    (adapter / "run_args.json").write_text(json.dumps({"model_name_or_path": str(tiny_model_dir)}))
    run_tool("merge_lora_params.py", "--lora_path", "run", "--merge_model_path", "m", cwd=tmp_path)
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == set(
        load_file(str(tiny_model_dir / "model.safetensors"))
    )


# Peak RSS of this process image: VmHWM, the value ru_maxrss reports, but without the parent's RSS that Linux's
# ru_maxrss carries across fork + exec (it would report the pytest process's size).
RSS_SCRIPT = """
import sys
import paddlemix.models, paddlemix.peft.merge  # what a merge imports, also in the baseline run
from paddlemix.tools.merge_lora_params import main
if sys.argv[1] == "merge":
    main(sys.argv[2:])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("paddle imported:", "paddle" in sys.modules)
print("maxrss_kib", status["VmHWM"].split()[0])
"""


def peak_rss(*args: str) -> int:
    """Peak resident memory (bytes) of a fresh interpreter that runs the tool's main with `args` (Linux); the merge
    of a PEFT adapter must not import Paddle."""
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "paddle imported: False" in proc.stdout
    return int(proc.stdout.split("maxrss_kib")[-1]) * 1024


def test_peak_memory_is_bounded_by_one_shard_plus_the_adapter(tmp_path: Path) -> None:
    """8 shards x 4 bf16 tensors of [2048, 4096] (512 MiB); LoRA on half of the tensors."""
    base = tmp_path / "base"
    base.mkdir()
    rng = np.random.default_rng(0)
    block = rng.normal(0, 0.02, (2048, 4096)).astype(np.float32)
    weight_map = {}
    for shard in range(8):
        file = f"model-{shard + 1:05d}-of-00008.safetensors"
        names = [f"model.layers.{4 * shard + i}.mlp.{'down' if i % 2 else 'up'}_proj.weight" for i in range(4)]
        save_file({n: (block + 0.001 * k).astype(ml_dtypes.bfloat16) for k, n in enumerate(names)}, str(base / file))
        weight_map.update(dict.fromkeys(names, file))
    (base / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "torch_dtype": "bfloat16"}))
    write_peft_adapter(tmp_path / "adapter", base, CANONICAL, ("down_proj",), rank=16)

    baseline = peak_rss("import-only")
    peak = peak_rss("merge", "--lora_path", str(tmp_path / "adapter"), "--model_name_or_path", str(base),
                    "--merge_model_path", str(tmp_path / "merged"), "--max_shard_size", "200MB")  # fmt: skip
    largest_shard = max(p.stat().st_size for p in base.glob("*.safetensors"))
    adapter_size = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    model_size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    print(
        f"peak RSS {peak / 2**20:.0f} MiB, interpreter {baseline / 2**20:.0f} MiB, model {model_size / 2**20:.0f} MiB"
    )
    assert peak <= largest_shard + adapter_size + 2**30
    # Streaming: the merge itself adds less than one input shard, so loading the model (or a shard as float32) fails.
    assert peak - baseline <= largest_shard + adapter_size
    assert len(json.loads((tmp_path / "merged" / INDEX).read_text())["weight_map"]) == 32


def test_lora_path_that_is_missing_or_a_model_folder_says_so(tiny_model_dir: Path, tmp_path: Path, run_tool) -> None:
    missing = run_tool("merge_lora_params.py", "--lora_path", "runs/nonexist", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "--lora_path runs/nonexist does not exist" in missing.stderr
    model = run_tool("merge_lora_params.py", "--lora_path", str(tiny_model_dir), cwd=tmp_path, check=False)
    assert model.returncode == 2 and "holds no PEFT adapter (adapter_config.json is missing" in model.stderr
    assert "config.json" in model.stderr and "looks like a model folder" in model.stderr


def test_adapter_of_another_model_type_stops_and_same_type_warns(
    tiny_model_dir: Path, tiny_llava_dir: Path, tmp_path: Path, run_tool
) -> None:
    write_peft_adapter(tmp_path / "run", tiny_model_dir, CANONICAL, ("q_proj", "v_proj"))
    args = ["--lora_path", "run", "--merge_model_path", "m"]
    other = run_tool(
        "merge_lora_params.py", *args, "--model_name_or_path", str(tiny_llava_dir), cwd=tmp_path, check=False
    )
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert str(tiny_model_dir) in other.stderr and str(tiny_llava_dir) in other.stderr
    assert "model_type 'qwen2_5_vl' vs 'llava'" in other.stderr and not (tmp_path / "m").exists()
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in tiny_model_dir.iterdir():
        (copy / file.name).symlink_to(file)
    same = run_tool("merge_lora_params.py", *args, "--model_name_or_path", "copy", cwd=tmp_path)
    warnings = [line for line in same.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(tiny_model_dir) in warnings[0] and "copy" in warnings[0]
