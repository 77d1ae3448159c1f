#!/usr/bin/env python3
"""GGUF fixture files made by llama.cpp's own converters (not by our code).

The llama.cpp Python conversion scripts are taken from the `llama-cpp-python` sdist on PyPI
(pinned below; it vendors a llama.cpp checkout) and only *run* as programs:

- text models: `convert_hf_to_gguf.py` (with the vendored `gguf-py` and `conversion/` package),
  run with the current interpreter (it works with transformers 5);
- Qwen2-VL / Qwen2.5-VL / Qwen3-VL, Gemma 3, SmolVLM / SmolVLM2 (Idefics3), InternVL 2.5 / 3 (its
  original checkpoint layout): `convert_hf_to_gguf.py` twice, for the text model and with `--mmproj`
  for the vision encoder + projector (the route llama.cpp documents for these families;
  `convert_vlm`, `convert_qwenvl`, `convert_gemma3`, `convert_smolvlm`, `convert_internvl`);
- LLaVA-1.5 and LLaVA-NeXT (1.6) image encoders (mmproj): the legacy route under `tools/mtmd/legacy-models/`
  (`llava_surgery_v2.py` to split the CLIP tower and the projector out of the checkpoint, then
  `convert_image_encoder_to_gguf.py --clip-model-is-vision --llava-projector ...`). Those scripts
  need transformers 4.x: they run in a cached virtual environment `<cache>/venv-tf4` holding
  transformers==TRANSFORMERS4_VERSION; torch, numpy, safetensors, ... come from the environment
  running this module (no second torch is ever installed).

Cache: `$AIRCACHE_LLAMACPP_CACHE`, default `~/.cache/aircache/llamacpp-<version>`. Setting it up is
idempotent and safe when several processes do it at once (a lock file plus atomic renames).

CLI:
    python tools/llamacpp_fixtures.py fetch [--venv]
    python tools/llamacpp_fixtures.py llama --hf DIR --out OUT.gguf [--outtype f32|f16|bf16|q8_0]
    python tools/llamacpp_fixtures.py llava --hf DIR --out-dir OUT [--outtype ...]
    python tools/llamacpp_fixtures.py llava-next --hf DIR --out-dir OUT [--outtype ...]
    python tools/llamacpp_fixtures.py qwenvl --hf DIR --out-dir OUT [--outtype ...] [--mmproj-outtype ...]
    python tools/llamacpp_fixtures.py gemma3|smolvlm|internvl|vlm --hf DIR --out-dir OUT [--outtype ...] [--mmproj-outtype ...]

This module imports only the standard library at the top level (the `fetch` step runs in a bare
environment); torch/safetensors are imported where a checkpoint is re-keyed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI (pip checks it: --require-hashes).
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# llama.cpp's own pin for its legacy converters (requirements/requirements-convert_legacy_llama.txt).
TRANSFORMERS4_VERSION = "4.57.6"
# Companion pins that transformers 4.57.6 accepts (tokenizers<=0.23.0, huggingface-hub<1.0).
TF4_EXTRA_PINS = ("tokenizers==0.22.1", "huggingface-hub==0.36.0")
TORCH_PIN = "torch==2.13.0"

TEXT_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_SDIST_ROOT = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/"
_VENDOR = _SDIST_ROOT + "vendor/llama.cpp/"
# What we extract from the sdist (relative to vendor/llama.cpp/): files, or folders (ending in /).
_EXTRACT = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "gguf-py/pyproject.toml",
            "gguf-py/LICENSE", "tools/mtmd/legacy-models/", "requirements/", "requirements.txt",
            "LICENSE", "docs/multimodal/llava.md")
_STAMP = ".aircache-complete"
_TAIL = 4000


class ConversionError(RuntimeError):
    """A llama.cpp script (or the setup it needs) failed; the message carries its output tail."""


# ----------------------------------------------------------------------------------------------
# cache, download, extraction


def cache_dir() -> Path:
    env = os.environ.get("AIRCACHE_LLAMACPP_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "aircache" / f"llamacpp-{LLAMA_CPP_PYTHON_VERSION}"


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run(cmd: Sequence[str], *, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
         what: str = "") -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], env=env, cwd=None if cwd is None else str(cwd),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    if p.returncode != 0:
        out = (p.stdout or "")[-_TAIL // 2:]
        err = (p.stderr or "")[-_TAIL:]
        raise ConversionError(f"{what or cmd[0]} failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n"
                              f"--- stderr (tail) ---\n{err}\n--- stdout (tail) ---\n{out}")
    return p


def _sdist_tarball(tmp: Path) -> Path:
    """Download the pinned sdist with pip (hash-checked) into tmp; returns the tarball path."""
    req = tmp / "requirements.txt"
    req.write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} --hash=sha256:{LLAMA_CPP_PYTHON_SHA256}\n")
    # --no-binary for this package only: the sdist is what we want, while ":all:" would also force
    # the build backend's own dependencies (ninja, ...) to be compiled from source for the metadata
    # step pip runs on sdists (about 6 minutes instead of 7 seconds on a cold pip cache).
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python",
          "--require-hashes", "-r", req, "-d", tmp / "dl"], what="pip download llama-cpp-python")
    found = list((tmp / "dl").glob("llama_cpp_python-*.tar.gz"))
    if len(found) != 1:
        raise ConversionError(f"pip download gave {found}, expected one llama_cpp_python sdist")
    return found[0]


def _wanted(member: str) -> Optional[str]:
    if not member.startswith(_VENDOR):
        return None
    rel = member[len(_VENDOR):]
    if rel.startswith("/") or ".." in rel.split("/"):
        return None
    for w in _EXTRACT:
        if rel == w or (w.endswith("/") and rel.startswith(w)):
            if "/__pycache__/" in rel or rel.endswith(".pyc"):
                return None
            return rel
    return None


def _extract(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tf:
        head = None
        for m in tf:
            if m.name == _SDIST_ROOT + ".git/modules/vendor/llama.cpp/HEAD" and m.isfile():
                head = tf.extractfile(m).read().decode().strip()
                continue
            rel = _wanted(m.name)
            if rel is None or not (m.isfile() or m.isdir()):
                continue
            target = dest / rel
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)
    missing = [w for w in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py",
                           "tools/mtmd/legacy-models/llava_surgery_v2.py",
                           "tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py")
               if not (dest / w).is_file()]
    if missing:
        raise ConversionError(f"the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist lacks {missing}")
    info = {"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "sdist_sha256": LLAMA_CPP_PYTHON_SHA256,
            "llama_cpp_commit": head}
    (dest / "VERSION.json").write_text(json.dumps(info, indent=1) + "\n")


def ensure_llamacpp(cache: Optional[Path] = None) -> Path:
    """The extracted llama.cpp script tree (downloaded on first use); returns `<cache>/llama.cpp`."""
    cache = Path(cache) if cache is not None else cache_dir()
    root = cache / "llama.cpp"
    if (root / _STAMP).is_file():
        return root
    with _locked(cache):
        if (root / _STAMP).is_file():       # another process finished while we waited
            return root
        for stale in cache.glob(".fetch-*"):  # left by an interrupted run (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
        try:
            tarball = _sdist_tarball(tmp)
            stage = tmp / "llama.cpp"
            stage.mkdir()
            _extract(tarball, stage)
            (stage / _STAMP).write_text(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}\n")
            if root.exists():               # a partial tree from an interrupted older layout
                shutil.rmtree(root)
            os.rename(stage, root)          # atomic on one file system
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def llamacpp_info(cache: Optional[Path] = None) -> Dict:
    return json.loads((ensure_llamacpp(cache) / "VERSION.json").read_text())


# ----------------------------------------------------------------------------------------------
# transformers-4 environment for the legacy scripts

_PTH_NAME = "zz_aircache_parent_env.pth"
# A .pth "import" line: appends the calling environment's site dirs (torch, numpy, safetensors)
# after the venv's own, so the venv's transformers 4 / tokenizers / hub shadow the caller's.
_PTH_LINE = ("import os, sys; sys.path.extend(p for p in os.environ.get('AIRCACHE_PARENT_SITE', '')"
             ".split(os.pathsep) if p and p not in sys.path)\n")


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _parent_site_dirs() -> List[str]:
    """The running environment's package dirs (a venv's, the system's, Debian's dist-packages)."""
    cands = list(site.getsitepackages()) + [site.getusersitepackages(), sysconfig.get_paths()["purelib"],
                                            sysconfig.get_paths()["platlib"]]
    cands += [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    dirs: List[str] = []
    for p in cands:
        if p and os.path.isdir(p) and p not in dirs:
            dirs.append(p)
    return dirs


def ensure_tf4_venv(cache: Optional[Path] = None) -> Path:
    """`<cache>/venv-tf4`: base interpreter, --system-site-packages, transformers==4.57.6 (+ the
    tokenizers/hub versions it accepts). torch is never installed there (constraint torch==2.13.0
    in case a dependency asked for it); at run time the caller's site dirs are appended."""
    cache = Path(cache) if cache is not None else cache_dir()
    venv = cache / "venv-tf4"
    base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    # the venv must match the interpreter that runs us (it borrows our torch at run time)
    stamp_text = (f"transformers=={TRANSFORMERS4_VERSION} {' '.join(TF4_EXTRA_PINS)}\n"
                  f"python {sys.version_info[0]}.{sys.version_info[1]} {base}\n")
    stamp = venv / _STAMP
    if stamp.is_file() and stamp.read_text() == stamp_text and _venv_python(venv).exists():
        return venv
    with _locked(cache):
        if stamp.is_file() and stamp.read_text() == stamp_text and _venv_python(venv).exists():
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        _run([base, "-m", "venv", "--system-site-packages", venv], what="python -m venv")
        py = _venv_python(venv)
        cons = venv / "constraints.txt"
        cons.write_text(TORCH_PIN + "\n")
        _run([py, "-m", "pip", "install", "--quiet", "-c", cons, f"transformers=={TRANSFORMERS4_VERSION}",
              *TF4_EXTRA_PINS], what="pip install transformers 4")
        purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        Path(purelib, _PTH_NAME).write_text(_PTH_LINE)
        stamp.write_text(stamp_text)
    return venv


