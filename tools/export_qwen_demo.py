#!/usr/bin/env python3
"""Export the Qwen2-VL demo model (issue 19): training checkpoint -> HF checkpoint -> F16 GGUF pair
made by llama.cpp's own convert_hf_to_gguf.py (text, then --mmproj; tools/llamacpp_fixtures.py).

    python tools/export_qwen_demo.py [--ckpt tools/demo_ckpt/qwen2vl/qwen2vl-small.pt]
        [--hf-out tools/demo_ckpt/qwen2vl/hf] [--out-dir DIR]

Writes the HF checkpoint (float16 safetensors, config, tokenizer, processor: the reference of
tools/eval_qwen.py's agreement check; `training.json` says which step) and, in --out-dir,
`text-model-f16.gguf` + `mmproj-model-f16.gguf` (llama.cpp's names). Then evaluate with
`python tools/eval_qwen.py --hf HF_OUT --gguf OUT_DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

QWEN_DIR = os.path.join(HERE, "demo_ckpt", "qwen2vl")


def export(ckpt: str, hf_dir: str, out_dir: str, outtype: str = "f16"):
    import torch

    import llamacpp_fixtures as lf
    import train_qwen_demo as tq

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    spm = os.path.join(QWEN_DIR, "spm.model")
    model = tq.make_model(spm, **state["sizes"])
    model.load_state_dict(tq.float_state(state["model"]))
    tq.save_hf(model.eval(), spm, hf_dir, dtype=torch.float16)
    with open(os.path.join(hf_dir, "training.json"), "w") as f:
        json.dump({"stage": state.get("stage"), "step": state.get("step"), "sizes": state.get("sizes"),
                   "total_minutes": round(state.get("total_time", 0.0) / 60, 1),
                   "last_validation": (state.get("history") or [None])[-1]}, f, indent=1)
    return lf.convert_qwenvl(hf_dir, out_dir, outtype)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=os.path.join(QWEN_DIR, "qwen2vl-small.pt"))
    ap.add_argument("--hf-out", default=os.path.join(QWEN_DIR, "hf"))
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "models", "qwen2vl-demo-gguf"))
    ap.add_argument("--outtype", default="f16")
    a = ap.parse_args(argv)
    text, mm = export(a.ckpt, a.hf_out, a.out_dir, a.outtype)
    print(f"wrote {a.hf_out}, {text} ({os.path.getsize(text) / 1e6:.1f} MB), {mm} ({os.path.getsize(mm) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
