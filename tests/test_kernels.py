"""The CPU kernel tables (cpp/cpu/kernels.h) through the _core test hooks, against independent
oracles: gguf-py's `quants.dequantize` for the weights and the header's activation quantizer
definition written in numpy (d = max|x| / 127, q = round-half-away(x / d), s = d * sum(q), bsums).

Every table this build and CPU can run is checked (`_core._kernel_names()`), for every supported
weight type; tests/cpp/test_kernels.cpp covers the same ground in C++ with more sizes and edge cases.
"""

import os
import subprocess
import sys
import zlib

import gguf
import numpy as np
import pytest
from gguf import quants as gq

import gguf_fixtures as fx
from aircache_cpp import _core

TABLES = _core._kernel_names()
TYPES = fx.SUPPORTED_TYPES
FLOAT_TYPES = ("F32", "F16", "BF16")

Q8A = np.dtype([("d", "<f4"), ("s", "<f4"), ("q", "i1", 32)])
Q8KA = np.dtype([("d", "<f4"), ("q", "i1", 256), ("bsums", "<i2", 16)])
assert Q8A.itemsize == 40 and Q8KA.itemsize == 292

# byte ranges of the quants in blocks whose types have a min term (zeroed: values = the min terms)
MIN_QUANT_BYTES = {"Q4_1": (4, 20), "Q5_1": (4, 24), "Q2_K": (16, 80), "Q4_K": (16, 144), "Q5_K": (16, 176)}


# ---------------------------------------------------------------------------------------------
# numpy definitions
# ---------------------------------------------------------------------------------------------

def quantize_def(x: np.ndarray, block: int):
    """(d [nb] float32, q [nb, block] int8) per the header's definition."""
    xb = x.astype(np.float32).reshape(-1, block)
    amax = np.abs(xb).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d).astype(np.float32)
    v = (xb / safe[:, None]).astype(np.float32)  # IEEE float32 division, as in C
    t = np.trunc(v)
    r = t + np.where(np.abs(v - t) >= np.float32(0.5), np.sign(v), np.float32(0))  # half away from zero
    r = np.clip(r, -127, 127)
    r[d == 0] = 0
    return d, r.astype(np.int8)


def q8a_def(x):
    d, q = quantize_def(x, 32)
    s = (d * q.astype(np.int32).sum(axis=1).astype(np.float32)).astype(np.float32)
    out = np.zeros(d.size, Q8A)
    out["d"], out["s"], out["q"] = d, s, q
    return out


def q8ka_def(x):
    d, q = quantize_def(x, 256)
    out = np.zeros(d.size, Q8KA)
    out["d"], out["q"] = d, q
    out["bsums"] = q.astype(np.int32).reshape(-1, 16, 16).sum(axis=2).astype(np.int16)
    return out


def dequant_gguf(raw: np.ndarray, type_name: str) -> np.ndarray:
    """gguf-py's dequantization, as float64."""
    return np.asarray(gq.dequantize(raw, gguf.GGMLQuantizationType[type_name]), dtype=np.float64).reshape(-1)


def min_terms(raw: np.ndarray, type_name: str) -> np.ndarray:
    """Per element, the min term of the types that have one (the row with its quants zeroed), else 0."""
    if type_name not in MIN_QUANT_BYTES:
        n = raw.size // gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][1] * \
            gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]
        return np.zeros(n)
    lo, hi = MIN_QUANT_BYTES[type_name]
    z = raw.copy().reshape(-1, gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][1])
    z[:, lo:hi] = 0
    return dequant_gguf(z.reshape(-1), type_name)


