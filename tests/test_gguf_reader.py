"""The GGUF reader against gguf-py (the reference reader/writer): files written by gguf-py read back
field for field, tensor for tensor; typed getters; the CLI's `info`."""

import errno
import subprocess

import gguf
import numpy as np
import pytest

import aircache_cpp as ac
import gguf_fixtures as fx
from gguf import GGUFValueType as VT


def ref_type_name(field) -> str:
    t = [VT(x) for x in field.types]
    if t[0] == VT.ARRAY:
        return f"ARRAY[{t[1].name}]"
    return t[0].name


def build_everything(w, rng):
    """Every metadata value type, scalar and array, and tensors of several types and ranks."""
    w.add_name("everything")
    w.add_uint8("x.u8", 250)
    w.add_int8("x.i8", -100)
    w.add_uint16("x.u16", 65000)
    w.add_int16("x.i16", -32000)
    w.add_uint32("x.u32", 4_000_000_000)
    w.add_int32("x.i32", -2_000_000_000)
    w.add_float32("x.f32", 3.14159)
    w.add_bool("x.bool_t", True)
    w.add_bool("x.bool_f", False)
    w.add_string("x.str", "plain ascii")
    w.add_string("x.str_utf8", "naïve — 日本語 🙂")
    w.add_uint64("x.u64", 2**63 + 12345)
    w.add_int64("x.i64", -(2**62))
    w.add_float64("x.f64", -1.0e300)
    for vt, vals in [
        (VT.UINT8, [0, 1, 255]), (VT.INT8, [-128, 0, 127]), (VT.UINT16, [0, 65535]), (VT.INT16, [-32768, 32767]),
        (VT.UINT32, [0, 2**32 - 1]), (VT.INT32, [-(2**31), 2**31 - 1]), (VT.FLOAT32, [0.5, -1.25, 1e-20]),
        (VT.BOOL, [True, False, True]), (VT.UINT64, [0, 2**64 - 1]), (VT.INT64, [-(2**63), 2**63 - 1]),
        (VT.FLOAT64, [1e-300, -2.5]), (VT.STRING, ["", "a", "ü€𝄞", "with space"]),
    ]:
        w.add_key_value(f"arr.{vt.name.lower()}", vals, VT.ARRAY, sub_type=vt)
    w.add_token_list([f"tok{i}" for i in range(1000)])
    w.add_token_scores([float(-i) for i in range(1000)])
    w.add_token_types([1] * 1000)
    # tensors: ranks 1..4, plain and quantized
    w.add_tensor("t.f32.1d", rng.standard_normal(7).astype(np.float32))
    w.add_tensor("t.f16.2d", rng.standard_normal((3, 5)).astype(np.float16))
    w.add_tensor("t.f32.3d", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.add_tensor("t.f32.4d", rng.standard_normal((2, 1, 3, 2)).astype(np.float32))
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("t.q8_0", gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("t.q4_k", fx.quant_blocks("Q4_K", 2, rng).reshape(2, -1), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.add_tensor("t.bf16", gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16), raw_dtype=gguf.GGMLQuantizationType.BF16)


def assert_same_as_reference(path):
    ref = gguf.GGUFReader(path)
    info = ac.gguf_info(path)
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(info.metadata) == list(fields), "keys (and their order) differ"
    for key, f in fields.items():
        assert info.metadata_types[key] == ref_type_name(f), key
        assert info.metadata[key] == f.contents(), key
    assert info.version == ref.fields["GGUF.version"].contents()
    assert info.alignment == ref.alignment
    assert info.data_offset == ref.data_offset
    assert len(info.tensors) == len(ref.tensors)
    with ac.GGUFFile(path) as ours:
        for t, r in zip(info.tensors, ref.tensors):
            assert t.name == r.name
            assert t.type == r.tensor_type.name and t.type_id == int(r.tensor_type)
            assert t.ne == tuple(int(x) for x in r.shape)
            assert t.shape == tuple(reversed(t.ne))
            assert t.n_elements == r.n_elements and t.n_bytes == r.n_bytes
            assert t.data_offset == r.data_offset
            assert ours.raw(t.name).tobytes() == np.asarray(r.data).tobytes()
    return info


@pytest.mark.parametrize("alignment", [None, 64, 1024])
def test_reads_back_field_for_field(tmp_path, alignment):
    rng = np.random.default_rng(1)

    def build(w):
        if alignment:
            w.add_custom_alignment(alignment)
        build_everything(w, rng)

    path = fx.write_gguf(tmp_path / "everything.gguf", "llama", build)
    info = assert_same_as_reference(path)
    assert info.alignment == (alignment or 32)
    for t in info.tensors:
        assert t.offset % info.alignment == 0
    assert info.architecture == "llama"
    assert info.metadata["x.str_utf8"] == "naïve — 日本語 🙂"
    assert info.metadata["arr.uint64"] == [0, 2**64 - 1]


def test_version_2_reads_the_same(tmp_path, gguf_writer):
    path = gguf_writer(lambda w: build_everything(w, np.random.default_rng(2)))
    raw = bytearray(open(path, "rb").read())
    raw[4:8] = (2).to_bytes(4, "little")
    p2 = tmp_path / "v2.gguf"
    p2.write_bytes(bytes(raw))
    v3, v2 = ac.gguf_info(path), ac.gguf_info(p2)
    assert v2.version == 2 and v3.version == 3
    assert v2.metadata == v3.metadata and v2.tensors == v3.tensors


def test_raw_serializer_matches_gguf_writer(tmp_path, gguf_writer):
    """tests/gguf_fixtures.RawGGUF (used to write defective files) writes what gguf-py writes."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 8)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float16)

    def build(w):
        w.add_name("fixture")
        w.add_block_count(2)
        w.add_rope_freq_base(10000.0)
        w.add_token_list(["<unk>", "<s>", "</s>", "a"])
        w.add_token_scores([0.0, 0.0, 0.0, -1.0])
        w.add_tensor("a.weight", a)
        w.add_tensor("b.weight", b)

    path = gguf_writer(build)
    assert open(path, "rb").read() == fx.base_file().encode()


def test_tensor_values(gguf_writer):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 5, 4)).astype(np.float32)
    h = rng.standard_normal((6, 10)).astype(np.float16)
    path = gguf_writer(lambda w: (w.add_tensor("a", a), w.add_tensor("h", h)))
    with ac.GGUFFile(path) as f:
        np.testing.assert_array_equal(f.dequantize("a"), a)
        np.testing.assert_array_equal(f.dequantize("h"), h.astype(np.float32))
        assert f.dequantize("a").shape == (3, 5, 4)
        with pytest.raises(ac.FormatError, match="missing tensor 'nope'"):
            f.dequantize("nope")
    assert f.closed
    with pytest.raises(ac.InputError, match="closed"):
        f.info()


@pytest.mark.parametrize("kind,key,expected,err", fx.TYPED_CHECKS)
def test_typed_getters(tmp_path, kind, key, expected, err):
    path = tmp_path / "typed.gguf"
    path.write_bytes(fx.typed_file())
    with ac.GGUFFile(path) as f:
        if err:
            with pytest.raises(ac.FormatError, match=err) as ei:
                f.get(key, kind)
            assert str(path) in str(ei.value)
        else:
            got = f.get(key, kind)
            assert got == expected and type(got) is type(expected)
        with pytest.raises(ac.InputError, match="unknown kind"):
            f.get(key, "u7")


def test_empty_array_and_utf8_roundtrip(tmp_path):
    path = tmp_path / "typed.gguf"
    path.write_bytes(fx.typed_file())
    info = ac.gguf_info(path)
    assert info.metadata["t.arr_empty"] == [] and info.metadata_types["t.arr_empty"] == "ARRAY[INT32]"
    assert info.metadata["t.arr_str"] == ["a", "", "ü€"]
    assert info.tensors == []


def test_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        ac.gguf_info(tmp_path / "missing.gguf")
    assert ei.value.errno == errno.ENOENT and ei.value.filename == str(tmp_path / "missing.gguf")
    with pytest.raises(IsADirectoryError):
        ac.gguf_info(tmp_path)


def llama_like(w):
    """A llama.cpp-style text model header (shapes only, tiny)."""
    rng = np.random.default_rng(5)
    w.add_name("tiny-llama")
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(253)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_tensor("token_embd.weight", rng.standard_normal((256, 64)).astype(np.float16))
    w.add_tensor("output_norm.weight", rng.standard_normal(64).astype(np.float32))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(64, np.float32))
        x = rng.standard_normal((64, 64)).astype(np.float32)
        w.add_tensor(f"blk.{i}.attn_q.weight", gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def test_cli_info(gguf_writer):
    path = gguf_writer(llama_like)
    r = subprocess.run(["aircache-cli", "info", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "architecture:  llama" in out
    assert "name:          tiny-llama" in out
    assert "file type:     Q8_0 (7)" in out
    assert "GGUF v3" in out and "6 tensors" in out
    for line in ("context_length", "embedding_length", "block_count", "attention.head_count_kv", "rope.freq_base"):
        assert line in out
    assert "tokenizer:     llama, 256 tokens, bos 1, eos 2, chat template" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("  ") and len(ln.split()) >= 3}
    assert lines["F16"][1] == "1" and lines["F32"][1] == "3" and lines["Q8_0"][1] == "2" and lines["total"][1] == "6"
    total_bytes = sum(t.n_bytes for t in ac.gguf_info(path).tensors)
    assert total_bytes == 256 * 64 * 2 + 3 * 64 * 4 + 2 * (64 * 64 // 32 * 34)
    assert "bits/weight" in out
    # --metadata and --tensors list everything
    r = subprocess.run(["aircache-cli", "info", path, "--metadata", "--tensors"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "llama.attention.head_count_kv" in r.stdout and "UINT32" in r.stdout
    assert "blk.1.attn_q.weight" in r.stdout and "[64, 64]" in r.stdout


def test_cli_info_mmproj(gguf_writer):
    def clip(w):
        w.add_bool("clip.has_vision_encoder", True)
        w.add_string("clip.projector_type", "mlp")
        w.add_uint32("clip.vision.image_size", 336)
        w.add_uint32("clip.vision.patch_size", 14)
        w.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
        w.add_tensor("v.patch_embd.weight", np.zeros((8, 3, 14, 14), np.float16))

    path = gguf_writer(clip, arch="clip")
    r = subprocess.run(["aircache-cli", "info", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "architecture:  clip" in r.stdout and "projector_type" in r.stdout and "vision.patch_size" in r.stdout
    assert ac.gguf_info(path).tensors[0].ne == (14, 14, 3, 8)


def test_cli_info_unsupported_types_are_listed(gguf_writer):
    """A file with an IQ tensor is readable (info works) and the type is flagged."""
    raw = np.zeros((1, 66), np.uint8)
    path = gguf_writer(lambda w: w.add_tensor("iq", raw, raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS))
    r = subprocess.run(["aircache-cli", "info", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "IQ2_XXS" in r.stdout and "not supported by this runtime" in r.stdout