def _tf4_env(root: Path) -> Dict[str, str]:
    env = _base_env(root)
    env["AIRCACHE_PARENT_SITE"] = os.pathsep.join(_parent_site_dirs())
    return env


def _base_env(root: Path) -> Dict[str, str]:
    env = dict(os.environ)
    # the vendored gguf-py first (the scripts may need features newer than PyPI's gguf)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "gguf-py")] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"            # never reach the hub
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["TQDM_DISABLE"] = "1"
    return env


# ----------------------------------------------------------------------------------------------
# conversions


def _convert_hf_to_gguf(hf_dir, out_path, outtype: str, flags: Sequence[str], cache: Optional[Path]) -> str:
    """convert_hf_to_gguf.py DIR [flags] --outfile <tmp> --outtype T, then an atomic rename to out_path."""
    if outtype not in TEXT_OUTTYPES:
        raise ValueError(f"outtype must be one of {TEXT_OUTTYPES}, not {outtype!r}")
    root = ensure_llamacpp(cache)
    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    what = " ".join(["convert_hf_to_gguf.py", *flags])
    try:
        _run([sys.executable, root / "convert_hf_to_gguf.py", Path(hf_dir).resolve(), *flags, "--outfile", tmp_out,
              "--outtype", outtype], env=_base_env(root), cwd=root, what=what)
        if not tmp_out.is_file():
            raise ConversionError(f"{what} wrote no {tmp_out}")
        os.replace(tmp_out, out_path)
    finally:
        if tmp_out.exists():
            tmp_out.unlink()
    return str(out_path)


