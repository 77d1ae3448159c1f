#!/usr/bin/env python3
"""Side-by-side speed of aircache.cpp and llama.cpp on the same GGUF files (CPU, or with --gpu both
on the first CUDA device: llama.cpp with -ngl 99, aircache with --device cuda).

    python tools/compare_llamacpp.py --llamacpp-bin /path/to/llama.cpp/build/bin [--shape llava-79m]
        [--types f16,q8_0,q4_k_m] [-t 2] [--prompt 596] [--gen 128] [-r 3] [--gpu]

llama.cpp is only *run* (its llama-bench, llama-quantize and llama-mtmd-cli programs built from the
llama-cpp-python sdist's vendored tree); nothing of it is linked or copied. The files: the F16
random-weight model of tools/make_random_model.py, quantized by llama.cpp's own llama-quantize
(Q8_0, Q4_K_M: the real type mixture). For each file both runtimes measure, alternating, with the
same thread count and an F16 KV cache:
  prefill: prompt positions per second for a prompt of --prompt tokens (llama-bench -p),
  decode:  tokens per second generating --gen tokens after that prompt (llama-bench -n with
           -d/--n-depth = --prompt; aircache-bench -n after its prompt),
with aircache-bench's --membw probe (the machine's read bandwidth, same threads, same process), each
file's decode also as GB/s (weights + KV bytes per step x steps/s) and % of the probe (--no-membw: off),
and image encoding (one 336x336 image through the random mmproj: llama-mtmd-cli's reported
encode time vs aircache-bench's encode column). Prints a markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_random_model  # noqa: E402


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{p.stderr[-3000:]}")
    return p


def llama_bench(bin_dir, model, threads, prompt, gen, reps, ngl=0):
    """(prefill tok/s, decode tok/s at depth `prompt`) from llama-bench's JSON."""
    out = run([os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", threads, "-p", prompt, "-n", 0, "-r", reps,
               "-o", "json", "-ngl", ngl]).stdout
    pp = json.loads(out)[0]["avg_ts"]
    out = run([os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", threads, "-p", 0, "-n", gen, "-d", prompt,
               "-r", reps, "-o", "json", "-ngl", ngl]).stdout
    tg = json.loads(out)[0]["avg_ts"]
    return pp, tg


def our_bench(model, threads, prompt, gen, reps, mmproj=None, device="cpu", membw=False):
    cmd = ["aircache-bench", "-m", model, "-t", threads, "-n", gen, "-r", reps, "-o", "json", "--kv-policy", "full",
           "--device", device] + (["--membw"] if membw else [])
    if mmproj:
        cmd += ["--mmproj", mmproj, "--n-text", 1]
    else:
        cmd += ["--n-visual", 0, "--n-text", prompt - 5]
    row = json.loads(run(cmd).stdout)[0]
    return row


