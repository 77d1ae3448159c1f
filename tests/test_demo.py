"""The bundled demo model (tools/train_demo.py, tools/export_demo.py): shipped with the installed
package, used by aircache-cli without -m, equal to its HF transformers checkpoint
(tools/demo_ckpt/hf) in the runtime, and answering the example scenes (examples/scenes.json).
tools/eval_quality.py runs end to end on a slice of the held-out set."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import aircache_cpp as ac

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
EXAMPLES = os.path.join(ROOT, "examples")
HF_DIR = os.path.join(TOOLS, "demo_ckpt", "hf")
sys.path.insert(0, TOOLS)


def examples():
    with open(os.path.join(EXAMPLES, "scenes.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def demo():
    return ac.demo_model(n_threads=2)


def test_demo_files_are_package_data():
    text, mm = ac.demo_model_paths()
    pkg = os.path.join(os.path.dirname(os.path.abspath(ac.__file__)), "data")
    assert os.path.dirname(text) == pkg and os.path.dirname(mm) == pkg
    ti, vi = ac.gguf_info(text), ac.gguf_info(mm)
    assert ti.architecture == "llama" and vi.architecture == "clip"
    assert {t.type for t in ti.tensors if len(t.shape) == 2} == {"F16"}
    assert os.path.getsize(text) + os.path.getsize(mm) < 16 << 20


def test_demo_paths_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRCACHE_DEMO_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="demo model is missing"):
        ac.demo_model_paths()


def test_demo_model_answers_examples(demo):
    assert demo.n_image_tokens() == 256
    items = examples()
    assert len(items) >= 5 and {it["type"] for it in items} >= {"colour", "shape", "count", "relation", "exist"}
    got = [demo.generate(os.path.join(EXAMPLES, it["image"]), it["question"], max_tokens=24).text.strip()
           for it in items]
    assert got == [it["answer"] for it in items]


def hf_reference():
    import torch
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(HF_DIR, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(HF_DIR), AutoProcessor.from_pretrained(HF_DIR)


def test_demo_equals_hf_checkpoint(demo):
    """Teacher-forced logits of the runtime (F16 GGUF, F16 KV cache) against HF transformers
    running the committed checkpoint (float16 weights, computed in float32), both protocols."""
    import torch
    from PIL import Image

    import scenes

    hf, tok, proc = hf_reference()
    enc = scenes.Encoder(tok, demo.n_image_tokens())
    worst = 0.0
    for it in examples():
        img = np.asarray(Image.open(os.path.join(EXAMPLES, it["image"])).convert("RGB"))
        px = proc(images=img, text="<image>", return_tensors="pt").pixel_values
        key_offset = it["answer"].rindex(it["key"])
        for proto in scenes.PROTOCOLS:
            e = enc.encode(it["question"], it["answer"], it["key"], key_offset, proto)
            ids = e["input_ids"]
            ours = demo.logits(ids, images=[img])
            with torch.no_grad():
                ref = hf(input_ids=torch.tensor([ids]), pixel_values=px).logits[0].numpy()
            span = slice(e["n_prompt"] - 1, len(ids) - 1)   # every answer position
            err = np.abs(ours[span] - ref[span]).max() / np.abs(ref[span]).max()
            worst = max(worst, err)
            assert (ours[span].argmax(-1) == ref[span].argmax(-1)).all(), (it, proto)
            assert ref[e["key_pos"] - 1].argmax() == e["key_id"], (it, proto)
    assert worst < 2e-2, worst


def test_cli_uses_bundled_model_without_m():
    it = examples()[0]
    r = subprocess.run(["aircache-cli", "--image", os.path.join(EXAMPLES, it["image"]), "-p", it["question"],
                        "-n", "24"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    notes = [l for l in r.stderr.splitlines() if "bundled demo model" in l]
    assert len(notes) == 1 and os.path.join("share", "aircache-cpp", "demo") in notes[0], r.stderr
    assert r.stdout.strip() == it["answer"]
    r = subprocess.run(["aircache-cli", "--image", os.path.join(EXAMPLES, it["image"]), "-p", it["question"],
                        "--kv-policy", "aircache", "--kv-budget", "0.1", "-n", "24"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "budget 0.1" in r.stderr and r.stdout.strip(), r.stderr


def test_cli_demo_missing(tmp_path):
    r = subprocess.run(["aircache-cli", "-p", "hello"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "AIRCACHE_DEMO_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "demo model was not found" in r.stderr and str(tmp_path) in r.stderr
    r = subprocess.run(["aircache-cli", "--mmproj", "x.gguf", "-p", "hello"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--mmproj without -m" in r.stderr


def test_eval_quality_slice(tmp_path):
    """The benchmark tool end to end on 10 held-out questions: every policy and budget in the table,
    the runtime's full-cache predictions equal HF's, a plot written, the second model's section of the
    file (tools/eval_qwen.py --section) kept."""
    import eval_qwen

    out, plot, js = tmp_path / "q.md", tmp_path / "q.png", tmp_path / "q.json"
    qwen_part = eval_qwen.SECTION_MARKER + "\n\n# Second demo model\n\nits tables\n"
    out.write_text("# an old first part\n\n" + qwen_part)  # the second model's section is kept
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "eval_quality.py"), "--limit", "10", "--generate", "2",
                        "-t", "2", "--out", str(out), "--plot", str(plot), "--json", str(js)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    md = out.read_text()
    assert "equal HF transformers' (teacher forcing) on 20/20 = 100.0%" in md
    assert "an old first part" not in md and md.endswith("\n\n" + qwen_part) and md.count(eval_qwen.SECTION_MARKER) == 1
    res = json.loads(js.read_text())
    import eval_quality

    assert len(res) == 2 * len(eval_quality.settings())
    for proto in ("question-aware", "follow-up"):
        for s in eval_quality.settings():
            k = json.dumps([proto, s["kv_policy"], s["kv_budget"], s["kv_scope"]])
            assert k in res and f"| {s['kv_policy']} | {s['kv_scope']} | {s['kv_budget']} |" in md
            if s["kv_policy"] != "full" and s["kv_scope"] == "visual":
                assert abs(res[k]["visual_kept"] - s["kv_budget"]) < 0.01 + 1 / 256
    assert plot.stat().st_size > 10000


def test_eval_background_slice():
    """The background probe on 5 questions: both tables, every policy, and the whole-image mask
    reproduces the unmasked model (all 5 answers exact, as the full cache gives on these)."""
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "eval_background.py"), "--limit", "5"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for p in ("random", "snapkv", "pyramidkv", "aircache", "vlcache"):
        assert f"| {p} | " in r.stdout
    assert "| whole image | 5/5 |" in r.stdout
    assert "| + k background positions |" in r.stdout
