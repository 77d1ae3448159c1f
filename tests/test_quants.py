"""Dequantization of every supported ggml type equals gguf-py's `dequantize` bit for bit."""

import zlib

import gguf
import numpy as np
import pytest

import aircache_cpp as ac
import gguf_fixtures as fx

QUANTIZABLE = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
CASES = [(t, "random") for t in fx.SUPPORTED_TYPES] + [(t, "quantize") for t in QUANTIZABLE]


def assert_bits_equal(got: np.ndarray, ref: np.ndarray, what: str):
    assert got.dtype == np.float32 and got.shape == ref.shape, what
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN positions differ")
    g, r = got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan]
    bad = np.flatnonzero(g != r)
    assert bad.size == 0, (f"{what}: {bad.size} of {g.size} values differ from gguf-py, first at {bad[0]}: "
                           f"{got[~nan][bad[0]]!r} vs {ref[~nan][bad[0]]!r}")


def test_supported_types_list():
    supported = sorted(t["name"] for t in ac.quant_types() if t["supported"])
    assert supported == sorted(fx.SUPPORTED_TYPES)
    for t in ac.quant_types():
        if t["name"] == "Q2_0":
            continue  # no geometry known (not in gguf-py 0.19 either)
        if t["name"] == "Q8_1":
            continue  # activation-only; ggml's block is 36 bytes, gguf-py 0.19's table says 40
        qt = gguf.GGMLQuantizationType[t["name"]]
        assert (t["block_size"], t["type_size"]) == gguf.GGML_QUANT_SIZES[qt], t["name"]
        assert t["id"] == int(qt)


@pytest.mark.parametrize("type_name,mode", CASES)
def test_dequantize_matches_gguf_py(type_name, mode):
    rng = np.random.default_rng(zlib.crc32(f"{type_name}/{mode}".encode()))
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]
    n_blocks = max(64, 8192 // block)
    raw = fx.quant_blocks(type_name, n_blocks, rng, mode)
    ref = fx.reference_dequantize(raw, type_name)
    got = ac.dequantize(raw, type_name)
    assert_bits_equal(got, ref, f"{type_name}/{mode}")
    # bytes input and an explicit element count give the same
    assert_bits_equal(ac.dequantize(raw.tobytes(), type_name, n=block * 3), ref[: block * 3], f"{type_name} prefix")


@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_every_16_bit_pattern(type_name):
    raw = np.arange(65536, dtype=np.uint16).view(np.uint8)
    assert_bits_equal(ac.dequantize(raw, type_name), fx.reference_dequantize(raw, type_name), type_name)


def test_through_gguf_files(gguf_writer):
    """Tensors of every supported type in a file written by gguf-py: the reader finds the blocks and
    the dequantized tensor equals gguf-py's reading of the same file."""
    rng = np.random.default_rng(11)

    def build(w):
        for name in fx.SUPPORTED_TYPES:
            qt = gguf.GGMLQuantizationType[name]
            block, _ = gguf.GGML_QUANT_SIZES[qt]
            row = max(block, 256)
            x = rng.standard_normal((3, row)).astype(np.float32)
            if name == "F32":
                w.add_tensor("w.F32", x)
            elif name == "F16":
                w.add_tensor("w.F16", x.astype(np.float16))
            elif name in QUANTIZABLE:
                w.add_tensor(f"w.{name}", gguf.quants.quantize(x, qt), raw_dtype=qt)
            else:
                w.add_tensor(f"w.{name}", fx.quant_blocks(name, 3 * row // block, rng).reshape(3, -1), raw_dtype=qt)

    path = gguf_writer(build)
    ref = {t.name: t for t in gguf.GGUFReader(path).tensors}
    with ac.GGUFFile(path) as f:
        for name in fx.SUPPORTED_TYPES:
            r = ref[f"w.{name}"]
            expect = np.asarray(gguf.quants.dequantize(r.data, r.tensor_type), dtype=np.float32)
            got = f.dequantize(f"w.{name}")
            assert got.shape == (3, int(r.shape[0]))
            assert_bits_equal(got, expect.reshape(got.shape), name)


def test_unsupported_type_in_file(gguf_writer):
    raw = np.zeros((2, 66), np.uint8)
    path = gguf_writer(lambda w: w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS))
    info = ac.gguf_info(path)  # readable
    assert info.tensors[0].type == "IQ2_XXS" and info.tensors[0].ne == (256, 2)
    with ac.GGUFFile(path) as f, pytest.raises(ac.UnsupportedError) as ei:
        f.dequantize("blk.0.ffn_up.weight")
    msg = str(ei.value)
    assert "IQ2_XXS" in msg and "blk.0.ffn_up.weight" in msg and "Q4_K" in msg  # names type, tensor, alternatives


def test_bad_arguments():
    with pytest.raises(ac.UnsupportedError, match="MXFP4"):
        ac.dequantize(np.zeros(17, np.uint8), "MXFP4")
    with pytest.raises(ac.InputError, match="unknown ggml type name 'Q9_9'"):
        ac.dequantize(np.zeros(18, np.uint8), "Q9_9")
    with pytest.raises(ac.FormatError, match="unknown ggml type id 99"):
        ac.dequantize(np.zeros(18, np.uint8), 99)
    with pytest.raises(ac.InputError, match="not a whole number of Q4_0 blocks"):
        ac.dequantize(np.zeros(19, np.uint8), "Q4_0")
    with pytest.raises(ac.InputError, match="need 36 bytes, got 18"):
        ac.dequantize(np.zeros(18, np.uint8), "Q4_0", n=64)
    with pytest.raises(ac.InputError, match="multiple of the Q4_K block size"):
        ac.dequantize(np.zeros(144, np.uint8), "Q4_K", n=100)
    assert ac.type_info("q4_k") == {"name": "Q4_K", "id": 12, "block_size": 256, "type_size": 144, "supported": True}
