"""Every op of the CUDA backend against the CPU backend (the oracle; tests/test_backend_ops.py
checks the CPU against numpy), on random inputs over dtypes and shapes: odd sizes, GQA ratios
1/2/4/8, lengths that are not multiples of the kernels' tiles (64 keys, 32-key column tiles, 64x64
GEMM tiles), several sequences with their own lengths (per-layer lengths after compaction).
Tolerances are written next to each test with the reason."""

import math
import zlib

import numpy as np
import pytest

import backend_ops_reference as R
from aircache_cpp import _core

DEV = "cuda:0"


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def rng(*key):
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

# Which test compares each op of the backend table with the CPU (tests/test_backend_ops.py checks,
# on every machine, that this covers the whole table and that the tests exist).
COVERAGE = {
    "matmul": "test_gemm", "add": "test_elementwise", "mul": "test_elementwise", "scale": "test_elementwise",
    "rms_norm": "test_norms", "layer_norm": "test_norms", "rope": "test_rope_axes", "attention": "test_attention_dense",
    "attention_kv": "test_attention_cache", "kv_store": "test_kv_store_read_compact",
    "kv_compact": "test_kv_store_read_compact", "activation": "test_elementwise", "glu": "test_elementwise",
    "softmax": "test_softmax", "get_rows": "test_rows_and_concat", "set_rows": "test_rows_and_concat",
    "concat": "test_rows_and_concat", "patch_embed": "test_patch_embed_and_pool", "avg_pool": "test_patch_embed_and_pool",
}


# Matvec path (T <= 8): the same dequantized values, F32 products; only the summation order
# differs (warp tree vs 8 accumulators): 1e-5 of the output range.
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 8])
def test_matvec(type_name, T):
    g = rng("mv", type_name, T)
    n_rows, n_cols = 37, 512
    w = R.weight_bytes(type_name, n_rows, n_cols, g)
    x = g.standard_normal((T, n_cols)).astype(np.float32)
    b = g.standard_normal(n_rows).astype(np.float32)
    cpu = _core._op_matmul("cpu", type_name, w, n_rows, n_cols, x, b)
    gpu = _core._op_matmul(DEV, type_name, w, n_rows, n_cols, x, b)
    assert rel(gpu, cpu) < 1e-5


# Ops::matmuls (the models' Q/K/V and gate/up call) on the device: each projection the device's
# matmul bits, whatever the backend runs together.
@pytest.mark.parametrize("T", [1, 8, 37])
def test_matmuls(T):
    g = rng("mms", "mix", T)
    n_cols = 512
    projs = [(t, R.weight_bytes(t, r, n_cols, g), r, g.standard_normal(r).astype(np.float32) if i % 2 else None)
             for i, (t, r) in enumerate([("Q4_K", 48), ("Q6_K", 33), ("Q8_0", 17)])]
    x = g.standard_normal((T, n_cols)).astype(np.float32)
    for (t, w, r, b), y in zip(projs, _core._op_matmuls(DEV, projs, n_cols, x)):
        np.testing.assert_array_equal(y.view(np.uint32), _core._op_matmul(DEV, t, w, r, n_cols, x, b).view(np.uint32))


# GEMM path (T > 8): F32 weights stay F32 (F32 GEMM: 1e-5). Other types are dequantized to F16
# and, with cuBLAS, the activations too: one F16 rounding (2^-11 relative) of each factor, F32
# accumulation, so a few 1e-4 of the output range; 4e-3 leaves room for the worst rows. The built-in
# kernel (AIRCACHE_NO_CUBLAS) keeps F32 activations: same bound.
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("T,n_rows", [(9, 37), (70, 300), (130, 65)])
@pytest.mark.parametrize("cublas", [True, False])
def test_gemm(type_name, T, n_rows, cublas, monkeypatch):
    if not cublas:
        monkeypatch.setenv("AIRCACHE_NO_CUBLAS", "1")
    g = rng("gemm", type_name, T, n_rows)
    n_cols = 768
    w = R.weight_bytes(type_name, n_rows, n_cols, g)
    x = g.standard_normal((T, n_cols)).astype(np.float32)
    b = g.standard_normal(n_rows).astype(np.float32) if n_rows != 300 else None
    cpu = _core._op_matmul("cpu", type_name, w, n_rows, n_cols, x, b)
    gpu = _core._op_matmul(DEV, type_name, w, n_rows, n_cols, x, b)
    assert rel(gpu, cpu) < (1e-5 if type_name == "F32" else 4e-3)