def convert_text_model(hf_dir, out_path, outtype: str = "f32", *, cache: Optional[Path] = None) -> str:
    """Run llama.cpp's convert_hf_to_gguf.py on an HF checkpoint directory; returns out_path."""
    return _convert_hf_to_gguf(hf_dir, out_path, outtype, (), cache)


def convert_mmproj(hf_dir, out_path, outtype: str = "f32", *, cache: Optional[Path] = None) -> str:
    """Run llama.cpp's convert_hf_to_gguf.py --mmproj (the vision encoder + projector of a model the
    new converter supports, e.g. Qwen2-VL / Qwen2.5-VL / Qwen3-VL); returns out_path."""
    return _convert_hf_to_gguf(hf_dir, out_path, outtype, ("--mmproj",), cache)


QWENVL_ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                        "Qwen3VLForConditionalGeneration")
GEMMA3_ARCHITECTURES = ("Gemma3ForConditionalGeneration",)
SMOLVLM_ARCHITECTURES = ("SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration")
# OpenGVLab's original InternVL 2.5 / 3 layout (the converter's InternVisionModel reads only that one,
# and the Intern-S1 form of the transformers names; the published GGUFs come from the original one)
INTERNVL_ARCHITECTURES = ("InternVLChatModel",)
# Every VLM whose text model and vision part both go through convert_hf_to_gguf.py (text, then --mmproj).
VLM_ARCHITECTURES = QWENVL_ARCHITECTURES + GEMMA3_ARCHITECTURES + SMOLVLM_ARCHITECTURES + INTERNVL_ARCHITECTURES


