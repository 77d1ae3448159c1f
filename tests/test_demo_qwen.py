"""The second bundled demo model, `demo_model("qwen2vl")` (tools/train_qwen_demo.py,
tools/export_qwen_demo.py): shipped with the installed package, reproduced by exporting the committed
checkpoint through llama.cpp's own converter, equal to HF transformers' Qwen2VLForConditionalGeneration
on the committed HF checkpoint (tools/eval_qwen.py's agreement check on a held-out slice), answering
examples/qwen2vl/ (single questions of every type, a list answer, two images, a conversation) and
run by `aircache-cli --demo qwen2vl`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import aircache_cpp as ac

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
EXAMPLES = os.path.join(ROOT, "examples", "qwen2vl")
QWEN_CKPT = os.path.join(TOOLS, "demo_ckpt", "qwen2vl")
sys.path.insert(0, TOOLS)


def conversations():
    with open(os.path.join(EXAMPLES, "conversations.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def qdemo():
    return ac.demo_model("qwen2vl", n_threads=2)


def test_files_are_package_data():
    text, mm = ac.demo_model_paths("qwen2vl")
    pkg = os.path.join(os.path.dirname(os.path.abspath(ac.__file__)), "data")
    assert os.path.dirname(text) == pkg and os.path.dirname(mm) == pkg
    assert os.path.basename(text) == "qwen2vl-demo.gguf" and os.path.basename(mm) == "qwen2vl-demo-mmproj.gguf"
    ti, vi = ac.gguf_info(text), ac.gguf_info(mm)
    assert ti.architecture == "qwen2vl" and vi.architecture == "clip"
    assert {t.type for t in ti.tensors if len(t.shape) == 2} == {"F16"}
    assert os.path.getsize(text) + os.path.getsize(mm) < 16 << 20
    assert ac.demo_model_paths() != (text, mm)  # the default is still the first model


def test_unknown_and_missing(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown demo model 'qwen'.*'llava', 'qwen2vl'"):
        ac.demo_model("qwen")
    with pytest.raises(ValueError, match="unknown demo model"):
        ac.demo_model_paths(3)
    monkeypatch.setenv("AIRCACHE_DEMO_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="demo model is missing \\('qwen2vl': .*qwen2vl-demo.gguf"):
        ac.demo_model_paths("qwen2vl")


def test_shipped_files_are_the_committed_checkpoint(tmp_path):
    """tools/export_qwen_demo.py on the committed training checkpoint (HF save, then llama.cpp's
    convert_hf_to_gguf.py) gives the shipped tensors bit for bit."""
    import export_qwen_demo
    from gguf import GGUFReader

    text, mm = export_qwen_demo.export(os.path.join(QWEN_CKPT, "qwen2vl-small.pt"), str(tmp_path / "hf"),
                                       str(tmp_path / "gguf"))
    for made, shipped in zip((text, mm), ac.demo_model_paths("qwen2vl")):
        a, b = GGUFReader(made), GGUFReader(shipped)
        ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
        assert sorted(ta) == sorted(tb) and len(ta) > 20
        for n in ta:
            assert ta[n].tensor_type == tb[n].tensor_type, n
            assert np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)), n
    with open(tmp_path / "hf" / "training.json") as f:
        made = json.load(f)
    with open(os.path.join(QWEN_CKPT, "hf", "training.json")) as f:
        assert json.load(f)["step"] == made["step"]


def _answer(model, item, **kw):
    imgs = [os.path.join(EXAMPLES, f) for f in item["images"]]
    if len(item["turns"]) == 1:
        return [model.generate(imgs, item["turns"][0]["question"], max_tokens=48, **kw).text.strip()]
    sess, out = model.session(**kw), []
    first = [{"type": "image", "image": p} for p in imgs]
    for t in item["turns"]:
        out.append(sess.send(first + [{"type": "text", "text": t["question"]}], max_tokens=48).text.strip())
        first = []
    return out


def test_answers_examples(qdemo):
    items = conversations()
    kinds = {it["protocol"] for it in items}
    assert kinds == {"single", "list", "multi-image", "multi-turn"}
    assert {it["turns"][0]["type"] for it in items if it["protocol"] == "single"} == {
        "colour", "shape", "count", "relation", "exist"}
    for it in items:
        assert _answer(qdemo, it) == [t["answer"] for t in it["turns"]], it["id"]
    # dynamic resolution: the example images differ in size, so in token counts (one per 28x28 pixels)
    from PIL import Image

    files = sorted({f for it in items for f in it["images"]})
    counts = {qdemo.n_image_tokens(os.path.join(EXAMPLES, f)) for f in files}
    for f in files:
        w, h = Image.open(os.path.join(EXAMPLES, f)).size
        assert qdemo.n_image_tokens(os.path.join(EXAMPLES, f)) == (w // 28) * (h // 28), f
    assert len(counts) >= 3, counts
    path = os.path.join(EXAMPLES, items[0]["images"][0])
    r = qdemo.generate(path, items[0]["turns"][0]["question"], kv_policy="mosaic", kv_budget=0.2, max_tokens=48)
    n = qdemo.n_image_tokens(path)
    assert r.text.strip() == items[0]["turns"][0]["answer"]
    assert abs(float(np.mean(r.stats.visual_kept)) - 0.2 * n) <= 1 and r.stats.kv_bytes_after < r.stats.kv_bytes_before


def test_eval_slice(tmp_path):
    """tools/eval_quality.py --model qwen2vl (tools/eval_qwen.py) end to end on 3 held-out items per
    protocol: the runtime's full-cache argmax equals HF transformers' at every answer position, every
    policy x budget in the table, issue 18's target table, a plot, the section written into an existing
    docs/quality.md-like file after its own content (and replaced, not repeated, on a second run)."""
    import eval_qwen

    doc = tmp_path / "quality.md"
    doc.write_text("# first model\n\nits tables\n")
    js, plot = tmp_path / "q.json", tmp_path / "q.png"
    cmd = [sys.executable, os.path.join(TOOLS, "eval_quality.py"), "--model", "qwen2vl", "--limit", "3", "--generate", "1",
           "-t", "2", "--budgets", "0.2,0.1,0.05,0.02", "--json", str(js), "--plot", str(plot), "--section", str(doc)]
    for _ in range(2):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(js.read_text())
    for p in ("single", "list", "multi-image", "multi-turn"):
        ok, n = res["hf_agreement"][p]
        assert n >= 3 and ok == n, (p, ok, n)
        for s in eval_qwen.settings([0.2, 0.1, 0.05, 0.02]):
            x = res[json.dumps([p] + list(eval_qwen.key(s)))]
            assert 0 <= x["key"] <= 100 and x["turns"] >= 3
            if s["kv_policy"] != "full":
                assert abs(x["visual_kept"] - s["kv_budget"]) < 0.02
        assert res[json.dumps([p, "full", 1.0, "visual"])]["free_n"] >= 1
    md = doc.read_text()
    assert md.startswith("# first model\n\nits tables\n")
    assert md.count(eval_qwen.SECTION_MARKER) == 1 and md.count("### multi-turn") == 1
    assert "| multi-turn, 0.1: key word >= full - 10 |" in md and "| single, 0.02: ahead of every wave-1 policy" in md
    assert plot.stat().st_size > 10000


def test_ablation_tool_on_qwen(tmp_path, capsys):
    """tools/ablate_policy.py --model qwen2vl: a row per protocol and variant, a cell per budget, each
    key word / whole answer exact a percentage; the held-out set is refused (its table is eval_qwen's)."""
    import ablate_policy

    out = tmp_path / "abl.md"
    ablate_policy.main(["--model", "qwen2vl", "--valset", "1", "--budgets", "0.1,0.05", "--variant", "m:",
                        "--variant", "plain:mo_merge=none", "--out", str(out)])
    rows = [r for r in out.read_text().splitlines() if r.startswith("| ") and "protocol" not in r]
    assert [tuple(c.strip() for c in r.split("|")[1:3]) for r in rows] == [
        (p, v) for p in ["single", "list", "multi-image", "multi-turn"] for v in ["m", "plain"]]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[3:-1]]
        assert len(cells) == 2
        for c in cells:
            key, exact = (float(x) for x in c.split(" / "))
            assert 0 <= key <= 100 and 0 <= exact <= 100
    with pytest.raises(SystemExit, match="validation items only"):
        ablate_policy.main(["--model", "qwen2vl", "--testset"])