# Norms: the same formula, block reductions instead of sequential sums: 1e-5.
@pytest.mark.parametrize("T,n", [(1, 64), (7, 4096), (3, 1000), (5, 33)])
def test_norms(T, n):
    g = rng("norm", T, n)
    x = (g.standard_normal((T, n)) * 3).astype(np.float32)
    w, b = g.standard_normal(n).astype(np.float32), g.standard_normal(n).astype(np.float32)
    assert rel(_core._op_rmsnorm(DEV, x, w, 1e-5), _core._op_rmsnorm("cpu", x, w, 1e-5)) < 1e-5
    assert rel(_core._op_layernorm(DEV, x, w, b, 1e-6), _core._op_layernorm("cpu", x, w, b, 1e-6)) < 1e-5
    assert rel(_core._op_rmsnorm(DEV, x, None, 1e-5), _core._op_rmsnorm("cpu", x, None, 1e-5)) < 1e-5
    assert rel(_core._op_layernorm(DEV, x, None, None, 1e-6), _core._op_layernorm("cpu", x, None, None, 1e-6)) < 1e-5


# RoPE: the angle is the same float product; cosf/sinf vs std::cos/sin differ by an ulp or two:
# 1e-5 absolute on O(1) values, positions up to 10^4.
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("H,D,n_rot", [(4, 64, 64), (3, 80, 40), (8, 128, 128), (1, 256, 256)])
def test_rope(neox, H, D, n_rot):
    g = rng("rope", neox, H, D)
    T = 11
    x = g.standard_normal((T, H, D)).astype(np.float32)
    inv = (1.0 / 10000 ** (np.arange(0, n_rot, 2) / n_rot)).astype(np.float32)
    pos = np.array([0, 1, 2, 5, 63, 64, 65, 511, 2047, 4095, 9999], np.int32)
    cpu = _core._op_rope("cpu", x, n_rot, pos, inv, neox)
    assert np.abs(_core._op_rope(DEV, x, n_rot, pos, inv, neox) - cpu).max() < 1e-5


