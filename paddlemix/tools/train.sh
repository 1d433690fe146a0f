#!/usr/bin/env bash
# Launch supervised_finetune.py on several devices or nodes through paddle.distributed.launch.
#
#   sh paddlemix/tools/train.sh ARGS.json [--key value ...]
#
# Environment (all optional):
#   GPUS=0,1,2,3        devices of this node (default: every visible GPU, or every NPU with DEVICE=npu)
#   NPROC=2             processes on a machine without GPU/NPU (CPU data parallel over gloo; default 1)
#   DEVICE=npu          use Ascend NPUs (paddle-custom-npu); exports PaddleMIX's NPU flags unless already set
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=8090   multi-node training (same command on each node)
#   PYTHON=python3      interpreter to use
set -eu
if [ $# -lt 1 ]; then
    echo "usage: sh paddlemix/tools/train.sh ARGS.json [--key value ...]" >&2
    exit 2
fi
ARGS_JSON=$1
shift
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-8090}
OUTPUT_DIR=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1])).get('output_dir', 'output'))" "$ARGS_JSON")
PREV=""
for ARG in "$@"; do  # a command-line --output_dir overrides the file's
    [ "$PREV" = "--output_dir" ] && OUTPUT_DIR=$ARG
    PREV=$ARG
done
LOG_DIR=${LOG_DIR:-$OUTPUT_DIR/launch_logs}

if [ "${DEVICE:-}" = "npu" ]; then
    # PaddleMIX's NPU flags (paddlemix/utils/device.py: NPU_ENV), exported before Python starts; yours win.
    eval "$("$PYTHON" -c 'import os, shlex; from paddlemix.utils.device import NPU_ENV
print("\n".join(f"export {k}={shlex.quote(os.environ.get(k, v))}" for k, v in NPU_ENV.items()))')"
    COUNT=$("$PYTHON" -c "import paddle; print(paddle.device.get_device_count('npu') if 'npu' in paddle.device.get_all_custom_device_type() else 0)")
else
    COUNT=$("$PYTHON" -c "import paddle; print(paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0)")
fi

set -- --log_dir "$LOG_DIR" "$HERE/supervised_finetune.py" "$ARGS_JSON" "$@"
if [ "$NNODES" -gt 1 ]; then
    set -- --nnodes "$NNODES" --rank "$NODE_RANK" --master "$MASTER_ADDR:$MASTER_PORT" "$@"
fi
if [ "$COUNT" -gt 0 ]; then
    DEVICES=${GPUS:-$(seq -s, 0 $((COUNT - 1)))}
    set -- --devices "$DEVICES" "$@"
else
    set -- --nproc_per_node "${NPROC:-1}" "$@"
fi
echo "+ $PYTHON -m paddle.distributed.launch $*"
exec "$PYTHON" -m paddle.distributed.launch "$@"
