"""The op harness (_core._op_*) on the CPU backend against numpy definitions of each op
(tests/backend_ops_reference.py). tests/gpu runs the same ops on a CUDA device and compares them
with the CPU backend, so this file is what makes the CPU a trustworthy oracle there. The test
backend (host memory behind the device interface) must give the CPU's bits for every op, run
there or declined and run on the CPU by the dispatcher's fallback. Also: the device argument, the
errors of CUDA requests on a machine without a usable GPU, and that tests/gpu covers every op of the
table."""

import math
import zlib

import numpy as np
import pytest

import aircache_cpp as ac
import backend_ops_reference as R
from test_kernels import quantize_def
from aircache_cpp import _core

rng = np.random.default_rng(7)


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("type_name", ["F32", "F16", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("T", [1, 5, 20])
def test_matmul(type_name, T):
    n_rows, n_cols = 37, 256
    raw = R.weight_bytes(type_name, n_rows, n_cols, rng)
    W = ac.dequantize(raw, type_name).reshape(n_rows, n_cols).astype(np.float64)
    x = rng.standard_normal((T, n_cols)).astype(np.float32)
    b = rng.standard_normal(n_rows).astype(np.float32)
    y = _core._op_matmul("cpu", type_name, raw, n_rows, n_cols, x, b)
    # Quantized weights multiply 8-bit activations (as llama.cpp): the reference quantizes x by the
    # definition in cpu/kernels.h (tests/test_kernels.py), so the only difference is summation order.
    act = _core._kernel_act(_core._kernel_current(), type_name)
    if act != "f32":
        d, q = quantize_def(x.reshape(-1), 32 if act == "q8a" else 256)
        x = (d[:, None] * q.astype(np.float32)).reshape(T, n_cols)
    assert y.shape == (T, n_rows) and rel(y, x @ W.T + b) < 1e-5


@pytest.mark.parametrize("device", ["cpu", "test", "test:decline=matmul"])
def test_matmuls_equal_matmul(device):
    """Ops::matmuls (the models' Q/K/V and gate/up call; on the CPU one job for repacked quantized
    weights of one activation format, its panels split by bytes across the weights) gives each
    projection matmul's bits: K-quant mixtures with partial panels (one job), mixtures that cannot
    share a job (Q8_0 with Q4_K, F16 with Q6_K), biases on some, decode batches and prefill."""
    g = np.random.default_rng(11)
    n_cols = 512
    groups = [[("Q4_K", 48), ("Q4_K", 17), ("Q6_K", 33)], [("Q6_K", 16), ("Q4_K", 5)],
              [("Q8_0", 20), ("Q4_K", 16)], [("F16", 9), ("Q6_K", 16), ("Q4_0", 40), ("Q4_K", 1)]]
    for group in groups:
        projs = []
        for i, (type_name, n_rows) in enumerate(group):
            bias = g.standard_normal(n_rows).astype(np.float32) if i % 2 else None
            projs.append((type_name, R.weight_bytes(type_name, n_rows, n_cols, g), n_rows, bias))
        for T in (1, 3, 8, 37):
            x = g.standard_normal((T, n_cols)).astype(np.float32)
            ys = _core._op_matmuls(device, projs, n_cols, x)
            assert len(ys) == len(projs)
            for (type_name, raw, n_rows, bias), y in zip(projs, ys):
                want = _core._op_matmul(device, type_name, raw, n_rows, n_cols, x, bias)
                np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32), err_msg=f"{group} T={T} {type_name}")
    with pytest.raises(_core.InputError, match="1 to 4"):
        _core._op_matmuls(device, [], n_cols, np.zeros((1, n_cols), np.float32))


