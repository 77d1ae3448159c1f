"""Text generation: tokenization against sentencepiece, greedy decoding against HF `generate`,
the sampler chain against a numpy reference, streaming, stop strings, limits, CLI = Python."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import aircache_cpp as ac
import gguf_fixtures as fx
import hf_fixtures as hf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import convert_hf_to_gguf as conv  # noqa: E402

PROMPTS = ["the cat sat on the", "What colour is the star?", "hello world 123", " über naïve café"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("gen"))
    spm = hf.train_spm(os.path.join(d, "spm"), 512)
    model = hf.make_tiny_llama(os.path.join(d, "hf"), spm, hidden=64, layers=2, heads=4, kv_heads=2,
                               intermediate=96, rope_theta=50000.0, seed=4)
    path = conv.convert_llama(os.path.join(d, "hf"), os.path.join(d, "f32.gguf"), "f32")
    import sentencepiece

    return {"hf": model, "path": path, "sp": sentencepiece.SentencePieceProcessor(model_file=spm),
            "model": ac.Model(path, kv_type="f32", n_ctx=256, chat_template="none")}


def clear_margin(logits: np.ndarray) -> bool:
    """HF's top-2 margin exceeds 1e-3 of the logit range: a step where any correct implementation
    must pick the same greedy token (random weights have near-ties where they may not)."""
    top2 = np.sort(logits)[-2:]
    return bool(top2[1] - top2[0] > 1e-3 * (logits.max() - logits.min()))


def test_tokenize_matches_sentencepiece(tiny):
    m, sp = tiny["model"], tiny["sp"]
    for s in PROMPTS + ["", "  two  spaces", "emoji 😀🚀", "日本語\nnew line"]:
        assert m.tokenize(s) == [1] + sp.encode(s)
        assert m.tokenize(s, add_bos=False) == sp.encode(s)
        assert m.detokenize(m.tokenize(s)) == s
    assert m.tokenize("a</s>b") == [1] + sp.encode("a") + [2] + sp.encode("b")  # special text parsed
    assert 2 not in m.tokenize("a</s>b", parse_special=False)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_hf(tiny, prompt):
    """Every greedy step is HF's argmax for the same history (teacher-forced on our own output),
    wherever HF's margin is clear."""
    m = tiny["model"]
    ids = m.tokenize(prompt)
    r = m.generate(prompt=prompt, max_tokens=24)
    assert r.stats.n_prompt == len(ids) and r.stats.n_generated == 24 and r.stats.stop_reason == "length"
    with torch.no_grad():
        ref = tiny["hf"](torch.tensor([ids + r.tokens])).logits[0].float().numpy()
    steps = ref[len(ids) - 1: len(ids) - 1 + len(r.tokens)]
    clear = [clear_margin(s) for s in steps]
    assert sum(clear) >= 16, "too many near-ties to compare"
    for i, (tok, s, c) in enumerate(zip(r.tokens, steps, clear)):
        if c:
            assert tok == int(np.argmax(s)), f"step {i}"
    assert r.text == m.detokenize(r.tokens)
    # and HF's own greedy generate agrees up to its first near-tie
    out = tiny["hf"].generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=0)
    hf_toks = out[0, len(ids):].tolist()
    n = next((i for i, c in enumerate(clear) if not c), len(clear))
    assert r.tokens[:n + 1] == hf_toks[:n + 1]


def test_stream_pieces_equal_result(tiny):
    m = tiny["model"]
    full = m.generate(prompt=PROMPTS[0], max_tokens=30)
    s = m.generate(prompt=PROMPTS[0], max_tokens=30, stream=True)
    pieces = list(s)
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == full.text
    assert s.result.tokens == full.tokens and s.result.stats.n_generated == 30


def test_stop_strings(tiny):
    m = tiny["model"]
    full = m.generate(prompt=PROMPTS[1], max_tokens=40).text
    assert len(full) > 12
    stop = full[6:9]
    cut = full.find(stop)
    r = m.generate(prompt=PROMPTS[1], max_tokens=40, stop=[stop, "\x00never"])
    assert r.text == full[:cut] and r.stats.stop_reason == "stop"
    streamed = "".join(m.generate(prompt=PROMPTS[1], max_tokens=40, stop=stop, stream=True))
    assert streamed == full[:cut]


