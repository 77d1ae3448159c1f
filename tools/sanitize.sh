#!/usr/bin/env bash
# The sanitizer suite (what .ci/run runs; README, "Developer notes"): one clang build with
# AddressSanitizer + UBSan and libFuzzer coverage, then
#   1. the C++ test driver and kernel tests (ctest),
#   2. the pytest subset that does not import torch, against the extension from this build
#      (the ASan runtime preloaded into Python),
#   3. every libFuzzer target for FUZZ_SECONDS (default 60) each, two at a time.
#
#   bash tools/sanitize.sh [BUILD_DIR]            # default build-san
#   FUZZ_SECONDS=3600 bash tools/sanitize.sh      # a longer fuzzing run (corpora kept in BUILD_DIR/fuzz-*)
#   SANITIZE_ONLY=fuzz bash tools/sanitize.sh     # skip 1 and 2 (also: ctest, pytest)
#
# Needs clang with its runtime (Debian: clang libclang-rt-14-dev), cmake, ninja, Python with numpy,
# pytest, Pillow, gguf, sentencepiece, tokenizers and nanobind (pip install nanobind). A finding
# stops the script non-zero with the fuzzer's report and the crashing input under BUILD_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
B=$(realpath -m "${1:-build-san}")
SECS=${FUZZ_SECONDS:-60}
ONLY=${SANITIZE_ONLY:-all}
want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }

python -c "import nanobind" 2>/dev/null || { echo "sanitize.sh: pip install nanobind first" >&2; exit 1; }
CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAIRCACHE_CUDA=OFF \
    -DAIRCACHE_SANITIZE=ON -DAIRCACHE_FUZZ=ON -DAIRCACHE_BUILD_TESTS=ON -DAIRCACHE_BUILD_PYTHON=ON \
    -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$B" -j "$(nproc)"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

if want ctest; then
    echo "--- C++ tests under ASan + UBSan"
    ctest --test-dir "$B" --output-on-failure
else
    ctest --test-dir "$B" -R make_corpus >/dev/null  # the GGUF fuzzer's seeds
fi

# The extension as a package of its own (the sources' Python files, this build's _core).
PKG="$B/asan-python"
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r python/aircache_cpp "$PKG/"
cp "$B"/_core*.so "$PKG/aircache_cpp/"
# a pytest plugin that fails the session if torch was imported (the subset must not need it)
cat > "$PKG/no_torch.py" <<'EOF'
import sys


def pytest_sessionfinish(session, exitstatus):
    if "torch" in sys.modules:
        print("\nsanitize.sh: the ASan pytest subset imported torch; keep it to torch-free tests")
        session.exitstatus = 1
EOF
run_pytest() {
    echo "--- pytest (no torch) against the ASan + UBSan extension"
    # CPython keeps its allocations for the process's life: no leak check in this one; the CUDA
    # runtime (a CUDA build's CLI started by the tests) needs the shadow gap unprotected.
    env LD_PRELOAD="$(clang -print-file-name=libclang_rt.asan-x86_64.so)" \
        ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0:abort_on_error=1 PYTHONPATH="$PKG" \
        python -m pytest -q -p no:cacheprovider -p no_torch \
        tests/test_hardening.py tests/test_malformed.py tests/test_gguf_reader.py tests/test_quants.py \
        tests/test_backend_ops.py tests/test_kernels.py tests/test_tokenizer_spm.py tests/test_tokenizer_bpe.py \
        tests/test_tokenizer_errors.py tests/test_scheduler.py -k "not every_code_point"
}

# Fuzz targets: name, then extra arguments (seed directories, options).
SEEDS="$B/fuzz-seeds"
mkdir -p "$SEEDS/image"
for f in examples/scene0.png examples/scene2.png; do (printf '\001'; cat "$f") > "$SEEDS/image/$(basename "$f")"; done
python - "$SEEDS/image" <<'EOF'
# JPEG (baseline, progressive, grayscale) and PNG (grey, RGBA, palette) seeds from an example scene;
# the first byte selects the file path of fuzz_image.
import io, sys
from PIL import Image
im = Image.open("examples/scene1.png").convert("RGB").resize((40, 24))
for name, img, kw in [("s.jpg", im, {"quality": 80}), ("p.jpg", im, {"quality": 70, "progressive": True}),
                      ("g.jpg", im.convert("L"), {}), ("g.png", im.convert("L"), {}),
                      ("a.png", im.convert("RGBA"), {}), ("p.png", im.convert("P"), {})]:
    b = io.BytesIO()
    img.save(b, format="JPEG" if name.endswith("jpg") else "PNG", **kw)
    open(f"{sys.argv[1]}/{name}", "wb").write(b"\x01" + b.getvalue())
EOF
fuzz() {  # fuzz NAME [args]: FUZZ_SECONDS of libFuzzer, report in BUILD_DIR/fuzz-NAME.log
    local name=$1
    shift
    mkdir -p "$B/fuzz-$name"
    (cd "$B/fuzz-$name" && "$B/fuzz_$name" -max_total_time="$SECS" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$B/fuzz-$name/" "$B/fuzz-$name" "$@" >"$B/fuzz-$name.log" 2>&1)
}
report() {  # the last status line and the statistics; the whole log when the target failed
    local name=$1 rc=$2
    if [ "$rc" -ne 0 ]; then
        echo "fuzz_$name: FAILED (exit $rc); report: $B/fuzz-$name.log"
        tail -60 "$B/fuzz-$name.log"
        return 1
    fi
    printf 'fuzz_%-10s %s\n' "$name" "$(grep -a -E '^#[0-9]+' "$B/fuzz-$name.log" | tail -1 | tr -s ' \t' ' ')"
    grep -a '^stat::' "$B/fuzz-$name.log" | tr '\n' ' '
    echo
}
pair() {  # two targets side by side (one core each); both must finish clean
    local a=$1 b=$2 pa pb ra=0 rb=0
    eval "fuzz $a \${ARGS_$a:-}" & pa=$!
    if [ "$b" = pytest ]; then (run_pytest) & else eval "fuzz $b \${ARGS_$b:-}" & fi
    pb=$!
    wait "$pa" || ra=$?
    wait "$pb" || rb=$?
    report "$a" "$ra" || return 1
    if [ "$b" = pytest ]; then [ "$rb" -eq 0 ] || { echo "pytest under ASan: FAILED"; return 1; }
    else report "$b" "$rb" || return 1; fi
}
ARGS_gguf="$B/corpus/valid $B/corpus/malformed"
ARGS_loader="-len_control=0 -max_len=128"
ARGS_image="$SEEDS/image"

if want fuzz; then
    echo "--- libFuzzer, ${SECS} s per target"
    pair gguf loader
    pair tokenizer image
    if [ "$ONLY" = all ]; then
        pair chat pytest
    else
        rc=0
        fuzz chat || rc=$?
        report chat "$rc"
    fi
elif want pytest; then
    run_pytest
fi
echo "sanitize.sh: clean"
