"""GGUF files made by llama.cpp's own converters (tools/llamacpp_fixtures.py) from tiny random HF
models: they must be what llama.cpp makes (docs/formats.md). Checked with gguf-py only.

The pinned llama.cpp scripts are fetched once into the cache (`.ci/run` pre-fetches them); the
conversions run once per session (about a minute in all on 2 CPU cores: each run of a converter
is mostly its imports of torch and transformers; running two at a time was not faster).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "llamacpp_fixtures.py"
sys.path.insert(0, str(ROOT / "tools"))
import llamacpp_fixtures as lf  # noqa: E402

from hf_fixtures import make_tiny_llama, train_spm  # noqa: E402
from hf_llava_fixtures import IMAGE_TOKEN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, make_tiny_llava  # noqa: E402

from fixture_configs import LLAMA, LLAVA  # noqa: E402  (the session fixtures live in conftest.py)

FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
TENSOR_TYPE = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "bf16": QT.BF16}


def _reader(path) -> GGUFReader:
    return GGUFReader(str(path))


def _kv(r: GGUFReader, key):
    f = r.get_field(key)
    assert f is not None, f"missing key {key}"
    return f.contents()


def _kv_type(r: GGUFReader, key):
    return r.get_field(key).types[0]


def _tensors(r: GGUFReader):
    return {t.name: t for t in r.tensors}


def _hf_tensors(d: Path):
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _f32(t) -> np.ndarray:
    """A tensor's values as float32 in numpy (PyTorch) order."""
    shape = tuple(int(x) for x in reversed(t.shape))
    if t.tensor_type in (QT.F32, QT.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)


