import os
import sys

import pytest

# tests/ holds shared fixture modules (gguf_fixtures.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The suite compares the CPU backend with its references at CPU tolerances: models built without an
# explicit device run on the CPU even on a GPU machine (device="auto" reads AIRCACHE_DEVICE; the
# CLI and bench subprocesses inherit it). tests/gpu asks for device="cuda" explicitly.
os.environ.setdefault("AIRCACHE_DEVICE", "cpu")

# tests/ray starts a local Ray cluster (Ray Serve): CI runs it in a step of its own,
# AIRCACHE_RAY_TESTS=1 python -m pytest -q tests/ray
if os.environ.get("AIRCACHE_RAY_TESTS") != "1":
    collect_ignore = ["ray"]

from gguf_fixtures import write_gguf  # noqa: E402


@pytest.fixture
def gguf_writer(tmp_path):
    counter = iter(range(10**6))

    def make(build, arch="llama", name=None):
        path = tmp_path / (name or f"f{next(counter)}.gguf")
        return write_gguf(path, arch, build)

    return make


# --------------------------------------------------------------------------------------------------
# Session fixtures: tiny HF models and the GGUF files llama.cpp's own converters make from them
# (tools/llamacpp_fixtures.py; shared by several test files: each conversion costs seconds)
# --------------------------------------------------------------------------------------------------

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
_TOOL = _ROOT / "tools" / "llamacpp_fixtures.py"
sys.path.insert(0, str(_ROOT / "tools"))

from fixture_configs import LLAMA, LLAVA  # noqa: E402


@pytest.fixture(scope="session")
def llamacpp_root():
    import llamacpp_fixtures as lf

    root = lf.ensure_llamacpp()
    lf.ensure_tf4_venv()
    return root


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    from hf_fixtures import train_spm

    return train_spm(str(tmp_path_factory.mktemp("spm")), vocab_size=512)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, spm_model):
    from hf_fixtures import make_tiny_llama

    d = tmp_path_factory.mktemp("hf-llama")
    make_tiny_llama(str(d), spm_model, seed=1, **LLAMA)
    return d


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory, spm_model):
    from hf_llava_fixtures import make_tiny_llava

    d = tmp_path_factory.mktemp("hf-llava")
    make_tiny_llava(str(d), spm_model, seed=2, **LLAVA)
    return d