def convert_vlm(hf_dir, out_dir, outtype: str = "f32", *, mmproj_outtype: Optional[str] = None,
                architectures: Sequence[str] = VLM_ARCHITECTURES, cache: Optional[Path] = None) -> Tuple[str, str]:
    """Convert a VLM checkpoint the way llama.cpp users do: convert_hf_to_gguf.py for the text model
    and convert_hf_to_gguf.py --mmproj for the vision encoder + projector (Qwen2-VL / Qwen2.5-VL /
    Qwen3-VL, Gemma 3, SmolVLM / Idefics3: `architectures`, checked against config.json).

    Returns (text_gguf, mmproj_gguf) in out_dir: `text-model-<outtype>.gguf` and
    `mmproj-model-<mmproj_outtype>.gguf`; mmproj_outtype defaults to f32 for an f32 text model and to
    f16 otherwise (how the published GGUF pairs come). Each file is written atomically.
    """
    if outtype not in TEXT_OUTTYPES:
        raise ValueError(f"outtype must be one of {TEXT_OUTTYPES}, not {outtype!r}")
    mm_type = mmproj_outtype or ("f32" if outtype == "f32" else "f16")
    if mm_type not in TEXT_OUTTYPES:
        raise ValueError(f"mmproj_outtype must be one of {TEXT_OUTTYPES}, not {mm_type!r}")
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    config = json.loads((hf_dir / "config.json").read_text())
    if not set(config.get("architectures") or []) & set(architectures):
        raise ValueError(f"{hf_dir} is not a {'/'.join(architectures)} checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    text_gguf = convert_text_model(hf_dir, out_dir / f"text-model-{outtype}.gguf", outtype, cache=cache)
    mmproj = convert_mmproj(hf_dir, out_dir / f"mmproj-model-{mm_type}.gguf", mm_type, cache=cache)
    return text_gguf, mmproj


def convert_qwenvl(hf_dir, out_dir, outtype: str = "f32", *, mmproj_outtype: Optional[str] = None,
                   cache: Optional[Path] = None) -> Tuple[str, str]:
    """Convert a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint the way llama.cpp users do:
    convert_hf_to_gguf.py for the text model and convert_hf_to_gguf.py --mmproj for the vision part.

    Returns (text_gguf, mmproj_gguf) in out_dir: `text-model-<outtype>.gguf` and
    `mmproj-model-<mmproj_outtype>.gguf`; mmproj_outtype defaults to f32 for an f32 text model and to
    f16 otherwise (how the published GGUF pairs come). Each file is written atomically.
    """
    return convert_vlm(hf_dir, out_dir, outtype, mmproj_outtype=mmproj_outtype, architectures=QWENVL_ARCHITECTURES,
                       cache=cache)


def convert_gemma3(hf_dir, out_dir, outtype: str = "f32", *, mmproj_outtype: Optional[str] = None,
                   cache: Optional[Path] = None) -> Tuple[str, str]:
    """Convert a Gemma3ForConditionalGeneration checkpoint (convert_vlm): text GGUF arch `gemma3`,
    mmproj projector `gemma3`. The converter maps the vision weights only under the legacy
    `vision_tower.vision_model.*` names (transformers 5 saves `vision_tower.*`: rename first, as
    tests/hf_gemma_fixtures.py does) and always writes `mm.input_projection.weight` as F16."""
    return convert_vlm(hf_dir, out_dir, outtype, mmproj_outtype=mmproj_outtype, architectures=GEMMA3_ARCHITECTURES,
                       cache=cache)


def convert_smolvlm(hf_dir, out_dir, outtype: str = "f32", *, mmproj_outtype: Optional[str] = None,
                    cache: Optional[Path] = None) -> Tuple[str, str]:
    """Convert a SmolVLMForConditionalGeneration / Idefics3ForConditionalGeneration checkpoint
    (convert_vlm): text GGUF arch `llama` (found through `text_config.architectures`, e.g.
    VLlama3ForCausalLM, which the config must carry), mmproj projector `idefics3`."""
    return convert_vlm(hf_dir, out_dir, outtype, mmproj_outtype=mmproj_outtype, architectures=SMOLVLM_ARCHITECTURES,
                       cache=cache)


def convert_internvl(hf_dir, out_dir, outtype: str = "f32", *, mmproj_outtype: Optional[str] = None,
                     cache: Optional[Path] = None) -> Tuple[str, str]:
    """Convert an InternVL 2.5 / 3 checkpoint in OpenGVLab's original InternVLChatModel layout
    (convert_vlm; tests/hf_internvl_fixtures.py writes one from a transformers model by re-keying):
    config.json with `llm_config` (architectures ["Qwen2ForCausalLM"]: text GGUF arch `qwen2`) and
    `vision_config` (architectures ["InternVisionModel"]: mmproj projector `internvl`, with
    `downsample_ratio` and `min/max_dynamic_patch` written as clip.vision.projector.scale_factor and
    preproc_min/max_tiles); weights `vision_model.*` (fused `attn.qkv`, split by the converter),
    `mlp1.{0,1,3}` (mapped through the vision block map: the tower needs at least 4 layers, else "Can not
    map tensor 'mlp1.3.bias'"), `language_model.model.*`, `language_model.lm_head.*`; and a
    preprocessor_config.json with image_mean/std."""
    return convert_vlm(hf_dir, out_dir, outtype, mmproj_outtype=mmproj_outtype, architectures=INTERNVL_ARCHITECTURES,
                       cache=cache)


def _classic_llava_key(k: str) -> str:
    """transformers 5 / 4.5x checkpoint names -> the classic llava-1.5-hf layout 4.x tools expect."""
    for new, old in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if k.startswith(new):
            k = old + k[len(new):]
            break
    if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model."):
        k = "vision_tower.vision_model." + k[len("vision_tower."):]
    return k


def write_classic_llava_checkpoint(hf_dir, out_dir) -> Path:
    """Re-key a LlavaForConditionalGeneration checkpoint to the classic layout
    (`language_model.model.*`, `language_model.lm_head`, `vision_tower.vision_model.*`,
    `multi_modal_projector.linear_1/2`) as one model.safetensors plus config.json."""
    from safetensors.torch import load_file, save_file

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"no *.safetensors in {hf_dir}")
    tensors = {}
    for f in files:
        for k, v in load_file(str(f)).items():
            nk = _classic_llava_key(k)
            if nk in tensors:
                raise ConversionError(f"duplicate tensor {nk} after re-keying")
            tensors[nk] = v.contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(hf_dir / "config.json", out_dir / "config.json")
    return out_dir / "model.safetensors"