def test_limits(tiny):
    m = tiny["model"]
    r = m.generate(prompt=PROMPTS[0], max_tokens=0)
    assert r.text == "" and r.tokens == [] and r.stats.stop_reason == "length"
    small = ac.Model(tiny["path"], n_ctx=16, kv_type="f32", chat_template="none")
    ids = small.tokenize(PROMPTS[1])
    r = small.generate(prompt=PROMPTS[1], max_tokens=-1)
    assert r.stats.stop_reason in ("context", "eos")
    if r.stats.stop_reason == "context":
        assert len(ids) + len(r.tokens) == 16 + 1  # the last sampled token never needed a KV slot
    with pytest.raises(ac.InputError, match="longer than the context .*n_ctx = 16"):
        small.generate(prompt=" ".join(["hello"] * 40))


def test_seeded_sampling(tiny):
    m = tiny["model"]
    kw = dict(prompt=PROMPTS[0], max_tokens=30, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = m.generate(seed=7, **kw).tokens
    assert a == m.generate(seed=7, **kw).tokens
    assert a != m.generate(seed=8, **kw).tokens


def reference_distribution(logits, temperature, top_k, top_p, min_p):
    """llama.cpp's chain: top-k, top-p and min-p on softmax(logits), then temperature."""
    order = np.argsort(-logits, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    lg = logits[order].astype(np.float64)
    p = np.exp(lg - lg.max())
    p /= p.sum()
    keep = len(order)
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
    if min_p > 0:
        keep = min(keep, int(np.sum(p >= min_p * p[0])))
    order, lg = order[:keep], lg[:keep]
    q = np.exp((lg - lg.max()) / temperature)
    return dict(zip(order.tolist(), q / q.sum()))


def test_sampler_matches_reference_distribution(tiny):
    m = tiny["model"]
    prompt = PROMPTS[2]
    last = m.logits(m.tokenize(prompt))[-1]
    params = dict(temperature=0.3, top_k=20, top_p=0.9, min_p=0.02)
    ref = reference_distribution(last, **params)
    # the test can tell a wrong chain apart: ignoring the temperature is far outside the tolerance
    wrong = reference_distribution(last, **dict(params, temperature=1.0))
    assert 0.5 * sum(abs(wrong.get(t, 0) - p) for t, p in ref.items()) > 0.12
    n = 2000
    counts = {}
    for seed in range(n):
        t = m.generate(prompt=prompt, max_tokens=1, seed=seed, **params).tokens
        tok = t[0] if t else -1
        counts[tok] = counts.get(tok, 0) + 1
    assert set(counts) <= set(ref), f"sampled tokens outside the allowed set: {set(counts) - set(ref)}"
    tv = 0.5 * sum(abs(counts.get(t, 0) / n - p) for t, p in ref.items())
    print(f"total variation distance to the reference distribution: {tv:.3f} ({len(ref)} candidates)")
    assert tv < 0.08


def test_repeat_penalty_matches_reference(tiny):
    m = tiny["model"]
    prompt = "the the the cat cat"
    ids = m.tokenize(prompt)
    last = m.logits(ids)[-1].astype(np.float64)
    pen = 1.8
    for t in set(ids):
        last[t] = last[t] / pen if last[t] > 0 else last[t] * pen
    r = m.generate(prompt=prompt, max_tokens=1, repeat_penalty=pen)
    assert r.tokens == [int(np.argmax(last))]


def test_argument_errors(tiny):
    m = tiny["model"]
    with pytest.raises(ac.InputError, match="single positional string is taken as the image"):
        m.generate("just text")
    with pytest.raises(ac.InputError, match="needs a prompt"):
        m.generate()
    with pytest.raises(ac.InputError, match="temperature"):
        m.generate(prompt="x", temperature=-1)
    with pytest.raises(ac.InputError, match="top_p"):
        m.generate(prompt="x", top_p=0)
    with pytest.raises(ac.InputError, match="stop strings must not be empty"):
        m.generate(prompt="x", stop=[""])
    with pytest.raises(ac.InputError, match="max_tokens"):
        m.generate(prompt="x", max_tokens=-5)
    with pytest.raises(ac.InputError, match="seed"):
        m.generate(prompt="x", seed=-1)
    with pytest.raises(ac.InputError, match="mmproj"):
        m.generate(np.zeros((4, 4, 3), np.uint8), "x")
    if not ac.cuda_available():  # CUDA asked for where it cannot run: which of the two reasons
        reason = "no CUDA device is usable" if ac.build_info()["cuda"] else "no CUDA support"
        with pytest.raises(ac.UnsupportedError, match=reason):
            ac.Model(tiny["path"], device="cuda")
    with pytest.raises(ac.UnsupportedError, match="only" if ac.cuda_available() else "CUDA"):
        ac.Model(tiny["path"], device="cuda:99")
    with pytest.raises(ac.InputError, match="n_gpu_layers"):
        ac.Model(tiny["path"], n_gpu_layers=-2)
    m_cpu = ac.Model(tiny["path"], device="cpu", n_gpu_layers=3)  # ignored on the CPU
    assert m_cpu.device == "cpu" and m_cpu.n_gpu_layers == 0
    with pytest.raises(ac.InputError, match="unknown device"):
        ac.Model(tiny["path"], device="tpu")
    with pytest.raises(ac.InputError, match="unknown chat template 'alpaca'"):
        ac.Model(tiny["path"], chat_template="alpaca")


def test_default_chat_template(tiny):
    """Without a template in the file the default is LLaVA-1.5's 'USER: ... ASSISTANT:'."""
    m = ac.Model(tiny["path"], kv_type="f32", n_ctx=256)
    assert m.build_prompt("hi there") == m.tokenize("USER: hi there ASSISTANT:")
    assert m.build_prompt("hi there", chat_template="chatml") == m.tokenize(
        "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n")
    r = m.generate(prompt="hi there", max_tokens=5)
    assert r.stats.n_prompt == len(m.tokenize("USER: hi there ASSISTANT:"))


def test_streaming_lock(tiny):
    m = tiny["model"]
    s = m.generate(prompt="hello", max_tokens=10, stream=True)
    next(s)
    with pytest.raises(ac.InputError, match="streaming generation is still in progress"):
        m.generate(prompt="hello", max_tokens=2)
    s.close()
    assert m.generate(prompt="hello", max_tokens=2).stats.n_generated == 2


def test_threads(tiny):
    """Two threads on one Model are serialized; two Models run side by side; results are the
    sequential ones."""
    m2 = ac.Model(tiny["path"], kv_type="f32", n_ctx=256, chat_template="none")
    expected = {p: tiny["model"].generate(prompt=p, max_tokens=16).tokens for p in PROMPTS}
    got = {}

    def run(model, p):
        got[(id(model), p)] = model.generate(prompt=p, max_tokens=16).tokens

    threads = [threading.Thread(target=run, args=(mm, p)) for mm in (tiny["model"], m2) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (mid, p), toks in got.items():
        assert toks == expected[p]
    assert len(got) == 2 * len(PROMPTS)


def test_cli_equals_python(tiny):
    m = tiny["model"]
    for extra, kw in [([], {}), (["--temp", "0.9", "-s", "42", "--top-k", "30"], dict(temperature=0.9, seed=42, top_k=30))]:
        py = m.generate(prompt=PROMPTS[0], max_tokens=20, **kw).text
        r = subprocess.run(["aircache-cli", "-m", tiny["path"], "-p", PROMPTS[0], "-n", "20", "--kv-type", "f32",
                            "-c", "256", "--chat-template", "none"] + extra, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode() == py + "\n"  # bytes: text mode would turn a generated \r into \n
        assert b"tokens/s" in r.stderr and b"stop: length" in r.stderr


def test_cli_errors(tiny, tmp_path):
    def run(*args):
        return subprocess.run(["aircache-cli", *args], capture_output=True, text=True, timeout=60)

    r = run("-m", tiny["path"])
    assert r.returncode == 2 and "missing -p PROMPT" in r.stderr
    r = run("-m", str(tmp_path / "none.gguf"), "-p", "x")
    assert r.returncode == 1 and r.stderr.startswith("aircache-cli: error: cannot open")
    r = run("-m", tiny["path"], "-p", "x", "-n", "abc")
    assert r.returncode == 2 and "not a valid number" in r.stderr
    r = run("-m", tiny["path"], "-p", "hello " * 50, "-c", "8")
    assert r.returncode == 1 and "longer than the context" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run("-m", tiny["path"], "-p", "x", "--temp", "-2")
    assert r.returncode == 1 and "temperature" in r.stderr


def test_chat_template_detected_from_file(tiny, tmp_path):
    """A file whose tokenizer.chat_template is ChatML (recognised by substring, as llama.cpp does)."""
    from gguf import GGUFValueType as VT

    jinja = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    path = fx.rewrite_gguf(tiny["path"], str(tmp_path / "chatml.gguf"),
                           kv={"tokenizer.chat_template": (jinja, VT.STRING)})
    m = ac.Model(path, kv_type="f32", n_ctx=256)
    assert m.build_prompt("hi") == m.tokenize("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    vicuna = "{{ 'USER: ' + m.content + ' ASSISTANT:' }}"
    path = fx.rewrite_gguf(tiny["path"], str(tmp_path / "vicuna.gguf"), kv={"tokenizer.chat_template": (vicuna, VT.STRING)})
    assert ac.Model(path, n_ctx=256).build_prompt("hi") == m.tokenize("USER: hi ASSISTANT:")
