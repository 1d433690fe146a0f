from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix import arguments
from paddlemix.utils.errors import UserError


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "qwen2_5_vl", "text_config": {"num_attention_heads": 4, "num_key_value_heads": 2}})
    )
    return folder


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text('{"conversations": [["q", "a"]]}\n')
    return path


def write_args(tmp_path: Path, model_dir: Path, data_file: Path, **extra) -> Path:
    args = {
        "model_name_or_path": str(model_dir),
        "output_dir": str(tmp_path / "out"),
        "do_train": True,
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data_file)}]},
        **extra,
    }
    path = tmp_path / "args.json"
    path.write_text(json.dumps(args))
    return path


def test_load_routes_keys_and_translates_legacy_names(tmp_path, model_dir, data_file) -> None:
    path = write_args(
        tmp_path,
        model_dir,
        data_file,
        mixtoken=True,
        lora=True,
        lora_rank=4,
        max_length=512,
        learning_rate=1e-4,
        freeze_include="*visual*",
        tensor_parallel_degree=1,
        device="cpu",
    )
    args = arguments.load(path, ["--max_steps", "3", "--lora_alpha=8"])
    assert args.data.packing is True and args.data.max_length == 512
    assert args.lora.lora_rank == 4 and args.lora.lora_alpha == 8
    assert args.model.freeze_include == ["*visual*"]
    assert args.training.max_steps == 3 and args.training.learning_rate == 1e-4
    assert "tensor_model_parallel_size" in args.training_keys and "tensor_parallel_degree" not in args.training_keys
    assert args.training.remove_unused_columns is False
    assert args.data.train[0].data_files == [str(data_file)]
    saved = args.to_dict()
    assert saved["mixtoken"] is True and saved["max_steps"] == 3 and saved["lora_rank"] == 4
    assert saved["dataset"]["train"][0]["name"] == "chatml_dataset"


def test_training_is_on_unless_turned_off(tmp_path, model_dir, data_file) -> None:
    path = write_args(tmp_path, model_dir, data_file)
    raw = json.loads(path.read_text())
    del raw["do_train"]
    path.write_text(json.dumps(raw))
    assert arguments.load(path).training.do_train is True
    assert arguments.load(path, ["--do_train", "false"]).training.do_train is False


