#!/usr/bin/env python3
"""Write the reader/quant test corpus for the C++ test driver and the fuzzer.

    python tests/malformed_corpus.py --out DIR

DIR receives:
  malformed/<case>.gguf + malformed.tsv   (file, exception class, message regex)
  valid/*.gguf                            (valid files; also the fuzzer's seeds)
  quants.gguf                             (q.<TYPE>.<mode> raw blocks + ref.<TYPE>.<mode> gguf-py floats)
  typed.gguf + typed.tsv                  (typed-getter checks: kind, key, expected, error regex)
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_fixtures as fx  # noqa: E402


def canonical(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".9g")
    if isinstance(v, list):
        return "|".join(canonical(x) for x in v)
    return str(v)


def write_quants(path: str) -> None:
    import gguf

    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(path, "quant-vectors")
    for name in fx.SUPPORTED_TYPES:
        qt = gguf.GGMLQuantizationType[name]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        modes = ["random"] + (["quantize"] if name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16") else [])
        for mode in modes:
            n_blocks = max(1, 1024 // block) * 3
            raw = fx.quant_blocks(name, n_blocks, rng, mode)
            ref = fx.reference_dequantize(raw, name)
            rows = 3
            per_row = raw.reshape(rows, -1)
            if name == "F32":
                w.add_tensor(f"q.{name}.{mode}", per_row.view(np.float32))
            elif name == "F16":
                w.add_tensor(f"q.{name}.{mode}", per_row.view(np.float16))
            else:
                w.add_tensor(f"q.{name}.{mode}", per_row, raw_dtype=qt)
            w.add_tensor(f"ref.{name}.{mode}", ref.reshape(rows, -1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = args.out
    os.makedirs(os.path.join(out, "malformed"), exist_ok=True)
    os.makedirs(os.path.join(out, "valid"), exist_ok=True)

    cases = fx.malformed_cases()
    with open(os.path.join(out, "malformed.tsv"), "w", encoding="utf-8") as m:
        for c in cases:
            with open(os.path.join(out, "malformed", c.name + ".gguf"), "wb") as f:
                f.write(c.data)
            m.write(f"{c.name}.gguf\t{c.error}\t{c.pattern}\n")

    with open(os.path.join(out, "valid", "base.gguf"), "wb") as f:
        f.write(fx.base_file().encode())
    typed = fx.typed_file()
    for p in (os.path.join(out, "typed.gguf"), os.path.join(out, "valid", "typed.gguf")):
        with open(p, "wb") as f:
            f.write(typed)
    with open(os.path.join(out, "typed.tsv"), "w", encoding="utf-8") as t:
        for kind, key, expected, err in fx.TYPED_CHECKS:
            t.write(f"{kind}\t{key}\t{'' if expected is None else canonical(expected)}\t{err or ''}\n")

    write_quants(os.path.join(out, "quants.gguf"))
    # A small quantized file is a useful fuzzer seed too (tensor infos of several types).
    rng = np.random.default_rng(7)
    import gguf
    w = gguf.GGUFWriter(os.path.join(out, "valid", "small_quants.gguf"), "llama")
    w.add_block_count(1)
    for name in ("Q4_K", "Q8_0", "Q6_K"):
        qt = gguf.GGMLQuantizationType[name]
        w.add_tensor(f"t.{name}", fx.quant_blocks(name, 1, rng).reshape(1, -1), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {len(cases)} malformed files, valid seeds, quant vectors and typed checks to {out}")


if __name__ == "__main__":
    main()
