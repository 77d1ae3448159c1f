#!/usr/bin/env python3
"""Export the trained demo model: training checkpoint -> HF checkpoint -> F16 GGUF (text + mmproj).

    python tools/export_demo.py [--ckpt tools/demo_ckpt/demo-small.pt]

Writes
  tools/demo_ckpt/hf/                       the HF transformers checkpoint (float16 safetensors,
                                            config, tokenizer, processor) -- the reference the
                                            agreement check (tools/eval_quality.py) runs
  python/aircache_cpp/data/demo.gguf        the text model (LLaMA, F16), converted with
  python/aircache_cpp/data/demo-mmproj.gguf tools/convert_hf_to_gguf.py (CLIP + mlp projector, F16)
and checks that the runtime loads the pair and answers the example scenes (examples/scenes.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

DEMO_DIR = os.path.join(ROOT, "python", "aircache_cpp", "data")
HF_DIR = os.path.join(HERE, "demo_ckpt", "hf")


def export(ckpt: str, hf_dir: str = HF_DIR, out_dir: str = DEMO_DIR) -> tuple:
    import torch

    import demo_model as dm
    from convert_hf_to_gguf import convert_llava

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    spm = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "spm.model")
    if not os.path.exists(spm):
        spm = os.path.join(HERE, "demo_ckpt", "spm.model")
    model = dm.make_model(spm, **state["sizes"])
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    dm.save_hf(model.eval(), spm, hf_dir, dtype=torch.float16)
    os.makedirs(out_dir, exist_ok=True)
    text, mm = os.path.join(out_dir, "demo.gguf"), os.path.join(out_dir, "demo-mmproj.gguf")
    convert_llava(hf_dir, text, mm, "f16", name="aircache-demo-scenes")
    with open(os.path.join(hf_dir, "training.json"), "w") as f:
        json.dump({"stage": state.get("stage"), "step": state.get("step"), "sizes": state.get("sizes"),
                   "total_minutes": round(state.get("total_time", 0.0) / 60, 1),
                   "last_validation": (state.get("history") or [None])[-1]}, f, indent=1)
    return text, mm


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=os.path.join(HERE, "demo_ckpt", "demo-small.pt"))
    ap.add_argument("--hf-out", default=HF_DIR)
    ap.add_argument("--out", default=DEMO_DIR)
    a = ap.parse_args(argv)
    text, mm = export(a.ckpt, a.hf_out, a.out)
    print(f"wrote {a.hf_out}, {text} ({os.path.getsize(text) / 1e6:.1f} MB), {mm} ({os.path.getsize(mm) / 1e6:.1f} MB)")

    import aircache_cpp as ac

    m = ac.Model(text, mmproj=mm, n_ctx=1024)
    with open(os.path.join(ROOT, "examples", "scenes.json")) as f:
        items = json.load(f)
    ok = 0
    for it in items:
        r = m.generate(os.path.join(ROOT, "examples", it["image"]), it["question"], max_tokens=24)
        ok += r.text.strip() == it["answer"]
        print(f"{it['image']}: {it['question']!r} -> {r.text.strip()!r} (expected {it['answer']!r})")
    print(f"examples answered exactly: {ok}/{len(items)}")


if __name__ == "__main__":
    main()
