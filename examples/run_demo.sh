#!/usr/bin/env bash
# Install (into the active virtual environment, or a new ./.venv) and run the coloured-shapes demo fine-tune.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/install.sh"
python examples/shapes_demo.py "$@"