@pytest.mark.parametrize("table", [t for t in _core._kernel_names() if t != "reference"])
@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_matmul_float_prefill(table, type_name):
    """Float weights against more than 16 activation rows: the packed-panel GEMM (cpu/gemm.h) of every
    table against float64, with row counts that are not multiples of any panel (8, 16, 32 rows) or
    tile (4, 6, 12 rows), column counts across several k-blocks and below one, and each activation
    row's result independent of the rows beside it (bit for bit)."""
    before = _core._kernel_current()
    g = np.random.default_rng(zlib.crc32(f"prefill/{table}/{type_name}".encode()))
    try:
        _core._kernel_set(table)
        for n_rows, n_cols, T in ((37, 256, 17), (100, 333, 131), (33, 17, 25), (65, 1100, 300), (8, 64, 40)):
            raw = R.weight_bytes(type_name, n_rows, n_cols, g)
            W = ac.dequantize(raw, type_name).reshape(n_rows, n_cols).astype(np.float64)
            x = g.standard_normal((T, n_cols)).astype(np.float32)
            x[3] *= 1e3  # one large row, one zero row
            x[5] = 0.0
            b = g.standard_normal(n_rows).astype(np.float32)
            y = _core._op_matmul("cpu", type_name, raw, n_rows, n_cols, x, b)
            assert y.shape == (T, n_rows)
            ref = x.astype(np.float64) @ W.T + b
            mag = np.abs(x.astype(np.float64)) @ np.abs(W).T + np.abs(b)
            assert np.all(np.abs(y - ref) <= 1e-5 * mag), (n_rows, n_cols, T, float((np.abs(y - ref) / mag).max()))
            # the first 17 rows alone give the same bits
            y17 = _core._op_matmul("cpu", type_name, raw, n_rows, n_cols, x[:17].copy(), b)
            np.testing.assert_array_equal(y17.view(np.uint32), y[:17].view(np.uint32))
    finally:
        _core._kernel_set(before)


def test_norms_and_elementwise():
    x = rng.standard_normal((6, 100)).astype(np.float32)
    w, b = rng.standard_normal(100).astype(np.float32), rng.standard_normal(100).astype(np.float32)
    assert rel(_core._op_rmsnorm("cpu", x, w, 1e-5), R.rmsnorm(x, w, 1e-5)) < 1e-5
    assert rel(_core._op_rmsnorm("cpu", x, None, 1e-5), R.rmsnorm(x, 1.0, 1e-5)) < 1e-5
    assert rel(_core._op_layernorm("cpu", x, w, b, 1e-6), R.layernorm(x, w, b, 1e-6)) < 1e-5
    assert rel(_core._op_layernorm("cpu", x, None, None, 1e-6), R.layernorm(x, 1.0, 0.0, 1e-6)) < 1e-5
    for kind in ("gelu", "quick_gelu", "silu", "gelu_tanh"):
        assert rel(_core._op_activation("cpu", x, kind), R.activation(x, kind)) < 1e-5
        assert rel(_core._op_glu("cpu", x, x[::-1].copy(), kind), R.activation(x, kind) * x[::-1]) < 1e-5
    g, u = x[0].copy(), x[1].copy()
    assert rel(_core._op_silu_mul("cpu", g, u), R.activation(g, "silu") * u) < 1e-5
    assert rel(_core._op_softmax("cpu", x * 10), R.softmax(x * 10)) < 1e-5
    assert np.array_equal(_core._op_add("cpu", x, x), x + x)
    assert np.array_equal(_core._op_add("cpu", x, w), x + w)  # one row, broadcast
    assert np.array_equal(_core._op_mul("cpu", x, x), x * x) and np.array_equal(_core._op_mul("cpu", x, w), x * w)
    assert np.array_equal(_core._op_scale("cpu", x, 0.125), x * np.float32(0.125))


def test_rows_concat_patches_pooling():
    src = rng.standard_normal((9, 5)).astype(np.float32)
    assert np.array_equal(_core._op_get_rows("cpu", src, [8, 0, 3, 3]), src[[8, 0, 3, 3]])
    dst = rng.standard_normal((9, 5)).astype(np.float32)
    want = dst.copy()
    want[[2, 7]] = src[:2]
    assert np.array_equal(_core._op_set_rows("cpu", dst, [2, 7], src[:2].copy()), want)
    a, b = src[:, :2].copy(), src[:, 2:].copy()
    assert np.array_equal(_core._op_concat("cpu", [a, b, a]), np.concatenate([a, b, a], axis=1))
    px = rng.standard_normal((3, 12, 8)).astype(np.float32)
    w = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    assert rel(_core._op_patch_embed("cpu", px, w, bias, 4), R.patch_embed(px, w, bias, 4)) < 1e-5
    assert rel(_core._op_patch_embed("cpu", px, w, None, 4), R.patch_embed(px, w, None, 4)) < 1e-5
    grid = rng.standard_normal((8, 12, 5)).astype(np.float32)
    assert rel(_core._op_avg_pool("cpu", grid, 4), R.avg_pool(grid, 4)) < 1e-6