def test_train_type_sets_lora(tmp_path, model_dir, data_file) -> None:
    args = arguments.load(write_args(tmp_path, model_dir, data_file, train_type="use_lora", freeze_projector=True))
    assert args.lora.lora is True and args.model.freeze_projector is True and args.model.freeze_vision is None
    assert args.to_dict()["train_type"] == "use_lora"
    assert arguments.load(write_args(tmp_path, model_dir, data_file, train_type="freeze_vision")).lora.lora is False


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"lora_rnak": 4}, 'unknown key "lora_rnak". Did you mean "lora_rank"?'),
        ({"lora_rank": "4"}, 'key "lora_rank" must be an integer'),
        ({"lora": 1}, 'key "lora" must be true or false'),
        ({"learning_rate": "fast"}, 'key "learning_rate" must be a number'),
        ({"fp16_opt_level": "O2"}, '"fp16_opt_level": "O2" needs'),
        ({"fp16": True, "bf16": True}, "choose one"),
        ({"lora_path": "/nonexistent"}, '"lora_path" is set but "lora" is false'),
        ({"device": "tpu"}, 'key "device" must be one of'),
        ({"tensor_parallel_degree": 3}, "do not divide the 1 launched process"),
        (
            {"dataset": {"train": [{"name": "chatml", "data_files": "x"}]}},
            'key "dataset.train[0].name" must be one of',
        ),
        ({"dataset": {"train": [{"name": "chatml_dataset", "data_file": "x"}]}}, 'Did you mean "data_files"'),
        ({"dataset": {"train": [{"name": "chatml_dataset", "data_files": "/no/such.jsonl"}]}}, "does not exist"),
        (
            {
                "dataset": {
                    "train": [{"name": "chatml_dataset", "data_files": "{data}", "chat_template": "/no/t.json"}]
                }
            },
            "chat_template",
        ),
        ({"evaluation_strategy": "sometimes"}, 'key "evaluation_strategy" must be one of'),
        ({"train_type": "lora"}, 'key "train_type" must be one of'),
        ({"train_type": "use_lora", "lora": False}, '"train_type": "use_lora" trains LoRA adapters but "lora" is'),
        ({"train_type": "none", "lora": True}, '"train_type": "none" trains full weights but "lora" is true'),
        ({"lora": True, "freeze_llm": True}, '"freeze_llm": true leaves LoRA nothing to train'),
        ({"freeze_vision": "yes"}, 'key "freeze_vision" must be true or false'),
        ({"max_image_pixels": 100}, '"max_image_pixels" must be at least 784'),
        ({"learning_rate": 0, "lr_scheduler_type": "cosine"}, '"learning_rate" = 0 does not work with'),
        ({"learning_rate": -1e-5}, '"learning_rate" = -1e-05 does not work with'),
        ({"load_best_model_at_end": True}, '"load_best_model_at_end": true needs evaluations'),
        (
            {"load_best_model_at_end": True, "do_eval": True, "evaluation_strategy": "steps", "save_strategy": "no"},
            '"load_best_model_at_end": true needs checkpoints to go back to',
        ),
        (
            {
                "load_best_model_at_end": True,
                "do_eval": True,
                "evaluation_strategy": "steps",
                "metric_for_best_model": "accuracy",
            },
            '"metric_for_best_model" = "accuracy" is not logged by this run',
        ),
    ],
)
def test_mistakes_name_the_key_and_file(tmp_path, model_dir, data_file, extra, message) -> None:
    extra = json.loads(json.dumps(extra).replace("{data}", str(data_file)))
    path = write_args(tmp_path, model_dir, data_file, **extra)
    with pytest.raises(UserError) as err:
        arguments.load(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_model_folder(tmp_path, data_file) -> None:
    path = write_args(tmp_path, tmp_path / "nowhere", data_file)
    with pytest.raises(UserError, match="not a local model folder"):
        arguments.load(path)


def test_bad_override_and_bad_json(tmp_path, model_dir, data_file) -> None:
    path = write_args(tmp_path, model_dir, data_file)
    with pytest.raises(UserError, match='"--max_steps" needs a value'):
        arguments.load(path, ["--max_steps"])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        arguments.load(bad)


@pytest.mark.parametrize(
    "extra, world, message",
    [
        ({"tensor_parallel_degree": 2}, "1", "do not divide the 1 launched process"),
        (
            {"pipeline_parallel_degree": 3},
            "3",
            '"pipeline_parallel_degree" = 3 does not divide the model\'s num_hidden',
        ),
        (
            {"tensor_parallel_degree": 4},
            "4",
            '"tensor_parallel_degree" = 4 does not divide the model\'s num_key_value',
        ),
        (
            {"sharding": "stage1", "sharding_parallel_degree": 2, "tensor_parallel_degree": 2},
            "2",
            "2 x 1 x 2 do not divide the 2",
        ),
    ],
)
def test_parallel_degrees_checked_against_model_and_processes(
    tmp_path, model_dir, data_file, monkeypatch, extra, world, message
) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 2
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", world)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        arguments.load(write_args(tmp_path, model_dir, data_file, **extra))


def test_parallel_strategy_is_handed_to_the_trainer() -> None:
    training = {"output_dir": "x", "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
                "sharding": "stage2", "sharding_parallel_size": 2}  # fmt: skip
    kwargs = arguments.training_kwargs(training, arguments.RuntimeArgs(device="cpu"), packing=True)
    assert kwargs["tensor_model_parallel_size"] == 2 and kwargs["pipeline_model_parallel_size"] == 2
    assert kwargs["sharding"] == "stage2" and kwargs["sharding_parallel_size"] == 2
    assert kwargs["ignore_data_skip"] is True and kwargs["remove_unused_columns"] is False
    assert arguments.training_kwargs({"output_dir": "x"}, arguments.RuntimeArgs(device="cpu"), False)["sharding"] == ""


def test_image_reading_keys(tmp_path, model_dir, data_file) -> None:
    from PIL import Image

    default = arguments.load(write_args(tmp_path, model_dir, data_file)).data
    assert default.max_image_pixels == Image.MAX_IMAGE_PIXELS and default.image_cache_dir is None
    path = write_args(tmp_path, model_dir, data_file, max_image_pixels=10**9, image_cache_dir="cache")
    data = arguments.load(path).data
    assert (data.max_image_pixels, data.image_cache_dir) == (10**9, "cache")


def test_recompute_keys_are_accepted_and_reach_the_settings(tmp_path: Path, model_dir: Path, data_file: Path) -> None:
    """PaddleMIX's `recompute` and paddleformers' `recompute_granularity` both turn layer recompute on."""
    from paddlemix.trainer.recompute import SUPPORTED, recompute_settings

    ours = arguments.load(write_args(tmp_path, model_dir, data_file, recompute=True))
    assert ours.runtime.recompute is True and ours.to_dict()["recompute"] is True
    assert recompute_settings(ours.runtime.recompute, ours.training) == SUPPORTED
    theirs = arguments.load(write_args(tmp_path, model_dir, data_file, recompute_granularity="full"))
    assert recompute_settings(theirs.runtime.recompute, theirs.training) == SUPPORTED
    off = arguments.load(write_args(tmp_path, model_dir, data_file))
    assert recompute_settings(off.runtime.recompute, off.training) is None


def test_caption_scoring_without_sacrebleu_stops_before_the_model_loads(tmp_path, model_dir, data_file,
                                                                        monkeypatch) -> None:  # fmt: skip
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"image": "a.png", "caption": "a red circle"}\n')
    extra = {"do_eval": True, "evaluation_strategy": "steps", "eval_generation": True,
             "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data_file)}],
                         "eval": [{"name": "coco_caption", "data_files": str(captions)}]}}  # fmt: skip
    path = write_args(tmp_path, model_dir, data_file, **extra)
    arguments.load(path)  # sacrebleu is installed here
    real = arguments.importlib.util.find_spec
    monkeypatch.setattr(
        arguments.importlib.util, "find_spec", lambda name: None if name == "sacrebleu" else real(name)
    )
    with pytest.raises(UserError, match=r"eval_generation.*sacrebleu.*pip install -e '\.\[eval\]'"):
        arguments.load(path)


