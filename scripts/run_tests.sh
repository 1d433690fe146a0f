#!/usr/bin/env bash
# Install everything from scratch and run the whole test suite (the command CI runs).
# The parity tests compare with Hugging Face transformers (PyTorch) in two separate environments, built once and
# reused: .venv-ref (transformers 4.57.1, tests/parity/requirements-ref.txt, PADDLEMIX_REF_PYTHON) and .venv-ref5
# (the current transformers 5.x, tests/parity/requirements-ref5.txt, PADDLEMIX_REF5_PYTHON). Set either variable to
# use an existing Python instead; SKIP_PARITY=1 skips building both (those tests are then skipped with a reason).
set -euo pipefail
case "${1:-}" in
    -h|--help)
        cat <<'USAGE'
usage: bash scripts/run_tests.sh [PYTEST ARGS ...]

Installs the package (into the active virtual environment, else ./.venv) and the parity environments .venv-ref
(transformers 4.57.1) and .venv-ref5 (transformers 5.x), runs ruff, then the whole suite on two pytest workers, then
the multiprocess tests alone. PYTEST ARGS go to both pytest passes. Environment: SKIP_PARITY=1 (neither reference
environment; parity tests skip), PADDLEMIX_REF_PYTHON=PATH / PADDLEMIX_REF5_PYTHON=PATH (an existing reference
Python for 4.57.1 / 5.x), TORCH_CPU_INDEX=URL, SKIP_BROWSER=1 (no apt-get install of chromium, as
root, for the chat page test).

One test file or test, without reinstalling anything, in the installed environment:
  . .venv/bin/activate
  python -m pytest tests/datasets/test_mixing.py -q
  python -m pytest tests/tools/test_check_data_verdict.py -q -k budget
  python -m pytest -q -m "not slow"          # the unit tests only
USAGE
        exit 0
        ;;
esac
. "$(dirname "${BASH_SOURCE[0]}")/install.sh"
# PyTorch's own CPU index serves the CPU build (a 192 MB wheel); the default index resolves `torch` to the CUDA build
# plus ~20 nvidia-* packages (several GB) on Linux. When that index cannot be reached (offline mirrors, proxies), the
# probe fails within seconds and torch comes from the default index or the local wheel cache like everything else.
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
build_reference() {  # VENV_DIR REQUIREMENTS_FILE: create (or update) one reference environment
    local venv="$1" requirements="$2" torch_pin
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    torch_pin="$(grep -E '^torch==' "$requirements")"
    if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" \
        "$TORCH_CPU_INDEX" 2>/dev/null; then
        echo "installing $torch_pin (CPU build) into $venv from $TORCH_CPU_INDEX"
        "$venv/bin/python" -m pip install --quiet --index-url "$TORCH_CPU_INDEX" "$torch_pin"
    else
        echo "$TORCH_CPU_INDEX is not reachable; installing $torch_pin into $venv from the default index"
    fi
    "$venv/bin/python" -m pip install --quiet -r "$requirements"
}
if [ "${SKIP_PARITY:-0}" != "1" ]; then
    if [ -z "${PADDLEMIX_REF_PYTHON:-}" ]; then
        build_reference .venv-ref tests/parity/requirements-ref.txt
        export PADDLEMIX_REF_PYTHON="$PWD/.venv-ref/bin/python"
    fi
    if [ -z "${PADDLEMIX_REF5_PYTHON:-}" ]; then
        build_reference .venv-ref5 tests/parity/requirements-ref5.txt
        export PADDLEMIX_REF5_PYTHON="$PWD/.venv-ref5/bin/python"
    fi
else
    unset PADDLEMIX_REF_PYTHON PADDLEMIX_REF5_PYTHON
fi
# The chat page test drives the system's Chromium (never a browser downloaded at test time). Install Debian's
# package when it is missing and this runs as root with apt-get; otherwise that one test skips with a reason.
if [ ! -x /usr/bin/chromium ] && [ "${SKIP_BROWSER:-0}" != "1" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null
then
    echo "installing Debian's chromium for the chat page test (SKIP_BROWSER=1 skips this)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        >/dev/null; } || echo "chromium could not be installed; the chat page test will skip"
fi
python -m ruff check .
python -m ruff format --check .
# Two pytest workers, one per core (--dist loadfile keeps each file's tests and fixtures on one worker); then the
# tests that launch several training processes themselves (train.sh, one master port), one at a time. Exit code 5
# (nothing selected, e.g. when "$@" names a file without such tests) is not a failure of the second pass.
python -m pytest -q -n 2 --dist loadfile -m "not multiprocess" "$@"
python -m pytest -q -m multiprocess "$@" || [ $? -eq 5 ]
