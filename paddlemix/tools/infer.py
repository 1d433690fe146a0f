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


def trained_template_file(lora_path: str | None) -> str | None:
    """The template an adapter folder carries (the one its training used), which prompts must follow rather than
    the base model's."""
    from pathlib import Path

    from paddlemix.processors.template_files import JINJA_FILE

    path = Path(lora_path or "") / JINJA_FILE
    return str(path) if lora_path and path.is_file() else None


def warn_on_other_template(model_dir: str, lora_path: str | None, chat_template: str) -> None:
    """Warn when --chat_template differs from the template the model (or its adapter) was trained with."""
    from paddlemix.models import adapter_for
    from paddlemix.processors.template_files import template_mismatch

    warning = template_mismatch(lora_path or model_dir, chat_template, adapter_for(model_dir).vision_placeholder)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    if bool(args.question) == bool(args.data_file):
        raise UserError("give either --question (with --image) or --data_file.")
    from paddlemix.generation import Generator, evaluate_exact_match
    from paddlemix.utils.device import resolve_device

    chat_template = args.chat_template or trained_template_file(args.lora_path)
    if args.chat_template:
        warn_on_other_template(args.model_name_or_path, args.lora_path, args.chat_template)
    print("chat template:", chat_template or "the model folder's own", file=sys.stderr, flush=True)

    generator = Generator.from_pretrained(
        args.model_name_or_path, args.lora_path, chat_template, resolve_device(args.device)
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
