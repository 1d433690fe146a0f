#!/bin/sh
# Launch supervised_finetune.py on several devices or nodes through paddle.distributed.launch, with the console of
# the single-process tool (rank 0's output; every process's log under OUTPUT_DIR/launch_logs).
#
#   sh paddlemix/tools/train.sh ARGS.json [--key value ...]      (sh paddlemix/tools/train.sh --help: the settings)
#
# Environment (all optional): GPUS, NPROC, DEVICE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, PYTHON, LOG_DIR.
# The checks, the launch and the console are in paddlemix/utils/launch.py.
PYTHON=${PYTHON:-python}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    printf '\nerror: PYTHON=%s is not an interpreter on this machine. Activate the environment the package was installed into (. .venv/bin/activate), or set PYTHON=/path/to/that/env/bin/python.\n\n' "$PYTHON" >&2
    exit 2
fi
exec "$PYTHON" "$(dirname "$0")/launch.py" "$@"