def _cli(*args):
    p = subprocess.run([sys.executable, str(_TOOL), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.split()


@pytest.fixture(scope="session")
def converted(llamacpp_root, tiny_llama, tiny_llava, tmp_path_factory):
    """All conversions by llama.cpp's converters. Some go through the tool's CLI, the rest through
    its API. {name: path or (text, mmproj)}."""
    import llamacpp_fixtures as lf

    out = tmp_path_factory.mktemp("gguf")
    jobs = {
        "llama-f32": lambda: lf.convert_text_model(tiny_llama, out / "llama-f32.gguf", "f32"),
        "llama-f16": lambda: lf.convert_text_model(tiny_llama, out / "llama-f16.gguf", "f16"),
        "llama-bf16": lambda: lf.convert_text_model(tiny_llama, out / "llama-bf16.gguf", "bf16"),
        "llama-q8_0": lambda: _cli("llama", "--hf", tiny_llama, "--out", out / "llama-q8_0.gguf",
                                   "--outtype", "q8_0"),
        "llava-f32": lambda: _cli("llava", "--hf", tiny_llava, "--out-dir", out / "llava-f32", "--outtype", "f32"),
        # a quantized text model with an f16 mmproj, as llama.cpp users commonly pair them
        "llava-q8_0": lambda: lf.convert_llava(tiny_llava, out / "llava-q8_0", "q8_0"),
    }
    return out, {k: job() for k, job in jobs.items()}


# Tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL (tests/hf_qwen_fixtures.py) and their GGUF pairs made by
# llama.cpp's convert_hf_to_gguf.py (text, then --mmproj). Building the three models takes about a
# second, each converter run about 4 s (mostly its imports of torch and transformers).


@pytest.fixture(scope="session")
def qwen_spm(tmp_path_factory):
    from hf_qwen_fixtures import train_qwen_spm

    return train_qwen_spm(str(tmp_path_factory.mktemp("qwen-spm")))


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory, qwen_spm):
    from hf_qwen_fixtures import make_tiny_qwen2vl

    d = tmp_path_factory.mktemp("hf-qwen2vl")
    make_tiny_qwen2vl(str(d), qwen_spm, seed=21)
    return d


@pytest.fixture(scope="session")
def tiny_qwen25vl(tmp_path_factory, qwen_spm):
    from hf_qwen_fixtures import make_tiny_qwen25vl

    d = tmp_path_factory.mktemp("hf-qwen25vl")
    make_tiny_qwen25vl(str(d), qwen_spm, seed=22)
    return d


@pytest.fixture(scope="session")
def tiny_qwen3vl(tmp_path_factory, qwen_spm):
    from hf_qwen_fixtures import make_tiny_qwen3vl

    d = tmp_path_factory.mktemp("hf-qwen3vl")
    make_tiny_qwen3vl(str(d), qwen_spm, seed=23)
    return d


@pytest.fixture(scope="session")
def qwen_converted(tiny_qwen2vl, tiny_qwen25vl, tiny_qwen3vl, tmp_path_factory):
    """{name: (text_gguf, mmproj_gguf)} by llama.cpp's convert_hf_to_gguf.py: "qwen2vl-f32",
    "qwen25vl-f32", "qwen3vl-f32" (F32 mmproj) and "qwen25vl-f16", "qwen25vl-q8_0" (F16 mmproj, one
    file shared by both)."""
    import llamacpp_fixtures as lf

    lf.ensure_llamacpp()
    out = tmp_path_factory.mktemp("gguf-qwen")
    res = {
        "qwen2vl-f32": tuple(_cli("qwenvl", "--hf", tiny_qwen2vl, "--out-dir", out / "qwen2vl-f32")),
        "qwen25vl-f32": lf.convert_qwenvl(tiny_qwen25vl, out / "qwen25vl-f32", "f32"),
        "qwen3vl-f32": lf.convert_qwenvl(tiny_qwen3vl, out / "qwen3vl-f32", "f32"),
        "qwen25vl-f16": lf.convert_qwenvl(tiny_qwen25vl, out / "qwen25vl-f16", "f16"),
    }
    res["qwen25vl-q8_0"] = (lf.convert_text_model(tiny_qwen25vl, out / "qwen25vl-q8_0" / "text-model-q8_0.gguf",
                                                  "q8_0"), res["qwen25vl-f16"][1])
    return res


# Tiny Gemma 3 and SmolVLM2 (tests/hf_gemma_fixtures.py, tests/hf_smolvlm_fixtures.py) and their GGUF
# pairs made by llama.cpp's convert_hf_to_gguf.py (text, then --mmproj). Each model takes about a
# second to build (plus the first import of its transformers classes), each converter run about 5 s
# (8 runs; about 50 s in all on one core, the four pairs run side by side where there are more).


@pytest.fixture(scope="session")
def gemma_spm(tmp_path_factory):
    from hf_gemma_fixtures import train_gemma_spm

    return train_gemma_spm(str(tmp_path_factory.mktemp("gemma-spm")))


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory, gemma_spm):
    from hf_gemma_fixtures import make_tiny_gemma3

    d = tmp_path_factory.mktemp("hf-gemma3")
    make_tiny_gemma3(str(d), gemma_spm, seed=31)
    return d


@pytest.fixture(scope="session")
def smol_spm(tmp_path_factory):
    from hf_smolvlm_fixtures import train_smol_spm

    return train_smol_spm(str(tmp_path_factory.mktemp("smol-spm")))


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory, smol_spm):
    from hf_smolvlm_fixtures import make_tiny_smolvlm

    d = tmp_path_factory.mktemp("hf-smolvlm")
    make_tiny_smolvlm(str(d), smol_spm, seed=41)
    return d


