"""PaddleMIX argument files load with only their paths changed; every problem of a file comes in one message.

The recipes below are written in the key style of the argument files PaddleMIX ships for its fine-tuning tool
(paddlemix/config/{llava,qwen_vl,internvl2,internlm_xcomposer2,blip2,visualglm}/*.json): together they hold every key
those files use (`recompute` aside: translated with the recompute settings, tested there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix import arguments
from paddlemix.utils.errors import UserError, closest

COMMON = {
    "overwrite_output_dir": True, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1, "eval_accumulation_steps": 16, "num_train_epochs": 1, "logging_steps": 1,
    "save_steps": 100, "evaluation_strategy": "epoch", "save_strategy": "epoch", "max_length": 2048,
    "fp16_opt_level": "O1", "do_train": True, "do_eval": False, "disable_tqdm": True, "save_total_limit": 1,
}  # fmt: skip
LLAVA_LORA = {
    "mixtoken": False, "learning_rate": 2e-4, "mm_projector_lr": 2e-5, "weight_decay": 0.0, "warmup_ratio": 0.03,
    "lr_scheduler_type": "cosine", "bf16": False, "load_best_model_at_end": False, "eval_with_do_generation": False,
    "skip_memory_metrics": False, "benchmark": False, "lora": True, "lora_rank": 8, "lora_alpha": 16,
    "lora_dropout": 0.0, "lora_target_modules": ["llama.layer.*q_proj.*", "llama.layer.*v_proj.*"],
}  # fmt: skip
RECIPES = {
    "llava_pretrain": {"freeze_include": ["*llama*", "*lm_head*"], "freeze_exclude": ["*llama.mm_projector*"],
                       "mixtoken": False, "group_by_modality_length": False, "learning_rate": 1e-3,
                       "warmup_ratio": 0.03, "lr_scheduler_type": "cosine", "fp16": False, "eval_steps": 120,
                       "evaluation_strategy": "no", "version": "plain"},
    "llava_sft": {"mixtoken": False, "group_by_modality_length": False, "learning_rate": 2e-5, "fp16": False},
    "llava_lora": LLAVA_LORA,
    "llava_lora_sharded": {**LLAVA_LORA, "sharding": "stage2", "tensor_parallel_degree": 1,
                           "sharding_parallel_degree": 1},
    "qwen_vl_sft": {"freeze_include": ["*visual*"], "freeze_exclude": ["*visual.attn_pool*"], "mixtoken": True,
                    "num_train_epochs": 10, "learning_rate": 1e-5, "weight_decay": 0.1, "adam_beta2": 0.95,
                    "warmup_ratio": 0.01, "lr_scheduler_type": "cosine", "bf16": True,
                    "load_best_model_at_end": False, "eval_with_do_generation": False, "pipeline_parallel_degree": 1},
    "internvl2_sft": {"use_flash_attention": False, "mixtoken": False, "bf16": True, "fp16_opt_level": "O2",
                      "learning_rate": 1e-5},
    "xcomposer2_sft": {"freeze_exclude": ["*vit*"], "bf16": True, "learning_rate": 1e-5},
    "blip2_sft": {"text_model_name_or_path": "facebook/opt-2.7b", "eta_min": 1e-5, "warmup_start_lr": 1e-6,
                  "lr_scheduler_name": "CosineDecayWithWarmup", "fp16": True, "do_predict": False,
                  "evaluation_strategy": "steps", "save_strategy": "steps", "save_steps": 10,
                  "load_best_model_at_end": True, "eval_with_do_generation": False},
    "visualglm_sft": {"freeze_include": ["*vision_model*"], "mixtoken": True, "num_train_epochs": 2,
                      "warmup_steps": 30, "src_length": 1024, "fp16": True, "fp16_opt_level": "O2"},
}  # fmt: skip
# The keys of PaddleMIX's tool dataclasses that its shipped files leave at their defaults, with those defaults.
DATACLASS_DEFAULTS = {
    "task_name": None, "lazy": False, "save_generation_output": False, "splits": None, "chat_template": None,
    "top_k": 1, "top_p": 1.0, "prefix_tuning": False, "num_prefix_tokens": 128, "from_aistudio": False,
    "save_to_aistudio": False, "aistudio_repo_id": None, "aistudio_repo_private": True,
    "aistudio_repo_license": "Apache License 2.0", "aistudio_token": None, "neftune": False,
    "neftune_noise_alpha": 5.0, "profiler_options": None, "use_flash_attention": False,
}  # fmt: skip


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"num_attention_heads": 4}}))
    return folder


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.json"
    path.write_text('[{"image": "a.png", "conversations": [["<image>q", "a"]]}]')
    return path


def recipe(tmp_path: Path, model_dir: Path, data: Path, keys: dict, split_key: str = "data_files") -> Path:
    """A PaddleMIX-style argument file with local paths."""
    sources = [{"name": "chatml_dataset", split_key: str(data)}]
    raw = {"model_name_or_path": str(model_dir), "dataset": {"train": sources, "eval": sources},
           "output_dir": str(tmp_path / "out"), **COMMON, **keys}  # fmt: skip
    path = tmp_path / "args.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_paddlemix_recipe_loads_with_paths_changed(tmp_path, model_dir, data, name) -> None:
    args = arguments.load(recipe(tmp_path, model_dir, data, RECIPES[name]))
    keys = RECIPES[name]
    assert args.data.packing is keys.get("mixtoken", False)
    assert args.runtime.eval_generation is keys.get("eval_with_do_generation", False)
    for key in ("group_by_modality_length", "version", "src_length", "eta_min", "lr_scheduler_name"):
        if key in keys:
            assert any(n.startswith(f"ignored: {key}: ") for n in args.notes), args.notes
    if keys.get("bf16") or keys.get("fp16"):  # no half-precision training on CPU: float32, said in one line
        assert args.training.bf16 is False and args.training.fp16 is False
        assert sum(n.startswith("precision: float32") for n in args.notes) == 1


def test_every_paddlemix_dataclass_key_is_accepted_at_its_default(tmp_path, model_dir, data) -> None:
    args = arguments.load(recipe(tmp_path, model_dir, data, DATACLASS_DEFAULTS))
    ignored = {n.split(":")[1].strip() for n in args.notes if n.startswith("ignored: ")}
    assert ignored == set(DATACLASS_DEFAULTS) - {"chat_template"}


def test_translated_keys_take_effect(tmp_path, model_dir, data) -> None:
    template = tmp_path / "chat_template.json"
    template.write_text('{"system": "", "conversation": ["{{user}}", "{{bot}}"], "query": "{{query}}"}')
    keys = {"eval_with_do_generation": True, "mixtoken": True, "mm_projector_lr": 2e-5, "chat_template": str(template),
            "tensor_parallel_degree": 1}  # fmt: skip
    args = arguments.load(recipe(tmp_path, model_dir, data, keys))
    assert args.runtime.eval_generation is True and args.data.packing is True
    assert args.model.mm_projector_lr == 2e-5
    assert [s.chat_template for s in args.data.train + args.data.eval] == [str(template)] * 2
    assert "tensor_model_parallel_size" in args.training_keys and "tensor_parallel_degree" not in args.training_keys


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"group_by_modality_length": True}, '"group_by_modality_length" = true: grouping batches'),
        ({"neftune": True}, '"neftune" = true: NEFTune'),
        ({"from_aistudio": True}, "nothing is downloaded here"),
        ({"prefix_tuning": True}, 'use "lora": true'),
    ],
)
def test_settings_that_would_change_training_are_refused(tmp_path, model_dir, data, keys, message) -> None:
    with pytest.raises(UserError, match=message):
        arguments.load(recipe(tmp_path, model_dir, data, keys))


def test_named_dataset_splits_are_refused_with_the_reason(tmp_path, model_dir, data) -> None:
    with pytest.raises(UserError) as err:
        arguments.load(recipe(tmp_path, model_dir, "train", {}, split_key="splits"))
    assert 'downloads its named datasets by split; here every source names its "data_files"' in str(err.value)
    assert '"dataset.train[0]" needs "data_files"' in str(err.value)


def test_all_problems_of_a_file_in_one_message(tmp_path, model_dir, data) -> None:
    keys = {"lora_rnak": 4, "learning_rate": "fast", "fp16_opt_level": "O2", "max_samples": 10, "warmup": 3}
    path = recipe(tmp_path, model_dir, data, {**keys, "bf16": False, "fp16": False})
    with pytest.raises(UserError) as err:
        arguments.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: 5 problems")
    assert 'unknown key "lora_rnak". Did you mean "lora_rank"?' in message
    assert 'key "learning_rate" must be a number' in message
    assert '"fp16_opt_level": "O2" needs' in message
    assert 'unknown key "max_samples".\n' in message + "\n"  # no suggestion of another meaning (max_steps)
    assert 'unknown key "warmup".\n' in message + "\n"


def test_command_line_mistakes_name_the_command_line(tmp_path, model_dir, data) -> None:
    path = recipe(tmp_path, model_dir, data, {})
    with pytest.raises(UserError) as err:
        arguments.load(path, ["--lora_rnak", "4"])
    assert str(err.value) == 'command line: unknown option "--lora_rnak". Did you mean "--lora_rank"?'
    with pytest.raises(UserError) as err:
        arguments.load(path, ["--lora_rank", "four", "--max_steps", "2"])
    assert str(err.value).startswith('command line: key "lora_rank" must be an integer')
    assert str(path) not in str(err.value)


def test_mixtoken_accepts_epochs(tmp_path, model_dir, data) -> None:
    args = arguments.load(recipe(tmp_path, model_dir, data, {"mixtoken": True, "num_train_epochs": 2}))
    assert args.data.packing is True and args.training.max_steps == -1


@pytest.mark.parametrize(
    "typo, suggestion",
    [("lora_rnak", "lora_rank"), ("Learning-Rate", "learning_rate"), ("num_train_epoch", "num_train_epochs"),
     ("max_samples", None), ("mm_projector_lr_", "mm_projector_lr"), ("recomput", None)],
)  # fmt: skip
def test_closest_suggests_only_near_keys(typo, suggestion) -> None:
    hint = closest(typo, arguments.known_keys() - {"recompute"})
    assert hint == (f' Did you mean "{suggestion}"?' if suggestion else "")


# The fields of PaddleNLP's TrainingArguments, which PaddleMIX's tool extends (paddlenlp/trainer/training_args.py).
PADDLENLP_TRAINING_KEYS = """output_dir overwrite_output_dir do_train do_eval do_predict do_export evaluation_strategy
prediction_loss_only per_device_train_batch_size per_device_eval_batch_size gradient_accumulation_steps
eval_accumulation_steps learning_rate weight_decay adam_beta1 adam_beta2 adam_epsilon max_grad_norm num_train_epochs
max_steps lr_scheduler_type warmup_ratio warmup_steps num_cycles lr_end power log_on_each_node logging_dir
logging_strategy logging_first_step logging_steps save_strategy save_steps save_total_limit save_on_each_node no_cuda
seed bf16 fp16 fp16_opt_level amp_master_grad bf16_full_eval fp16_full_eval amp_custom_black_list
amp_custom_white_list sharding sharding_degree sharding_parallel_degree save_sharded_model load_sharded_model
tensor_parallel_degree pipeline_parallel_degree pipeline_parallel_config sharding_parallel_config
hybrid_parallel_topo_order scale_loss minimum_eval_times local_rank dataloader_drop_last eval_steps
max_evaluate_steps dataloader_num_workers past_index run_name device disable_tqdm remove_unused_columns label_names
load_best_model_at_end metric_for_best_model greater_is_better ignore_data_skip optim report_to
resume_from_checkpoint skip_memory_metrics flatten_param_grads lazy_data_processing skip_profile_timer""".split()


def test_every_paddlenlp_training_key_is_known() -> None:
    assert sorted(set(PADDLENLP_TRAINING_KEYS) - arguments.known_keys()) == []


# The keys of PaddleMIX's Qwen2-VL tool (examples/qwen2_vl/qwen2vl_finetune.py) at that tool's defaults, where they
# change nothing here; its recipe passes the others (below) on the command line.
QWEN2_VL_DEFAULTS = {
    "cache_dir": None, "resize_vocab": False,
    "new_special_tokens": None, "use_cache": True, "drop_path_rate": 0.0,
    "max_image_size": 512, "pad2square": False, "conv_style": "qwen2_vl", "use_data_resampling": False,
    "normalize_type": "imagenet", "group_by_length": False, "save_safetensors": True, "sep_parallel_degree": 1,
}  # fmt: skip
QWEN2_VL_RECIPE = {"freeze_vit": True, "max_seq_length": 8192, "image_resolution": 512, "recompute": False,
                   "split_special_tokens": False, "video_resolution": 128, "video_fps": 2.0, "video_maxlen": 64,
                   "sharding": "stage2", "amp_master_grad": True, "bf16": True, "fp16_opt_level": "O2"}  # fmt: skip


def qwen2_vl_recipe(tmp_path: Path, model_dir: Path, data: Path, keys: dict) -> Path:
    path = recipe(tmp_path, model_dir, data, keys)
    raw = json.loads(path.read_text())
    del raw["max_length"]  # the recipe names it max_seq_length
    path.write_text(json.dumps(raw))
    return path


def test_qwen2_vl_recipe_keys_are_translated_or_ignored(tmp_path, model_dir, data) -> None:
    args = arguments.load(qwen2_vl_recipe(tmp_path, model_dir, data, {**QWEN2_VL_RECIPE, **QWEN2_VL_DEFAULTS}))
    assert args.model.freeze_vision is True and args.data.max_length == 8192 and args.data.image_resolution == 512
    assert args.data.split_special_tokens is False  # a key of its own here (default true)
    assert (args.data.video_resolution, args.data.video_fps, args.data.video_maxlen) == (128, 2.0, 64)  # honoured
    assert {"sharding", "amp_master_grad"} <= set(args.training_keys)  # paddleformers' own keys
    ignored = {n.split(":")[1].strip() for n in args.notes if n.startswith("ignored: ")}
    assert ignored == set(QWEN2_VL_DEFAULTS)


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"sep_parallel_degree": 2}, r'"sep_parallel_degree" = 2: sequence \(sep\) parallelism is not available'),
        ({"use_data_resampling": True}, '"use_data_resampling" = true: square-root resampling'),
        ({"drop_path_rate": 0.1}, '"drop_path_rate" = 0.1: stochastic depth'),
        ({"freeze_vit": True, "freeze_vision": False}, '"freeze_vision" and "freeze_vit" both set freeze_vision'),
        ({"image_resolution": 20}, '"image_resolution" must be at least 28'),
    ],
)
def test_qwen2_vl_settings_that_cannot_work_are_refused(tmp_path, model_dir, data, keys, message) -> None:
    with pytest.raises(UserError, match=message):
        arguments.load(qwen2_vl_recipe(tmp_path, model_dir, data, keys))


def test_meta_path_becomes_the_training_sources(tmp_path, model_dir, data) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({
        "a": {"root": str(tmp_path / "imgs_a"), "annotation": str(data), "data_augment": False, "repeat_time": 2,
              "length": 1},
        "b": {"root": str(tmp_path / "imgs_b"), "annotation": str(data), "data_augment": False, "repeat_time": 0.5,
              "length": 1},
    }))  # fmt: skip
    path = recipe(tmp_path, model_dir, data, {"meta_path": str(meta)})
    raw = json.loads(path.read_text())
    del raw["dataset"]
    path.write_text(json.dumps(raw))
    args = arguments.load(path)
    assert [(s.name, s.data_files, s.image_root, s.sampling_rate) for s in args.data.train] == [
        ("chatml_dataset", [str(data)], str(Path.cwd()), 2.0),
        ("chatml_dataset", [str(data)], str(Path.cwd()), 0.5),
    ]  # PaddleMIX's Qwen2-VL tool opens image paths as written, without "root"
    assert [n for n in args.notes if n.startswith("meta_path ")] == [
        f"meta_path {meta}: 2 sources read into dataset.train as chatml_dataset, image paths relative to the "
        "working directory (PaddleMIX's Qwen2-VL tool does not read root)"
    ]
    with pytest.raises(UserError, match='"meta_path" = .* and "dataset" both name the training data'):
        arguments.load(recipe(tmp_path, model_dir, data, {"meta_path": str(meta)}))


def test_comma_separated_lora_targets_are_split(tmp_path, model_dir, data) -> None:
    # PaddleMIX's Qwen2-VL LoRA recipe passes one string and splits it at commas.
    keys = {"lora": True, "lora_target_modules": "model.layers.*q_proj.*, model.layers.*v_proj.*"}
    args = arguments.load(recipe(tmp_path, model_dir, data, keys))
    from paddlemix.peft.targets import split_commas

    assert split_commas(args.lora.lora_target_modules) == ["model.layers.*q_proj.*", "model.layers.*v_proj.*"]
