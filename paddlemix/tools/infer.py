"""Answer a question about an image or a video with a (fine-tuned) model, or answer every record of a chatml file.

Usage:
  python paddlemix/tools/infer.py --model_name_or_path DIR [--lora_path ADAPTER] --image IMG --question "..."
  python paddlemix/tools/infer.py --model_name_or_path DIR --video CLIP.mp4 --question "..."
  python paddlemix/tools/infer.py --model_name_or_path DIR --data_file eval.jsonl --output answers.jsonl

Decoding defaults come from the model folder's generation_config.json (eos/pad ids, do_sample, temperature,
top_p, top_k, repetition_penalty, max_new_tokens / max_length); the flags below override them. --data_file runs
greedy unless --do_sample is given.
"""

from __future__ import annotations

import argparse
import json
import sys

from paddlemix.utils.errors import UserError, exit_on_user_error
from paddlemix.utils.logging import quiet_console


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--lora_path")
    p.add_argument("--chat_template")
    p.add_argument("--image", action="append", default=[], help="image path; repeat for several images")
    p.add_argument("--video", action="append", default=[],
                   help="video file (Qwen-VL families), sampled as training samples it; repeat for several")  # fmt: skip
    add_video_flags(p)
    p.add_argument("--question")
    p.add_argument("--data_file", help="chatml file: answer the last assistant turn of each record")
    p.add_argument("--output", help="JSONL file for the answers of --data_file (default: print)")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch_size", type=int, default=8, help="records of --data_file answered together")
    p.add_argument("--max_new_tokens", type=int, help="default: generation_config.json, else 32")
    p.add_argument("--do_sample", type=_bool, help="true or false (default: generation_config.json)")
    p.add_argument("--temperature", type=float, help="0 = greedy; a positive value alone turns sampling on")
    p.add_argument("--top_p", type=float)
    p.add_argument("--top_k", type=int, help="0 = off")
    p.add_argument("--repetition_penalty", type=float)
    p.add_argument("--seed", type=int, default=0, help="seed of sampling")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "npu", "xpu"])
    p.add_argument(
        "--image_resolution",
        type=int,
        help="bound the longer image side as training did (default: the training's run_args.json)",
    )
    p.add_argument(
        "--split_special_tokens",
        type=_bool,
        help="special-token strings in the question are text (default: the training's, else true)",
    )
    return p.parse_args(argv)


def warn_on_other_template(model_dir: str, lora_path: str | None, chat_template: str) -> None:
    """Warn when --chat_template differs from the template the model (or its adapter) was trained with."""
    from paddlemix.models import adapter_for
    from paddlemix.processors.template_files import template_mismatch

    warning = template_mismatch(lora_path or model_dir, chat_template, adapter_for(model_dir).vision_placeholder)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


VIDEO_SETTINGS = ("video_fps", "video_maxlen", "video_resolution", "video_min_pixels", "video_max_pixels",
                  "max_video_seconds")  # fmt: skip
# Video flags (the argument file's keys): sampling, and the longest video taken; unset ones keep the training's value
# from run_args.json.
VIDEO_FLAGS = {
    "video_fps": (float, "frames sampled per second of video (default: the training's, else 2)"),
    "video_maxlen": (int, "most frames sampled from one video (default: the training's, else 768)"),
    "video_max_pixels": (int, "most pixels of one sampled frame (default: the training's)"),
    "video_min_pixels": (
        int,
        "fewest pixels of one sampled frame (default: the training's, else 128 x 28^2, Qwen3-VL 128 x 32^2)",
    ),
    "max_video_seconds": (float, "refuse longer videos (default: the training's, else 10800)"),
}


def add_video_flags(p: argparse.ArgumentParser) -> None:
    """The video sampling flags (`VIDEO_FLAGS`), shared by infer.py, serve.py and evaluate.py."""
    for name, (kind, text) in VIDEO_FLAGS.items():
        p.add_argument(f"--{name}", type=kind, help=text)


def training_data_settings(args: argparse.Namespace) -> dict:
    """`image_resolution` and `split_special_tokens` as the training used them (run_args.json of --lora_path, else
    of the model folder), unless given on the command line; a folder without run_args.json gives the defaults.
    The training's video settings (`VIDEO_SETTINGS`) come along, so videos are sampled as in training; the video
    flags given on the command line (`VIDEO_FLAGS`) replace them."""
    from pathlib import Path

    saved = {}
    for folder in (args.lora_path, args.model_name_or_path):
        path = Path(folder or "") / "run_args.json"
        if folder and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            break
    settings = {"image_resolution": saved.get("image_resolution"),
                "split_special_tokens": saved.get("split_special_tokens", True)}  # fmt: skip
    out = {k: v if getattr(args, k, None) is None else getattr(args, k) for k, v in settings.items()}
    video = {k: saved[k] for k in VIDEO_SETTINGS if saved.get(k) is not None}
    return {**out, **video, **{k: getattr(args, k) for k in VIDEO_FLAGS if getattr(args, k, None) is not None}}


def check_videos(videos: list[str]) -> None:
    """Fail before the model loads when a --video file is missing or its header cannot be read."""
    from paddlemix.datasets.conversation import SampleError
    from paddlemix.processors.video import VideoReader

    for video in videos:
        try:
            VideoReader(28, max_seconds=None).probe(video)
        except SampleError as err:
            raise UserError(f"command line: --video {video!r}: {err}. Pass a readable video file.") from None