def test_cli_demo_qwen2vl():
    it = next(i for i in conversations() if i["protocol"] == "multi-image")
    imgs = [a for f in it["images"] for a in ("--image", os.path.join(EXAMPLES, f))]
    r = subprocess.run(["aircache-cli", "--demo", "qwen2vl", *imgs, "-p", it["turns"][0]["question"], "-n", "48"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "bundled demo model qwen2vl" in r.stderr and r.stdout.strip() == it["turns"][0]["answer"]
    r = subprocess.run(["aircache-cli", "--demo", "qwen", "-p", "hi"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown demo model 'qwen'" in r.stderr
    r = subprocess.run(["aircache-cli", "--demo", "qwen2vl", "-m", "x.gguf", "-p", "hi"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--demo and -m exclude each other" in r.stderr


def test_server_demo_qwen2vl():
    """aircache-server --demo qwen2vl: a two-image chat request through the OpenAI API answers as the
    model does; /v1/models names it; --demo with -m is a usage error."""
    import base64

    from fastapi.testclient import TestClient

    from aircache_cpp.server import ServerConfig, _State, create_app

    it = next(i for i in conversations() if i["protocol"] == "multi-image")
    content = []
    for f in it["images"]:
        with open(os.path.join(EXAMPLES, f), "rb") as fh:
            content.append({"type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(fh.read()).decode()}})
    content.append({"type": "text", "text": it["turns"][0]["question"]})
    cfg = ServerConfig(n_ctx=2048, parallel=2, n_threads=2, demo="qwen2vl")
    st = _State(cfg)
    st.load()
    assert st.error is None, st.error
    try:
        with TestClient(create_app(cfg, st, load=False)) as c:
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["aircache-demo-qwen2vl"]
            for extra in ({}, {"kv_policy": "mosaic", "kv_budget": 0.5}):
                r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                         "max_tokens": 48, "temperature": 0, **extra})
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"].strip() == it["turns"][0]["answer"], extra
    finally:
        st.sched.close()
    p = subprocess.run([sys.executable, "-m", "aircache_cpp.server", "--demo", "qwen2vl", "-m", "x.gguf"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--demo and -m exclude each other" in p.stderr
