#!/usr/bin/env bash
# Install everything from scratch and run the whole test suite (the command CI runs).
# The parity tests compare with Hugging Face transformers 4.57.1 (PyTorch) in a separate environment, .venv-ref;
# set SKIP_PARITY=1 to skip building it (those tests are then skipped with a reason).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/install.sh"
if [ "${SKIP_PARITY:-0}" != "1" ] && [ -z "${PADDLEMIX_REF_PYTHON:-}" ]; then
    [ -x .venv-ref/bin/python ] || python3 -m venv .venv-ref
    .venv-ref/bin/python -m pip install --quiet --upgrade pip
    .venv-ref/bin/python -m pip install --quiet -r tests/parity/requirements-ref.txt
    export PADDLEMIX_REF_PYTHON="$PWD/.venv-ref/bin/python"
fi
python -m ruff check .
python -m ruff format --check .
python -m pytest -q "$@"