def interleave_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """docs/formats.md (Q/K row order), written independently of llama.cpp: within each head of hd rows,
    GGUF row 2j = HF row j and GGUF row 2j+1 = HF row j + hd/2."""
    hd = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for j in range(hd // 2):
            out[h * hd + 2 * j] = w[h * hd + j]
            out[h * hd + 2 * j + 1] = w[h * hd + j + hd // 2]
    return out


def text_names(n_layer):
    names = {"token_embd.weight", "output.weight", "output_norm.weight"}
    for i in range(n_layer):
        names |= {f"blk.{i}.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    return names


def expected_text_tensors(hf: dict, n_head: int, n_kv: int, prefix: str = "model.", head: str = "lm_head.") -> dict:
    """GGUF name -> expected float32 values (numpy order), from an HF LLaMA state dict."""
    exp = {"token_embd.weight": hf[prefix + "embed_tokens.weight"], "output.weight": hf[head + "weight"],
           "output_norm.weight": hf[prefix + "norm.weight"]}
    i = 0
    while f"{prefix}layers.{i}.input_layernorm.weight" in hf:
        p = f"{prefix}layers.{i}."
        exp.update({
            f"blk.{i}.attn_norm.weight": hf[p + "input_layernorm.weight"],
            f"blk.{i}.ffn_norm.weight": hf[p + "post_attention_layernorm.weight"],
            f"blk.{i}.attn_q.weight": interleave_rows(hf[p + "self_attn.q_proj.weight"], n_head),
            f"blk.{i}.attn_k.weight": interleave_rows(hf[p + "self_attn.k_proj.weight"], n_kv),
            f"blk.{i}.attn_v.weight": hf[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": hf[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_gate.weight": hf[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": hf[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": hf[p + "mlp.down_proj.weight"],
        })
        i += 1
    return exp


def check_text_hparams(r, *, n_embd, n_layer, n_head, n_kv, n_ff, n_ctx, eps, theta, n_vocab, file_type):
    assert _kv(r, "general.architecture") == "llama"
    u32 = {"llama.context_length": n_ctx, "llama.embedding_length": n_embd, "llama.block_count": n_layer,
           "llama.feed_forward_length": n_ff, "llama.attention.head_count": n_head,
           "llama.attention.head_count_kv": n_kv, "llama.rope.dimension_count": n_embd // n_head,
           "llama.vocab_size": n_vocab, "general.file_type": file_type}
    for k, v in u32.items():
        assert _kv(r, k) == v, k
        assert _kv_type(r, k) == GGUFValueType.UINT32, k
    for k, v in {"llama.attention.layer_norm_rms_epsilon": eps, "llama.rope.freq_base": theta}.items():
        assert _kv(r, k) == pytest.approx(v, rel=1e-6), k
        assert _kv_type(r, k) == GGUFValueType.FLOAT32, k


def check_spm_tokenizer(r, spm_model, extra=(), added_ids=()):
    """added_ids: ids listed as special in tokenizer_config.json's added_tokens_decoder: the
    converter gives them score -1000 and type CONTROL (so llava-1.5-hf-style files have <unk> as
    CONTROL, not UNKNOWN)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_model)
    n = sp.get_piece_size()
    assert _kv(r, "tokenizer.ggml.model") == "llama"
    tokens = _kv(r, "tokenizer.ggml.tokens")
    assert tokens[:n] == [sp.id_to_piece(i) for i in range(n)]
    assert tokens[n:] == list(extra)
    scores = _kv(r, "tokenizer.ggml.scores")
    want_scores = [-1000.0 if i in added_ids else sp.get_score(i) for i in range(n)]
    np.testing.assert_allclose(scores[:n], want_scores, rtol=1e-6)
    assert scores[n:] == [-1000.0] * len(extra)
    types = _kv(r, "tokenizer.ggml.token_type")
    want = [3 if i in added_ids else 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
            else 1 for i in range(n)]
    assert types[:n] == want
    assert types.count(6) == 256 and types[0] == (3 if 0 in added_ids else 2) and types[1] == types[2] == 3
    assert _kv(r, "tokenizer.ggml.bos_token_id") == 1 and _kv(r, "tokenizer.ggml.eos_token_id") == 2
    assert _kv_type(r, "tokenizer.ggml.bos_token_id") == GGUFValueType.UINT32
    assert _kv(r, "tokenizer.ggml.add_bos_token") is True
    assert _kv(r, "tokenizer.ggml.add_eos_token") is False
    return types


# ----------------------------------------------------------------------------------------------
# the pinned llama.cpp scripts and the helpers


def test_pinned_llamacpp_scripts(llamacpp_root):
    info = lf.llamacpp_info()
    assert info["llama_cpp_python"] == lf.LLAMA_CPP_PYTHON_VERSION == "0.3.36"
    assert re.fullmatch(r"[0-9a-f]{40}", info["llama_cpp_commit"] or ""), info
    assert lf.ensure_llamacpp() == llamacpp_root            # idempotent: the stamped tree is reused
    assert llamacpp_root == lf.cache_dir() / "llama.cpp"
    for f in ("convert_hf_to_gguf.py", "conversion/llama.py", "gguf-py/gguf/gguf_writer.py",
              "tools/mtmd/legacy-models/llava_surgery_v2.py",
              "tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py"):
        assert (llamacpp_root / f).is_file(), f
    # only the conversion scripts are extracted, not the C/C++ sources
    assert not (llamacpp_root / "src").exists() and not (llamacpp_root / "ggml").exists()
    venv = lf.ensure_tf4_venv()
    assert (venv / lf._STAMP).read_text().startswith(f"transformers=={lf.TRANSFORMERS4_VERSION} ")


def test_classic_llava_keys():
    k = lf._classic_llava_key
    # transformers 5.x (as saved by make_tiny_llava) and the transformers >= 4.52 in-memory layout
    assert k("vision_tower.encoder.layers.0.mlp.fc1.weight") == "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert k("model.vision_tower.pre_layrnorm.weight") == "vision_tower.vision_model.pre_layrnorm.weight"
    assert k("model.language_model.layers.1.self_attn.q_proj.weight") == \
        "language_model.model.layers.1.self_attn.q_proj.weight"
    assert k("lm_head.weight") == "language_model.lm_head.weight"
    assert k("model.multi_modal_projector.linear_2.bias") == "multi_modal_projector.linear_2.bias"
    # the classic layout is left alone
    for name in ("vision_tower.vision_model.embeddings.class_embedding", "language_model.model.norm.weight",
                 "language_model.lm_head.weight", "multi_modal_projector.linear_1.weight"):
        assert k(name) == name


def test_bad_outtype_and_failure_carries_stderr(llamacpp_root, tmp_path):
    with pytest.raises(ValueError):
        lf.convert_text_model(tmp_path, tmp_path / "x.gguf", "q4_k")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchArchForCausalLM"]}))
    with pytest.raises(lf.ConversionError) as e:
        lf.convert_text_model(tmp_path, tmp_path / "x.gguf", "f32")
    assert "convert_hf_to_gguf.py failed" in str(e.value) and "NoSuchArchForCausalLM" in str(e.value)
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf.*"))


def test_tiny_llava_fixture_is_llava_15_like(tiny_llava, tiny_llama):
    """The HF side: processor and tokenizer behave like llava-1.5-hf's (legacy SentencePiece)."""
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer

    proc = AutoProcessor.from_pretrained(str(tiny_llava))
    plain = AutoTokenizer.from_pretrained(str(tiny_llama))
    image_id = proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_id == plain.vocab_size == 512
    for s in ["hello world", "USER: What colour is it?\nASSISTANT:", "  two  spaces"]:
        assert proc.tokenizer(s).input_ids == plain(s).input_ids
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 56, 3), dtype=np.uint8))
    batch = proc(text="USER: <image>\nWhat is it? ASSISTANT:", images=img, return_tensors="np")
    ids = batch["input_ids"][0].tolist()
    assert ids.count(image_id) == (32 // 8) ** 2                   # one token per patch, CLS dropped
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    pp = json.loads((tiny_llava / "preprocessor_config.json").read_text())
    assert pp["image_mean"] == OPENAI_CLIP_MEAN and pp["image_std"] == OPENAI_CLIP_STD
    assert pp["size"] == {"shortest_edge": 32} and pp["crop_size"] == {"height": 32, "width": 32}
    cfg = json.loads((tiny_llava / "config.json").read_text())
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    assert cfg["text_config"]["vocab_size"] == 513 and cfg["text_config"]["num_key_value_heads"] == 2


# ----------------------------------------------------------------------------------------------
# text model (LlamaForCausalLM) through convert_hf_to_gguf.py


def test_llama_f32_metadata_and_tokenizer(converted, spm_model):
    out, _ = converted
    r = _reader(out / "llama-f32.gguf")
    check_text_hparams(r, n_embd=64, n_layer=2, n_head=4, n_kv=2, n_ff=96, n_ctx=512, eps=1e-5, theta=50000.0,
                       n_vocab=512, file_type=0)
    assert _kv(r, "tokenizer.ggml.pre") == "default"
    check_spm_tokenizer(r, spm_model)


def test_llama_f32_tensors_equal_hf_with_qk_permuted(converted, tiny_llama):
    out, _ = converted
    r = _reader(out / "llama-f32.gguf")
    t = _tensors(r)
    assert set(t) == text_names(2)
    hf = _hf_tensors(tiny_llama)
    exp = expected_text_tensors(hf, n_head=4, n_kv=2)
    for name, want in exp.items():
        assert t[name].tensor_type == QT.F32, name
        assert [int(x) for x in t[name].shape] == list(reversed(want.shape)), name   # ne = torch shape reversed
        np.testing.assert_array_equal(_f32(t[name]), want, err_msg=name)
    # the permutation is real: Q/K are not stored in HF order, V is
    for i in range(2):
        for n, k in (("attn_q", "q_proj"), ("attn_k", "k_proj")):
            assert not np.array_equal(_f32(t[f"blk.{i}.{n}.weight"]), hf[f"model.layers.{i}.self_attn.{k}.weight"])


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_llama_outtypes(converted, outtype):
    out, _ = converted
    ref = _tensors(_reader(out / "llama-f32.gguf"))
    r = _reader(out / f"llama-{outtype}.gguf")
    assert _kv(r, "general.file_type") == FILE_TYPE[outtype]
    if outtype == "q8_0":
        assert _kv(r, "general.quantization_version") == 2
    t = _tensors(r)
    assert set(t) == set(ref)
    for name, rt in t.items():
        want = _f32(ref[name])
        assert [int(x) for x in rt.shape] == [int(x) for x in ref[name].shape], name
        if want.ndim == 1:                                    # norms stay F32, values unchanged
            assert rt.tensor_type == QT.F32, name
            np.testing.assert_array_equal(_f32(rt), want)
            continue
        assert rt.tensor_type == TENSOR_TYPE[outtype], name
        if outtype == "f16":
            np.testing.assert_array_equal(np.asarray(rt.data), want.astype(np.float16), err_msg=name)
        else:   # bit-identical to gguf-py's reference quantizer
            np.testing.assert_array_equal(np.asarray(rt.data).reshape(-1),
                                          gguf.quants.quantize(want, TENSOR_TYPE[outtype]).reshape(-1), err_msg=name)
        tol = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 1.0 / 127}[outtype] * float(np.abs(want).max())
        np.testing.assert_allclose(_f32(rt), want, atol=tol, rtol=0, err_msg=name)


def test_llama_cli_prints_the_output_path(converted):
    out, results = converted
    assert results["llama-q8_0"] == [str(out / "llama-q8_0.gguf")]


# ----------------------------------------------------------------------------------------------
# LLaVA: text model through convert_hf_to_gguf.py, mmproj through the legacy scripts


def test_llava_outputs(converted):
    out, results = converted
    assert results["llava-f32"] == [str(out / "llava-f32" / "text-model-f32.gguf"),
                                    str(out / "llava-f32" / "mmproj-model-f32.gguf")]
    assert results["llava-q8_0"] == (str(out / "llava-q8_0" / "text-model-q8_0.gguf"),
                                     str(out / "llava-q8_0" / "mmproj-model-f16.gguf"))
    for d, mm in (("f32", "f32"), ("q8_0", "f16")):   # no work files left behind
        assert sorted(p.name for p in (out / f"llava-{d}").iterdir()) == [f"mmproj-model-{mm}.gguf",
                                                                         f"text-model-{d}.gguf"]


def test_llava_text_model(converted, tiny_llava, spm_model):
    out, _ = converted
    r = _reader(out / "llava-f32" / "text-model-f32.gguf")
    check_text_hparams(r, n_embd=64, n_layer=2, n_head=4, n_kv=2, n_ff=96, n_ctx=512, eps=1e-5, theta=10000.0,
                       n_vocab=513, file_type=0)
    types = check_spm_tokenizer(r, spm_model, extra=[IMAGE_TOKEN], added_ids=(0, 1, 2))
    assert types[512] == 3                                      # <image>: an added special token -> CONTROL
    t = _tensors(r)
    assert set(t) == text_names(2)                              # the LLaVA text model only: no v.*, mm.*
    hf = {lf._classic_llava_key(k): v for k, v in _hf_tensors(tiny_llava).items()}
    exp = expected_text_tensors(hf, 4, 2, prefix="language_model.model.", head="language_model.lm_head.")
    for name, want in exp.items():
        np.testing.assert_array_equal(_f32(t[name]), want, err_msg=name)
    assert [int(x) for x in t["token_embd.weight"].shape] == [64, 513]
    # the q8_0 text model of the same LLaVA: same names and metadata, 2-D weights Q8_0
    q = _reader(out / "llava-q8_0" / "text-model-q8_0.gguf")
    assert _kv(q, "general.file_type") == 7 and _kv(q, "llama.vocab_size") == 513
    for name, qt in _tensors(q).items():
        assert qt.tensor_type == (QT.Q8_0 if exp[name].ndim == 2 else QT.F32), name
        np.testing.assert_allclose(_f32(qt), exp[name], atol=float(np.abs(exp[name]).max()) / 127, rtol=0)


def _vision_expected(hf: dict, n_keep: int) -> dict:
    """mmproj name -> (HF tensor, FFN up/down swapped as the legacy converter names them)."""
    v = "vision_tower.vision_model."
    exp = {"v.patch_embd.weight": hf[v + "embeddings.patch_embedding.weight"],
           "v.class_embd": hf[v + "embeddings.class_embedding"],
           "v.position_embd.weight": hf[v + "embeddings.position_embedding.weight"],
           "v.pre_ln.weight": hf[v + "pre_layrnorm.weight"], "v.pre_ln.bias": hf[v + "pre_layrnorm.bias"],
           "mm.0.weight": hf["multi_modal_projector.linear_1.weight"],
           "mm.0.bias": hf["multi_modal_projector.linear_1.bias"],
           "mm.2.weight": hf["multi_modal_projector.linear_2.weight"],
           "mm.2.bias": hf["multi_modal_projector.linear_2.bias"]}
    for i in range(n_keep):
        p = f"{v}encoder.layers.{i}."
        for wb in ("weight", "bias"):
            exp.update({
                f"v.blk.{i}.attn_q.{wb}": hf[f"{p}self_attn.q_proj.{wb}"],
                f"v.blk.{i}.attn_k.{wb}": hf[f"{p}self_attn.k_proj.{wb}"],
                f"v.blk.{i}.attn_v.{wb}": hf[f"{p}self_attn.v_proj.{wb}"],
                f"v.blk.{i}.attn_out.{wb}": hf[f"{p}self_attn.out_proj.{wb}"],
                f"v.blk.{i}.ln1.{wb}": hf[f"{p}layer_norm1.{wb}"],
                f"v.blk.{i}.ln2.{wb}": hf[f"{p}layer_norm2.{wb}"],
                f"v.blk.{i}.ffn_down.{wb}": hf[f"{p}mlp.fc1.{wb}"],   # legacy swap: fc1 (up) named down
                f"v.blk.{i}.ffn_up.{wb}": hf[f"{p}mlp.fc2.{wb}"],     # fc2 (down) named up
            })
    return exp


@pytest.mark.parametrize("outtype,mm_type", [("f32", "f32"), ("q8_0", "f16")])
def test_llava_mmproj(converted, tiny_llava, outtype, mm_type):
    out, _ = converted
    r = _reader(out / f"llava-{outtype}" / f"mmproj-model-{mm_type}.gguf")
    vl, vh, vi, ps, img = LLAVA["vision_layers"], LLAVA["vision_hidden"], LLAVA["vision_intermediate"], \
        LLAVA["patch"], LLAVA["image_size"]
    assert _kv(r, "general.architecture") == "clip"
    assert _kv(r, "clip.projector_type") == "mlp"
    assert _kv(r, "clip.has_vision_encoder") is True and _kv(r, "clip.has_llava_projector") is True
    assert _kv(r, "clip.has_text_encoder") is False
    assert _kv(r, "general.file_type") == FILE_TYPE[mm_type]
    u32 = {"clip.vision.block_count": vl - 1,                     # the legacy converter drops the last layer
           "clip.vision.image_size": img, "clip.vision.patch_size": ps, "clip.vision.embedding_length": vh,
           "clip.vision.feed_forward_length": vi, "clip.vision.attention.head_count": LLAVA["vision_heads"]}
    for k, v in u32.items():
        assert _kv(r, k) == v, k
        assert _kv_type(r, k) == GGUFValueType.UINT32, k
    assert _kv(r, "clip.vision.attention.layer_norm_epsilon") == pytest.approx(1e-5, rel=1e-6)
    assert _kv(r, "clip.use_gelu") is False                       # CLIP's quick_gelu
    assert r.get_field("clip.vision.feature_layer") is None       # LLaVA-1.5 files have no feature_layer
    np.testing.assert_allclose(_kv(r, "clip.vision.image_mean"), OPENAI_CLIP_MEAN, rtol=1e-7)
    np.testing.assert_allclose(_kv(r, "clip.vision.image_std"), OPENAI_CLIP_STD, rtol=1e-7)
    assert r.get_field("clip.vision.image_mean").types == [GGUFValueType.ARRAY, GGUFValueType.FLOAT32]

    t = _tensors(r)
    hf = {lf._classic_llava_key(k): v for k, v in _hf_tensors(tiny_llava).items()}
    exp = _vision_expected(hf, vl - 1)
    assert set(t) == set(exp)                                     # no v.post_ln, no v.blk.<last>
    assert f"v.blk.{vl - 2}.ln1.weight" in t and f"v.blk.{vl - 1}.ln1.weight" not in t
    n_pos = (img // ps) ** 2 + 1
    assert [int(x) for x in t["v.patch_embd.weight"].shape] == [ps, ps, 3, vh]
    assert [int(x) for x in t["v.position_embd.weight"].shape] == [vh, n_pos]
    assert [int(x) for x in t["v.class_embd"].shape] == [vh]
    # FFN names swapped relative to shapes: "ffn_down" has input dim (ne[0]) = n_embd, i.e. it is the up projection
    for i in range(vl - 1):
        assert [int(x) for x in t[f"v.blk.{i}.ffn_down.weight"].shape] == [vh, vi]
        assert [int(x) for x in t[f"v.blk.{i}.ffn_up.weight"].shape] == [vi, vh]
    # projector output width = the text model's n_embd (llama.cpp checks this at load)
    assert [int(x) for x in t["mm.0.weight"].shape] == [vh, LLAVA["text_hidden"]]
    assert [int(x) for x in t["mm.2.weight"].shape] == [LLAVA["text_hidden"], LLAVA["text_hidden"]]

    always_f16 = {"v.patch_embd.weight", "mm.0.weight", "mm.2.weight"}   # even with --use-f32
    for name, want in exp.items():
        tt = t[name]
        if name in always_f16 or (mm_type == "f16" and want.ndim == 2):
            assert tt.tensor_type == QT.F16, name
            np.testing.assert_array_equal(np.asarray(tt.data).reshape(want.shape), want.astype(np.float16),
                                          err_msg=name)
        else:
            assert tt.tensor_type == QT.F32, name
            np.testing.assert_array_equal(_f32(tt), want, err_msg=name)
