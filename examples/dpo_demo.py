"""Preference-training demo: DPO on coloured-shapes pairs (chosen = the right colour, rejected = a wrong one).

Everything is made by code (no downloads). Steps, each with the real entry point:
  1. build  demo_run/tiny_qwen2_5_vl (the demo base), demo_run/shapes, and pairs in ms-swift's format
            (demo_run/pairs/train.jsonl, held-out demo_run/pairs/eval.jsonl)
  2. before python paddlemix/tools/infer.py on demo_run/shapes/eval.jsonl (answer accuracy of the starting model)
  3. train  python paddlemix/tools/supervised_finetune.py paddlemix/config/demo/shapes_dpo_argument.json
            ("stage": "dpo", sigmoid loss, beta 0.1, an SFT term on the chosen answer, frozen reference copy)
  4. after  held-out preference accuracy (log-prob of chosen > rejected, `eval_logps/accuracies` of the last
            evaluation) and answer accuracy by generation, against the starting model
Usage: python examples/dpo_demo.py [--workdir DIR] [--n_train N] [--n_eval N] [--key value ...]
       (or: bash examples/run_demo.sh dpo)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from paddlemix.testing.demo import demo_parser, step
from paddlemix.testing.pairs import write_shape_pairs
from paddlemix.testing.shapes import make_shapes_dataset
from paddlemix.testing.tiny_model import DEMO_SIZE, build_tiny_qwen2_5_vl

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "paddlemix" / "config" / "demo" / "shapes_dpo_argument.json"
TOOLS = REPO / "paddlemix" / "tools"
TARGET_PREFERENCE_ACCURACY = 0.95


def answer_accuracy(model: str, work: Path, out: Path) -> float:
    """Exact-match accuracy of greedy answers to the held-out shapes questions."""
    step("answer", [sys.executable, str(TOOLS / "infer.py"), "--model_name_or_path", model, "--data_file",
                    "demo_run/shapes/eval.jsonl", "--output", str(out)], work)  # fmt: skip
    results = [json.loads(line) for line in out.read_text().splitlines()]
    return sum(r["correct"] for r in results) / len(results)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = demo_parser(__doc__)
    args, overrides = parser.parse_known_args(argv)
    work = Path(args.workdir).resolve()
    demo = work / "demo_run"
    config = json.loads(CONFIG.read_text())
    start = time.perf_counter()
    print(f"== build: tiny qwen2_5_vl, shapes data and preference pairs under {demo}", flush=True)
    build_tiny_qwen2_5_vl(work / config["model_name_or_path"], seed=0, **DEMO_SIZE)
    make_shapes_dataset(demo / "shapes", n_train=args.n_train, n_eval=args.n_eval, seed=0)
    write_shape_pairs(demo / "shapes" / "train.jsonl", demo / "pairs" / "train.jsonl", "swift", seed=0)
    write_shape_pairs(demo / "shapes" / "eval.jsonl", demo / "pairs" / "eval.jsonl", "swift", seed=1)

    before = answer_accuracy(config["model_name_or_path"], work, demo / "answers_before.jsonl")
    step("DPO", [sys.executable, str(TOOLS / "supervised_finetune.py"), str(CONFIG), *overrides], work)
    out = work / config["output_dir"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_logps/accuracies" in r]
    after = answer_accuracy(config["output_dir"], work, demo / "answers_after.jsonl")
    result = {
        "preference_accuracy_first_eval": evals[0]["eval_logps/accuracies"],
        "preference_accuracy": evals[-1]["eval_logps/accuracies"],
        "reward_accuracy": evals[-1]["eval_rewards/accuracies"],
        "answer_accuracy_before": before,
        "answer_accuracy_after": after,
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }
    print(
        f"\nheld-out preference accuracy (log-prob of chosen > rejected): {result['preference_accuracy']:.1%} on "
        f"{args.n_eval} unseen pairs (target {TARGET_PREFERENCE_ACCURACY:.0%}); answer accuracy by generation "
        f"{before:.1%} -> {after:.1%}; total time {result['minutes']} min"
    )
    print(f"trained model: {out} (train_log.jsonl and loss_curve.png with the rewards/* metrics)")
    return result


def exit_code(result: dict[str, float]) -> int:
    """0 when the preference target is met and generation did not get worse; else 1 with the reason."""
    if result["preference_accuracy"] >= TARGET_PREFERENCE_ACCURACY and (
        result["answer_accuracy_after"] >= result["answer_accuracy_before"]
    ):
        return 0
    print(f"\ndemo failed: {result}. Run again with the defaults (--n_train 400, the argument file's epochs).",
          file=sys.stderr)  # fmt: skip
    return 1


if __name__ == "__main__":
    sys.exit(exit_code(main()))
