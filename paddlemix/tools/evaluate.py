"""Score a model, or a running OpenAI-compatible server, on a JSONL file of questions with references.

Usage:
  paddlemix-eval --model_name_or_path DIR [--lora_path ADAPTER] --data_file eval.jsonl --output_dir eval_out
  paddlemix-eval --server_url http://127.0.0.1:8000/v1 [--api_key KEY] --data_file eval.jsonl --output_dir eval_out

Writes OUTPUT_DIR/predictions.jsonl (one line per answered record; a rerun skips those already there) and
OUTPUT_DIR/metrics.json, and prints the table: exact match, relaxed accuracy, ANLS, edit distance, CER, BLEU,
ROUGE-L. Answers are greedy. Needs `pip install -e ".[eval]"`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from paddlemix.utils.errors import UserError, exit_on_user_error

FORMATS = {"chatml": "chatml_dataset", "vqa": "coco_vqa", "caption": "coco_caption"}


def parse(argv: list[str]) -> argparse.Namespace:
    from paddlemix.inference.loading import add_model_flags

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--server_url", help="an OpenAI-compatible server (…/v1) to score instead of a model folder")
    p.add_argument("--api_key", default=os.environ.get("PADDLEMIX_API_KEY"), help="the server's key")
    p.add_argument("--served_model_name", help="model id to send to the server (default: none)")
    p.add_argument("--data_file", required=True, help="JSON/JSONL records with references")
    p.add_argument("--format", default="chatml", choices=list(FORMATS), help="record shape (as training reads)")
    p.add_argument("--image_root", help="folder of relative image paths (default: the data file's folder)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--limit", type=int, help="score only the first N records")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    if bool(args.model_name_or_path) == bool(args.server_url):
        raise UserError("command line: give either --model_name_or_path (a model folder) or --server_url.")
    for key in ("batch_size", "max_new_tokens"):
        if getattr(args, key) < 1:
            raise UserError(f"command line: --{key} must be at least 1, got {getattr(args, key)}.")
    if not Path(args.data_file).is_file():
        raise UserError(f"command line: --data_file {args.data_file} does not exist. Give a JSON or JSONL file.")
    from paddlemix.inference.evaluate import evaluate_file, model_answerer, server_answerer
    from paddlemix.inference.metrics import format_table, score_records
    from paddlemix.utils.logging import quiet_console

    score_records(["a"], [["a"]])  # fail now, not after answering, when a metrics library is missing
    quiet_console()
    if args.server_url:
        answer = server_answerer(args.server_url, args.served_model_name, args.api_key, args.max_new_tokens)
    else:
        from paddlemix.inference.loading import load_generator

        answer = model_answerer(load_generator(args), args.max_new_tokens)
    report = evaluate_file(args.data_file, FORMATS[args.format], answer, Path(args.output_dir), args.batch_size,
                           args.image_root, args.limit)  # fmt: skip
    for record in report["skipped"][:5]:
        print(f"skipped record #{record['index']}: {record['reason']}")
    if report["skipped"]:
        print(f"{len(report['skipped'])} records skipped (not scored); rerun to retry them")
    print(format_table(report["metrics"]))
    print(f"predictions: {Path(args.output_dir) / 'predictions.jsonl'}")


if __name__ == "__main__":
    main()
