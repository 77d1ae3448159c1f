"""A deliberately simple numpy reference of docs/compression.md, for the tests only.

It works from attention *probabilities* (HF transformers' eager attention, output_attentions=True):
P[l] is [H, m, m], row q the softmax of query q over its causal keys. Everything the document
states in logits is restated in probabilities: a restricted softmax is the full row renormalised
over the subset; "s >= rowmax + ln t" is "p >= t * rowmax_p".

plan(P, layout, shape, params) -> {"k": per-layer budgets, "kept": [layer] positions or
[layer][kv head] positions, "scores": the same shape as kept, the score vectors used}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

EPS = 1e-6

DEFAULTS = {
    "random": {"random_seed": 0},
    "streaming": {"stream_sinks": 4},
    "h2o": {"h2o_recent": 0.5},
    "snapkv": {"snap_window": 32, "snap_kernel": 7, "snap_pool": "max"},
    "pyramidkv": {"pyr_beta": 20.0, "snap_window": 32, "snap_kernel": 7, "snap_pool": "max"},
    "vlcache": {"vl_p": 0.01, "vl_min_frac": 0.01, "vl_max_queries": 0, "vl_window": 0.1},
    "aircache": {"air_alpha": 0.9, "air_norm": "mean", "air_invert_skew": False, "air_budget": "adaptive"},
}


@dataclass
class Layout:
    m: int
    visual: List[int]

    @property
    def is_visual(self) -> np.ndarray:
        v = np.zeros(self.m, bool)
        v[self.visual] = True
        return v

    @property
    def post_vision_start(self) -> int:
        return (max(self.visual) + 1) if self.visual else 0


@dataclass
class Params:
    policy: str
    budget: float
    scope: str = "visual"
    selection: str = "layer"
    options: Dict = field(default_factory=dict)

    def opt(self, name):
        return self.options.get(name, DEFAULTS[self.policy][name])


def total_budget(r: float, N: int, L: int) -> int:
    return int(min(max(math.floor(r * N * L + 0.5), L), N * L))


def apportion(t: np.ndarray, K: int, N: int) -> np.ndarray:
    """docs/compression.md, Apportionment."""
    t = np.asarray(t, np.float64).copy()
    L = len(t)
    for _ in range(L):
        clipped = (t <= 1.0) | (t >= N)
        t = np.clip(t, 1.0, N)
        if abs(t.sum() - K) < 1e-9 * max(1.0, K) or not (~clipped).any():
            break
        t[~clipped] *= (K - t[clipped].sum()) / t[~clipped].sum()
    t = np.clip(t, 1.0, N)
    k = np.floor(t).astype(np.int64)
    order = sorted(range(L), key=lambda l: (-(t[l] - k[l]), l))
    rem = K - int(k.sum())
    while rem > 0:
        for l in order:
            if rem and k[l] < N:
                k[l] += 1
                rem -= 1
    return k


def candidates(layout: Layout, scope: str) -> List[int]:
    return list(layout.visual) if scope == "visual" else list(range(layout.m))


def select(score: np.ndarray, cands: List[int], k: int, protect: List[int]) -> List[int]:
    if len(protect) >= k:
        return sorted(protect[len(protect) - k:])
    rest = [c for c in cands if c not in set(protect)]
    rest.sort(key=lambda c: (-score[c], c))
    return sorted(list(protect) + rest[:k - len(protect)])


def kept_positions(layout: Layout, scope: str, chosen: List[int]) -> List[int]:
    if scope == "all":
        return sorted(chosen)
    return sorted(set(range(layout.m)) - set(layout.visual) | set(chosen))


def groups(H: int, Hkv: int, selection: str):
    G = H // Hkv
    return [list(range(H))] if selection == "layer" else [list(range(g * G, (g + 1) * G)) for g in range(Hkv)]


def colsum(P: np.ndarray, rows) -> np.ndarray:
    """[H, m]: per head, column sums of the softmax rows `rows`."""
    return P[:, rows, :].sum(axis=1)


def pool(x: np.ndarray, k: int, how: str) -> np.ndarray:
    m, pad = len(x), k // 2
    out = np.empty(m)
    for j in range(m):
        w = x[max(0, j - pad): min(m, j + pad + 1)]
        out[j] = w.max() if how == "max" else w.sum() / k
    return out


def plan(P: List[np.ndarray], layout: Layout, H: int, Hkv: int, p: Params) -> Dict:
    L, m = len(P), layout.m
    cands = candidates(layout, p.scope)
    N = len(cands)
    K = total_budget(p.budget, N, L)
    uniform = apportion(np.full(L, K / L), K, N)
    protect = lambda k: []  # noqa: E731
    diag = {}

    if p.policy == "h2o":
        head_scores = [colsum(Pl, range(m)) for Pl in P]
        k = uniform
        if p.scope == "all":
            protect = lambda kk: list(range(m - int(math.floor(p.opt("h2o_recent") * kk)), m))  # noqa: E731
    elif p.policy in ("snapkv", "pyramidkv"):
        w = min(p.opt("snap_window"), m)
        head_scores = [np.stack([pool(c, p.opt("snap_kernel"), p.opt("snap_pool")) for c in colsum(Pl, range(m - w, m))])
                       for Pl in P]
        if p.scope == "all":
            protect = lambda kk: list(range(m - w, m))  # noqa: E731
        if p.policy == "snapkv":
            k = uniform
        else:
            C = K / L
            ww = w if p.scope == "all" else 0
            lo = (C - ww) / p.opt("pyr_beta")
            hi = 2 * (C - ww) - lo
            t = np.full(L, C)
            if L > 1 and hi <= N - ww:
                t = np.array([ww + hi - l * (hi - lo) / (L - 1) for l in range(L)])
            k = apportion(t, K, N)
    elif p.policy == "vlcache":
        p0 = min(layout.post_vision_start, m - 1)
        if p.opt("vl_max_queries") > 0:
            p0 = max(p0, m - p.opt("vl_max_queries"))
        rows = list(range(p0, m))
        d = []
        for Pl in P:
            gam = []
            for h in range(H):
                cnt = 0
                for q in rows:
                    row = Pl[h, q, :q + 1]
                    cnt += int((row < p.opt("vl_p") * row.max()).sum())
                gam.append(cnt / sum(q + 1 for q in rows))
            d.append(1.0 - float(np.mean(gam)))
        d = np.array(d)
        beta = np.clip(d / d.sum() * p.budget * L, p.opt("vl_min_frac"), 1.0)
        k = apportion(beta * N, K, N)
        head_scores = [colsum(Pl, rows) for Pl in P]
        diag["density"] = d
        if p.scope == "all":
            protect = lambda kk: list(range(m - int(math.floor(p.opt("vl_window") * kk)), m))  # noqa: E731
    elif p.policy == "aircache":
        assert p.scope == "visual"
        V = list(layout.visual)
        Nv = len(V)
        T0 = min(layout.post_vision_start, m - 1)
        T = list(range(T0, m))
        alpha = p.opt("air_alpha")
        head_scores, strength, skew, esize = [], [], [], []
        for Pl in P:
            Ih = np.zeros((H, m))
            es = []
            for h in range(H):
                ref = Pl[h, m - 1, T]
                E = [T[i] for i in range(len(T)) if ref[i] >= alpha * ref.max()]
                es.append(len(E))
                acc = np.zeros(m)
                for j in E:
                    S = sorted(set([v for v in V if v <= j]) | set(e for e in E if e <= j))
                    probs = Pl[h, j, S] / Pl[h, j, S].sum()
                    for s_, pr in zip(S, probs):
                        if s_ in set(V):
                            acc[s_] += pr
                Ih[h] = acc / len(E)
            head_scores.append(Ih)
            I = Ih.mean(axis=0)[V]
            st = I.sum()
            mu, n = I.mean(), Nv
            sd = I.std(ddof=1) if n > 1 else 0.0
            sk = n / ((n - 1) * (n - 2)) * (((I - mu) / sd) ** 3).sum() if n >= 3 and sd > 0 else 0.0
            strength.append(max(st, EPS))
            skew.append(max(sk, EPS))
            esize.append(np.mean(es))

        def norm(s):
            s = np.maximum(np.array(s), EPS)
            if p.opt("air_norm") == "minmax":
                if s.max() == s.min():
                    return np.ones_like(s)
                s = EPS + (s - s.min()) / (s.max() - s.min())
            return s / s.mean()

        st_n, sk_n = norm(strength), norm(skew)
        if p.opt("air_invert_skew"):
            sk_n = 1.0 / sk_n
            sk_n = sk_n / sk_n.mean()
        mode, r = p.opt("air_budget"), p.budget
        frac = {"adaptive": 0.5 * (st_n + sk_n) * r, "strength": st_n * r, "skew": sk_n * r,
                "uniform": np.full(L, r)}[mode]
        k = apportion(frac * Nv, K, Nv)
        diag.update(strength=np.array(strength), skewness=np.array(skew), elite_size=np.array(esize))
    else:
        raise ValueError(p.policy)

    kept, scores = [], []
    for l in range(L):
        per = []
        sc = []
        for g in groups(H, Hkv, p.selection):
            s = head_scores[l][g].mean(axis=0)
            per.append(kept_positions(layout, p.scope, select(s, cands, int(k[l]), protect(int(k[l])))))
            sc.append(s)
        kept.append(per[0] if p.selection == "layer" else per)
        scores.append(sc[0] if p.selection == "layer" else sc)
    return {"k": np.asarray(k), "kept": kept, "scores": scores, "K": K, "N": N, "diagnostics": diag}


def explained_by_ties(ours: List[int], ref: List[int], score: np.ndarray, cands: List[int], tol: float = 1e-6) -> bool:
    """Two kept sets of equal size that differ only among candidates whose reference score ties
    within `tol` with the cut (the lowest score the reference kept)."""
    a, b = set(ours), set(ref)
    if len(a) != len(b):
        return False
    diff = a ^ b
    if not diff:
        return True
    cset = set(cands)
    cut = min(score[c] for c in b if c in cset)
    return all(c in cset and abs(score[c] - cut) <= tol for c in diff)


def numpy_decode(hf_model, past, kept, new_ids, pos0, bias=None):
    """Logits of `new_ids` fed at positions pos0.. over HF's prompt KV (post-RoPE keys) restricted to
    `kept` ([layer] positions or [layer][kv head] positions), plus the new tokens' own K/V (`bias`:
    optional [layer][kv head] {prompt row: b}, added to that kept row's scaled score): a plain
    numpy decoder written from the weights of a LLaMA-family text model (LLaMA; Qwen2's q/k/v biases;
    Qwen3's per-head q/k RMSNorm). Text tokens have the same position on every M-RoPE axis, so their
    rotation is plain 1-D RoPE at that position (pos0 = the next position HF would use)."""
    m = hf_model.model
    lm = m.language_model if hasattr(m, "language_model") else m.text_model  # SmolVLM / Idefics3: text_model
    sd = {k: v.detach().double().numpy() for k, v in lm.state_dict().items()}
    cfg = hf_model.config.text_config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    theta = cfg.rope_parameters["rope_theta"]
    inv = 1.0 / theta ** (np.arange(0, D, 2) / D)
    head = hf_model.lm_head.weight.detach().double().numpy()
    eps = cfg.rms_norm_eps

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, pos):  # x [heads, D], HF rotate-half order
        ang = pos * inv
        c, s = np.cos(np.concatenate([ang, ang])), np.sin(np.concatenate([ang, ang]))
        rot = np.concatenate([-x[:, D // 2:], x[:, :D // 2]], axis=1)
        return x * c + rot * s

    def lin(p, name, h):
        y = sd[p + name + ".weight"] @ h
        return y + sd[p + name + ".bias"] if p + name + ".bias" in sd else y

    L = cfg.num_hidden_layers
    Ks, Vs = [], []
    for l in range(L):
        k_full = past[l][0][0].double().numpy()  # [Hkv, m, D]
        v_full = past[l][1][0].double().numpy()
        if isinstance(kept[l][0], (list, np.ndarray)) and np.ndim(kept[l][0]) == 1:  # per KV head
            Ks.append([k_full[g, list(kept[l][g])] for g in range(Hkv)])
            Vs.append([v_full[g, list(kept[l][g])] for g in range(Hkv)])
        else:
            Ks.append([k_full[g, list(kept[l])] for g in range(Hkv)])
            Vs.append([v_full[g, list(kept[l])] for g in range(Hkv)])
    Bs = []  # per layer and KV head: the kept rows' biases
    for l in range(L):
        rows = [kept[l][g] if np.ndim(kept[l][0]) == 1 else kept[l] for g in range(Hkv)]
        Bs.append([np.array([(bias[l][g].get(int(r), 0.0) if bias else 0.0) for r in rows[g]]) for g in range(Hkv)])
    out = []
    for i, tok in enumerate(new_ids):
        pos = pos0 + i
        x = sd["embed_tokens.weight"][tok]
        for l in range(L):
            p = f"layers.{l}."
            h = rms(x, sd[p + "input_layernorm.weight"])
            q = lin(p, "self_attn.q_proj", h).reshape(H, D)
            k = lin(p, "self_attn.k_proj", h).reshape(Hkv, D)
            if p + "self_attn.q_norm.weight" in sd:
                q = rms(q, sd[p + "self_attn.q_norm.weight"])
                k = rms(k, sd[p + "self_attn.k_norm.weight"])
            q, k = rope(q, pos), rope(k, pos)
            v = lin(p, "self_attn.v_proj", h).reshape(Hkv, D)
            att = np.zeros((H, D))
            for g in range(Hkv):
                Ks[l][g] = np.vstack([Ks[l][g], k[g]])
                Vs[l][g] = np.vstack([Vs[l][g], v[g]])
                Bs[l][g] = np.append(Bs[l][g], 0.0)
            for hh in range(H):
                g = hh // (H // Hkv)
                s = Ks[l][g] @ q[hh] / np.sqrt(D) + Bs[l][g]
                w = np.exp(s - s.max())
                att[hh] = (w / w.sum()) @ Vs[l][g]
            x = x + lin(p, "self_attn.o_proj", att.reshape(-1))
            h = rms(x, sd[p + "post_attention_layernorm.weight"])
            gate = sd[p + "mlp.gate_proj.weight"] @ h
            x = x + sd[p + "mlp.down_proj.weight"] @ ((gate / (1 + np.exp(-gate))) * (sd[p + "mlp.up_proj.weight"] @ h))
        out.append(head @ rms(x, sd["norm.weight"]))
    return np.array(out)
