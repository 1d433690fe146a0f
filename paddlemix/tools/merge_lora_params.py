"""Fold a LoRA adapter into its base model and save a complete Hugging Face-layout model folder.

Usage: python paddlemix/tools/merge_lora_params.py --lora_path OUT [--model_name_or_path BASE]
                                                   [--merge_model_path DIR] [--max_shard_size 5GB]
The base model defaults to the adapter's `base_model_name_or_path` (adapter_config.json), else the
`model_name_or_path` of the run's run_args.json. The merge streams tensor by tensor in the base's own dtype and
layout, and never writes into the base or the adapter folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paddlemix.utils.errors import UserError, exit_on_user_error
from paddlemix.utils.logging import quiet_console


def base_model_of(lora_path: Path) -> str:
    """The base model folder named by the adapter folder: adapter_config.json first, then run_args.json."""
    named = []
    for file, key in (("adapter_config.json", "base_model_name_or_path"), ("run_args.json", "model_name_or_path")):
        if (lora_path / file).is_file():
            value = json.loads((lora_path / file).read_text(encoding="utf-8")).get(key)
            if value and Path(value).is_dir():
                return value
            named.append(f'{file} "{key}" = {value!r}')
    found = f" ({'; '.join(named)}: not a folder here)" if named else ""
    raise UserError(f"cannot tell the base model of {lora_path}{found}; pass --model_name_or_path BASE_MODEL_FOLDER.")


def check_lora_path(lora_path: Path) -> None:
    """Say what is wrong with a --lora_path that is not an adapter folder: missing, or what it holds instead."""
    if not lora_path.is_dir():
        raise UserError(f"command line: --lora_path {lora_path} does not exist; pass the output folder of a LoRA run.")
    if (lora_path / "adapter_config.json").is_file():
        return
    names = sorted(p.name for p in lora_path.iterdir())
    looks = " This looks like a model folder (config.json)." if "config.json" in names else ""
    held = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "nothing"
    raise UserError(
        f"command line: --lora_path {lora_path} holds no PEFT adapter (adapter_config.json is missing; it holds "
        f"{held}).{looks} Pass the output folder of a LoRA run, or a checkpoint folder inside it."
    )


def _print(line: str) -> None:
    print(line, flush=True)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lora_path", required=True, help="output folder of a LoRA run (holds the adapter)")
    parser.add_argument("--model_name_or_path", help="base model folder (default: named by the adapter folder)")
    parser.add_argument("--merge_model_path", help="where to write the merged model (default: LORA_PATH-merged)")
    parser.add_argument("--max_shard_size", default="5GB", help='largest output shard: bytes, "500MB", "5GB", "2GiB"')
    parser.add_argument("--device", default="cpu", help="ignored: the merge runs on the CPU without a framework")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    quiet_console()
    lora_path = Path(args.lora_path)
    check_lora_path(lora_path)
    base = Path(args.model_name_or_path or base_model_of(lora_path))
    out = Path(args.merge_model_path or f"{str(lora_path).rstrip('/')}-merged")
    max_shard_size = int(args.max_shard_size) if args.max_shard_size.isdigit() else args.max_shard_size

    from paddlemix.peft.merge import check_adapter_base, merge_adapter

    check_adapter_base(lora_path, base, lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
    merge_adapter(base, lora_path, out, max_shard_size, log=_print)
    print(f"merged model written to {out}", flush=True)
    report_vllm(base, lora_path, out)


def report_vllm(base: Path, lora_path: Path, out: Path) -> None:
    """Say what vLLM would do with the adapter and whether it loads the merged folder (inference/vllm_export.py)."""
    from paddlemix.inference.vllm_export import adapter_folder_notes, check_model_folder
    from paddlemix.models import ADAPTERS

    model_type = json.loads((base / "config.json").read_text(encoding="utf-8")).get("model_type")
    for note in adapter_folder_notes(lora_path, ADAPTERS.get(model_type)):
        print(f"note: served as an adapter by vLLM, {note}", file=sys.stderr, flush=True)
    problems = check_model_folder(out)
    for problem in problems:
        print(f"warning: vLLM would not load {out} as it is: {problem}", file=sys.stderr, flush=True)
    if not problems:
        print(f"vLLM reads this folder: vllm serve {out} (see README, Serve)", flush=True)


if __name__ == "__main__":
    main()
