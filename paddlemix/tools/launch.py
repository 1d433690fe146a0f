"""Launch supervised_finetune.py on several processes, devices or nodes (what train.sh runs); see
paddlemix/utils/launch.py for the settings.

Usage: sh paddlemix/tools/train.sh ARGS.json [--key value ...]
"""

from __future__ import annotations

import importlib.util
import sys


def main(argv: list[str] | None = None) -> None:
    if importlib.util.find_spec("paddlemix") is None:
        print(
            f"\nerror: the paddlemix package is not installed in {sys.executable}, the interpreter train.sh runs "
            '(PYTHON, default "python"). Activate the environment it was installed into (. .venv/bin/activate), '
            "set PYTHON=/path/to/that/env/bin/python, or install it there (pip install -e .).\n",
            file=sys.stderr,
        )
        sys.exit(2)
    from paddlemix.utils.errors import exit_on_user_error
    from paddlemix.utils.launch import main as launch

    sys.exit(exit_on_user_error(launch)(argv))


if __name__ == "__main__":
    main()
