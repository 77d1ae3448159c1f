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
