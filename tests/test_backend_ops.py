"""The op harness (_core._op_*) on the CPU backend against numpy definitions of each op
(tests/backend_ops_reference.py). tests/gpu runs the same ops on a CUDA device and compares them
with the CPU backend, so this file is what makes the CPU a trustworthy oracle there; it also
checks the device argument and the errors of CUDA requests on a machine without a usable GPU."""

import math

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


def test_norms_and_elementwise():
    x = rng.standard_normal((6, 100)).astype(np.float32)
    w, b = rng.standard_normal(100).astype(np.float32), rng.standard_normal(100).astype(np.float32)
    assert rel(_core._op_rmsnorm("cpu", x, w, 1e-5), R.rmsnorm(x, w, 1e-5)) < 1e-5
    assert rel(_core._op_layernorm("cpu", x, w, b, 1e-6), R.layernorm(x, w, b, 1e-6)) < 1e-5
    for kind in ("gelu", "quick_gelu", "silu"):
        assert rel(_core._op_activation("cpu", x, kind), R.activation(x, kind)) < 1e-5
    g, u = x[0].copy(), x[1].copy()
    assert rel(_core._op_silu_mul("cpu", g, u), R.activation(g, "silu") * u) < 1e-5
    assert rel(_core._op_softmax("cpu", x * 10), R.softmax(x * 10)) < 1e-5
    assert np.array_equal(_core._op_add("cpu", x, x), x + x)


@pytest.mark.parametrize("neox", [False, True])
def test_rope(neox):
    x = rng.standard_normal((5, 3, 16)).astype(np.float32)
    inv = (1.0 / 10000 ** (np.arange(0, 12, 2) / 12)).astype(np.float32)
    pos = np.array([0, 1, 7, 100, 3000], np.int32)
    assert np.abs(_core._op_rope("cpu", x, 12, pos, inv, neox) - R.rope(x, 12, pos, inv, neox)).max() < 1e-4


def test_attention():
    q, k, v = (rng.standard_normal((9, 4, 16)).astype(np.float32) for _ in range(3))
    assert rel(_core._op_attention_dense("cpu", q, k, v), R.attention_dense(q, k, v)) < 1e-5
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
