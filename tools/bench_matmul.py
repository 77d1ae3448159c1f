"""Time one CPU matmul (`_core._op_matmul`, 2 threads) of float weights: a prefill-sized GEMM or a
decode-sized product cycling over 6 weight matrices (more than the L3, so the weights stream from
memory). Prints the best wall time and the best process CPU time (user + sys of both threads): on a
shared machine the CPU time is the steadier figure of the two. Run it alternately from two builds
(venvs) to compare them.

    python tools/bench_matmul.py F16 4096 4096 512            # GEMM: R x K weights, T rows
    python tools/bench_matmul.py F16 14336 4096 1 --stream    # decode: GB/s of weights
"""
import argparse
import resource
import time

import numpy as np

from aircache_cpp import _core


def weights(type_name, R, K, rng):
    w = rng.standard_normal((R, K)).astype(np.float32)
    if type_name == "F16":
        return w.astype(np.float16).view(np.uint8).reshape(-1)
    if type_name == "BF16":
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(-1)
    return w.view(np.uint8).reshape(-1)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("type", choices=["F32", "F16", "BF16"])
    ap.add_argument("R", type=int)
    ap.add_argument("K", type=int)
    ap.add_argument("T", type=int)
    ap.add_argument("--stream", action="store_true", help="cycle over 6 matrices, report weight GB/s")
    ap.add_argument("-r", "--reps", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    mats = [weights(a.type, a.R, a.K, rng) for _ in range(6 if a.stream else 1)]
    x = rng.standard_normal((a.T, a.K)).astype(np.float32)
    calls = 12 if a.stream else 1
    for m in mats:
        _core._op_matmul("cpu", a.type, m, a.R, a.K, x, None)
    best_wall = best_cpu = float("inf")
    for _ in range(a.reps):
        c0, t0 = cpu(), time.perf_counter()
        for j in range(calls):
            _core._op_matmul("cpu", a.type, mats[j % len(mats)], a.R, a.K, x, None)
        best_wall, best_cpu = min(best_wall, time.perf_counter() - t0), min(best_cpu, cpu() - c0)
    if a.stream:
        gb = calls * mats[0].nbytes / 1e9
        print(f"{a.type} {a.R}x{a.K} T={a.T}: {gb / best_wall:.1f} GB/s wall, {gb / best_cpu:.1f} GB per CPU-second")
    else:
        fl = 2.0 * a.R * a.K * a.T
        print(f"{a.type} {a.R}x{a.K} T={a.T}: wall {best_wall * 1e3:.2f} ms ({fl / best_wall / 1e9:.1f} GFLOP/s), "
              f"CPU {best_cpu * 1e3:.1f} ms ({fl / best_cpu / 1e9:.1f} GFLOP/s per busy core)")


if __name__ == "__main__":
    main()