@pytest.mark.parametrize("neox", [False, True])
def test_rope(neox):
    x = rng.standard_normal((5, 3, 16)).astype(np.float32)
    inv = (1.0 / 10000 ** (np.arange(0, 12, 2) / 12)).astype(np.float32)
    pos = np.array([0, 1, 7, 100, 3000], np.int32)
    assert np.abs(_core._op_rope("cpu", x, 12, pos, inv, neox) - R.rope(x, 12, pos, inv, neox)).max() < 1e-4
    # multi-axis: M-RoPE-like sections (t, h, w) over the pairs, and 2-D vision RoPE (h, w)
    pos3 = np.array([[0, 0, 0], [5, 5, 5], [9, 10, 13], [9, 11, 9], [40, 40, 40]], np.int32)
    axis = np.array([0, 0, 1, 1, 2, 2], np.int32)
    got = _core._op_rope("cpu", x, 12, pos3, inv, neox, axis)
    assert np.abs(got - R.rope_axes(x, 12, pos3, inv, axis, neox)).max() < 1e-4
    # one axis given as [T][1] with pair_axis all 0 is the 1-D rope
    one = _core._op_rope("cpu", x, 12, pos[:, None].copy(), inv, neox, np.zeros(6, np.int32))
    assert np.array_equal(one, _core._op_rope("cpu", x, 12, pos, inv, neox))


