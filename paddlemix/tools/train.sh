#!/bin/sh
# Launch supervised_finetune.py on several devices or nodes through paddle.distributed.launch, with the console of
# the single-process tool: rank 0's output (every process's log under OUTPUT_DIR/launch_logs).
#
#   sh paddlemix/tools/train.sh ARGS.json [--key value ...]      (--help: the settings)
#
# Environment (all optional): GPUS, NPROC, DEVICE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, PYTHON, LOG_DIR.
# The checks, the launch and the console are in paddlemix/utils/launch.py.
PYTHON=${PYTHON:-python}
FIX="Activate the environment the package was installed into (. .venv/bin/activate), or set PYTHON=/path/to/that/env/bin/python"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    printf '\nerror: PYTHON=%s is not an interpreter on this machine. %s.\n\n' "$PYTHON" "$FIX" >&2
    exit 2
fi
if ! "$PYTHON" -c "import paddlemix" 2>/dev/null; then
    printf '\nerror: the paddlemix package is not installed in %s (PYTHON). %s, or install it there (pip install -e .).\n\n' "$(command -v "$PYTHON")" "$FIX" >&2
    exit 2
fi
exec "$PYTHON" -m paddlemix.utils.launch "$@"
