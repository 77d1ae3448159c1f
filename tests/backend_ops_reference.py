"""Numpy definitions of the backend ops (cpu/ops.h) for the op harness: tests/test_backend_ops.py
checks the CPU backend against them, so that tests/gpu can use the CPU backend as its oracle."""

import math

import numpy as np

import gguf_fixtures as fx


def block_size(type_name):
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def weight_bytes(type_name, n_rows, n_cols, rng):
    """Raw blocks of an n_rows x n_cols weight of `type_name` holding finite, normal-ish values."""
    if type_name in ("F32", "F16", "BF16"):
        w = rng.standard_normal(n_rows * n_cols).astype(np.float32)
        if type_name == "F16":
            return w.astype(np.float16).view(np.uint8)
        if type_name == "BF16":
            return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return w.view(np.uint8)
    return fx.quant_blocks(type_name, n_rows * n_cols // block_size(type_name), rng, "auto")


def rmsnorm(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w


def layernorm(x, w, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rope(x, n_rot, pos, inv_freq, neox):
    out = x.astype(np.float64).copy()
    half = n_rot // 2
    for t, p in enumerate(pos):
        a = p * inv_freq.astype(np.float64)
        c, s = np.cos(a), np.sin(a)
        i0 = np.arange(half) if neox else 2 * np.arange(half)
        i1 = i0 + half if neox else i0 + 1
        x0, x1 = out[t][:, i0].copy(), out[t][:, i1].copy()
        out[t][:, i0] = x0 * c - x1 * s
        out[t][:, i1] = x1 * c + x0 * s
    return out


def activation(x, kind):
    x = x.astype(np.float64)
    if kind == "gelu":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    if kind == "gelu_tanh":  # PyTorch's gelu(approximate="tanh")
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if kind == "quick_gelu":
        return x / (1.0 + np.exp(-1.702 * x))
    return x / (1.0 + np.exp(-x))


def rope_axes(x, n_rot, pos, inv_freq, pair_axis, neox):
    """Multi-axis RoPE: pair i turns by pos[t][pair_axis[i]] * inv_freq[i]."""
    out = x.astype(np.float64).copy()
    half = n_rot // 2
    for t in range(x.shape[0]):
        a = np.array([pos[t][pair_axis[i]] for i in range(half)], np.float64) * inv_freq.astype(np.float64)
        c, s = np.cos(a), np.sin(a)
        i0 = np.arange(half) if neox else 2 * np.arange(half)
        i1 = i0 + half if neox else i0 + 1
        x0, x1 = out[t][:, i0].copy(), out[t][:, i1].copy()
        out[t][:, i0] = x0 * c - x1 * s
        out[t][:, i1] = x1 * c + x0 * s
    return out


def attention_ranges(q, k, v, ranges, scale):
    """q [T][H][D], k/v [S][Hkv][D] (GQA), row t sees keys ranges[t] = [lo, hi)."""
    T, H, D = q.shape
    G = H // k.shape[1]
    out = np.empty((T, H, D))
    for t in range(T):
        lo, hi = ranges[t]
        for h in range(H):
            p = softmax(k[lo:hi, h // G].astype(np.float64) @ q[t, h].astype(np.float64) * scale)
            out[t, h] = p @ v[lo:hi, h // G].astype(np.float64)
    return out


def patch_embed(px, w, b, P):
    """A convolution with kernel = stride = P: px [C][H][W], w [n_out][C][P][P] -> [patches][n_out]."""
    C, H, W = px.shape
    rows = []
    for py in range(H // P):
        for qx in range(W // P):
            rows.append(px[:, py * P:(py + 1) * P, qx * P:(qx + 1) * P].astype(np.float64).reshape(-1))
    y = np.stack(rows) @ w.reshape(w.shape[0], -1).astype(np.float64).T
    return y + b if b is not None else y


def avg_pool(x, k):
    H, W, C = x.shape
    return x.astype(np.float64).reshape(H // k, k, W // k, k, C).mean(axis=(1, 3))


def softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_dense(q, k, v):
    """q, k, v [T][H][D]: every row sees every key."""
    T, H, D = q.shape
    out = np.empty((T, H, D))
    for h in range(H):
        p = softmax(q[:, h].astype(np.float64) @ k[:, h].astype(np.float64).T / math.sqrt(D))
        out[:, h] = p @ v[:, h]
    return out


def attention_cache(q, keys, values, seq, kv_len, kv_lo=None):
    """Row t reads sequence seq[t]'s keys [kv_lo[t], kv_len[t]) ([L][Hkv][D]); GQA groups."""
    T, H, D = q.shape
    out = np.empty((T, H, D))
    for t in range(T):
        K, V = keys[seq[t]].astype(np.float64), values[seq[t]].astype(np.float64)
        G = H // K.shape[1]
        lo = 0 if kv_lo is None else kv_lo[t]
        for h in range(H):
            L = kv_len[t]
            p = softmax(K[lo:L, h // G] @ q[t, h] / math.sqrt(D))
            out[t, h] = p @ V[lo:L, h // G]
    return out


def importance(q, keys, visual, req):
    """The statistics of compress/stats.h from q [m][H][D] and keys [m][Hkv][D] (causal)."""
    m, H, D = q.shape
    G = H // keys.shape[1]
    S = np.stack([q[:, h].astype(np.float64) @ keys[:, h // G].astype(np.float64).T / math.sqrt(D) for h in range(H)])
    S = np.where(np.tril(np.ones((m, m), bool))[None], S, -np.inf)  # [H][m][m]
    P = softmax(S)
    out = {"colsum": [P[:, r0:, :].sum(axis=1) for r0 in req.get("colsum_from", [])]}
    if req.get("density"):
        r0, ln_p = req["density_from"], req["density_ln_p"]
        cnt = np.zeros(H)
        for h in range(H):
            for r in range(r0, m):
                row = S[h, r, :r + 1]
                cnt[h] += (row < row.max() + ln_p).sum()
        out["density_count"] = cnt
        out["density_total"] = float(sum(r + 1 for r in range(r0, m)))
    if req.get("elite"):
        T0, ln_a = min(req["elite_from"], m - 1), req["elite_ln_alpha"]
        isv = np.zeros(m, bool)
        isv[visual] = True
        imp, size = np.zeros((H, len(visual))), np.zeros(H)
        for h in range(H):
            ref = S[h, m - 1, T0:m]
            E = [T0 + i for i in range(len(ref)) if ref[i] >= ref.max() + ln_a]
            acc = np.zeros(len(visual))
            for j in E:
                keys_j = [v for v in visual if v <= j] + [e for e in E if e <= j and not isv[e]]
                p = softmax(S[h, j, keys_j])
                acc[:sum(1 for v in visual if v <= j)] += p[:sum(1 for v in visual if v <= j)]
            imp[h] = acc / len(E)
            size[h] = len(E)
        out["elite_importance"], out["elite_size"] = imp, size
    return out
