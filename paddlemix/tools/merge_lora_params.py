"""Fold a LoRA adapter into its base model and save a complete Hugging Face-layout model folder.

Usage: python paddlemix/tools/merge_lora_params.py --lora_path OUT [--model_name_or_path BASE] [--merge_model_path DIR]
The base model defaults to the one named in the adapter folder's run_args.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paddlemix.utils.errors import UserError, exit_on_user_error
from paddlemix.utils.logging import quiet_console


def base_model_of(lora_path: Path) -> str:
    run_args = lora_path / "run_args.json"
    if not run_args.is_file():
        raise UserError(f"{lora_path} has no run_args.json; pass --model_name_or_path BASE.")
    return json.loads(run_args.read_text(encoding="utf-8"))["model_name_or_path"]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lora_path", required=True, help="output folder of a LoRA run (holds the adapter)")
    parser.add_argument("--model_name_or_path", help="base model folder (default: from run_args.json)")
    parser.add_argument("--merge_model_path", help="where to write the merged model (default: LORA_PATH-merged)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu", "npu", "xpu"])
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    quiet_console()
    lora_path = Path(args.lora_path)
    base = args.model_name_or_path or base_model_of(lora_path)
    out = Path(args.merge_model_path or f"{str(lora_path).rstrip('/')}-merged")

    import paddle

    from paddlemix.peft.lora import merge_adapter_folder
    from paddlemix.utils.device import resolve_device

    paddle.set_device(resolve_device(args.device))
    merge_adapter_folder(base, lora_path, out)
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
