# Install the toolkit into the active virtual environment, or into ./.venv (created if needed) when none is
# active. Source it from bash: `. scripts/install.sh`. PADDLE_PACKAGE picks the Paddle build (default: CPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    . .venv/bin/activate
fi
echo "installing into $(python -c 'import sys; print(sys.prefix)')"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "${PADDLE_PACKAGE:-paddlepaddle==3.3.*}"
python -m pip install --quiet -e ".[test]"