def activations(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(n).astype(np.float32)
    x *= np.repeat(10.0 ** rng.uniform(-2, 2, n // 32), 32).astype(np.float32)
    x[rng.integers(0, n, n // 50)] *= 8.0  # outliers
    x[:32] = 0.0  # an all-zero block
    # a block of ties: d = 1 exactly, half-integer values
    x[32:64] = rng.integers(-127, 127, 32) + 0.5
    x[32] = 127.0
    return x


def weight_row(type_name: str, n: int, rng: np.random.Generator, mode: str) -> np.ndarray:
    if type_name in FLOAT_TYPES:  # finite values (gguf_fixtures' "random" covers NaN / Inf too)
        x = rng.standard_normal(n).astype(np.float32)
        if type_name == "F32":
            return x.view(np.uint8)
        if type_name == "F16":
            return x.astype(np.float16).view(np.uint8)
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]
    return fx.quant_blocks(type_name, n // block, rng, mode)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

def test_tables_listed():
    assert TABLES[:2] == ["reference", "generic"]
    assert len(set(TABLES)) == len(TABLES)
    import platform
    if platform.machine() in ("x86_64", "AMD64"):
        assert not any(t.startswith("neon") for t in TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_environment_selects_table(table):
    code = "from aircache_cpp import _core; print(_core._kernel_current())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "AIRCACHE_KERNELS": table},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == table


def test_environment_unknown_table():
    code = "from aircache_cpp import _core; _core._kernel_current()"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "AIRCACHE_KERNELS": "no-such-isa"},
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no-such-isa" in r.stderr and "generic" in r.stderr


def test_set_kernels():
    before = _core._kernel_current()
    try:
        _core._kernel_set("generic")
        assert _core._kernel_current() == "generic"
        _core._kernel_set("auto")
        assert _core._kernel_current() == TABLES[-1]
        with pytest.raises(_core.InputError, match="available"):
            _core._kernel_set("bogus")
    finally:
        _core._kernel_set(before)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("n", [256, 4096])
def test_quantizers_bit_exact(table, n):
    rng = np.random.default_rng(zlib.crc32(f"q/{table}/{n}".encode()))
    for rep in range(3):
        x = activations(n, rng)
        if rep == 2:
            x = np.ldexp(rng.standard_normal(n), -140).astype(np.float32)  # subnormal blocks
        got = np.frombuffer(_core._kernel_quantize(table, "q8a", x), Q8A)
        want = q8a_def(x)
        bad = np.flatnonzero((np.frombuffer(got.tobytes(), np.uint8).reshape(-1, 40)
                              != np.frombuffer(want.tobytes(), np.uint8).reshape(-1, 40)).any(axis=1))
        assert bad.size == 0, f"{table} q8a differs in blocks {bad[:5]}"
        got = np.frombuffer(_core._kernel_quantize(table, "q8ka", x), Q8KA)
        assert got.tobytes() == q8ka_def(x).tobytes(), f"{table} q8ka"


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("type_name", TYPES)
def test_dot_matches_definition(table, type_name):
    rng = np.random.default_rng(zlib.crc32(f"{table}/{type_name}".encode()))
    act = _core._kernel_act(table, type_name)
    if table == "reference":
        assert act == "f32"
    elif type_name not in FLOAT_TYPES:
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]
        assert act == ("q8ka" if block == 256 else "q8a")
    modes = ["random", "quantize"] if type_name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") else ["random"]
    for n in (256, 1024, 4096):
        for mode in modes:
            x = activations(n, rng)
            raw = weight_row(type_name, n, rng, mode)
            wd = dequant_gguf(raw, type_name)
            mins = min_terms(raw, type_name)
            if act == "q8a":
                qa = q8a_def(x)
                ad = (qa["d"][:, None].astype(np.float64) * qa["q"]).reshape(-1)
            elif act == "q8ka":
                qa = q8ka_def(x)
                ad = (qa["d"][:, None].astype(np.float64) * qa["q"]).reshape(-1)
            else:
                ad = x.astype(np.float64)
            want = float(np.dot(wd, ad))
            mag = float(np.abs(wd * ad).sum() + np.abs(mins * ad).sum())
            got = _core._kernel_dot(table, type_name, raw, x)
            assert abs(got - want) <= 2e-6 * mag + 1e-30, \
                f"{table} {type_name} n={n} {mode}: {got!r} vs {want!r} (|err| {abs(got - want):.3g}, sum|w*a| {mag:.3g})"
            # bytes input works too
            assert _core._kernel_dot(table, type_name, raw.tobytes(), x) == got


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("type_name", TYPES)
def test_gemm_matches_dot(table, type_name):
    """gemm gives the dot of every (weight row, activation row) pair, up to float summation order
    (bit for bit for the tiled kernels; the repacked VNNI path for nr, nc >= 8 sums in another order)."""
    if table == "reference" and type_name not in FLOAT_TYPES:
        with pytest.raises(_core.UnsupportedError):
            _core._kernel_gemm(table, type_name, np.zeros((1, 144), np.uint8), np.zeros((1, 256), np.float32))
        return
    rng = np.random.default_rng(zlib.crc32(f"gemm/{table}/{type_name}".encode()))
    n = 512
    for nr, nc in ((3, 11), (9, 21)):
        w = np.stack([weight_row(type_name, n, rng, "random") for _ in range(nr)])
        x = np.stack([activations(n, rng) for _ in range(nc)])
        y = _core._kernel_gemm(table, type_name, w, x)
        assert y.shape == (nc, nr)
        want = np.array([[_core._kernel_dot(table, type_name, w[r], x[c]) for r in range(nr)] for c in range(nc)], np.float32)
        wd = np.stack([dequant_gguf(w[r], type_name) for r in range(nr)])
        act = _core._kernel_act(table, type_name)
        if act == "f32":
            ad = x.astype(np.float64)
        else:
            q = np.stack([q8a_def(x[c]) if act == "q8a" else q8ka_def(x[c]) for c in range(nc)])
            ad = (q["d"][..., None].astype(np.float64) * q["q"]).reshape(nc, n)
        mins = np.stack([min_terms(w[r], type_name) for r in range(nr)])
        mag = np.abs(ad) @ (np.abs(wd) + np.abs(mins)).T + 1e-30  # [nc, nr]
        assert np.all(np.abs(y - want) <= 4e-6 * mag), f"{table} {type_name} {nr}x{nc}"
        if nr < 8:
            np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))  # tiled: dot's bits


@pytest.mark.parametrize("table", [t for t in TABLES if t != "reference"])
def test_f16_small_batch_long_rows_bits(table):
    """F16 weights, 1..8 activation rows, rows long enough for the k-blocked 5-8-row path (K >= 2048,
    with a tail after the last 32) over more than one 16-row block: every activation row gets exactly
    its single-row result, which is the dot's."""
    rng = np.random.default_rng(zlib.crc32(f"f16-long/{table}".encode()))
    for n in (2048, 2080, 4096 + 7):
        nr = 37
        w = np.stack([weight_row("F16", n, rng, "random") for _ in range(nr)])
        x = np.stack([activations(n // 32 * 32 + 32, rng)[:n] for _ in range(8)])
        single = np.stack([_core._kernel_gemm(table, "F16", w, x[c:c + 1])[0] for c in range(8)])
        dots = np.array([[_core._kernel_dot(table, "F16", w[r], x[c]) for r in range(nr)] for c in range(8)], np.float32)
        np.testing.assert_array_equal(single.view(np.uint32), dots.view(np.uint32))
        for k in range(2, 9):
            y = _core._kernel_gemm(table, "F16", w, x[:k])
            np.testing.assert_array_equal(y.view(np.uint32), single[:k].view(np.uint32), err_msg=f"{table} n={n} rows={k}")


PACKED = [(t, ty) for t in TABLES for ty in _core._kernel_packed_types(t) if ty != "F16"]
PACKED_F16 = [t for t in TABLES if "F16" in _core._kernel_packed_types(t)]


def test_packed_types_listed():
    """The avx512vnni and avx512amx tables repack Q8_0, Q4_0, Q4_K and Q6_K; every AVX-512 table
    repacks F16; the others keep the file layout only."""
    for t in TABLES:
        got = set(_core._kernel_packed_types(t))
        want = {"Q8_0", "Q4_0", "Q4_K", "Q6_K"} if t in ("avx512vnni", "avx512amx") else set()
        if t.startswith("avx512"):
            want |= {"F16"}
        assert got == want, t


@pytest.mark.skipif(not PACKED_F16, reason="no table with repacked F16 kernels on this CPU / build")
@pytest.mark.parametrize("table", PACKED_F16)
def test_packed_f16_gemm(table):
    """Repacked F16 rows (16 rows side by side per element, an outer product per k): against the
    float64 product of the halves for weight row counts that leave partial panels and panel groups
    (1, 7, 13, 16, 33, 49, 129, 150), n with k-chunk remainders and odd lengths, 1..9 activation
    rows; each activation row's outputs bit for bit its single-row result whatever the batch (and
    for prefill-sized batches), each weight row's whatever the rows packed with it."""
    rng = np.random.default_rng(zlib.crc32(f"packedf16/{table}".encode()))
    for n in (1, 33, 300, 768, 2085):
        for nr in (1, 7, 13, 16, 33, 49, 129, 150):
            if n > 768 and nr > 49:
                continue
            w = np.stack([weight_row("F16", n, rng, "random") for _ in range(nr)])
            x = (rng.standard_normal((9, n)) * 10.0 ** rng.uniform(-2, 2, (9, 1))).astype(np.float32)
            x[0, : n // 2] = 0.0
            wd = w.view(np.float16).astype(np.float64)
            want = x.astype(np.float64) @ wd.T
            mag = np.abs(x.astype(np.float64)) @ np.abs(wd).T + 1e-30
            single = np.stack([_core._kernel_gemm_packed(table, "F16", w, x[c:c + 1])[0] for c in range(9)])
            err = np.max(np.abs(single - want) / mag)
            assert err <= 2e-6 * max(1.0, np.sqrt(n / 64)), f"{table} n={n} nr={nr}: max rel err {err:.3g}"
            for k in range(2, 10):
                y = _core._kernel_gemm_packed(table, "F16", w, x[:k])
                assert y.shape == (k, nr)
                np.testing.assert_array_equal(y.view(np.uint32), single[:k].view(np.uint32),
                                              err_msg=f"{table} n={n} nr={nr}: batch of {k}")
            y = _core._kernel_gemm_packed(table, "F16", w, np.concatenate([x, x, x[:3]]))
            np.testing.assert_array_equal(y.view(np.uint32), np.concatenate([single, single, single[:3]]).view(np.uint32))
            for r in (0, nr - 1):
                y1 = _core._kernel_gemm_packed(table, "F16", w[r:r + 1], x[:2])
                np.testing.assert_array_equal(y1[:, 0].view(np.uint32), single[:2, r].view(np.uint32))


@pytest.mark.skipif("avx512amx" not in TABLES, reason="this CPU has no AMX-INT8 (or the OS does not grant it)")
@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K"])
def test_amx_tiles_match_vnni_bits(type_name):
    """The AMX tile path (groups of 16 activation rows) gives the VNNI kernels' bits exactly: 16, 32
    and 37 rows (full groups and a remainder), 23 weight rows (a partial panel), n with an odd number
    of blocks of four."""
    rng = np.random.default_rng(zlib.crc32(f"amx/{type_name}".encode()))
    n = 800 if type_name == "Q8_0" else 1280
    w = np.stack([weight_row(type_name, n, rng, "random") for _ in range(23)])
    x = np.stack([activations(n, rng) for _ in range(37)])
    for k in (16, 32, 37):
        a = _core._kernel_gemm_packed("avx512amx", type_name, w, x[:k])
        v = _core._kernel_gemm_packed("avx512vnni", type_name, w, x[:k])
        np.testing.assert_array_equal(a.view(np.uint32), v.view(np.uint32), err_msg=f"{type_name} rows={k}")


@pytest.mark.skipif(not PACKED, reason="no table with repacked kernels on this CPU / build")
@pytest.mark.parametrize("table,type_name", PACKED)
def test_packed_gemm_matches_definition(table, type_name):
    """The repacked layout's gemm against gguf-py's dequantized weights times the header's
    activation definition (and against the plain gemm), for weight row counts that leave a partial
    panel (7, 13, 33) and 1..9 activation rows; each activation row's outputs are bit for bit its
    single-row result, whatever the batch, and each weight row's whatever the other rows."""
    rng = np.random.default_rng(zlib.crc32(f"packed/{table}/{type_name}".encode()))
    n = 768 if type_name in ("Q8_0", "Q4_0") else 512
    act = _core._kernel_act(table, type_name)
    modes = ["random", "quantize"] if type_name in ("Q4_0", "Q8_0") else ["random"]
    for nr in (7, 13, 16, 33):
        for mode in modes:
            w = np.stack([weight_row(type_name, n, rng, mode) for _ in range(nr)])
            x = np.stack([activations(n, rng) for _ in range(9)])
            wd = np.stack([dequant_gguf(w[r], type_name) for r in range(nr)])
            mins = np.stack([min_terms(w[r], type_name) for r in range(nr)])
            q = np.stack([q8a_def(x[c]) if act == "q8a" else q8ka_def(x[c]) for c in range(9)])
            ad = (q["d"][..., None].astype(np.float64) * q["q"]).reshape(9, n)
            want = ad @ wd.T
            mag = np.abs(ad) @ (np.abs(wd) + np.abs(mins)).T + 1e-30
            single = np.stack([_core._kernel_gemm_packed(table, type_name, w, x[c:c + 1])[0] for c in range(9)])
            assert np.all(np.abs(single - want) <= 4e-6 * mag), \
                f"{table} {type_name} nr={nr} {mode}: max rel err {np.max(np.abs(single - want) / mag):.3g}"
            plain = _core._kernel_gemm(table, type_name, w, x)
            assert np.all(np.abs(single - plain) <= 8e-6 * mag)
            for k in range(1, 10):
                y = _core._kernel_gemm_packed(table, type_name, w, x[:k])
                assert y.shape == (k, nr)
                np.testing.assert_array_equal(y.view(np.uint32), single[:k].view(np.uint32),
                                              err_msg=f"{table} {type_name} nr={nr}: batch of {k}")
            # prefill-sized batches (several groups of 8, a partial one) too
            y = _core._kernel_gemm_packed(table, type_name, w, np.concatenate([x, x, x[:3]]))
            np.testing.assert_array_equal(y.view(np.uint32), np.concatenate([single, single, single[:3]]).view(np.uint32))
            # a row's result does not depend on the rows packed with it
            for r in (0, nr - 1):
                y1 = _core._kernel_gemm_packed(table, type_name, w[r:r + 1], x[:2])
                np.testing.assert_array_equal(y1[:, 0].view(np.uint32), single[:2, r].view(np.uint32))


@pytest.mark.skipif(not PACKED, reason="no table with repacked kernels on this CPU / build")
@pytest.mark.parametrize("table,type_name", PACKED)
def test_packed_gemm_extremes(table, type_name):
    """Blocks at the ends of the integer ranges: all-max weight codes times +-127 activations (no
    int32 overflow; the offset terms exact), through the kernels for 2 activation rows and for 8
    (where the K-quants take their sub-blocks in int16 halves)."""
    n = 256
    raw = weight_row(type_name, n, np.random.default_rng(3), "random")
    bs = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][1]
    blocks = raw.reshape(-1, bs).copy()
    lo, hi = {"Q8_0": (2, 34), "Q4_0": (2, 18), "Q4_K": (4, 144), "Q6_K": (0, 208)}[type_name]
    for fill in (0xFF, 0x00, 0x80):
        b = blocks.copy()
        b[:, lo:hi] = fill
        w = np.stack([b.reshape(-1)] * 3)
        for xv in (127.0, -127.0):
            wd = dequant_gguf(w[0], type_name)
            want = float(np.dot(wd, np.full(n, xv, np.float64)))
            mag = float(np.abs(wd).sum() * 127) + 1e-30
            for rows in (2, 8):
                y = _core._kernel_gemm_packed(table, type_name, w, np.full((rows, n), xv, np.float32))
                assert np.all(np.abs(y - want) <= 4e-6 * mag), f"{type_name} fill {fill:#x} x {xv}, {rows} rows: {y} vs {want}"


@pytest.mark.parametrize("table", TABLES)
def test_dot_argument_errors(table):
    x = np.ones(256, np.float32)
    with pytest.raises(_core.InputError, match="bytes"):
        _core._kernel_dot(table, "Q4_K", np.zeros(100, np.uint8), x)
    with pytest.raises(_core.InputError):
        _core._kernel_dot(table, "Q4_K", np.zeros(144, np.uint8), np.ones(100, np.float32))
    with pytest.raises(_core.InputError, match="unknown"):
        _core._kernel_dot(table, "Q9_Z", np.zeros(144, np.uint8), x)
    with pytest.raises(_core.UnsupportedError):
        _core._kernel_dot(table, "IQ2_XXS", np.zeros(66, np.uint8), x)
    with pytest.raises(_core.InputError, match="q8a, q8ka"):
        _core._kernel_quantize(table, "q4", x)


def f16_bits_to_f32_def(h: np.ndarray) -> np.ndarray:
    """IEEE half -> float bits, with integer arithmetic only (NaN payloads, sNaN kept)."""
    h = h.astype(np.uint32)
    sign, exp, man = (h & 0x8000) << 16, (h >> 10) & 0x1F, h & 0x3FF
    normal = sign | ((exp + 112) << 23) | (man << 13)
    special = sign | 0x7F800000 | (man << 13)
    sub = (man.astype(np.float32) * np.float32(2.0 ** -24)).view(np.uint32) | sign
    return np.where(exp == 0, sub, np.where(exp == 31, special, normal)).astype(np.uint32)


@pytest.mark.parametrize("table", TABLES)
def test_f16_conversions(table):
    h = np.arange(65536, dtype=np.uint16)
    got = _core._kernel_f16_to_f32(table, h)
    np.testing.assert_array_equal(got.view(np.uint32), f16_bits_to_f32_def(h))
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32),
                        np.float32([65504, 65519.996, 65520, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 3 * 2.0 ** -26])])
    got = _core._kernel_f32_to_f16(table, x)
    nan = np.isnan(x)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)  # numpy: round to nearest even
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7C00) == 0x7C00) and np.all((got[nan] & 0x3FF) != 0)