def test_preference_keys_and_their_peer_names(tmp_path, model_dir, data_file) -> None:
    path = write_args(tmp_path, model_dir, data_file, stage="dpo", loss_type="ipo", beta=0.3, rpo_alpha=0.5, lora=True)
    args = arguments.load(path)
    pref = args.preference
    assert (pref.stage, pref.pref_loss, pref.pref_beta, pref.pref_ftx) == ("dpo", "ipo", 0.3, 0.5)
    assert args.to_dict()["pref_loss"] == "ipo"
    assert arguments.load(write_args(tmp_path, model_dir, data_file)).preference.stage == "sft"  # the default


# a preference run picking its best checkpoint by a generation metric it does not log (eval sources filled in)
BEST_BY_GENERATION = {"stage": "dpo", "do_eval": True, "dataset": {}, "load_best_model_at_end": True,
                      "evaluation_strategy": "steps", "metric_for_best_model": "eval_accuracy"}  # fmt: skip


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"stage": "dpo", "pref_beta": 0}, "pref_beta"),
        ({"stage": "dpo", "label_smoothing": 0.6}, "label_smoothing"),
        ({"stage": "dpo", "pref_loss": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
        ({"stage": "dpo", "pref_loss": "kto"}, "pref_loss"),
        ({"stage": "ppo"}, "stage"),
        ({"pref_beta": 0.2}, "pref_beta"),  # a preference key in an SFT run
        ({"stage": "dpo", "pref_loss": "simpo", "ref_model_name_or_path": "x"}, "ref_model_name_or_path"),
        ({"stage": "dpo", "ref_model_name_or_path": "missing"}, "ref_model_name_or_path"),
        ({"stage": "dpo", "pref_beta": 0.1, "beta": 0.2}, "beta"),
        ({"stage": "dpo", "lora": True, "precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
        ({"stage": "dpo", "lora": True, "train_type": "use_lora"}, "train_type"),
        ({"stage": "dpo", "eval_generation": True}, "eval_generation"),
        (BEST_BY_GENERATION, "metric_for_best_model"),
    ],
)
def test_bad_preference_keys_fail_before_the_model_loads(tmp_path, model_dir, data_file, extra, key) -> None:
    if "dataset" in extra:
        extra["dataset"] = {"train": [{"name": "chatml_dataset", "data_files": str(data_file)}],
                            "eval": [{"name": "chatml_dataset", "data_files": str(data_file)}]}  # fmt: skip
    with pytest.raises(UserError, match=key):
        arguments.load(write_args(tmp_path, model_dir, data_file, **extra))


def test_reference_of_another_model_is_refused(tmp_path, model_dir, data_file) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"vocab_size": 100}}))
    with pytest.raises(
        UserError, match="is a llava model with a vocabulary of 100, but the trained model is qwen2_5_vl"
    ):
        arguments.load(write_args(tmp_path, model_dir, data_file, stage="dpo", ref_model_name_or_path=str(other)))
    args = arguments.load(
        write_args(tmp_path, model_dir, data_file, stage="dpo", ref_model_name_or_path=str(model_dir))
    )
    assert args.preference.ref_model_name_or_path == str(model_dir)


def test_preference_metrics_may_pick_the_best_checkpoint(tmp_path, model_dir, data_file) -> None:
    sources = {"train": [{"name": "chatml_dataset", "data_files": str(data_file)}],
               "eval": [{"name": "chatml_dataset", "data_files": str(data_file)}]}  # fmt: skip
    args = arguments.load(write_args(tmp_path, model_dir, data_file, stage="dpo", lora=True, dataset=sources,
                                     do_eval=True, evaluation_strategy="steps", save_strategy="steps",
                                     load_best_model_at_end=True, greater_is_better=True,
                                     metric_for_best_model="eval_rewards/accuracies"))  # fmt: skip
    assert args.training.metric_for_best_model == "eval_rewards/accuracies"


def test_pipeline_parallel_preference_run_is_refused_in_one_message(tmp_path, model_dir, data_file, monkeypatch):
    """Pipeline parallel with "stage": "dpo" (also with LoRA and evaluation, which pipeline runs refuse too) is one
    problem that names the alternatives, not a list of pipeline problems."""
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    sources = {"train": [{"name": "chatml_dataset", "data_files": str(data_file)}],
               "eval": [{"name": "chatml_dataset", "data_files": str(data_file)}]}  # fmt: skip
    path = write_args(tmp_path, model_dir, data_file, stage="dpo", lora=True, dataset=sources, do_eval=True,
                      pipeline_parallel_degree=2)  # fmt: skip
    with pytest.raises(UserError) as err:
        arguments.load(path)
    message = str(err.value)
    assert "problems" not in message and '"stage": "dpo"' in message and "tensor_parallel_degree" in message
