"""Streaming safetensors loading (paddlemix/models/loading.py) on the three tiny families: sharded and bf16
checkpoints, dtypes, no initialisation pass, untouched and read-only model folders, planted pickles, peak memory."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from paddlemix.auto import AutoConfigMIX, AutoModelMIX, AutoProcessorMIX
from paddlemix.models import adapter_for
from paddlemix.models.adapter import import_object
from paddlemix.models.loading import EMBEDDINGS, build_model, checkpoint_dtype, checkpoint_tensors
from paddlemix.testing.checkpoints import write_sharded
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import copy_side_files
from paddlemix.utils.safetensors_stream import from_float32, to_float32

FAMILIES = {"qwen2_5_vl": "tiny_model_dir", "qwen3_vl": "tiny_qwen3_vl_dir", "llava": "tiny_llava_dir"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=sorted(FAMILIES))
def family_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(FAMILIES[request.param])


def resave(src: Path, dst: Path, code: str, num_shards: int = 3) -> Path:
    """Copy a single-file float32 tiny model as `num_shards` shards of `code` ("F32" or "BF16") with an index; a
    bf16 copy says so in config.json, as released checkpoints do."""
    dst.mkdir(parents=True, exist_ok=True)
    copy_side_files(src, dst)
    weights = load_file(str(src / "model.safetensors"))
    specs = {name: (code if v.dtype == np.float32 else "I64", v.shape) for name, v in weights.items()}
    produce = (lambda n: from_float32(weights[n], "BF16")) if code == "BF16" else weights.__getitem__
    assert len(write_sharded(dst, specs, produce, num_shards)) == num_shards
    if code == "BF16":
        config = json.loads((dst / "config.json").read_text())
        for part in (config, config.get("text_config", {})):
            part.pop("dtype", None)
            part["torch_dtype"] = "bfloat16"
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def params(model) -> dict[str, np.ndarray]:
    """Parameters as numpy; bfloat16 ones as their uint16 bits (what Paddle's `.numpy()` gives)."""
    return {name: value.numpy() for name, value in model.state_dict().items()}


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_sharded_float32_loads_exactly_like_the_single_file(family_dir: Path, tmp_path: Path) -> None:
    reference = params(AutoModelMIX.from_pretrained(family_dir))
    sharded = params(AutoModelMIX.from_pretrained(resave(family_dir, tmp_path / "f32", "F32")))
    assert set(sharded) == set(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(sharded[name], value, err_msg=name)


def test_sharded_bf16_loads_as_the_rounded_float32_model(family_dir: Path, tmp_path: Path) -> None:
    """bf16 shards loaded as float32 widen exactly; kept as bf16 (dtype None, the checkpoint's) they hold the
    same bits as the file. Expected values: the float32 model's parameters rounded by `from_float32`."""
    reference = params(AutoModelMIX.from_pretrained(family_dir))
    folder = resave(family_dir, tmp_path / "bf16", "BF16")
    widened = params(AutoModelMIX.from_pretrained(folder, dtype="float32"))
    kept_model = AutoModelMIX.from_pretrained(folder, dtype=None)
    kept = params(kept_model)
    assert {str(p.dtype) for p in kept_model.parameters()} == {"paddle.bfloat16"}
    for name, value in reference.items():
        if value.dtype != np.float32:
            continue
        rounded = from_float32(value, "BF16")
        np.testing.assert_array_equal(widened[name], to_float32(rounded, "BF16"), err_msg=name)
        np.testing.assert_array_equal(kept[name], rounded, err_msg=name)
    assert not np.array_equal(widened[EMBEDDINGS], reference[EMBEDDINGS])  # the bf16 copy really was rounded


def test_float32_checkpoint_cast_to_bf16_rounds_to_nearest_even(tiny_qwen3_vl_dir: Path) -> None:
    reference = params(AutoModelMIX.from_pretrained(tiny_qwen3_vl_dir))
    cast = params(AutoModelMIX.from_pretrained(tiny_qwen3_vl_dir, dtype="bfloat16"))
    for name, value in reference.items():
        np.testing.assert_array_equal(cast[name], from_float32(value, "BF16"), err_msg=name)


def test_checkpoint_dtype_from_config_else_tensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    tensors = checkpoint_tensors(tiny_model_dir)
    assert checkpoint_dtype({"torch_dtype": "bfloat16"}, tensors) == "bfloat16"
    assert checkpoint_dtype({"text_config": {"dtype": "float16"}}, tensors) == "float16"
    assert checkpoint_dtype({}, tensors) == "float32"
    bf16 = checkpoint_tensors(resave(tiny_model_dir, tmp_path / "bf16", "BF16"))
    assert checkpoint_dtype({}, bf16) == "bfloat16"
    model = AutoModelMIX.from_pretrained(tiny_model_dir, dtype=None)
    assert {str(p.dtype) for p in model.parameters()} == {"paddle.float32"}


def test_model_is_built_without_initialising_any_parameter(family_dir: Path) -> None:
    """The parameters have no storage until the checkpoint fills them: no random-init pass ever runs."""
    adapter = adapter_for(family_dir)
    model = build_model(import_object(adapter.model_class), adapter.load_config(family_dir), "float32")
    params_ = list(model.parameters())
    assert params_ and not any(p._is_initialized() for p in params_)


class PlantedPayload:
    """Unpickling this creates the file `marker` (stands for any code a downloaded folder could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant_pickles(folder: Path, marker: Path) -> None:
    """The file names Paddle's, paddleformers' and PyTorch's loaders look for, each a pickle that runs code."""
    payload = pickle.dumps({"state": PlantedPayload(marker)})
    for name in ("notes.metadata", "flex-ckpt.auto_generated.metadata", "model_state.pdparams", "pytorch_model.bin"):
        (folder / name).write_bytes(payload)


def test_loading_reads_only_and_never_unpickles(family_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(family_dir, folder)
    marker = tmp_path / "code_ran"
    plant_pickles(folder, marker)
    before = folder_digest(folder)
    reference = params(AutoModelMIX.from_pretrained(family_dir))
    loaded = params(AutoModelMIX.from_pretrained(folder))
    AutoProcessorMIX.from_pretrained(folder)
    AutoConfigMIX.from_pretrained(folder)
    assert not marker.exists()
    assert folder_digest(folder) == before
    for name, value in reference.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_pickle_only_weights_load_only_when_allowed(tiny_qwen3_vl_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    copy_side_files(tiny_qwen3_vl_dir, folder)
    paddle.save(load_file(str(tiny_qwen3_vl_dir / "model.safetensors")), str(folder / "model_state.pdparams"))
    with pytest.raises(UserError, match="allow_pickle_weights"):
        AutoModelMIX.from_pretrained(folder)
    reference = params(AutoModelMIX.from_pretrained(tiny_qwen3_vl_dir))
    loaded = params(AutoModelMIX.from_pretrained(folder, allow_pickle=True))
    for name, value in reference.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_weights_that_do_not_fit_are_user_errors(tiny_model_dir: Path, tiny_qwen3_vl_dir: Path, tmp_path: Path):
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_model_dir, wrong)
    shutil.copy(tiny_qwen3_vl_dir / "model.safetensors", wrong / "model.safetensors")
    with pytest.raises(UserError, match="config.json"):
        AutoModelMIX.from_pretrained(wrong)
    sharded = resave(tiny_model_dir, tmp_path / "sharded", "F32")
    (sharded / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(UserError, match="model-00002-of-00003.safetensors"):
        AutoModelMIX.from_pretrained(sharded)


PROBE = """
import sys
from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
for folder in sys.argv[1:]:
    AutoModelMIX.from_pretrained(folder, dtype=None)
    AutoProcessorMIX.from_pretrained(folder)
print("loaded", len(sys.argv) - 1)
"""


def read_only_mount_works(folder: Path) -> bool:
    """Whether this process may make a read-only bind mount in a private mount namespace (`unshare -m`)."""
    if not shutil.which("unshare"):
        return False
    command = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && ! touch {folder}/x"
    return subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True).returncode == 0


def test_read_only_model_folders_load(tiny_model_dir, tiny_qwen3_vl_dir, tiny_llava_dir, tmp_path: Path) -> None:
    """Root ignores file modes, so the folders are mounted read-only (bind mount in a private mount namespace)."""
    folders = [tiny_model_dir, tiny_qwen3_vl_dir, resave(tiny_llava_dir, tmp_path / "llava_bf16", "BF16")]
    if not read_only_mount_works(folders[0]):
        pytest.skip("unshare -m / mount --bind -o ro is not permitted here, and root ignores file modes")
    mounts = " && ".join(f"mount --bind {f} {f} && mount -o remount,ro,bind {f} {f}" for f in folders)
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    command = f"{mounts} && touch {folders[0]}/x 2>/dev/null; exec {sys.executable} {script} " + " ".join(
        map(str, folders)
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "loaded 3" in proc.stdout
    assert not (folders[0] / "x").exists()
    assert "Using download source" not in proc.stderr + proc.stdout


RSS_PROBE = """
import sys
from paddlemix.auto import AutoModelMIX
from paddlemix.utils.memory import peak_resident_bytes, reset_peak, resident_bytes
AutoModelMIX.from_pretrained(sys.argv[1])  # warm-up: imports, kernels, allocator
assert reset_peak()
baseline = resident_bytes()
model = AutoModelMIX.from_pretrained(sys.argv[2], dtype=sys.argv[3])
peak = peak_resident_bytes()
size = sum(int(p.numel()) * p.element_size() for p in model.parameters())
print(baseline, peak, size)
"""


@pytest.fixture(scope="module")
def mid_size_bf16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2.5-VL of ~34 M parameters (6 layers, hidden 768) as 2 bf16 shards."""
    from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl

    folder = tmp_path_factory.mktemp("mid_size")
    built = build_tiny_qwen2_5_vl(
        folder / "f32",
        hidden_size=768,
        num_layers=6,
        num_heads=12,
        num_kv_heads=4,
        intermediate_size=2048,
        vision_hidden=256,
        vision_depth=2,
        vision_heads=4,
    )
    return resave(built, folder / "bf16", "BF16", num_shards=2)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_memory_stays_within_a_quarter_over_the_model(
    tiny_model_dir: Path, mid_size_bf16_dir: Path, tmp_path: Path, dtype: str
) -> None:
    """The model loaded in a fresh process: the resident peak above the warmed-up baseline stays under 1.25x the
    model's bytes (a random-init pass plus a second copy needs 2x)."""
    script = tmp_path / "rss.py"
    script.write_text(RSS_PROBE)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(mid_size_bf16_dir), dtype],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    baseline, peak, size = map(int, proc.stdout.split()[-3:])
    assert size > 60e6 if dtype == "bfloat16" else size > 120e6
    assert peak - baseline <= 1.25 * size, (peak - baseline) / size


def test_bf16_bits_become_paddle_bfloat16_without_rounding() -> None:
    """numpy has no bfloat16: uint16 bits go to a paddle bfloat16 tensor unchanged, and widen exactly."""
    from paddlemix.models.loading import to_paddle

    bits = np.asarray([0x3F80, 0xC020, 0x0001, 0x7F7F, 0x8000, 0x3C01], dtype=np.uint16)
    kept = to_paddle(bits, paddle.bfloat16)
    assert kept.dtype == paddle.bfloat16
    np.testing.assert_array_equal(kept.numpy(), bits)
    np.testing.assert_array_equal(to_paddle(bits, paddle.float32).numpy(), to_float32(bits, "BF16"))
    values = np.asarray([1 + 2**-8, 1 + 3 * 2**-8, -3.0e-3], dtype=np.float32)
    np.testing.assert_array_equal(to_paddle(values, paddle.bfloat16).numpy(), from_float32(values, "BF16"))


def test_generation_config_is_read_from_the_folder(tiny_qwen3_vl_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen3_vl_dir, folder)
    expected = {"bos_token_id": 3, "pad_token_id": 4, "eos_token_id": [5, 6], "do_sample": False, "max_new_tokens": 7}
    (folder / "generation_config.json").write_text(json.dumps(expected))
    generation = AutoModelMIX.from_pretrained(folder).generation_config
    assert generation.eos_token_id == [5, 6] and generation.pad_token_id == 4 and generation.max_new_tokens == 7