def _vit_config(llava_config: Dict) -> Dict:
    v = dict(llava_config["vision_config"])
    v.update({"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model"})
    for k in ("transformers_version", "dtype", "torch_dtype", "_name_or_path"):
        v.pop(k, None)
    return v


def convert_llava(hf_dir, out_dir, outtype: str = "f32", *, cache: Optional[Path] = None) -> Tuple[str, str]:
    """Convert a LlavaForConditionalGeneration (llava-1.5 style) the way llama.cpp users do.

    Returns (text_gguf, mmproj_gguf) in out_dir:
    - `text-model-<outtype>.gguf` from convert_hf_to_gguf.py (arch llama);
    - `mmproj-model-f32.gguf` (outtype f32) or `mmproj-model-f16.gguf` (any other outtype: the
      legacy image-encoder converter only writes f32 or f16) from llava_surgery_v2.py +
      convert_image_encoder_to_gguf.py --clip-model-is-vision --llava-projector ... --projector-type mlp.
    """
    if outtype not in TEXT_OUTTYPES:
        raise ValueError(f"outtype must be one of {TEXT_OUTTYPES}, not {outtype!r}")
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    config = json.loads((hf_dir / "config.json").read_text())
    if "LlavaForConditionalGeneration" not in (config.get("architectures") or []):
        raise ValueError(f"{hf_dir} is not a LlavaForConditionalGeneration checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    text_gguf = convert_text_model(hf_dir, out_dir / f"text-model-{outtype}.gguf", outtype, cache=cache)
    mmproj = _legacy_llava_mmproj(hf_dir, out_dir, "f32" if outtype == "f32" else "f16", _vit_config(config), cache)
    return text_gguf, mmproj


def _legacy_llava_mmproj(hf_dir: Path, out_dir: Path, mm_type: str, vit_config: Dict,
                         cache: Optional[Path]) -> str:
    """llava_surgery_v2.py + convert_image_encoder_to_gguf.py --clip-model-is-vision on a LLaVA-style
    checkpoint (re-keyed to the classic layout first), with `vit_config` as the vision model's
    config.json (docs/multimodal/llava.md); returns `out_dir/mmproj-model-<mm_type>.gguf`."""
    root = ensure_llamacpp(cache)
    venv = ensure_tf4_venv(cache)
    pre = hf_dir / "preprocessor_config.json"
    pp = json.loads(pre.read_text()) if pre.is_file() else {}
    mean = pp.get("image_mean", [0.48145466, 0.4578275, 0.40821073])
    std = pp.get("image_std", [0.26862954, 0.26130258, 0.27577711])
    legacy = root / "tools" / "mtmd" / "legacy-models"
    env = _tf4_env(root)
    with tempfile.TemporaryDirectory(prefix="llava-legacy-", dir=out_dir) as work:
        work = Path(work)
        classic = work / "llava"
        write_classic_llava_checkpoint(hf_dir, classic)
        # 1. surgery: llava.clip (vision_model.* tensors) + llava.projector (multi_modal_projector.*,
        #    and LLaVA-NeXT's image_newline)
        _run([_venv_python(venv), legacy / "llava_surgery_v2.py", "-C", "-m", classic], env=env, cwd=work,
             what="llava_surgery_v2.py")
        # 2. a CLIP vision-model directory, as docs/multimodal/llava.md describes
        vit = work / "vit"
        vit.mkdir()
        shutil.copy(classic / "llava.clip", vit / "pytorch_model.bin")
        shutil.copy(classic / "llava.projector", vit / "llava.projector")
        (vit / "config.json").write_text(json.dumps(vit_config, indent=1))
        # 3. the image-encoder converter
        cmd = [_venv_python(venv), legacy / "convert_image_encoder_to_gguf.py", "-m", vit,
               "--llava-projector", vit / "llava.projector", "--output-dir", vit, "--clip-model-is-vision",
               "--projector-type", "mlp", "--image-mean", *map(str, mean), "--image-std", *map(str, std)]
        if mm_type == "f32":
            cmd.append("--use-f32")
        _run(cmd, env=env, cwd=work, what="convert_image_encoder_to_gguf.py")
        produced = vit / f"mmproj-model-{mm_type}.gguf"
        if not produced.is_file():
            raise ConversionError(f"convert_image_encoder_to_gguf.py wrote no {produced.name}")
        mmproj = out_dir / produced.name
        os.replace(produced, mmproj)
    return str(mmproj)


# transformers' text model classes by model_type (LLaVA-NeXT's language models)
_CAUSAL_LM = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def write_llava_next_language_model(hf_dir, out_dir) -> Path:
    """The language model of a LlavaNextForConditionalGeneration checkpoint as a checkpoint of its own,
    what docs/multimodal/llava.md has users export ("load the model in transformers, and export only
    the LLM") for convert_hf_to_gguf.py, which has no LlavaNext class: config.json = the text_config
    (architectures LlamaForCausalLM / MistralForCausalLM), the weights `model.*` and `lm_head.weight`
    (re-keyed from the classic `language_model.model.*` / `language_model.lm_head.*` or transformers 5's
    `model.language_model.*` / `lm_head.*`), and the tokenizer files. (With transformers 5 the docs'
    `model.language_model.save_pretrained` would save the base model without its lm_head.)"""
    from safetensors.torch import load_file, save_file

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((hf_dir / "config.json").read_text())
    text = dict(config["text_config"])
    mt = text.get("model_type", "llama")
    if mt not in _CAUSAL_LM:
        raise ConversionError(f"LLaVA-NeXT text model_type {mt!r}: expected one of {sorted(_CAUSAL_LM)}")
    text["architectures"] = [_CAUSAL_LM[mt]]
    for k in ("_name_or_path", "transformers_version"):
        text.pop(k, None)
    tensors = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            for old, new in (("language_model.model.", "model."), ("model.language_model.", "model."),
                             ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")):
                if k.startswith(old):
                    tensors[new + k[len(old):]] = v.contiguous()
                    break
    if "lm_head.weight" not in tensors and not text.get("tie_word_embeddings", False):
        raise ConversionError(f"{hf_dir}: no lm_head weight for an untied language model")
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(text, indent=1))
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "chat_template.json", "chat_template.jinja"):
        if (hf_dir / name).is_file():
            shutil.copy(hf_dir / name, out_dir / name)
    return out_dir


