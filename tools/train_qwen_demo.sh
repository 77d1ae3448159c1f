#!/usr/bin/env bash
# One training session of the Qwen2-VL demo model (tools/train_qwen_demo.py); run it again in the
# next session to continue. It works until MINUTES have passed:
#   - continues ckpt/qwen/last.pt, else the committed tools/demo_ckpt/qwen2vl/qwen2vl-small.pt
#     (float16 weights + bfloat16 optimizer moments: a new machine continues from the repository),
#     else starts the vision stage;
#   - when the vision stage has run its VISION_STEPS, starts the qa stage from it (QA_STEPS);
#   - stops when the qa stage has run its steps.
# Every run saves ckpt/qwen/last.pt and the committed small checkpoint every 10 minutes and at its
# end; validation per protocol is printed every 10 minutes; the best HF checkpoint goes to
# models/qwen2vl-demo-hf. Log: ckpt/qwen/train.log. nice 19, 2 threads, float32 (bf16 autocast was
# slower here: no usable AMX in this VM).
#
#   MINUTES=120 bash tools/train_qwen_demo.sh
# (CK_DIR, SMALL_OUT, VISION_STEPS, QA_STEPS and TRAIN_ARGS, extra options for new stages, exist for
# trying the script out on a scratch directory.)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-120}
VISION_STEPS=${VISION_STEPS:-1600}
QA_STEPS=${QA_STEPS:-5000}
PY=${PYTHON:-python3}
CK=${CK_DIR:-ckpt/qwen}
SMALL=${SMALL_OUT:-tools/demo_ckpt/qwen2vl/qwen2vl-small.pt}
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
mkdir -p "$CK"
END=$(( $(date +%s) + MINUTES * 60 ))
train() { nice -n 19 "$PY" tools/train_qwen_demo.py --ckpt-dir "$CK" --small-out "$SMALL" --threads 2 "$@" 2>&1 \
    | tee -a "$CK/train.log"; }

while :; do
    left=$(( (END - $(date +%s)) / 60 ))
    [ "$left" -ge 3 ] || { echo "session time used up"; break; }
    src=""
    if [ -f "$CK/last.pt" ]; then src="$CK/last.pt"; elif [ -f "$SMALL" ]; then src="$SMALL"; fi
    if [ -z "$src" ]; then
        train --stage vision --steps "$VISION_STEPS" --minutes "$left" --batch 16 --lr 1e-3 --warmup 50 \
            --decay-steps 150 --obj-weight 2 --eval-every 15 "${EXTRA[@]}"
        continue
    fi
    read -r stage finished step < <("$PY" -c '
import sys, torch
s = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
print(s["stage"], int(s["step"] >= s["args"]["steps"]), s["step"])' "$src")
    if [ "$finished" = 0 ]; then
        train --resume "$src" --minutes "$left"
    elif [ "$stage" = vision ]; then
        train --stage qa --init "$src" --steps "$QA_STEPS" --minutes "$left" --batch 8 --questions 10 \
            --lr 1e-3 --vit-lr 0 --key-weight 5 --scene-weight 0.3 --scene-layer 3 --warmup 100 \
            --decay-steps 750 --type-weights colour=1,shape=1.5,count=2,relation=2,exist=1,list=2 --eval-every 15 \
            "${EXTRA[@]}"
    else
        echo "training finished: $stage stage at step $step ($src)"
        break
    fi
done
