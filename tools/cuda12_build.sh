#!/usr/bin/env bash
# The CUDA build for Jetson Orin (sm_87; JetPack 6.1+ ships CUDA 12.6) with a CUDA 12 toolkit, beside
# the machine's CUDA 13: proves the kernels, the runtime calls and the cuBLAS use still compile and
# link with CUDA 12 (compile and link only: CI has no GPU). CI (.ci/run) calls it after the CUDA 13
# build; the toolkit is assembled once (about a minute, 1 GB fetched) and cached.
#
# No registry reachable here has CUDA 12.6's compiler: the nvidia-cuda-nvcc-cu12 wheels (every 12.x)
# hold only ptxas, libnvvm and libdevice (no nvcc, cicc, cudafe++, fatbinary, nvlink), and
# nvidia-cuda-runtime-cu12 has no libcudart_static.a. Debian's newest CUDA 12 in a release is 12.4.1
# (trixie non-free; experimental has 12.5.0, which also builds: change the four pins below). So the
# toolkit is Debian's (two packages, fetched by `apt-get download` with private package lists:
# nothing is installed) plus the same release's CCCL headers (CUB, Thrust, libcu++) from PyPI,
# unpacked into a toolkit root in the standard layout. 12.6 only adds to 12.4's API.
#
# Usage: tools/cuda12_build.sh [BUILD_DIR]   (default build-cuda12; toolkit cached in
# $AIRCACHE_CUDA12_CACHE, default ~/.cache/aircache/cuda12; JOBS=2 parallel jobs, niced; x86-64)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-cuda12}
CACHE=${AIRCACHE_CUDA12_CACHE:-$HOME/.cache/aircache/cuda12}
DEB_SUITE=trixie
DEB_TOOLKIT=12.4.131~12.4.1-2   # nvidia-cuda-toolkit: nvcc, cicc, cudafe++, ptxas, nvlink, fatbinary, cuobjdump
DEB_DEV=12.4.127~12.4.1-2       # nvidia-cuda-dev: headers (runtime, crt, cuBLAS), libcudart_static.a
CCCL_WHEEL=nvidia-cuda-cccl-cu12==12.4.127.post1
TK="$CACHE/toolkit-${DEB_TOOLKIT%%~*}"

if [ ! -e "$TK/.complete" ]; then
    echo "cuda12_build: assembling CUDA $DEB_TOOLKIT (Debian $DEB_SUITE) in $TK"
    rm -rf "$TK" "$CACHE/tmp" && mkdir -p "$CACHE/tmp/lists/partial" "$CACHE/tmp/cache/archives/partial" "$TK"
    T="$CACHE/tmp"
    # The machine's own Debian mirror, with the suite that has CUDA 12 (non-free): package lists
    # and downloads stay in $T, signatures are checked against the system's archive keys.
    MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list)
    echo "deb $MIRROR $DEB_SUITE non-free" >"$T/sources.list"
    APT=(apt-get -qq -o Dir::Etc::SourceList="$T/sources.list" -o Dir::Etc::SourceParts=/dev/null
         -o Dir::State::Lists="$T/lists" -o Dir::Cache="$T/cache" -o Debug::NoLocking=1
         -o APT::Sandbox::User="$(id -un)")
    "${APT[@]}" update
    (cd "$T" && "${APT[@]}" download "nvidia-cuda-toolkit=$DEB_TOOLKIT" "nvidia-cuda-dev=$DEB_DEV")
    mkdir -p "$T/x"
    dpkg-deb --fsys-tarfile "$T"/nvidia-cuda-toolkit_*.deb | tar -x -C "$T/x" ./usr/bin ./usr/lib/nvidia-cuda-toolkit/bin ./usr/lib/nvidia-cuda-toolkit/libdevice
    dpkg-deb --fsys-tarfile "$T"/nvidia-cuda-dev_*.deb | tar -x -C "$T/x" ./usr/include \
        ./usr/lib/x86_64-linux-gnu/libcudart_static.a ./usr/lib/x86_64-linux-gnu/libcudadevrt.a
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$T" "$CCCL_WHEEL"
    python3 -c "import glob, sys, zipfile; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/nvidia_cuda_cccl_cu12-*.whl')[0]); z.extractall(sys.argv[1] + '/x', [n for n in z.namelist() if '/include/' in n])" "$T"
    # The standard toolkit layout (bin/, nvvm/, include/, lib64/) with a plain nvcc.profile.
    mkdir -p "$TK/bin" "$TK/nvvm/bin" "$TK/lib64"
    mv "$T"/x/usr/lib/nvidia-cuda-toolkit/bin/{nvcc,crt} "$TK/bin/"
    mv "$T"/x/usr/bin/{cudafe++,ptxas,nvlink,fatbinary,bin2c,cuobjdump,cu++filt} "$TK/bin/"
    mv "$T/x/usr/lib/nvidia-cuda-toolkit/bin/cicc" "$TK/nvvm/bin/"
    mv "$T/x/usr/lib/nvidia-cuda-toolkit/libdevice" "$TK/nvvm/"
    mv "$T/x/usr/include" "$TK/include"
    cp -r "$T"/x/nvidia/cuda_cccl/include/{cub,thrust,cuda,nv} "$TK/include/"
    mv "$T"/x/usr/lib/x86_64-linux-gnu/*.a "$TK/lib64/"
    cat >"$TK/bin/nvcc.profile" <<'EOF'
TOP = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
PATH += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES += "-I$(TOP)/include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(TOP)/lib64"
EOF
    rm -rf "$T" && touch "$TK/.complete"
fi

echo "cuda12_build: toolkit ready (${SECONDS}s)"

NVCC="$TK/bin/nvcc"
"$NVCC" --version | tail -2
# Only this toolkit: its own cuBLAS headers (not the caller's CUDA 13 root), no CUDAARCHS.
mkdir -p "$BUILD"
env -u CUDAARCHS AIRCACHE_CUBLAS_ROOT="$TK" nice -n 10 cmake -S . -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DAIRCACHE_CUDA=ON -DAIRCACHE_BUILD_PYTHON=OFF \
    -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_HOST_COMPILER="$(command -v g++)" \
    -DCMAKE_CUDA_ARCHITECTURES=87 -DCUDAToolkit_ROOT="$TK" >"$BUILD/configure.log" 2>&1 \
    || { cat "$BUILD/configure.log"; exit 1; }
grep -E '^-- aircache: (CUDA|cuBLAS)' "$BUILD/configure.log"
nice -n 10 cmake --build "$BUILD" -j "${JOBS:-2}" --target aircache_core aircache-cli aircache-bench

# Every CUDA object holds sm_87 machine code, and no other architecture.
ELFS=$("$TK/bin/cuobjdump" --list-elf "$BUILD/libaircache_core.a" \
       | awk '/^member/ {m = $2; sub(/:$/, "", m); sub(/.*:/, "", m)} /cubin/ {n = split($NF, a, "."); print m ": " a[n - 1]}')
echo "$ELFS"
NCU=$( (find cuda -maxdepth 1 -name '*.cu'; find cpp -name '*.cu') | wc -l)
[ "$(grep -c ': sm_87$' <<<"$ELFS")" -eq "$NCU" ] && ! grep -qv ': sm_87$' <<<"$ELFS" \
    || { echo "cuda12_build: expected sm_87 code (only) from each of the $NCU CUDA sources"; exit 1; }
echo "cuda12_build: CUDA 12 sm_87 build OK ($NCU CUDA sources) in ${SECONDS}s"
