"""Fine-tune a multimodal model (full SFT or LoRA) from one JSON argument file.

Usage: python paddlemix/tools/supervised_finetune.py ARGS.json [--key value ...]
"""

from __future__ import annotations

import sys

from paddlemix import arguments
from paddlemix.utils.errors import UserError, exit_on_user_error
from paddlemix.utils.logging import quiet_console


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        quiet_console()
        from paddlemix.arguments_help import help_text

        print(help_text())
        return
    if not argv[0].endswith(".json"):
        raise UserError(f"command line: the first argument must be the JSON argument file, got {argv[0]!r}.")
    quiet_console()
    args = arguments.load(argv[0], argv[1:])

    from paddlemix.trainer.sft import run_sft

    run_sft(args)


if __name__ == "__main__":
    main()
