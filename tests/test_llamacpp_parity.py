"""The runtime on text GGUF files made by llama.cpp's own converter (convert_hf_to_gguf.py from the
pinned llama-cpp-python sdist; tests/conftest.py `converted`): logits equal HF `LlamaForCausalLM`
at the same thresholds as files from our converter, and tokenization and generation agree with
our converter's file of the same checkpoint."""

import os
import sys

import numpy as np
import pytest
import torch

import aircache_cpp as ac
import gguf_fixtures as fx
import hf_fixtures as hf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import convert_hf_to_gguf as conv  # noqa: E402

LEVELS = [("llama-f32", "f32", 1e-4), ("llama-f32", "f16", 5e-3), ("llama-f16", "f16", 2e-2),
          ("llama-q8_0", "f16", 6e-2)]


@pytest.fixture(scope="module")
def hf_llama(tiny_llama):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(tiny_llama)).eval()


@pytest.fixture(scope="module")
def ours(tiny_llama, tmp_path_factory):
    """The same checkpoint through this project's converter."""
    return conv.convert_llama(str(tiny_llama), str(tmp_path_factory.mktemp("ours") / "f32.gguf"), "f32")


def rel_err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name,kv_type,tol", LEVELS)
def test_logits_match_hf(converted, hf_llama, name, kv_type, tol):
    path = str(converted[0] / f"{name}.gguf")
    ids = np.random.default_rng(21).integers(0, hf_llama.config.vocab_size, 96)  # 64 prompt + 32 continuation
    with torch.no_grad():
        ref = hf_llama(torch.tensor(ids[None])).logits[0].float().numpy()
    got = ac.Model(path, kv_type=kv_type, n_ctx=128).logits(ids)
    err = rel_err(got, ref)
    print(f"llama.cpp {name} / KV {kv_type}: relative logit error {err:.2e} (limit {tol:.0e})")
    assert err <= tol
    if name in ("llama-f32", "llama-f16"):
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * (ref.max() - ref.min())
        np.testing.assert_array_equal(got.argmax(1)[clear], ref.argmax(1)[clear])


def test_bf16_file_computes_exactly(converted, hf_llama):
    import copy

    path = str(converted[0] / "llama-bf16.gguf")
    ref_model = copy.deepcopy(hf_llama)
    cfg = ref_model.config
    ref_model.load_state_dict(fx.hf_state_from_gguf(path, cfg.num_attention_heads, cfg.num_key_value_heads), strict=False)
    ids = np.random.default_rng(22).integers(0, cfg.vocab_size, 64)
    with torch.no_grad():
        ref = ref_model(torch.tensor(ids[None])).logits[0].float().numpy()
    assert rel_err(ac.Model(path, kv_type="f32").logits(ids), ref) <= 1e-4


def test_tokenizer_and_generation_agree_with_our_converter(converted, ours, spm_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    theirs = ac.Model(str(converted[0] / "llama-f32.gguf"), kv_type="f32", chat_template="none")
    mine = ac.Model(ours, kv_type="f32", chat_template="none")
    for s in hf.corpus(300, seed=77) + ["", " lead", "tail  ", "a</s>b", "😀 日本語"]:
        ids = theirs.tokenize(s, parse_special=False)
        assert ids == mine.tokenize(s, parse_special=False) == [1] + sp.encode(s)
        assert theirs.detokenize(ids) == s
    for p in ["the cat sat on the", "hello world"]:
        a = theirs.generate(prompt=p, max_tokens=24)
        b = mine.generate(prompt=p, max_tokens=24)
        assert a.tokens == b.tokens and a.text == b.text
