"""Serve a trained model over an OpenAI-compatible API (GET /v1/models, POST /v1/chat/completions) with a chat
page at http://HOST:PORT/.

Usage:
  paddlemix-serve --model_name_or_path MERGED_OR_TRAINED_DIR [--port 8000]
  paddlemix-serve --model_name_or_path BASE --lora_path ADAPTER --api_key SECRET --allowed_local_media_path DIR

Prompts, stop ids, image processing and video sampling are those of training and infer.py (the training's video
settings from run_args.json, or the --video_* flags). Needs `pip install -e ".[serve]"`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from paddlemix.utils.errors import UserError, exit_on_user_error


def parse(argv: list[str]) -> argparse.Namespace:
    try:
        import uvicorn  # noqa: F401

        from paddlemix.inference.media import DEFAULT_MAX_VIDEO_BYTES
        from paddlemix.inference.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_LIMIT
    except ImportError as err:
        raise UserError(
            f"serving needs FastAPI and uvicorn ({err}). Install them: pip install -e '.[serve]'."
        ) from None
    from paddlemix.inference.loading import add_model_flags

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api_key", default=os.environ.get("PADDLEMIX_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $PADDLEMIX_API_KEY, else none)")  # fmt: skip
    p.add_argument("--served_model_name", help="the model id clients send (default: the folder's name)")
    p.add_argument("--allowed_local_media_path", help="folder whose image and video files requests may name by path")
    p.add_argument("--allow_remote_media", action="store_true",
                   help="fetch http(s) image and video URLs (public hosts only)")  # fmt: skip
    p.add_argument("--max_video_bytes", type=int, default=DEFAULT_MAX_VIDEO_BYTES,
                   help="largest video file a request may send or name by URL")  # fmt: skip
    p.add_argument("--max_model_len", type=int, help="most prompt + answer tokens of one request")
    p.add_argument("--max_tokens_limit", type=int, default=DEFAULT_MAX_TOKENS_LIMIT, help="largest max_tokens")
    p.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="largest request body")
    p.add_argument("--max_batch_size", type=int, default=8, help="requests answered together")
    p.add_argument("--max_waiting_requests", type=int, default=64, help="queued requests before 429")
    p.add_argument("--request_timeout", type=float, default=600.0, help="seconds before a request gets 504")
    return p.parse_args(argv)


def config_of(args: argparse.Namespace):
    from paddlemix.inference.media import MediaPolicy
    from paddlemix.inference.server import ServerConfig

    media_root = Path(args.allowed_local_media_path) if args.allowed_local_media_path else None
    if media_root is not None and not media_root.is_dir():
        raise UserError(f"command line: --allowed_local_media_path {media_root} is not a folder. Give an existing "
                        "folder, or leave the flag out to refuse local paths.")  # fmt: skip
    for key in (
        "max_tokens_limit",
        "max_body_bytes",
        "max_batch_size",
        "max_waiting_requests",
        "max_model_len",
        "max_video_bytes",
    ):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise UserError(f"command line: --{key} must be at least 1, got {value}.")
    name = args.served_model_name or Path(args.lora_path or args.model_name_or_path).resolve().name
    return ServerConfig(served_model_name=name, api_key=args.api_key or None,
                        media=MediaPolicy(media_root, args.allow_remote_media, max_video_bytes=args.max_video_bytes), max_model_len=args.max_model_len,
                        max_tokens_limit=args.max_tokens_limit, max_body_bytes=args.max_body_bytes,
                        max_waiting_requests=args.max_waiting_requests, request_timeout=args.request_timeout,
                        max_batch_size=args.max_batch_size)  # fmt: skip


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)  # fails first when FastAPI or uvicorn is missing
    if not args.model_name_or_path:
        raise UserError("command line: --model_name_or_path is required (a model folder).")
    import uvicorn

    from paddlemix.inference.loading import load_generator
    from paddlemix.inference.server import create_app
    from paddlemix.utils.logging import quiet_console

    config = config_of(args)
    quiet_console()
    generator = load_generator(args)
    app = create_app(generator, config)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(f"warning: listening on {args.host} without --api_key: anyone who reaches it can use the model",
              file=sys.stderr, flush=True)  # fmt: skip
    print(f"serving {config.served_model_name} on http://{args.host}:{args.port}/ (chat page at /)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5)


if __name__ == "__main__":
    main()