def llama_image_encode_ms(bin_dir, model, mmproj, threads, image, ngl=0):
    p = subprocess.run([os.path.join(bin_dir, "llama-mtmd-cli"), "-m", model, "--mmproj", mmproj, "--image", image,
                        "-p", "hi", "-n", "1", "-t", str(threads), "--temp", "0", "-ngl", str(ngl),
                        "--chat-template", "vicuna"]
                       + ([] if ngl else ["--no-mmproj-offload"]), capture_output=True, text=True)
    m = re.search(r"(?:image slice encoded in|mtmd batch encoding done in) (\d+) ms", p.stdout + p.stderr)
    return float(m.group(1)) if m else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamacpp-bin", required=True, help="directory with llama-bench, llama-quantize, llama-mtmd-cli")
    ap.add_argument("--shape", default="llava-79m", choices=list(make_random_model.SHAPES))
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=596, help="prompt positions (576 image + 20 text for llava-79m)")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of both runtimes (medians reported)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "aircache-compare"))
    ap.add_argument("--gpu", action="store_true", help="both runtimes on the first CUDA device")
    ap.add_argument("--no-membw", action="store_true",
                    help="skip aircache-bench's read-bandwidth probe (the decode columns' GB/s and %% of the probe)")
    a = ap.parse_args(argv)
    membw = not a.gpu and not a.no_membw
    ngl, device = (99, "cuda") if a.gpu else (0, "cpu")

    f16, mmproj = make_random_model.make(a.shape, a.workdir, "f16")
    files = {}
    for t in a.types.split(","):
        if t == "f16":
            files[t] = f16
            continue
        out = os.path.join(a.workdir, f"{a.shape}-{t}.llamacpp.gguf")
        if not os.path.exists(out):
            run([os.path.join(a.llamacpp_bin, "llama-quantize"), f16, out, t.upper()])
        files[t] = out

    # image encoding through the same random mmproj (F16, the common pairing with any text type)
    img = os.path.join(a.workdir, "image.png")
    if not os.path.exists(img):
        import numpy as np
        from PIL import Image

        side = make_random_model.SHAPES[a.shape]["v_image"]
        Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype("uint8")).save(img)
    lenc, oenc = [], []
    for _ in range(a.rounds * a.reps):
        lenc.append(llama_image_encode_ms(a.llamacpp_bin, f16, mmproj, a.threads, img, ngl))
        oenc.append(our_bench(f16, a.threads, a.prompt, 1, 1, mmproj, device)["encode_ms"])
    m = statistics.median
    have_lenc = all(x is not None for x in lenc)
    enc_l, enc_o = (m(lenc) if have_lenc else None), m(oenc)

    print(f"# {a.shape} on {'the GPU (cuda:0; llama.cpp -ngl 99)' if a.gpu else 'the CPU'}: {a.threads} threads, prompt {a.prompt} positions, decode {a.gen} tokens after it, "
          f"F16 KV cache, medians of {a.rounds} alternating rounds x {a.reps} repetitions")
    if have_lenc:
        print(f"# image encode (one {make_random_model.SHAPES[a.shape]['v_image']} px image, F16 mmproj): llama.cpp "
              f"{enc_l:.0f} ms, aircache {enc_o:.0f} ms (ratio of speeds {enc_l / enc_o:.2f})")
    else:
        print(f"# image encode: llama-mtmd-cli did not report a time; aircache {enc_o:.0f} ms")
    bw_head = " decode MiB/step | llama.cpp GB/s | aircache GB/s | probe GB/s | aircache % of probe |" if membw else ""
    print("| file | llama.cpp prefill tok/s | aircache prefill tok/s | ratio | llama.cpp image+prompt ms | "
          "aircache image+prompt ms | ratio | llama.cpp decode tok/s | aircache decode tok/s | ratio |" + bw_head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" * 5 if membw else ""))
    for t, path in files.items():
        lpp, ltg, opp, otg, probe = [], [], [], [], []
        for _ in range(a.rounds):
            pp, tg = llama_bench(a.llamacpp_bin, path, a.threads, a.prompt, a.gen, a.reps, ngl)
            lpp.append(pp)
            ltg.append(tg)
            row = our_bench(path, a.threads, a.prompt, a.gen, a.reps, device=device, membw=membw)
            opp.append(row["prefill_tps"])
            otg.append(row["decode_tps_seq"])
            step_mib = row.get("decode_step_mib", 0.0)
            if membw:
                probe.append(row["membw_gbps"])
        # image + prompt: the encode time plus the prompt's positions at the measured prefill rate
        tot_o = enc_o + 1000.0 * a.prompt / m(opp)
        tot = (f"{enc_l + 1000.0 * a.prompt / m(lpp):.0f} | {tot_o:.0f} | {(enc_l + 1000.0 * a.prompt / m(lpp)) / tot_o:.2f}"
               if have_lenc else f"- | {tot_o:.0f} | -")
        # the bytes one decode step reads (weights + the KV cache, aircache-bench's decode_step_mib; the
        # same file and prompt for both runtimes) x steps/s, against the probe run in the same process
        bw = ""
        if membw:
            gb = step_mib * 1048576 / 1e9
            bw = (f" {step_mib:.0f} | {gb * m(ltg):.1f} | {gb * m(otg):.1f} | {m(probe):.1f} | "
                  f"{100 * gb * m(otg) / m(probe):.0f} |")
        print(f"| {t} | {m(lpp):.1f} | {m(opp):.1f} | {m(opp) / m(lpp):.2f} | {tot} | {m(ltg):.2f} | {m(otg):.2f} | "
              f"{m(otg) / m(ltg):.2f} |" + bw, flush=True)


if __name__ == "__main__":
    main()
