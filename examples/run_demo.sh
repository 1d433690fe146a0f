#!/usr/bin/env bash
# Install (into the active virtual environment, or a new ./.venv) and run the coloured-shapes demo fine-tune.
# Usage: bash examples/run_demo.sh [FAMILY] [shapes_demo.py options]   FAMILY: qwen2_5_vl (default), qwen2_vl, qwen3_vl or llava
#        bash examples/run_demo.sh dpo [dpo_demo.py options]          preference training (DPO) on shapes pairs
#        bash examples/run_demo.sh video [video_demo.py options]      video: which way a square moves in mp4 clips
#        bash examples/run_demo.sh paddleocr_vl [ocr_demo.py options] a tiny PaddleOCR-VL transcribing text lines
set -euo pipefail
FAMILY=qwen2_5_vl
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    FAMILY=$1
    shift
fi
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/install.sh"
if [ "$FAMILY" = dpo ]; then
    python examples/dpo_demo.py "$@"
elif [ "$FAMILY" = video ]; then
    python examples/video_demo.py "$@"
elif [ "$FAMILY" = paddleocr_vl ]; then
    python examples/ocr_demo.py "$@"
else
    python examples/shapes_demo.py --family "$FAMILY" "$@"
fi
