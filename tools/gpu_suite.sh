#!/usr/bin/env bash
# tools/gpu_suite.sh — the CUDA backend's checks on a machine with an NVIDIA GPU, in one command:
#
#   bash tools/gpu_suite.sh [OUTDIR]            (default OUTDIR: gpu-results)
#
# 1. installs cuBLAS (the nvidia-cublas wheel: headers to build against, library loaded at run time)
#    and this package built with CUDA for the local GPU's architecture, plus the test extras;
# 2. runs tests/gpu (every op against the CPU backend, end-to-end equality) -> OUTDIR/gpu-tests.txt;
# 3. runs the GPU benchmark of docs/performance.md: random-weight text 4096 wide, 8 layers, 32/8
#    heads (mistral-7b-8l), F16 and Q4_K, one and five 576-token images, batch 1 and 8, 128 tokens,
#    policies full and aircache 0.1 -> OUTDIR/gpu-bench.md and .json (decode tok/s, prefill ms,
#    importance ms, KV MiB, speedup and its memory-traffic bound per row);
# 4. with LLAMACPP_BIN=<llama.cpp build/bin with CUDA>, compares decode/prefill with llama.cpp on the
#    same GGUF (tools/compare_llamacpp.py --gpu) -> OUTDIR/gpu-vs-llamacpp.md. Building that:
#    pip download --no-binary :all: --no-deps llama-cpp-python; unpack; in vendor/llama.cpp:
#    cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=<arch> && cmake --build build -j
#    --target llama-bench llama-quantize llama-mtmd-cli
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null || { echo "gpu_suite: no nvidia-smi: this machine has no NVIDIA driver"; exit 1; }
ARCH=${CUDAARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')}
echo "== GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1), sm_$ARCH"

echo "== install (CUDA on, architecture $ARCH)"
python -m pip install -q --no-deps nvidia-cublas
AIRCACHE_CUBLAS_ROOT=$(python -c "import sysconfig, os, glob; print(glob.glob(os.path.join(sysconfig.get_paths()['purelib'], 'nvidia', 'cu1*'))[0])")
export AIRCACHE_CUBLAS_ROOT AIRCACHE_CUBLAS_DIR="$AIRCACHE_CUBLAS_ROOT/lib"
SKBUILD_CMAKE_DEFINE="AIRCACHE_CUDA=ON" CUDAARCHS="$ARCH" python -m pip install -q ".[test]"
python -c "import aircache_cpp as ac; print(ac.build_info_text()); assert ac.cuda_available(), 'no usable GPU'"

echo "== tests/gpu"
python -m pytest -q tests/gpu 2>&1 | tee "$OUT/gpu-tests.txt"

echo "== benchmark"
BENCH=(aircache-bench --random mistral-7b-8l --type f16,q4_k --n-visual 576,2880 -B 1,8 -n 128
       --kv-policy full,aircache --kv-budget 0.1 --device cuda -r 3)
"${BENCH[@]}" -o json > "$OUT/gpu-bench.json"
python - "$OUT/gpu-bench.json" > "$OUT/gpu-bench.md" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
print("| type | visual | B | policy | prefill ms | importance ms | decode tok/s (total) | KV MiB/seq | speedup s | bound b | s-1 >= 0.7(b-1) |")
print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    ok = "" if r["policy"] == "full" else ("yes" if r["speedup"] - 1 >= 0.7 * (r["bound"] - 1) else "NO")
    s = "-" if r["policy"] == "full" else f"{r['speedup']:.3f}"
    b = "-" if r["policy"] == "full" else f"{r['bound']:.3f}"
    print(f"| {r['type']} | {r['n_visual']} | {r['batch']} | {r['policy']} {r['budget'] if r['policy'] != 'full' else ''} | "
          f"{r['prefill_ms']:.1f} | {r['importance_ms']:.2f} | {r['decode_tps_total']:.1f} | {r['kv_mib_after']:.1f} | {s} | {b} | {ok} |")
PY
cat "$OUT/gpu-bench.md"
echo "(command: ${BENCH[*]})"

echo "== benchmark: Qwen-VL shapes, dynamic-resolution images (encode timed)"
QBENCH=(aircache-bench --random qwen2.5-vl-3b-8l,qwen3-vl-2b-8l --type q8_0 --n-visual 1024,4096 -B 1,8 -n 64
        --kv-policy full,aircache --kv-budget 0.1 --device cuda -r 2)
"${QBENCH[@]}" | tee "$OUT/gpu-bench-qwen.md"
echo "(command: ${QBENCH[*]})"

echo "== benchmark: Gemma 3 shape (sliding-window layers; the budget on its global layer)"
GBENCH=(aircache-bench --random gemma3-4b-8l --type q8_0 -B 1,8 -n 64 --kv-policy full,aircache --kv-budget 0.1
        --device cuda -r 2)
"${GBENCH[@]}" | tee "$OUT/gpu-bench-gemma.md"
echo "(command: ${GBENCH[*]})"

echo "== benchmark: SmolVLM2 shape (a 1024x768 photo: 13 tiles of 81 tokens, markers between)"
SBENCH=(aircache-bench --random smolvlm2-2b-8l --type q8_0 -B 1,8 -n 64 --kv-policy full,aircache --kv-budget 0.1
        --device cuda -r 2)
"${SBENCH[@]}" | tee "$OUT/gpu-bench-smolvlm.md"
echo "(command: ${SBENCH[*]})"

echo "== benchmark: InternVL3 shape (a 1024x768 photo: 4 x 3 tiles + the thumbnail, 256 tokens each)"
IBENCH=(aircache-bench --random internvl3-2b-8l --type q8_0 -B 1,8 -n 64 --kv-policy full,aircache --kv-budget 0.1
        --device cuda -r 2)
"${IBENCH[@]}" | tee "$OUT/gpu-bench-internvl.md"
echo "(command: ${IBENCH[*]})"

echo "== benchmark: LLaVA-NeXT shape (a 672x672 image: the base + 2 x 2 tiles, 2,880 visual tokens + 48 newlines)"
NBENCH=(aircache-bench --random llava-next-mistral-7b-8l --type q4_k -B 1,8 -n 64 --kv-policy full,aircache,vlcache
        --kv-budget 0.1 --device cuda -r 2)
"${NBENCH[@]}" | tee "$OUT/gpu-bench-llava-next.md"
echo "(command: ${NBENCH[*]})"

if [ -n "${LLAMACPP_BIN:-}" ]; then
    echo "== llama.cpp (CUDA) on the same files"
    python tools/compare_llamacpp.py --llamacpp-bin "$LLAMACPP_BIN" --gpu --shape mistral-7b-8l \
        --types f16,q4_k_m --prompt 596 --gen 128 -r 3 --rounds 1 | tee "$OUT/gpu-vs-llamacpp.md"
fi
echo "== results in $OUT"