# Multi-axis RoPE (M-RoPE sections, 2-D vision RoPE): the same angle products per pair: 1e-5.
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("A,D", [(3, 128), (2, 80), (4, 64)])
def test_rope_axes(neox, A, D):
    g = rng("rope-axes", neox, A, D)
    T, H = 13, 4
    x = g.standard_normal((T, H, D)).astype(np.float32)
    inv = (1.0 / 10000 ** (np.arange(0, D, 2) / D)).astype(np.float32)
    pos = g.integers(0, 5000, (T, A)).astype(np.int32)
    axis = np.sort(g.integers(0, A, D // 2)).astype(np.int32)
    cpu = _core._op_rope("cpu", x, D, pos, inv, neox, axis)
    assert np.abs(_core._op_rope(DEV, x, D, pos, inv, neox, axis) - cpu).max() < 1e-5


# Elementwise: expf/erff/tanhf within a couple of ulps of the C library: 1e-5 relative; adds,
# products and scaling round once each: exact.
@pytest.mark.parametrize("n", [1, 1000, 100003])
def test_elementwise(n):
    g = rng("ew", n)
    x = (g.standard_normal(n) * 4).astype(np.float32)
    y = g.standard_normal(n).astype(np.float32)
    for kind in ("gelu", "quick_gelu", "silu", "gelu_tanh"):
        assert rel(_core._op_activation(DEV, x, kind), _core._op_activation("cpu", x, kind)) < 1e-5
        assert rel(_core._op_glu(DEV, x, y, kind), _core._op_glu("cpu", x, y, kind)) < 1e-5
    assert rel(_core._op_silu_mul(DEV, x, y), _core._op_silu_mul("cpu", x, y)) < 1e-5
    assert np.array_equal(_core._op_add(DEV, x, y), _core._op_add("cpu", x, y))
    assert np.array_equal(_core._op_mul(DEV, x, y), _core._op_mul("cpu", x, y))
    assert np.array_equal(_core._op_scale(DEV, x, 0.37), _core._op_scale("cpu", x, 0.37))
    if n > 1:  # one row broadcast over the rows
        m = x[: (n // 10) * 10].reshape(-1, 10).copy()
        r = y[:10].copy()
        assert np.array_equal(_core._op_add(DEV, m, r), _core._op_add("cpu", m, r))
        assert np.array_equal(_core._op_mul(DEV, m, r), _core._op_mul("cpu", m, r))


# Row gathers, scatters and column concatenation move bytes: exact.
def test_rows_and_concat():
    g = rng("rows")
    src = g.standard_normal((300, 77)).astype(np.float32)
    idx = g.integers(0, 300, 123).tolist()
    assert np.array_equal(_core._op_get_rows(DEV, src, idx), _core._op_get_rows("cpu", src, idx))
    dst = g.standard_normal((300, 77)).astype(np.float32)
    uniq = g.choice(300, 50, replace=False).tolist()
    assert np.array_equal(_core._op_set_rows(DEV, dst, uniq, src[:50].copy()),
                          _core._op_set_rows("cpu", dst, uniq, src[:50].copy()))
    parts = [src[:, :10].copy(), src[:, 10:11].copy(), src[:, 11:].copy()]
    assert np.array_equal(_core._op_concat(DEV, parts), _core._op_concat("cpu", parts))


# The patch convolution is im2col + the matmul (F32 weights stay F32: 1e-5; F16 through the GEMM
# path's F16 rounding: 4e-3); pooling sums k*k values in another order: 1e-6.
@pytest.mark.parametrize("P,C,H,W", [(14, 3, 336, 336), (16, 3, 64, 96), (8, 3, 8, 8)])
def test_patch_embed_and_pool(P, C, H, W):
    g = rng("patch", P, H, W)
    px = g.standard_normal((C, H, W)).astype(np.float32)
    w = (g.standard_normal((64, C, P, P)) * 0.05).astype(np.float32)
    b = g.standard_normal(64).astype(np.float32)
    assert rel(_core._op_patch_embed(DEV, px, w, b, P), _core._op_patch_embed("cpu", px, w, b, P)) < 4e-3
    grid = g.standard_normal((H // P * 4, W // P * 4, 33)).astype(np.float32)
    assert rel(_core._op_avg_pool(DEV, grid, 4), _core._op_avg_pool("cpu", grid, 4)) < 1e-6


@pytest.mark.parametrize("T,n", [(1, 1), (4, 7), (3, 5000), (2, 32000)])
def test_softmax(T, n):
    x = (rng("sm", T, n).standard_normal((T, n)) * 8).astype(np.float32)
    assert np.abs(_core._op_softmax(DEV, x) - _core._op_softmax("cpu", x)).max() < 1e-6


# Attention: F32 scores and accumulation; online softmax over 64-key tiles vs one pass: 2e-5 of
# the output range. F16 caches: both read the same rounded keys/values.
@pytest.mark.parametrize("T,H,D", [(1, 4, 64), (17, 12, 64), (65, 2, 128), (130, 4, 80), (5, 16, 256)])
def test_attention_dense(T, H, D):
    g = rng("ad", T, H, D)
    q, k, v = (g.standard_normal((T, H, D)).astype(np.float32) for _ in range(3))
    assert rel(_core._op_attention_dense(DEV, q, k, v), _core._op_attention_dense("cpu", q, k, v)) < 2e-5
    # GQA, per-row ranges (block-diagonal windows and a causal band), another scale
    if H % 2 == 0:
        kv = [g.standard_normal((T, H // 2, D)).astype(np.float32) for _ in range(2)]
        ranges = np.array([[16 * (t // 16), min(T, 16 * (t // 16) + 16)] if t % 3 else [max(0, t - 7), t + 1]
                           for t in range(T)], np.int32)
        cpu = _core._op_attention_dense("cpu", q, kv[0], kv[1], ranges, 0.2)
        assert rel(_core._op_attention_dense(DEV, q, kv[0], kv[1], ranges, 0.2), cpu) < 2e-5


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("H,Hkv", [(8, 8), (8, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize("D", [64, 128, 96])
def test_attention_cache(kv_type, H, Hkv, D):
    g = rng("ac", kv_type, H, Hkv, D)
    lengths = [1, 63, 64, 65, 200, 577]  # sequences of their own lengths (tile edges included)
    keys = [g.standard_normal((L, Hkv, D)).astype(np.float32) for L in lengths]
    vals = [g.standard_normal((L, Hkv, D)).astype(np.float32) for L in lengths]
    # a causal prefill of sequence 4 (rows 190..199 see 191..200 keys) and one decode row per sequence
    seq = np.array([4] * 10 + list(range(len(lengths))), np.int32)
    kv_len = np.array(list(range(191, 201)) + lengths, np.int64)
    q = (g.standard_normal((len(seq), H, D)) * 2).astype(np.float32)
    cpu = _core._op_attention("cpu", q, keys, vals, seq, kv_len, kv_type)
    gpu = _core._op_attention(DEV, q, keys, vals, seq, kv_len, kv_type)
    assert rel(gpu, cpu) < 2e-5
    lo = np.maximum(kv_len - 70, 0).astype(np.int64)  # sliding windows of 70 keys
    cpu = _core._op_attention("cpu", q, keys, vals, seq, kv_len, kv_type, lo)
    assert rel(_core._op_attention(DEV, q, keys, vals, seq, kv_len, kv_type, lo), cpu) < 2e-5
    bias = [g.uniform(0, 3, (Hkv, L)).astype(np.float32) for L in lengths]  # merged rows' logit biases
    cpu = _core._op_attention("cpu", q, keys, vals, seq, kv_len, kv_type, None, bias)
    assert rel(_core._op_attention(DEV, q, keys, vals, seq, kv_len, kv_type, None, bias), cpu) < 2e-5


# The cache itself: F32 -> F16 rounding on the device equals the CPU's (both round to nearest
# even), and compaction moves bytes: exact.
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_kv_store_read_compact(kv_type):
    g = rng("kv", kv_type)
    k = (g.standard_normal((300, 4, 64)) * 50).astype(np.float32)
    v = (g.standard_normal((300, 4, 64)) * 1e-5).astype(np.float32)  # f16 subnormals
    for (kc, vc), (kg, vg) in zip(_core._op_kv_read("cpu", k, v, kv_type), _core._op_kv_read(DEV, k, v, kv_type)):
        assert np.array_equal(kc, kg) and np.array_equal(vc, vg)
    kept = sorted(g.choice(300, 77, replace=False).tolist())
    per_head = [sorted(g.choice(300, 30, replace=False).tolist()) for _ in range(4)]
    for lists in ([kept], per_head, [[0, 1, 2]], [[299]]):
        cpu = _core._op_kv_compact("cpu", k, v, lists, kv_type)
        gpu = _core._op_kv_compact(DEV, k, v, lists, kv_type)
        for (kc, vc), (kg, vg) in zip(cpu, gpu):
            assert kc.shape == kg.shape and np.array_equal(kc, kg) and np.array_equal(vc, vg)


# The importance pass: column sums of softmax rows (F32 exp and sums in another order: 1e-4
# relative), density counts (a logit within an ulp of its threshold may flip: at most a few
# per head), elite sets (exact unless a tie at the threshold) and the elite importance (1e-4).
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("m,H,Hkv,D,chunks", [(100, 4, 2, 64, [100]), (300, 8, 2, 128, [128, 128, 44]),
                                              (97, 8, 8, 80, [33, 64]), (700, 4, 1, 64, [512, 188])])
def test_importance(kv_type, m, H, Hkv, D, chunks):
    g = rng("imp", kv_type, m, H, D)
    q = (g.standard_normal((m, H, D)) * 1.5).astype(np.float32)
    keys = g.standard_normal((m, Hkv, D)).astype(np.float32)
    visual = list(range(5, m - 20))
    req = {"colsum_from": [0, m - 20, m - 8, m - 1], "density": True, "density_from": m - 20,
           "density_ln_p": math.log(0.01), "elite": True, "elite_from": m - 20, "elite_ln_alpha": math.log(0.5)}
    cpu = _core._op_importance("cpu", q, keys, visual, chunks, req, kv_type)
    gpu = _core._op_importance(DEV, q, keys, visual, chunks, req, kv_type)
    for a, b in zip(gpu["colsum"], cpu["colsum"]):
        assert rel(a, b) < 1e-4
    assert np.abs(np.array(gpu["density_count"]) - cpu["density_count"]).max() <= 3
    assert gpu["density_total"] == cpu["density_total"]
    assert np.array_equal(gpu["elite_size"], cpu["elite_size"])
    assert rel(gpu["elite_importance"], cpu["elite_importance"]) < 1e-4


def test_out_of_memory_is_memory_error():
    with pytest.raises(MemoryError, match="asked for"):
        _core._cuda_alloc(1 << 50, 0)


def test_gemm_backend_reported(monkeypatch):
    text = _core._cuda_gemm_backend(0)
    assert text.startswith("cuBLAS (") or text.startswith("built-in kernels ("), text
    monkeypatch.setenv("AIRCACHE_NO_CUBLAS", "1")
    assert "disabled by AIRCACHE_NO_CUBLAS" in _core._cuda_gemm_backend(0)
