"""Answer a question about an image with a (fine-tuned) model, or answer every record of a chatml file.

Usage:
  python paddlemix/tools/infer.py --model_name_or_path DIR [--lora_path ADAPTER] --image IMG --question "..."
  python paddlemix/tools/infer.py --model_name_or_path DIR --data_file eval.jsonl --output answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

from paddlemix.utils.errors import UserError, exit_on_user_error
from paddlemix.utils.logging import quiet_console


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--lora_path")
    p.add_argument("--chat_template")
    p.add_argument("--image", action="append", default=[], help="image path; repeat for several images")
    p.add_argument("--question")
    p.add_argument("--data_file", help="chatml file: answer the last assistant turn of each record")
    p.add_argument("--output", help="JSONL file for the answers of --data_file (default: print)")
    p.add_argument("--limit", type=int)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "npu", "xpu"])
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    quiet_console()
    if bool(args.question) == bool(args.data_file):
        raise UserError("give either --question (with --image) or --data_file.")
    from paddlemix.generation import Generator, evaluate_exact_match
    from paddlemix.utils.device import resolve_device

    generator = Generator.from_pretrained(
        args.model_name_or_path, args.lora_path, args.chat_template, resolve_device(args.device)
    )
    if args.question:
        print(
            generator.answer(
                args.question,
                args.image,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
            )
        )
        return
    report = evaluate_exact_match(generator, [args.data_file], args.limit, args.max_new_tokens)
    lines = [json.dumps(r, ensure_ascii=False) for r in report["results"]]
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    print(f"exact match: {report['correct']}/{report['total']} = {report['accuracy']:.1%}")


if __name__ == "__main__":
    main()