def _llava_next_vit_config(config: Dict) -> Dict:
    """The vision model's config.json for the legacy image-encoder converter, with the keys of the
    config_vit.json llama.cpp's LLaVA-1.6 docs point to (cmp-nct/llava-1.6-gguf) taken from the
    checkpoint: the grid pinpoints (HF's (height, width) pairs, written flat as they are listed),
    anyres, spatial_unpad, the mlp2x_gelu projector, and the feature layer (written as
    clip.vision.feature_layer)."""
    v = _vit_config(config)
    v.update({"image_grid_pinpoints": config["image_grid_pinpoints"], "image_aspect_ratio": "anyres",
              "image_crop_resolution": v["image_size"], "image_split_resolution": v["image_size"],
              "mm_patch_merge_type": "spatial_unpad", "mm_projector_type": "mlp2x_gelu",
              "mm_hidden_size": v["hidden_size"], "vision_feature_layer": config.get("vision_feature_layer", -2)})
    return v


def convert_llava_next(hf_dir, out_dir, outtype: str = "f32", *, cache: Optional[Path] = None) -> Tuple[str, str]:
    """Convert a LlavaNextForConditionalGeneration (LLaVA-1.6) the way llama.cpp's docs describe it
    (docs/multimodal/llava.md, "LLaVA 1.6 gguf conversion"):

    - the language model exported on its own (write_llava_next_language_model) and converted by
      convert_hf_to_gguf.py: `text-model-<outtype>.gguf` (arch llama for Mistral and Vicuna);
    - the image encoder by llava_surgery_v2.py (the CLIP tower; the projector and `image_newline`)
      + convert_image_encoder_to_gguf.py --clip-model-is-vision with a vit config carrying the
      anyres keys: `mmproj-model-f32.gguf` (outtype f32; its 2-D projector matrices and the patch
      embedding are F16 all the same) or `mmproj-model-f16.gguf`.

    convert_hf_to_gguf.py run on the checkpoint itself fails ("Model LlavaNextForConditionalGeneration
    is not supported")."""
    if outtype not in TEXT_OUTTYPES:
        raise ValueError(f"outtype must be one of {TEXT_OUTTYPES}, not {outtype!r}")
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    config = json.loads((hf_dir / "config.json").read_text())
    if "LlavaNextForConditionalGeneration" not in (config.get("architectures") or []):
        raise ValueError(f"{hf_dir} is not a LlavaNextForConditionalGeneration checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llava-next-llm-", dir=out_dir) as work:
        llm = write_llava_next_language_model(hf_dir, Path(work) / "llm")
        text_gguf = convert_text_model(llm, out_dir / f"text-model-{outtype}.gguf", outtype, cache=cache)
    mmproj = _legacy_llava_mmproj(hf_dir, out_dir, "f32" if outtype == "f32" else "f16",
                                  _llava_next_vit_config(config), cache)
    return text_gguf, mmproj


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and extract the pinned llama.cpp scripts into the cache")
    f.add_argument("--venv", action="store_true", help="also create the transformers-4 venv")
    t = sub.add_parser("llama", help="convert an HF text model with convert_hf_to_gguf.py")
    t.add_argument("--hf", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--outtype", default="f32", choices=TEXT_OUTTYPES)
    v = sub.add_parser("llava", help="convert an HF LLaVA model: text GGUF + legacy mmproj GGUF")
    v.add_argument("--hf", required=True)
    v.add_argument("--out-dir", required=True)
    v.add_argument("--outtype", default="f32", choices=TEXT_OUTTYPES)
    ln = sub.add_parser("llava-next", help="convert an HF LLaVA-NeXT model: its language model exported and "
                                          "converted by convert_hf_to_gguf.py + legacy mmproj GGUF")
    ln.add_argument("--hf", required=True)
    ln.add_argument("--out-dir", required=True)
    ln.add_argument("--outtype", default="f32", choices=TEXT_OUTTYPES)
    q = sub.add_parser("qwenvl", help="convert an HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL model: text GGUF + "
                                      "mmproj GGUF (convert_hf_to_gguf.py, then with --mmproj)")
    q.add_argument("--hf", required=True)
    q.add_argument("--out-dir", required=True)
    q.add_argument("--outtype", default="f32", choices=TEXT_OUTTYPES)
    q.add_argument("--mmproj-outtype", default=None, choices=TEXT_OUTTYPES,
                   help="default: f32 for an f32 text model, f16 otherwise")
    for name, what in (("gemma3", "Gemma 3"), ("smolvlm", "SmolVLM / SmolVLM2 / Idefics3"),
                       ("internvl", "InternVL 2.5 / 3 (original InternVLChatModel layout)"),
                       ("vlm", "Qwen-VL, Gemma 3, SmolVLM or InternVL")):
        g = sub.add_parser(name, help=f"convert an HF {what} model: text GGUF + mmproj GGUF "
                                      "(convert_hf_to_gguf.py, then with --mmproj)")
        g.add_argument("--hf", required=True)
        g.add_argument("--out-dir", required=True)
        g.add_argument("--outtype", default="f32", choices=TEXT_OUTTYPES)
        g.add_argument("--mmproj-outtype", default=None, choices=TEXT_OUTTYPES,
                       help="default: f32 for an f32 text model, f16 otherwise")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "fetch":
            t0 = time.time()
            root = ensure_llamacpp()
            msg = f"llama.cpp scripts: {root} ({llamacpp_info()['llama_cpp_commit']})"
            if a.venv:
                msg += f"; transformers-4 venv: {ensure_tf4_venv()}"
            print(f"{msg} [{time.time() - t0:.1f}s]")
        elif a.cmd == "llama":
            print(convert_text_model(a.hf, a.out, a.outtype))
        elif a.cmd in ("qwenvl", "gemma3", "smolvlm", "internvl", "vlm"):
            fn = {"qwenvl": convert_qwenvl, "gemma3": convert_gemma3, "smolvlm": convert_smolvlm,
                  "internvl": convert_internvl, "vlm": convert_vlm}[a.cmd]
            print("\n".join(fn(a.hf, a.out_dir, a.outtype, mmproj_outtype=a.mmproj_outtype)))
        elif a.cmd == "llava-next":
            print("\n".join(convert_llava_next(a.hf, a.out_dir, a.outtype)))
        else:
            print("\n".join(convert_llava(a.hf, a.out_dir, a.outtype)))
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