def test_attention():
    q, k, v = (rng.standard_normal((9, 4, 16)).astype(np.float32) for _ in range(3))
    assert rel(_core._op_attention_dense("cpu", q, k, v), R.attention_dense(q, k, v)) < 1e-5
    # GQA 4:2 over 40 keys, each row its own range (block-diagonal windows, a causal band), a scale
    q = rng.standard_normal((40, 4, 16)).astype(np.float32)
    k, v = (rng.standard_normal((40, 2, 16)).astype(np.float32) for _ in range(2))
    ranges = np.array([[10 * (t // 10), 10 * (t // 10) + 10] if t < 20 else [max(0, t - 5), t + 1] for t in range(40)],
                      np.int32)
    got = _core._op_attention_dense("cpu", q, k, v, ranges, 0.3)
    assert rel(got, R.attention_ranges(q, k, v, ranges, 0.3)) < 1e-5
    # two sequences of different lengths, GQA 4:2, causal lengths per row
    keys = [rng.standard_normal((L, 2, 16)).astype(np.float32) for L in (70, 33)]
    vals = [rng.standard_normal((L, 2, 16)).astype(np.float32) for L in (70, 33)]
    seq = np.array([0, 0, 1, 1, 0], np.int32)
    kv_len = np.array([1, 70, 32, 33, 65], np.int64)
    q = rng.standard_normal((5, 4, 16)).astype(np.float32)
    got = _core._op_attention("cpu", q, keys, vals, seq, kv_len, "f32")
    assert rel(got, R.attention_cache(q, keys, vals, seq, kv_len)) < 1e-5
    # F16 cache: the reference reads the same f16-rounded keys and values
    k16 = [a.astype(np.float16).astype(np.float32) for a in keys]
    v16 = [a.astype(np.float16).astype(np.float32) for a in vals]
    got = _core._op_attention("cpu", q, keys, vals, seq, kv_len, "f16")
    assert rel(got, R.attention_cache(q, k16, v16, seq, kv_len)) < 1e-5
    # sliding windows: rows see [lo, len)
    lo = np.array([0, 40, 0, 20, 60], np.int64)
    got = _core._op_attention("cpu", q, keys, vals, seq, kv_len, "f32", lo)
    assert rel(got, R.attention_cache(q, keys, vals, seq, kv_len, lo)) < 1e-5
    # logit biases of the keys (merged rows): softmax(q k / sqrt(d) + b[kv head]) v, here written out
    bias = [rng.uniform(0, 3, (2, L)).astype(np.float32) for L in (70, 33)]
    want = np.zeros_like(q)
    for t in range(len(seq)):
        K, V = keys[seq[t]][lo[t]:kv_len[t]], vals[seq[t]][lo[t]:kv_len[t]]
        for h in range(4):
            s = K[:, h // 2] @ q[t, h] / 4.0 + bias[seq[t]][h // 2, lo[t]:kv_len[t]]
            p = np.exp(s - s.max())
            want[t, h] = p @ V[:, h // 2] / p.sum()
    got = _core._op_attention("cpu", q, keys, vals, seq, kv_len, "f32", lo, bias)
    assert rel(got, want) < 1e-5 and rel(got, R.attention_cache(q, keys, vals, seq, kv_len, lo)) > 1e-2
    # a 40-row prefill of one sequence (the panel path) with biases, against one row at a time
    q40 = rng.standard_normal((40, 4, 16)).astype(np.float32)
    seq40, len40 = np.zeros(40, np.int32), np.arange(31, 71, dtype=np.int64)
    got = _core._op_attention("cpu", q40, keys[:1], vals[:1], seq40, len40, "f16", None, bias[:1])
    one = np.concatenate([_core._op_attention("cpu", q40[t:t + 1], keys[:1], vals[:1], seq40[t:t + 1], len40[t:t + 1],
                                              "f16", None, bias[:1]) for t in range(40)])
    assert rel(got, one) < 1e-5


def test_kv_compact():
    k = rng.standard_normal((20, 2, 8)).astype(np.float32)
    v = rng.standard_normal((20, 2, 8)).astype(np.float32)
    heads = _core._op_kv_compact("cpu", k, v, [[1, 4, 5, 19]], "f32")
    for h, (kh, vh) in enumerate(heads):
        assert np.array_equal(kh, k[[1, 4, 5, 19], h]) and np.array_equal(vh, v[[1, 4, 5, 19], h])
    heads = _core._op_kv_compact("cpu", k, v, [[0, 2], [3, 9]], "f16")
    for h, kept in enumerate([[0, 2], [3, 9]]):
        assert np.array_equal(heads[h][0], k[kept, h].astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("chunks", [[40], [17, 23]])
def test_importance(chunks):
    m, H, Hkv, D = 40, 4, 2, 16
    q = rng.standard_normal((m, H, D)).astype(np.float32)
    keys = rng.standard_normal((m, Hkv, D)).astype(np.float32)
    visual = list(range(3, 30))
    req = {"colsum_from": [0, 30, 35], "density": True, "density_from": 30, "density_ln_p": math.log(0.01),
           "elite": True, "elite_from": 30, "elite_ln_alpha": math.log(0.3)}
    got = _core._op_importance("cpu", q, keys, visual, chunks, req, "f32")
    ref = R.importance(q, keys, visual, req)
    for a, b in zip(got["colsum"], ref["colsum"]):
        assert rel(a, b) < 1e-5
    assert np.array_equal(got["density_count"], ref["density_count"]) and got["density_total"] == ref["density_total"]
    assert np.array_equal(got["elite_size"], ref["elite_size"])
    assert rel(got["elite_importance"], ref["elite_importance"]) < 1e-5


def test_device_argument_and_cuda_errors(tmp_path):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ac.InputError, match="unknown device 'tpu'"):
        _core._op_softmax("tpu", x)
    if ac.cuda_available():
        with pytest.raises(ac.UnsupportedError, match="only"):
            _core._op_softmax("cuda:99", x)
    elif ac.build_info()["cuda"]:
        with pytest.raises(ac.UnsupportedError, match="no CUDA device is usable"):
            _core._op_softmax("cuda", x)
    else:
        with pytest.raises(ac.UnsupportedError, match="no CUDA support"):
            _core._op_softmax("cuda:0", x)


def all_op_calls(device):
    """One call of every op of the table (and the KV and importance harness) on `device`."""
    g = np.random.default_rng(11)
    x = g.standard_normal((6, 64)).astype(np.float32)
    w = g.standard_normal(64).astype(np.float32)
    out = {}
    raw = R.weight_bytes("Q4_K", 8, 256, g)
    out["matmul"] = _core._op_matmul(device, "Q4_K", raw, 8, 256, g.standard_normal((3, 256)).astype(np.float32), None)
    out["matmul_f16"] = _core._op_matmul(device, "F16", R.weight_bytes("F16", 8, 64, g), 8, 64, x[:20], w[:8].copy())
    out["add"] = _core._op_add(device, x, w)
    out["mul"] = _core._op_mul(device, x, x)
    out["scale"] = _core._op_scale(device, x, 0.5)
    out["rms_norm"] = _core._op_rmsnorm(device, x, w, 1e-5)
    out["layer_norm"] = _core._op_layernorm(device, x, w, w, 1e-5)
    inv = (1.0 / 10000 ** (np.arange(0, 16, 2) / 16)).astype(np.float32)
    out["rope"] = _core._op_rope(device, x.reshape(6, 4, 16), 16, np.array([[0, 1], [2, 3], [4, 4], [9, 1], [0, 0], [7, 7]],
                                 np.int32), inv, True, np.array([0, 1] * 4, np.int32))
    q = g.standard_normal((6, 4, 16)).astype(np.float32)
    kk, vv = (g.standard_normal((6, 2, 16)).astype(np.float32) for _ in range(2))
    out["attention"] = _core._op_attention_dense(device, q, kk, vv, np.array([[0, t + 1] for t in range(6)], np.int32))
    keys = [g.standard_normal((L, 2, 16)).astype(np.float32) for L in (30, 9)]
    vals = [g.standard_normal((L, 2, 16)).astype(np.float32) for L in (30, 9)]
    out["attention_kv"] = _core._op_attention(device, q, keys, vals, np.array([0, 0, 1, 1, 0, 1], np.int32),
                                              np.array([5, 30, 9, 4, 20, 9], np.int64), "f16",
                                              np.array([0, 10, 0, 1, 19, 3], np.int64))
    out["attention_kv_bias"] = _core._op_attention(device, q, keys, vals, np.array([0, 0, 1, 1, 0, 1], np.int32),
                                                   np.array([5, 30, 9, 4, 20, 9], np.int64), "f16", None,
                                                   [g.uniform(0, 2, (2, L)).astype(np.float32) for L in (30, 9)])
    out["kv_store"] = _core._op_kv_read(device, keys[0], vals[0], "f16")
    out["kv_compact"] = _core._op_kv_compact(device, keys[0], vals[0], [[1, 2, 9, 29], [0, 5, 6, 7]], "f32")
    out["activation"] = _core._op_activation(device, x, "gelu_tanh")
    out["glu"] = _core._op_glu(device, x, x, "gelu")
    out["softmax"] = _core._op_softmax(device, x)
    out["get_rows"] = _core._op_get_rows(device, x, [5, 0, 0])
    out["set_rows"] = _core._op_set_rows(device, x, [1, 4], x[:2].copy())
    out["concat"] = _core._op_concat(device, [x[:, :3].copy(), x[:, 3:].copy()])
    out["patch_embed"] = _core._op_patch_embed(device, g.standard_normal((3, 8, 8)).astype(np.float32),
                                               g.standard_normal((5, 3, 4, 4)).astype(np.float32), w[:5].copy(), 4)
    out["avg_pool"] = _core._op_avg_pool(device, g.standard_normal((4, 6, 3)).astype(np.float32), 2)
    qi = g.standard_normal((40, 4, 16)).astype(np.float32)
    ki = g.standard_normal((40, 2, 16)).astype(np.float32)
    req = {"colsum_from": [0, 30], "density": True, "density_from": 30, "density_ln_p": math.log(0.01),
           "elite": True, "elite_from": 30, "elite_ln_alpha": math.log(0.3)}
    out["importance"] = _core._op_importance(device, qi, ki, list(range(3, 30)), [17, 23], req, "f16")
    return out


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("device", ["test"] + [f"test:decline={op}" for op in _core._backend_ops()]
                         + ["test:decline=" + "+".join(_core._backend_ops())])
def test_test_backend_gives_the_cpu_bits(device):
    """The test backend runs the CPU's kernels on its own memory: every op, run there or declined
    (the dispatcher's fallback: inputs copied to the host, the CPU runs it, outputs copied back),
    gives exactly the CPU's result."""
    cpu, dev = all_op_calls("cpu"), all_op_calls(device)
    for name in cpu:
        assert same(cpu[name], dev[name]), name


def test_gpu_tests_cover_every_op():
    """tests/gpu/test_cuda_ops.py compares every op of the table with the CPU (COVERAGE names the
    test of each); this runs everywhere, so an op added without a GPU test fails here."""
    import ast
    import os

    path = os.path.join(os.path.dirname(__file__), "gpu", "test_cuda_ops.py")
    tree = ast.parse(open(path).read())
    coverage = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", "") == "COVERAGE")
    tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert set(coverage) == set(_core._backend_ops())
    for op, fn in coverage.items():
        assert fn in tests, (op, fn)
        body = open(path).read()
        assert f'"{op}"' in body or op in body


# --- block-typed KV caches (q8_0 / q4_0, llama.cpp's -ctk / -ctv) ----------------------------------
def _gguf_roundtrip(x, name):
    """x [..., D] stored as GGUF blocks of `name` and read back: gguf-py's own quantizer and dequantizer
    (numpy; the reference for what llama.cpp writes into a q8_0 / q4_0 cache)."""
    import gguf

    t = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(name)
    if t is None:
        return x.astype(np.float16).astype(np.float32) if name == "f16" else x
    return gguf.quants.dequantize(gguf.quants.quantize(x.reshape(-1, x.shape[-1]), t), t).reshape(x.shape)


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0", "f16,q8_0", "q8_0,q4_0"])
def test_block_kv_store_is_ggufs(kv_type):
    tk, tv = (kv_type.split(",") * 2)[:2]
    k = (rng.standard_normal((37, 2, 64)) * 3).astype(np.float32)
    v = rng.standard_normal((37, 2, 64)).astype(np.float32)
    k[5, 1, :32] = 0.0  # an all-zero block
    heads = _core._op_kv_read("cpu", k, v, kv_type)
    for h, (kh, vh) in enumerate(heads):
        assert np.array_equal(kh, _gguf_roundtrip(k[:, h], tk)), (kv_type, "K", h)
        assert np.array_equal(vh, _gguf_roundtrip(v[:, h], tv)), (kv_type, "V", h)
    # compaction moves the blocks: the kept rows read back as they were stored, per KV head
    kept = [[0, 3, 5, 36], [1, 5, 20, 30]]
    for h, (kh, vh) in enumerate(_core._op_kv_compact("cpu", k, v, kept, kv_type)):
        assert np.array_equal(kh, _gguf_roundtrip(k[kept[h], h], tk))
        assert np.array_equal(vh, _gguf_roundtrip(v[kept[h], h], tv))


def test_block_kv_errors():
    k = rng.standard_normal((4, 1, 48)).astype(np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        _core._op_kv_read("cpu", k, k, "q8_0")
    with pytest.raises(ValueError, match="q8_0, q4_0"):
        _core._op_kv_read("cpu", k, k, "q5_1")


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0", "f16,q4_0"])
def test_attention_block_kv(kv_type):
    """Attention over q8_0 / q4_0 caches against the float reference over the same stored (rounded)
    keys and values. Decode rows (several sequences) score the keys against the queries in 8-bit
    blocks, as llama.cpp multiplies a quantized K cache: within 1 %; a prefill of one sequence (more
    than 16 rows) reads the keys dequantized: float accuracy."""
    tk, tv = (kv_type.split(",") * 2)[:2]
    keys = [rng.standard_normal((L, 2, 64)).astype(np.float32) for L in (70, 33)]
    vals = [rng.standard_normal((L, 2, 64)).astype(np.float32) for L in (70, 33)]
    kq = [_gguf_roundtrip(a, tk) for a in keys]
    vq = [_gguf_roundtrip(a, tv) for a in vals]
    seq = np.array([0, 0, 1, 1, 0], np.int32)
    kv_len = np.array([1, 70, 32, 33, 65], np.int64)
    q = rng.standard_normal((5, 4, 64)).astype(np.float32)
    got = _core._op_attention("cpu", q, keys, vals, seq, kv_len, kv_type)
    ref = R.attention_cache(q, kq, vq, seq, kv_len)
    assert rel(got, ref) < (1e-5 if tk == "f16" else 1e-2)
    # the same rows one at a time: a batch gives each row its single-row bits
    for t in range(5):
        one = _core._op_attention("cpu", q[t:t + 1], keys, vals, seq[t:t + 1], kv_len[t:t + 1], kv_type)
        assert np.array_equal(one[0], got[t])
    # prefill of one sequence: 40 causal rows over its first 40 keys
    q40 = rng.standard_normal((40, 4, 64)).astype(np.float32)
    seq40, len40 = np.zeros(40, np.int32), np.arange(1, 41, dtype=np.int64)
    got = _core._op_attention("cpu", q40, keys[:1], vals[:1], seq40, len40, kv_type)
    assert rel(got, R.attention_cache(q40, kq[:1], vq[:1], seq40, len40)) < 1e-5
