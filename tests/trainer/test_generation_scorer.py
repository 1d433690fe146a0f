"""Training's evaluation by generation (`generation_scorer` in paddlemix/trainer/sft.py): batched, and records
that fail are counted in `eval_<source>_skipped` instead of stopping the run."""

from __future__ import annotations

import json
from pathlib import Path

from paddlemix import arguments
from paddlemix.models import adapter_for
from paddlemix.trainer.sft import generation_scorer


def test_scores_and_skip_counts_per_source(tiny_model_dir: Path, shapes_data, tmp_path: Path) -> None:
    good = shapes_data["eval"].read_text().splitlines()[:3]
    record = json.loads(good[0])
    faulty = tmp_path / "faulty.jsonl"
    faulty.write_text("\n".join([good[0].replace(record["images"][0], "missing.png"), "{broken"]) + "\n")
    raw = {
        "model_name_or_path": str(tiny_model_dir),
        "output_dir": str(tmp_path / "out"),
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}],
                    "eval": [{"name": "chatml_dataset", "data_files": str(shapes_data["eval"])},
                             {"name": "chatml_dataset", "data_files": str(faulty)}]},
        "eval_generation": True, "eval_generation_samples": 3, "per_device_eval_batch_size": 2, "device": "cpu",
    }  # fmt: skip
    args = arguments.parse(raw, "test.json")
    adapter = adapter_for(tiny_model_dir)
    model = adapter.load_model(tiny_model_dir)
    model.train()
    scores = generation_scorer(args, model, adapter.load_processor(tiny_model_dir), adapter)()
    assert set(scores) == {f"eval_{source}_{key}" for source in ("eval", "faulty")
                           for key in ("accuracy", "skipped", "edit_distance", "cer")}  # fmt: skip
    assert 0.0 <= scores["eval_eval_edit_distance"] <= 1.0 and scores["eval_eval_cer"] >= 0.0
    assert scores["eval_eval_skipped"] == 0 and scores["eval_faulty_skipped"] == 2
    assert scores["eval_faulty_accuracy"] == 0.0 and 0.0 <= scores["eval_eval_accuracy"] <= 1.0
    assert model.training  # back in training mode afterwards


def test_images_are_read_as_in_training(tiny_model_dir: Path, shapes_data, tmp_path: Path, monkeypatch) -> None:
    import paddlemix.inference.generation

    readers = []

    def fake_evaluate(generator, source, samples, batch_size):
        readers.append(generator.encoder.reader)
        return {"metric": "accuracy", "score": 0.0, "skipped": 0}

    monkeypatch.setattr(paddlemix.inference.generation, "evaluate_generation", fake_evaluate)
    source = {"name": "chatml_dataset", "data_files": str(shapes_data["eval"])}
    raw = {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "out"),
           "dataset": {"train": [source], "eval": [source]}, "eval_generation": True, "image_resolution": 64,
           "max_image_pixels": 10_000, "device": "cpu"}  # fmt: skip
    args = arguments.parse(raw, "test.json")
    adapter = adapter_for(tiny_model_dir)
    generation_scorer(args, adapter.load_model(tiny_model_dir), adapter.load_processor(tiny_model_dir), adapter)()
    assert [(r.image_resolution, r.max_pixels) for r in readers] == [(64, 10_000)]