def check_images(images: list[str], image_resolution: int | None = None) -> None:
    """Fail before the model loads when an --image file is missing or its header cannot be read."""
    from paddlemix.datasets.conversation import SampleError
    from paddlemix.processors.images import ImageReader

    reader = ImageReader(image_resolution=image_resolution)
    for image in images:
        try:
            reader.size(image)
        except SampleError as err:
            raise UserError(f"command line: --image {image!r}: {err}. Pass a readable image file.") from None


def too_long_hint(images: list[str], videos: list[str]) -> str:
    """How to shorten a prompt: the question, and the flags that bound its images' and videos' tokens."""
    ways = ["shorten the question"]
    if images:
        ways.append("pass fewer or smaller images (--image, --image_resolution)")
    if videos:
        ways.append("sample fewer or smaller video frames (--video_maxlen, --video_fps, --video_max_pixels; "
                    "unset, they are the training's)")  # fmt: skip
    text = ", or ".join(ways)
    return text[0].upper() + text[1:] + "."


def media_named(images: list[str], videos: list[str]) -> tuple[str, str]:
    """("--image A and --video B", "images and videos"): the media flags given, and what they pass."""
    given = [(f"--{flag} {', '.join(values)}", kind) for flag, values, kind in
             (("image", images, "images"), ("video", videos, "videos")) if values]  # fmt: skip
    return " and ".join(g for g, _ in given) or "no image or video", " and ".join(k for _, k in given) or "media"


def overrides(args: argparse.Namespace) -> dict:
    """Decoding settings given on the command line (None = keep the model's generation_config.json value)."""
    keys = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
    return {k: getattr(args, k) for k in keys}


def speed_line(new_tokens: int, seconds: float, prompt_seconds: float) -> str:
    """'N tokens in S s: R tokens/s (prompt P s)' for generated tokens over generation wall time."""
    rate = new_tokens / max(seconds, 1e-9)
    tokens = "token" if new_tokens == 1 else "tokens"
    return (
        f"generated {new_tokens} {tokens} in {seconds:.2f} s: {rate:.1f} tokens/s (prompt pass {prompt_seconds:.2f} s)"
    )


def shown_answer(text: str) -> str:
    """The answer as printed; an empty one as `answer: ""` with a hint, never a bare blank line."""
    from paddlemix.inference.generation import EMPTY_ANSWER_HINT

    return text if text else f'answer: ""  ({EMPTY_ANSWER_HINT})'


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    quiet_console()
    if bool(args.question) == bool(args.data_file):
        raise UserError("give either --question (with --image or --video) or --data_file.")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}.")
    from paddlemix.datasets.conversation import SampleError, TooLongError, VideoRef
    from paddlemix.inference.generation import EMPTY_ANSWER_HINT, evaluate_exact_match, question_message
    from paddlemix.inference.loading import load_generator

    check_images(args.image, training_data_settings(args)["image_resolution"])
    check_videos(args.video)
    generator = load_generator(args)
    settings = generator.settings.with_requests(**overrides(args))
    if args.question:
        videos = [VideoRef(v) for v in args.video]
        try:
            prompt = generator.encode([question_message(args.question, args.image, videos)], args.image, videos)
            answers = generator.generate_encoded([prompt], settings, seed=args.seed)
        except TooLongError as err:
            raise UserError(
                f"command line: the prompt of --question is too long to answer: {err} (the model's "
                f"max_position_embeddings). {too_long_hint(args.image, args.video)}"
            ) from None
        except SampleError as err:
            given, kinds = media_named(args.image, args.video)
            fix = "Use a Qwen-VL model for video." if "take images only" in str(err) else f"Pass {kinds} that open."
            raise UserError(f"command line: cannot answer with {given}: {err}. {fix}") from None
        g = answers.generated
        print(speed_line(g.new_tokens, g.seconds, g.prefill_seconds))
        print(shown_answer(answers.texts[0]))
        return
    if args.do_sample is None and args.temperature is None:
        settings = settings.with_overrides(do_sample=False)
    report = evaluate_exact_match(generator, [args.data_file], args.limit, batch_size=args.batch_size,
                                  settings=settings)  # fmt: skip
    lines = [json.dumps(r, ensure_ascii=False) for r in report["results"]]
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n" if lines else "")
    else:
        print("\n".join(lines))
    empty = sum(not r["prediction"] for r in report["results"])
    if empty:
        print(f'{empty} answers are empty (answer: ""): {EMPTY_ANSWER_HINT}')
    for record in report["skipped_records"]:
        print(f"skipped record #{record['index']}: {record['reason']}")
    print(speed_line(report["new_tokens"], report["seconds"], report["prompt_seconds"]))
    print(f"exact match: {report['correct']}/{report['total']} = {report['accuracy']:.1%}"
          + (f" ({report['skipped']} records skipped)" if report["skipped"] else ""))  # fmt: skip
    if "cer" in report:
        print(f"edit distance (normalised, mean): {report['edit_distance']:.4f}; CER: {report['cer']:.4f}")


if __name__ == "__main__":
    main()