@pytest.fixture(scope="session")
def vlm_converted(tiny_gemma3, tiny_smolvlm, tmp_path_factory):
    """{name: (text_gguf, mmproj_gguf)} by llama.cpp's convert_hf_to_gguf.py: "gemma3-f32",
    "smolvlm-f32" (F32 mmproj, except Gemma's mm.input_projection, always F16) and "gemma3-f16",
    "smolvlm-f16" (F16 text and mmproj)."""
    from concurrent.futures import ThreadPoolExecutor

    import llamacpp_fixtures as lf

    lf.ensure_llamacpp()
    out = tmp_path_factory.mktemp("gguf-vlm")
    jobs = {
        "gemma3-f32": lambda: tuple(_cli("gemma3", "--hf", tiny_gemma3, "--out-dir", out / "gemma3-f32")),
        "gemma3-f16": lambda: lf.convert_gemma3(tiny_gemma3, out / "gemma3-f16", "f16"),
        "smolvlm-f32": lambda: tuple(_cli("smolvlm", "--hf", tiny_smolvlm, "--out-dir", out / "smolvlm-f32")),
        "smolvlm-f16": lambda: lf.convert_smolvlm(tiny_smolvlm, out / "smolvlm-f16", "f16"),
    }
    # the converter runs are subprocesses (mostly imports): run the pairs side by side
    with ThreadPoolExecutor(max_workers=min(4, max(2, os.cpu_count() or 2))) as pool:
        futures = {k: pool.submit(job) for k, job in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


# Tiny InternVL 2.5 / 3 (tests/hf_internvl_fixtures.py: the transformers model, and the same weights in
# OpenGVLab's original layout, which llama.cpp's converter reads) and its GGUF pairs made by
# convert_hf_to_gguf.py (text, then --mmproj). The model takes about 3 s to build (with its SentencePiece),
# each converter run about 4 s.


@pytest.fixture(scope="session")
def internvl_spm(tmp_path_factory):
    from hf_internvl_fixtures import train_internvl_spm

    return train_internvl_spm(str(tmp_path_factory.mktemp("internvl-spm")))


@pytest.fixture(scope="session")
def tiny_internvl(tmp_path_factory, internvl_spm):
    """The folder holding `hf` (save_pretrained) and `orig` (the original layout)."""
    from hf_internvl_fixtures import make_tiny_internvl

    d = tmp_path_factory.mktemp("hf-internvl")
    make_tiny_internvl(str(d), internvl_spm, seed=51)
    return d


@pytest.fixture(scope="session")
def internvl_converted(tiny_internvl, tmp_path_factory):
    """{name: (text_gguf, mmproj_gguf)} by llama.cpp's convert_hf_to_gguf.py from the original-layout
    checkpoint: "internvl-f32" (F32 text and mmproj) and "internvl-f16" (F16 text and mmproj)."""
    from concurrent.futures import ThreadPoolExecutor

    import llamacpp_fixtures as lf

    lf.ensure_llamacpp()
    out = tmp_path_factory.mktemp("gguf-internvl")
    orig = tiny_internvl / "orig"
    jobs = {
        "internvl-f32": lambda: tuple(_cli("internvl", "--hf", orig, "--out-dir", out / "internvl-f32")),
        "internvl-f16": lambda: lf.convert_internvl(orig, out / "internvl-f16", "f16"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(job) for k, job in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


# Tiny LLaVA-NeXT (tests/hf_llava_next_fixtures.py: Mistral text, CLIP with 48 px tiles, llava-1.6's
# pinpoints scaled) and its GGUF pairs made by llama.cpp's legacy route (the language model exported and
# converted by convert_hf_to_gguf.py; llava_surgery_v2.py + convert_image_encoder_to_gguf.py): about 15 s
# for both pairs side by side.


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory, spm_model):
    from hf_llava_next_fixtures import make_tiny_llava_next

    d = tmp_path_factory.mktemp("hf-llava-next")
    make_tiny_llava_next(str(d), spm_model, seed=51)
    return d


@pytest.fixture(scope="session")
def llava_next_converted(llamacpp_root, tiny_llava_next, tmp_path_factory):
    """{name: (text_gguf, mmproj_gguf)}: "llava-next-f32" (F32 text; the legacy mmproj in F32 but for its
    projector matrices and patch embedding, always F16) and "llava-next-f16" (F16 text and mmproj)."""
    from concurrent.futures import ThreadPoolExecutor

    import llamacpp_fixtures as lf

    out = tmp_path_factory.mktemp("gguf-llava-next")
    jobs = {
        "llava-next-f32": lambda: tuple(_cli("llava-next", "--hf", tiny_llava_next, "--out-dir", out / "f32")),
        "llava-next-f16": lambda: lf.convert_llava_next(tiny_llava_next, out / "f16", "f16"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(job) for k, job in jobs.items()}
        return {k: f.result() for k, f in futures.items()}
