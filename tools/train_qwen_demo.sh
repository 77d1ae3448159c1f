#!/usr/bin/env bash
# One training session of the Qwen2-VL demo model (tools/train_qwen_demo.py); run it again in the
# next session to continue. It works until MINUTES have passed, through the curriculum below:
#   - continues ckpt/qwen/last.pt, else the committed tools/demo_ckpt/qwen2vl/qwen2vl-small.pt
#     (float16 weights + bfloat16 optimizer moments: a new machine continues from the repository),
#     else starts the first phase;
#   - when the checkpoint's phase has run its steps, starts the next phase from it (--init);
#   - stops after the last phase.
# Every run saves ckpt/qwen/last.pt and the committed small checkpoint every 10 minutes and at its
# end; validation per protocol is printed every 15 minutes; the best HF checkpoint goes to
# models/qwen2vl-demo-hf. Log: ckpt/qwen/train.log. nice 19, 2 threads, float32.
#
#   MINUTES=120 bash tools/train_qwen_demo.sh
# (CK_DIR, SMALL_OUT and TRAIN_ARGS, extra options for new phases, exist for trying the script out on
# a scratch directory.)
#
# The phases (tools/demo_ckpt/qwen2vl/README.md says why; the committed model went through the first
# and the last four after other qa runs, listed there):
#   vision     the ViT with dense per-patch heads, the shape loss also over object patches alone
#   qa-shape   merger + LLM, ViT frozen, one image and one turn, shape-at-cell questions only, with the
#              attention loss (layers 1 and 2, head 0 on the asked object's tokens)
#   qa-focus   colour, shape and relation questions, one image and one turn
#   qa-rel     relation questions weighted up (the two objects split over the two supervised heads)
#   qa-mix     every protocol and type (1-3 images, 1-4 turns, follow-up openings), the whole-scene
#              loss after layer 3, the attention loss also on list answers' words, decaying over its
#              last 400 steps
#   qa-list    the same mix weighted to list answers, counts and existence, at half the rate
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-120}
PY=${PYTHON:-python3}
CK=${CK_DIR:-ckpt/qwen}
SMALL=${SMALL_OUT:-tools/demo_ckpt/qwen2vl/qwen2vl-small.pt}
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
mkdir -p "$CK"
END=$(( $(date +%s) + MINUTES * 60 ))
train() { nice -n 19 "$PY" tools/train_qwen_demo.py --ckpt-dir "$CK" --small-out "$SMALL" --threads 2 "$@" 2>&1 \
    | tee -a "$CK/train.log"; }

QA="--stage qa --batch 8 --questions 10 --lr 1e-3 --vit-lr 0 --key-weight 5 --merge-weight 1 --attn-weight 0.5 --attn-heads 1:0,2:0"
ONE="--turn-probs 1,0,0,0 --follow-up 0 --image-probs 1,0,0 --scene-weight 0 --warmup 10 --decay-steps 0"
declare -A NEXT=([vision]=qa-shape [qa-shape]=qa-focus [qa-focus]=qa-rel [qa-rel]=qa-mix [qa-mix]=qa-list [qa-list]=)
phase_args() {
    case "$1" in
        vision) echo "--stage vision --steps 1600 --batch 16 --lr 1e-3 --warmup 50 --decay-steps 150 --obj-weight 2 --eval-every 15" ;;
        qa-shape) echo "$QA $ONE --steps 400 --eval-every 30 \
            --type-weights colour=0.01,shape=100,count=0.01,relation=0.01,exist=0.01,list=0.01" ;;
        qa-focus) echo "$QA $ONE --steps 700 --eval-every 30 --type-weights colour=1,shape=1,count=0.01,relation=2,exist=0.01,list=0.01" ;;
        qa-rel) echo "$QA $ONE --steps 500 --eval-every 30 --type-weights colour=0.3,shape=0.3,count=0.01,relation=4,exist=0.01,list=0.01" ;;
        qa-mix) echo "$QA --attn-list --steps 2600 --scene-weight 0.3 --scene-layer 3 --warmup 20 --decay-steps 400 \
            --eval-every 12 --type-weights colour=1,shape=1,count=2,relation=2,exist=1,list=3" ;;
        qa-list) echo "$QA --attn-list --lr 5e-4 --steps 800 --scene-weight 0.3 --scene-layer 3 --warmup 20 --decay-steps 200 \
            --eval-every 12 --type-weights colour=1,shape=1,count=3,relation=1,exist=3,list=6" ;;
    esac
}

while :; do
    left=$(( (END - $(date +%s)) / 60 ))
    [ "$left" -ge 3 ] || { echo "session time used up"; break; }
    src=""
    if [ -f "$CK/last.pt" ]; then src="$CK/last.pt"; elif [ -f "$SMALL" ]; then src="$SMALL"; fi
    if [ -z "$src" ]; then
        # shellcheck disable=SC2046
        train --phase vision $(phase_args vision) --minutes "$left" "${EXTRA[@]}"
        continue
    fi
    read -r phase stage finished step < <("$PY" -c '
import sys, torch
s = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
a = s["args"]
print(a.get("phase") or "-", s["stage"], int(s["step"] >= a["steps"]), s["step"])' "$src")
    if [ "$finished" = 0 ]; then
        train --resume "$src" --minutes "$left"
        continue
    fi
    [ "$phase" = "-" ] && phase=$([ "$stage" = vision ] && echo vision || echo qa-mix)   # runs before phases had names
    next=${NEXT[$phase]:-}
    if [ -z "$next" ]; then
        echo "training finished: phase $phase at step $step ($src)"
        break
    fi
    cp "$src" "$CK/$phase.pt"
    # shellcheck disable=SC2046
    train --phase "$next" --init "$CK/$phase.pt" $(phase_args "$next") --minutes "$left" "${EXTRA[@]}"
done
