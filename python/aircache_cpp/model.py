"""The Pythonic model API over the C++ engine."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._core import InputError, UnsupportedError
from .image import to_rgb_array


@dataclass(frozen=True)
class GenerationStats:
    """Measurements of one request (the same object in every API that returns stats).

    Compression fields: ``kept`` (per layer the kept prompt rows: indices into the prompt, a sorted
    int array; in ``kv_head`` mode a list of arrays per KV head), ``kept_pos`` (the positions RoPE
    saw for those rows, int arrays ``[n_kept, n_pos_axes]``: the index itself for LLaVA's 1-D RoPE,
    ``(t, h, w)`` triples under M-RoPE), ``visual_kept`` and ``total_kept`` (per layer
    counts), ``kv_bytes_before`` (the full prompt's KV), ``kv_bytes_after`` (in use after
    compaction), ``kv_capacity_bytes`` (allocated), ``importance_ms``, ``compact_ms`` and
    ``diagnostics`` (the policy's own per-layer series: ``elite_size``, ``strength``, ``skewness``
    for AirCache, ``density`` for VL-Cache; NaN on layers it did not plan) and ``layer_window``
    (per layer: 0 where the budget applies, else the window ``w`` of a sliding-window layer, Gemma 3's,
    which keeps the prompt's last ``w - 1`` positions: all a later token can see)."""

    n_prompt: int = 0
    n_images: int = 0
    n_visual: int = 0
    image_encode_ms: float = 0.0
    n_generated: int = 0
    prefill_ms: float = 0.0
    prefill_tokens_per_s: float = 0.0
    decode_ms: float = 0.0
    decode_tokens_per_s: float = 0.0
    sample_ms: float = 0.0
    kv_bytes: int = 0
    kv_capacity_bytes: int = 0
    stop_reason: str = ""
    # KV compression (applied once after prefill)
    kv_policy: str = "full"
    kv_budget: float = 1.0
    kv_scope: str = "visual"
    kv_selection: str = "layer"
    kept: list = field(default_factory=list, repr=False)          # per layer: kept prompt rows (indices)
    kept_pos: list = field(default_factory=list, repr=False)      # their positions (what RoPE saw)
    visual_kept: Any = field(default=None, repr=False)            # per layer counts
    total_kept: Any = field(default=None, repr=False)
    layer_window: Any = field(default=None, repr=False)           # per layer: 0, or a sliding window kept
    kv_bytes_before: int = 0
    kv_bytes_after: int = 0
    importance_ms: float = 0.0
    compact_ms: float = 0.0
    diagnostics: Dict[str, Any] = field(default_factory=dict, repr=False)
    hit_rate: float = -1.0                                         # Model.evaluate_policies(hit_rate=True)
    hit_rate_per_layer: Any = field(default=None, repr=False)
    batch_size: int = 1                                            # generate_batch: sequences decoded together
    batch_decode_tokens_per_s: float = 0.0                         # and their aggregate decode speed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    """``text``: the generated text; ``tokens``: the generated token ids (without the
    end-of-generation token); ``stats``: a :class:`GenerationStats`; ``prompt_logits``: the logits
    of the prompt rows (a session turn with ``prompt_logits=True``; else None)."""

    text: str
    tokens: List[int]
    stats: GenerationStats = field(repr=False)
    prompt_logits: Optional[np.ndarray] = field(default=None, repr=False)


class _ModelLock:
    """One request at a time per Model; a thread that still holds it (an unfinished stream) gets an
    error instead of a deadlock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: Optional[int] = None
        self.scheduler = False  # held by a Scheduler: other calls are refused, not queued

    def acquire(self) -> None:
        if self.scheduler:
            raise InputError("a Scheduler is running on this Model: submit requests to it, or close() it first")
        if self._owner == threading.get_ident():
            raise InputError("a streaming generation is still in progress on this Model: "
                             "exhaust it or call its close() first")
        self._lock.acquire()
        self._owner = threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class GenerationStream:
    """Iterator over the text pieces of a streaming generation. ``result`` holds the
    :class:`GenerationResult` once the iteration finished; ``close()`` stops early."""

    def __init__(self, lock: _ModelLock, gen, engine=None, on_finish=None):
        self._lock, self._gen, self._engine, self._on_finish = lock, gen, engine, on_finish
        self._locked = False
        self._result: Optional[GenerationResult] = None

    def __iter__(self) -> "GenerationStream":
        return self

    def __next__(self) -> str:
        if self._result is not None:
            raise StopIteration
        if not self._locked:
            self._lock.acquire()
            self._locked = True
        try:
            while True:
                piece = self._gen.step()
                if piece is None:
                    break
                if piece:
                    return piece
        except BaseException:
            self._finish()
            raise
        self._finish()
        raise StopIteration

    def _finish(self) -> None:
        if self._result is None:
            g = self._gen
            lg = g.prompt_logits_of(self._engine) if self._engine is not None else None
            self._result = GenerationResult(g.text, list(g.tokens), GenerationStats(**g.stats), lg)
            if self._on_finish is not None:
                self._on_finish(self._result)
        self._gen = None  # a session's turn ends here (an unfinished one keeps what it fed)
        if self._locked:
            self._locked = False
            self._lock.release()

    def close(self) -> None:
        self._finish()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def result(self) -> Optional[GenerationResult]:
        return self._result


def _ids_array(input_ids) -> np.ndarray:
    arr = np.asarray(input_ids)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InputError(f"input_ids must be a 1-D sequence of token ids (got shape {arr.shape})")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"input_ids must be integers (got dtype {arr.dtype})")
    if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
        raise InputError("input_ids hold values outside int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


I32 = (-2**31, 2**31 - 1)
I64 = (-2**63, 2**63 - 1)


def _int(name, v, lo=I32[0], hi=I32[1]) -> int:
    """An integer argument in [lo, hi] (the C++ type's range at most), else an InputError naming it."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InputError(f"{name} must be an integer (got {v!r})")
    v = int(v)
    if not lo <= v <= hi:
        raise InputError(f"{name} must be in [{lo}, {hi}] (got {v})")
    return v


def _float(name, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number (got {v!r})")
    return float(v)


def _bool(name, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False (got {v!r})")
    return bool(v)


def _str(name, v, optional=False) -> str:
    """A text argument that C++ can take (valid UTF-8), else an InputError naming it."""
    if v is None and optional:
        return ""
    if not isinstance(v, str):
        raise InputError(f"{name} must be a str (got {type(v).__name__})")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{name} holds a character that is not valid Unicode text ({e.reason} at index "
                         f"{e.start}: a lone surrogate?)") from None
    return v


def _path(name, v) -> str:
    if not isinstance(v, (str, os.PathLike)):
        raise InputError(f"{name} must be a path (str or os.PathLike; got {type(v).__name__})")
    p = os.fspath(v)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    return _str(name, p)


def _kv_options(kv_options) -> Dict[str, str]:
    if kv_options is None:
        return {}
    if not isinstance(kv_options, dict):
        raise InputError("kv_options must be a dict {name: value}")
    out = {}
    for k, v in kv_options.items():
        key = _str("a kv_options name", k)
        out[key] = ("true" if v else "false") if isinstance(v, bool) else _str(f"kv_options[{key!r}]", str(v))
    return out


def _kv_budget(kv_budget) -> float:
    if isinstance(kv_budget, bool) or not isinstance(kv_budget, (int, float, np.integer, np.floating)):
        raise InputError(f"kv_budget must be a number in (0, 1] (got {kv_budget!r})")
    return float(kv_budget)


def _stop_seed(stop, seed):
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not isinstance(stop, (list, tuple)):
        raise InputError(f"stop must be a string or a list of strings (got {type(stop).__name__})")
    stop = list(stop or [])
    if not all(isinstance(s, str) for s in stop):
        raise InputError("stop must be a string or a list of strings")
    stop = [_str("stop", s) for s in stop]
    if seed is None:
        seed = secrets.randbits(63)
    if not isinstance(seed, (int, np.integer)) or seed < 0 or seed >= 2**64:
        raise InputError(f"seed must be an integer in [0, 2**64) (got {seed!r})")
    return stop, int(seed)


def _gen_options(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop,
                 kv_policy, kv_budget, kv_scope, kv_selection, kv_options, prompt_logits=False) -> Dict[str, Any]:
    """The generation options as the C++ side takes them (numbers checked there)."""
    stop, seed = _stop_seed(stop, seed)

    return {"max_tokens": _int("max_tokens", max_tokens), "temperature": _float("temperature", temperature),
            "top_k": _int("top_k", top_k), "top_p": _float("top_p", top_p), "min_p": _float("min_p", min_p),
            "repeat_penalty": _float("repeat_penalty", repeat_penalty),
            "repeat_last_n": _int("repeat_last_n", repeat_last_n), "seed": seed, "stop": stop,
            "kv_policy": _str("kv_policy", kv_policy), "kv_budget": _kv_budget(kv_budget),
            "kv_scope": _str("kv_scope", kv_scope), "kv_selection": _str("kv_selection", kv_selection),
            "kv_options": _kv_options(kv_options), "prompt_logits": _bool("prompt_logits", prompt_logits)}


def _content_parts(content) -> Tuple[list, list]:
    """OpenAI-style message content -> ([(is_image, text)], [rgb arrays]). Content is a str, or a
    list of parts: {"type": "text", "text": ...}, {"type": "image_url", "image_url": {"url": ...}}
    (a path or a data: URI), {"type": "image", "image": path / PIL / array / bytes}; a bare str or
    image in the list works too."""
    if isinstance(content, str):
        return [(False, _str("message content", content))], []
    if not isinstance(content, (list, tuple)):
        raise InputError(f"message content must be a str or a list of parts (got {type(content).__name__})")
    parts, images = [], []
    for i, part in enumerate(content):
        if isinstance(part, str):
            parts.append((False, _str(f"content part {i}", part)))
            continue
        if isinstance(part, dict):
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise InputError(f"content part {i}: a text part needs a 'text' string")
                parts.append((False, _str(f"content part {i}", part["text"])))
                continue
            if kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise InputError(f"content part {i}: an image_url part needs {{'url': ...}}")
                images.append(_image_from_url(url))
                parts.append((True, ""))
                continue
            if kind == "image":
                images.append(to_rgb_array(part.get("image")))
                parts.append((True, ""))
                continue
            raise InputError(f"content part {i}: unknown part type {kind!r} (valid: text, image_url, image)")
        images.append(to_rgb_array(part))
        parts.append((True, ""))
    return parts, images


def _image_from_url(url: str) -> np.ndarray:
    # data: URIs and the refusal of http(s) URLs are to_rgb_array's; file:// is a path here
    return to_rgb_array(url[len("file://"):] if url.startswith("file://") else url)


def _messages(messages) -> Tuple[list, list]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"message {i} must be a dict with 'role' and 'content'")
        parts, imgs = _content_parts(m["content"])
        out.append((_str(f"message {i} role", m["role"]), parts))
        images.extend(imgs)
    return out, images


def list_policies() -> List[Dict[str, Any]]:
    """Every KV-compression policy with its options (name, kind, default, description)."""
    return _core.list_policies()


def _image_list(image) -> list:
    if image is None:
        return []
    if isinstance(image, (list, tuple)):
        return [to_rgb_array(i) for i in image]
    return [to_rgb_array(image)]


class _Closed:
    """What a closed Model holds instead of its engine: any use is an InputError saying so."""

    def __init__(self, path):
        self._path = path

    def __getattr__(self, name):
        raise InputError(f"this Model ({self._path}) was closed: load it again to use it")


class Model:
    """A GGUF model loaded for inference.

    Parameters
    ----------
    model_path: text-model GGUF (llama.cpp conventions; any supported quantization).
    mmproj: the vision tower + projector GGUF (llama.cpp's mmproj files: LLaVA-1.5 ``mlp``, LLaVA-NeXT
        ``mlp`` with grid pinpoints (anyres),
        Qwen2-VL / Qwen2.5-VL / Qwen3-VL mergers, Gemma 3, SmolVLM's ``idefics3``, InternVL's ``internvl``).
    n_ctx: KV-cache positions (prompt + images + generated tokens), default 4096.
    n_threads: CPU threads (default: physical cores).
    n_batch: prompt positions per forward pass (default 512).
    kv_type: KV-cache storage of keys and values: ``"f16"`` (default), ``"f32"``, ``"q8_0"`` or ``"q4_0"``
        (GGUF's 32-element blocks, as llama.cpp's ``-ctk``/``-ctv``: q8_0 takes 53 % of f16's memory,
        q4_0 28 %; the model's head dimension must be a multiple of 32; CPU only). Compression and
        compaction work on every type.
    kv_type_k, kv_type_v: the keys' / values' type alone (``None``: ``kv_type``), llama.cpp's
        ``-ctk`` / ``-ctv``.
    image_mode: ``"pad"`` (default; LLaVA-1.5: pad to a square with the mean colour) or ``"crop"``
        (HF's llava-1.5 processor: resize the shortest side, centre crop).
    chat_template: ``None`` (from the file; LLaVA-1.5 ``USER: ... ASSISTANT:`` when it has none),
        ``"llava"``, ``"chatml"``, ``"qwen2-vl"`` (also Qwen2.5-VL: ChatML with the default system
        message, images as ``<|vision_start|><|image_pad|>...<|vision_end|>``), ``"qwen3-vl"`` (no
        default system message), ``"gemma3"``, ``"smolvlm"`` (SmolVLM2's ``User:`` / ``Assistant:`` turns
        ending in ``<end_of_utterance>``), ``"internvl"`` (InternVL 2.5 / 3: ChatML with InternVL's
        default system message, images as ``<img>...</img>``), ``"llava-next-mistral"`` (llava-v1.6-mistral:
        ``[INST] <image>\n... [/INST]``; chosen for a file whose template has ``[INST]``), ``"vicuna-v1"``
        (``"llava"`` with LLaVA's default system message, the llava-v1.6-vicuna model cards' prompt) or
        ``"none"`` (the prompt as is).
    image_min_tokens, image_max_tokens: dynamic-resolution images (Qwen-VL): the fewest / most
        tokens one image becomes (llama.cpp's ``--image-min-tokens`` / ``--image-max-tokens``);
        ``None`` = the checkpoint's defaults (HF's processor: Qwen2/2.5-VL 4 .. 16,384 tokens,
        Qwen3-VL 64 .. 16,384). An image is resized by HF's ``smart_resize`` within them; a prompt
        whose images do not fit ``n_ctx`` gets them downscaled to fit (one line with ``verbose``).
        Fixed-size projectors (LLaVA-1.5) ignore them.
    device: ``"auto"`` (default: the first CUDA device when this build has CUDA and a GPU is
        present, else the CPU; the environment variable ``AIRCACHE_DEVICE`` overrides it), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``. CUDA asked for but not built in, or no usable device: an
        ``UnsupportedError`` saying which.
    n_gpu_layers: text layers on the GPU, like llama.cpp's ``-ngl``: ``-1``/``None`` = all (with the
        output projection; the default), ``N`` = the first N (the rest run on the CPU). Ignored on
        the CPU. The vision tower runs on the GPU whenever the device is one.
    verbose: print a load summary (architecture, sizes, device, KV cache, threads) on stderr.
    check_tensors: scan every weight for NaN/inf at load (llama.cpp's ``--check-tensors``; norms,
        biases and other small tensors are always checked); a bad one is a ``FormatError`` naming
        the tensor, row and column.
    """

    def __init__(self, model_path: str | os.PathLike, mmproj: str | os.PathLike | None = None, n_ctx: int = 4096,
                 n_threads: Optional[int] = None, n_batch: int = 512, kv_type: str = "f16", image_mode: str = "pad",
                 device: str = "auto", verbose: bool = False, chat_template: Optional[str] = None,
                 n_gpu_layers: Optional[int] = -1, check_tensors: bool = False,
                 image_min_tokens: Optional[int] = None, image_max_tokens: Optional[int] = None,
                 kv_type_k: Optional[str] = None, kv_type_v: Optional[str] = None):
        if not isinstance(device, str):
            raise InputError(f"device must be a string such as 'cpu' or 'cuda:0' (got {device!r})")
        if n_gpu_layers is None:
            n_gpu_layers = -1
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, (int, np.integer)) or n_gpu_layers < -1:
            raise InputError(f"n_gpu_layers must be -1 (all) or an integer >= 0 (got {n_gpu_layers!r})")
        path = _path("model_path", model_path)
        self._engine = _core.Engine(path, mmproj=_path("mmproj", mmproj) if mmproj is not None else "",
                                    n_ctx=_int("n_ctx", n_ctx, 1, 1 << 24),
                                    n_threads=_int("n_threads", n_threads if n_threads is not None else 0, 0, 1024),
                                    n_batch=_int("n_batch", n_batch, 1, I64[1]), kv_type=_str("kv_type", kv_type),
                                    image_mode=_str("image_mode", image_mode),
                                    chat_template=_str("chat_template", chat_template, optional=True),
                                    verbose=_bool("verbose", verbose), device=_str("device", device),
                                    n_gpu_layers=int(n_gpu_layers), check_tensors=_bool("check_tensors", check_tensors),
                                    image_min_tokens=_int("image_min_tokens", 0 if image_min_tokens is None else image_min_tokens, 0, 1 << 24),
                                    image_max_tokens=_int("image_max_tokens", 0 if image_max_tokens is None else image_max_tokens, 0, 1 << 24),
                                    kv_type_k=_str("kv_type_k", kv_type_k, optional=True),
                                    kv_type_v=_str("kv_type_v", kv_type_v, optional=True))
        self._lock = _ModelLock()
        self.model_path = path
        self.verbose = verbose

    # --- information -------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._engine.n_vocab

    @property
    def device(self) -> str:
        """Where the model runs: ``"cpu"`` or ``"cuda:N"`` (``"auto"`` resolved)."""
        return self._engine.device

    @property
    def n_gpu_layers(self) -> int:
        """Text layers running on the GPU (0 on the CPU)."""
        return self._engine.n_gpu_layers

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def kv_type(self) -> str:
        """The KV cache's storage type (``"f16"``, ...); ``"K/V"`` when keys and values differ."""
        k, v = self._engine.kv_type_k, self._engine.kv_type_v
        return k if k == v else f"{k}/{v}"

    @property
    def kv_type_k(self) -> str:
        return self._engine.kv_type_k

    @property
    def kv_type_v(self) -> str:
        return self._engine.kv_type_v

    @property
    def n_embd(self) -> int:
        return self._engine.n_embd

    @property
    def architecture(self) -> str:
        return self._engine.architecture

    @property
    def chat_template(self) -> str:
        """The built-in chat template in use (``"llava"``, ``"chatml"``, ``"qwen2-vl"``,
        ``"qwen3-vl"``, ``"none"``): the constructor's, or the one the file's template names."""
        return self._engine.chat_template

    @property
    def has_vision(self) -> bool:
        return self._engine.has_vision

    @property
    def image_token_id(self) -> int:
        """The id marking image positions in ``input_ids`` (HF's LLaVA convention): the
        vocabulary's ``<image>`` token, or ``n_vocab`` when it has none. -1 without an mmproj."""
        return self._engine.image_token_id

    def n_image_tokens(self, image=None) -> int:
        """How many image-token ids HF's processor writes for ``image`` (the rows it takes in a
        sequence; 576 for LLaVA-1.5 at 336 px, whatever the image). Without an image: the count for
        the model's default image size (an ``InputError`` for a family that has none)."""
        if not self._engine.has_vision:
            raise InputError("this model was loaded without an mmproj (vision) file")
        return self._engine.n_image_tokens(None if image is None else to_rgb_array(image))

    def encode_image(self, image, deepstack: bool = False):
        """The image's embeddings as the language model sees them: float32 [n_image_tokens, n_embd].
        ``deepstack=True``: ``(embeddings, deepstack)`` with Qwen3-VL's DeepStack features, float32
        [n_deepstack, n_image_tokens, n_embd] (n_deepstack = 0 for other families)."""
        (arr,) = _image_list(image)
        with self._lock:
            return self._engine.encode_image(arr, _bool("deepstack", deepstack))

    def pixel_values(self, image) -> np.ndarray:
        """The preprocessed pixels the vision tower takes for ``image``, float32: LLaVA-1.5 CHW as
        [3 * image_size, image_size]; Qwen-VL HF's ``pixel_values`` rows [patches, 3 * 2 * patch²]
        (2x2-merge-block order) at the size ``smart_resize`` picks within the token limits."""
        (arr,) = _image_list(image)
        return self._engine.pixel_values(arr)

    def build_prompt(self, prompt: str, n_images=0, chat_template: Optional[str] = None) -> List[int]:
        """The token ids generate() feeds: the chat template around ``prompt``, each image as a run
        of its ``n_image_tokens(image)`` ``image_token_id`` entries at its ``<image>`` marker (or the
        start). ``n_images``: a count (images of the default size) or the images themselves."""
        prompt, tmpl = _str("prompt", prompt), _str("chat_template", chat_template, optional=True)
        if isinstance(n_images, (list, tuple)):
            return self._engine.build_prompt_for(prompt, [to_rgb_array(i) for i in n_images], tmpl)
        return self._engine.build_prompt(prompt, _int("n_images", n_images, 0, 1 << 16), tmpl)

    def __repr__(self) -> str:
        e = self._engine
        if isinstance(e, _Closed):
            return f"Model({self.model_path!r}, closed)"
        return (f"Model({self.model_path!r}, arch={e.architecture}, layers={e.n_layer}, n_embd={e.n_embd}, "
                f"n_ctx={e.n_ctx}, kv_type={self.kv_type}, device={e.device}, threads={e.n_threads})")

    # --- text ----------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = True) -> List[int]:
        """Token ids of ``text``. ``add_bos``: start with BOS when the model's tokenizer uses one;
        ``parse_special``: special-token text such as ``"</s>"`` becomes that token."""
        return self._engine.tokenize(_str("text", text), _bool("add_bos", add_bos),
                                     _bool("parse_special", parse_special))

    def detokenize(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of token ids (special tokens dropped unless ``skip_special=False``)."""
        return self._engine.detokenize([int(i) for i in _ids_array(ids)], _bool("skip_special", skip_special))

    def generate(self, image=None, prompt: Optional[str] = None, *, max_tokens: int = 256,
                 temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 repeat_penalty: float = 1.0, repeat_last_n: int = 64, seed: Optional[int] = None,
                 stop: Union[str, Sequence[str], None] = None, stream: bool = False, kv_policy: str = "full",
                 kv_budget: float = 1.0, kv_scope: str = "visual", kv_selection: str = "layer",
                 kv_options: Optional[Dict[str, Any]] = None,
                 chat_template: Optional[str] = None) -> Union[GenerationResult, GenerationStream]:
        """Answer ``prompt`` about ``image`` (a path, PIL image, HxWx3 uint8 array, or a list of
        them; None for text only). The prompt goes through the chat template (``chat_template``
        overrides the model's; ``"none"`` feeds it as is); images go where the prompt says
        ``<image>``, or at its start.

        Sampling: ``temperature`` 0 is greedy; otherwise repetition penalty, top-k, top-p, min-p
        and temperature are applied in that order (llama.cpp's). ``seed`` makes sampling
        reproducible (default: random). ``stop``: a string or list of strings that end the text
        (not included). ``max_tokens`` -1: until end-of-generation or a full context.
        KV compression, applied once right after the prefill: ``kv_policy`` (see
        :func:`list_policies`: ``full``, ``random``, ``streaming``, ``h2o``, ``snapkv``, ``pyramidkv``,
        ``vlcache``, ``aircache``, ``mosaic``: this project's, the recommended one), ``kv_budget`` r in (0, 1] (the fraction of candidates kept),
        ``kv_scope`` (``"visual"``: candidates are the image positions, text is kept; ``"all"``: every
        prompt position), ``kv_selection`` (``"layer"``: one kept set per layer; ``"kv_head"``: one per
        KV head), ``kv_options`` (the policy's options, e.g. ``{"air_alpha": 0.8}``).
        Returns a :class:`GenerationResult`, or with ``stream=True`` a :class:`GenerationStream`
        yielding text pieces (never half a UTF-8 character).
        """
        if image is not None and prompt is None and isinstance(image, str):
            raise InputError("generate(image, prompt): a single positional string is taken as the image; "
                             "for text-only generation pass prompt='...'")
        if prompt is None:
            raise InputError("generate() needs a prompt")
        prompt = _str("prompt", prompt)
        images = _image_list(image)
        if images and not self._engine.has_vision:
            raise InputError("an image was given, but this model was loaded without an mmproj (vision) file")
        opts = _gen_options(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop,
                            kv_policy, kv_budget, kv_scope, kv_selection, kv_options)
        ids = np.asarray(self._engine.build_prompt_for(prompt, images, _str("chat_template", chat_template, True)),
                         dtype=np.int32)
        return self._run(ids, images, opts, _bool("stream", stream))

    def _live(self):
        """The engine (an InputError once the Model was closed)."""
        if isinstance(self._engine, _Closed):
            self._engine.closed  # raises
        return self._engine

    def _run(self, ids, images, opts, stream):
        gen = _core.Generation(self._live(), ids, images, opts)
        s = GenerationStream(self._lock, gen)
        if stream:
            return s
        for _ in s:
            pass
        return s.result

    def chat(self, messages, *, stream: bool = False, chat_template: Optional[str] = None,
             **options) -> Union[GenerationResult, GenerationStream]:
        """Answer a conversation: ``messages`` in OpenAI's form, ``[{"role": "system" | "user" |
        "assistant", "content": str or [parts]}, ...]`` with parts ``{"type": "text", "text": ...}``,
        ``{"type": "image_url", "image_url": {"url": path or "data:image/png;base64,..."}}`` or
        ``{"type": "image", "image": path / PIL / array}``. The messages go through the chat
        template (the model's, or ``chat_template``), the assistant prefix added; the options are
        :meth:`generate`'s (sampling, ``kv_policy`` ... applied after the prefill). Returns what
        :meth:`generate` returns."""
        msgs, images = _messages(messages)
        if images and not self._engine.has_vision:
            raise InputError("an image was given, but this model was loaded without an mmproj (vision) file")
        opts = self._options(options)
        ids = np.asarray(self._engine.build_chat(msgs, images, _str("chat_template", chat_template, True), True),
                         dtype=np.int32)
        return self._run(ids, images, opts, _bool("stream", stream))

    def session(self, *, kv_policy: str = "full", kv_budget: float = 1.0, kv_scope: str = "visual",
                kv_selection: str = "layer", kv_options: Optional[Dict[str, Any]] = None,
                chat_template: Optional[str] = None, system: Optional[str] = None) -> "Session":
        """A conversation that keeps its KV cache between turns (:class:`Session`). The turn that
        brings the first images is compressed with ``kv_policy``/``kv_budget`` after its prefill;
        later turns append to the compacted cache."""
        return Session(self, _core.Session(self._live(), _str("kv_policy", kv_policy), _kv_budget(kv_budget),
                                           _str("kv_scope", kv_scope), _str("kv_selection", kv_selection),
                                           _kv_options(kv_options), _str("chat_template", chat_template, True),
                                           _str("system", system, True)))

    _GEN_DEFAULTS = dict(max_tokens=256, temperature=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                         repeat_last_n=64, seed=None, stop=None, kv_policy="full", kv_budget=1.0, kv_scope="visual",
                         kv_selection="layer", kv_options=None)

    def _options(self, options: Dict[str, Any], extra=()) -> Dict[str, Any]:
        unknown = set(options) - set(self._GEN_DEFAULTS) - set(extra)
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)} (valid: {sorted(self._GEN_DEFAULTS)})")
        o = dict(self._GEN_DEFAULTS)
        o.update({k: v for k, v in options.items() if k in self._GEN_DEFAULTS})
        return _gen_options(prompt_logits=bool(options.get("prompt_logits", False)), **o)

    def generate_batch(self, requests: Sequence[Tuple[Any, str]], *, max_tokens: int = 256, temperature: float = 0.0,
                       top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                       repeat_last_n: int = 64, seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
                       kv_policy: str = "full", kv_budget: float = 1.0, kv_scope: str = "visual",
                       kv_selection: str = "layer", kv_options: Optional[Dict[str, Any]] = None,
                       chat_template: Optional[str] = None) -> List[GenerationResult]:
        """Several requests decoded together: ``requests`` is a list of ``(image, prompt)`` pairs
        (``image`` None for text only, or a list of images). Each prompt is prefilled and compressed
        on its own cache; then every step feeds all unfinished sequences in one forward pass, so one
        read of the weights serves the whole batch. Same options as :meth:`generate` (the seed is
        used by every sequence, so each equals its own ``generate`` call). Returns one
        :class:`GenerationResult` per request; their stats carry ``batch_size`` and
        ``batch_decode_tokens_per_s`` (the aggregate decode speed)."""
        if not requests:
            raise InputError("generate_batch needs at least one (image, prompt) request")
        opts = _gen_options(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop,
                            kv_policy, kv_budget, kv_scope, kv_selection, kv_options)
        prompts, images = [], []
        for i, req in enumerate(requests):
            if not isinstance(req, (tuple, list)) or len(req) != 2:
                raise InputError(f"request {i} must be an (image, prompt) pair")
            image, prompt = req
            if not isinstance(prompt, str):
                raise InputError(f"request {i}: the prompt must be a str (got {type(prompt).__name__})")
            prompt = _str(f"request {i}'s prompt", prompt)
            imgs = _image_list(image)
            if imgs and not self._engine.has_vision:
                raise InputError("an image was given, but this model was loaded without an mmproj (vision) file")
            prompts.append(np.asarray(self._engine.build_prompt_for(prompt, imgs, _str("chat_template", chat_template,
                                                                                        True)), dtype=np.int32))
            images.append(imgs)
        gen = _core.BatchGeneration(self._live(), prompts, images, opts)
        with self._lock:
            while gen.step() is not None:
                pass
        return [GenerationResult(gen.text(i), list(gen.tokens(i)), GenerationStats(**gen.stats(i)))
                for i in range(gen.size)]

    # --- evaluation --------------------------------------------------------------------------
    def logits(self, input_ids: Sequence[int], images=None, *, kv_policy: str = "full", kv_budget: float = 1.0,
               kv_scope: str = "visual", kv_selection: str = "layer", kv_options: Optional[Dict[str, Any]] = None,
               n_prompt: Optional[int] = None,
               return_stats: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, GenerationStats]]:
        """Logits of every position of a fresh sequence: float32 array [n_tokens, n_vocab].

        With ``images``, HF's LLaVA convention: each image appears in ``input_ids`` as a run of
        ``image_token_id`` (``n_image_tokens`` per image), and those positions take that image's
        embeddings, in order. A sequence tokenized by the HF processor can be evaluated as is
        (SmolVLM: an image's tiles are separated by the marker tokens HF's processor writes; those
        inside the image must be exactly its own, as ``build_prompt`` gives them).

        KV compression (the same arguments as :meth:`generate`): the first ``n_prompt`` tokens
        (default: all) are prefilled and compressed, the rest are fed over the compacted cache, and
        logits come back for every position, so quality can be scored by teacher forcing.
        ``return_stats=True`` returns ``(logits, stats)`` with the compression fields of
        :class:`GenerationStats`."""
        ids = _ids_array(input_ids)
        imgs = _image_list(images)
        with self._lock:
            out, rep = self._engine.logits(ids, imgs, _str("kv_policy", kv_policy), _kv_budget(kv_budget),
                                           _str("kv_scope", kv_scope), _str("kv_selection", kv_selection),
                                           _kv_options(kv_options),
                                           _int("n_prompt", n_prompt, *I64) if n_prompt is not None else 0)
        if return_stats:
            n = int(n_prompt) if n_prompt is not None and 0 < int(n_prompt) <= len(ids) else len(ids)
            return out, GenerationStats(n_prompt=n, n_images=len(imgs), kv_bytes=rep["kv_bytes_after"], **rep)
        return out

    def evaluate_policies(self, input_ids: Sequence[int], images=None, *, n_prompt: int,
                          policies: Sequence[Dict[str, Any]], positions: Optional[Sequence[int]] = None,
                          hit_rate: bool = False) -> List[Tuple[np.ndarray, GenerationStats]]:
        """Many compression settings on one sequence, with one prefill for all settings whose
        statistics merge (the union is gathered, each setting compresses a copy of the cache).

        ``policies``: dicts with ``kv_policy`` and optionally ``kv_budget``, ``kv_scope``,
        ``kv_selection``, ``kv_options``. ``input_ids[:n_prompt]`` is prefilled and compressed; the
        rest is fed teacher-forced over each compacted cache. Returns per setting the logits of the
        absolute ``positions`` (each ``>= n_prompt - 1``; default: the last prompt position and every
        continuation position) and its stats. ``hit_rate=True`` adds the cache hit rate: per layer
        the policy planned (``stats.layer_window == 0``), the recall of the top-k candidates ranked by the first continuation token's attention in the
        full-cache run (k = the candidates kept)."""
        ids = _ids_array(input_ids)
        imgs = _image_list(images)
        settings = []
        if not isinstance(policies, (list, tuple)):
            raise InputError("policies must be a list of dicts {'kv_policy': ..., ...}")
        for i, p in enumerate(policies):
            if not isinstance(p, dict):
                raise InputError(f"policies[{i}] must be a dict (got {type(p).__name__})")
            settings.append({"kv_policy": _str(f"policies[{i}]['kv_policy']", p.get("kv_policy", "full")),
                             "kv_budget": _kv_budget(p.get("kv_budget", 1.0)),
                             "kv_scope": _str(f"policies[{i}]['kv_scope']", p.get("kv_scope", "visual")),
                             "kv_selection": _str(f"policies[{i}]['kv_selection']", p.get("kv_selection", "layer")),
                             "kv_options": _kv_options(p.get("kv_options"))})
        rows = [_int("positions[...]", r, *I64) for r in positions] if positions is not None else []
        n_prompt = _int("n_prompt", n_prompt, *I64)
        with self._lock:
            res = self._engine.evaluate(ids, imgs, n_prompt, settings, rows, _bool("hit_rate", hit_rate))
        return [(lg, GenerationStats(n_prompt=n_prompt, n_images=len(imgs), kv_bytes=rep["kv_bytes_after"], **rep))
                for lg, rep in res]

    # --- serving -----------------------------------------------------------------------------
    def scheduler(self, n_parallel: int = 4, queue_size: int = 64) -> "Scheduler":
        """Continuous batching on this Model (:class:`Scheduler`): up to ``n_parallel`` requests
        prefilled and decoded together, each with its own KV cache of ``n_ctx`` positions and its
        own sampling and ``kv_policy``; up to ``queue_size`` more wait for a slot (beyond, submit
        raises :class:`QueueFull`). While it runs, the Model's other methods raise an InputError;
        ``close()`` it (or use ``with``) to give the Model back."""
        n_parallel = _int("n_parallel", n_parallel, 1, 1024)
        queue_size = _int("queue_size", queue_size, 0, 1 << 20)
        with self._lock:
            core = _core.Scheduler(self._live(), n_parallel, queue_size)
            self._lock.scheduler = True
        return Scheduler(self, core)

    # --- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and its KV cache now; every later call raises an ``InputError`` (closing
        twice is fine)."""
        with self._lock:
            self._engine = _Closed(self.model_path)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Session:
    """A conversation on a :class:`Model` that keeps its KV cache between turns (made by
    :meth:`Model.session`). Each :meth:`send` renders one user message through the chat template
    (closing the previous answer as the template does), appends it to the cache and generates the
    answer. The turn that brings the conversation's first images is compressed after its prefill
    (the policy sees the conversation so far as one prompt); later turns append to the compacted
    cache, their images in full."""

    def __init__(self, model: "Model", core):
        self._model, self._core = model, core
        self.messages: List[Dict[str, Any]] = []

    def send(self, content, *, stream: bool = False, prompt_logits: bool = False,
             **options) -> Union[GenerationResult, GenerationStream]:
        """A user turn: ``content`` is a str or a list of parts (as in :meth:`Model.chat`); the
        options are :meth:`Model.generate`'s sampling and stopping options (the compression is the
        session's). ``prompt_logits=True`` adds the logits of the turn's prompt rows to the result.
        Returns a :class:`GenerationResult`, or with ``stream=True`` a :class:`GenerationStream`."""
        for k in ("kv_policy", "kv_budget", "kv_scope", "kv_selection", "kv_options"):
            if k in options:
                raise InputError(f"{k} is the session's (Model.session(...)), not a turn's")
        parts, images = _content_parts(content)
        if images and not self._model._engine.has_vision:
            raise InputError("an image was given, but this model was loaded without an mmproj (vision) file")
        opts = self._model._options(dict(options, prompt_logits=prompt_logits), extra=("prompt_logits",))
        opts.update(kv_policy="full", kv_budget=1.0, kv_scope="visual", kv_selection="layer", kv_options={})
        self._model._live()
        gen = self._core.send(parts, images, opts)
        self.messages.append({"role": "user", "content": content})

        def record(result: GenerationResult) -> None:
            self.messages.append({"role": "assistant", "content": result.text})

        s = GenerationStream(self._model._lock, gen, self._model._engine, record)
        if stream:
            return s
        for _ in s:
            pass
        return s.result

    @property
    def ids(self) -> List[int]:
        """Every id in the session's cache order: the turns' prompts and the answers fed so far."""
        return list(self._core.ids)

    @property
    def compressed(self) -> bool:
        """Whether the cache was compressed (by the turn that brought the first images)."""
        return self._core.compressed

    @property
    def n_turns(self) -> int:
        return self._core.n_turns

    @property
    def compression(self) -> GenerationStats:
        """What the compression did (the compression fields of :class:`GenerationStats`)."""
        rep = self._core.compression
        return GenerationStats(kv_bytes=rep["kv_bytes_after"], **rep)

    @property
    def kv_bytes(self) -> int:
        """KV-cache bytes the conversation holds now."""
        return self._core.kv_bytes

    def reset(self) -> None:
        """Forget the conversation (the cache is emptied; the session's settings stay)."""
        self._core.reset()
        self.messages = []



class ScheduledRequest:
    """A request submitted to a :class:`Scheduler`. Iterating yields its text pieces as they are
    generated (never half a UTF-8 character); :meth:`result` waits for the end and returns the
    :class:`GenerationResult`; :meth:`cancel` stops it and frees its slot at the next step. A
    request that fails raises its error (``InputError``, ``FormatError``, ...) from both."""

    def __init__(self, core):
        self._core = core
        self._result: Optional[GenerationResult] = None

    @property
    def id(self) -> int:
        return self._core.id

    @property
    def done(self) -> bool:
        return self._core.done

    def __iter__(self) -> Iterator[str]:
        while True:
            piece = self._core.next(0.1)  # a bounded wait: Ctrl-C is seen between waits
            if piece is None:
                return
            if piece:
                yield piece

    def result(self) -> GenerationResult:
        """Waits for the end (draining the text not yet read) and returns the result."""
        if self._result is None:
            for _ in self:
                pass
            c = self._core
            self._result = GenerationResult(c.text, list(c.tokens), GenerationStats(**c.stats))
        return self._result

    def cancel(self) -> None:
        self._core.cancel()


class Scheduler:
    """Continuous batching over one :class:`Model` (made by :meth:`Model.scheduler`): requests
    join and leave between decode steps. Each iteration of its worker thread admits waiting
    requests into free slots, runs one prefill chunk (``n_batch`` rows; the chunks a lone request
    runs, so results do not depend on what else runs) of the oldest request still prefilling, and
    one decode step of every generating request in one batch. Greedy answers equal
    :meth:`Model.generate`'s / :meth:`Model.chat`'s for the same request."""

    def __init__(self, model: "Model", core):
        self._model, self._core = model, core

    def submit(self, image=None, prompt: Optional[str] = None, *, chat_template: Optional[str] = None,
               strict_max_tokens: bool = False, **options) -> ScheduledRequest:
        """Queue a :meth:`Model.generate` request (same arguments; ``stream`` does not apply:
        iterate the returned request). ``strict_max_tokens``: a request whose prompt plus
        ``max_tokens`` exceed the context is an InputError (instead of stopping at the context's
        end)."""
        if prompt is None:
            raise InputError("submit() needs a prompt")
        prompt = _str("prompt", prompt)
        images = _image_list(image)
        m = self._model
        if images and not m._engine.has_vision:
            raise InputError("an image was given, but this model was loaded without an mmproj (vision) file")
        opts = m._options(options)
        ids = np.asarray(m._engine.build_prompt_for(prompt, images, _str("chat_template", chat_template, True)),
                         dtype=np.int32)
        return self._submit(ids, images, opts, strict_max_tokens)

    def submit_chat(self, messages, *, chat_template: Optional[str] = None, strict_max_tokens: bool = False,
                    **options) -> ScheduledRequest:
        """Queue a :meth:`Model.chat` request (same arguments; ``strict_max_tokens`` as in
        :meth:`submit`)."""
        msgs, images = _messages(messages)
        m = self._model
        if images and not m._engine.has_vision:
            raise InputError("an image was given, but this model was loaded without an mmproj (vision) file")
        opts = m._options(options)
        ids = np.asarray(m._engine.build_chat(msgs, images, _str("chat_template", chat_template, True), True),
                         dtype=np.int32)
        return self._submit(ids, images, opts, strict_max_tokens)

    def _submit(self, ids, images, opts, strict_max_tokens) -> ScheduledRequest:
        core = self._live()
        n_ctx = self._model.n_ctx
        if _bool("strict_max_tokens", strict_max_tokens) and opts["max_tokens"] >= 0 and \
                len(ids) + opts["max_tokens"] > n_ctx:
            raise InputError(f"max_tokens = {opts['max_tokens']} after a prompt of {len(ids)} positions exceeds the "
                             f"context (n_ctx = {n_ctx}): at most {max(0, n_ctx - len(ids))}")
        return ScheduledRequest(core.submit(ids, images, opts))

    def metrics(self) -> Dict[str, Any]:
        """Counters (requests submitted / finished / failed / cancelled / rejected, prompt and
        generated tokens, decode steps, prefill chunks), gauges (queue depth, busy slots, KV bytes
        in use and allocated) and latency histograms (time to first token, time per output token,
        request duration, queue wait: ``bounds``, per-bucket ``counts`` with +Inf last, ``sum``,
        ``count``); ``kv_bytes_before/after_compaction`` sum the compressed prompts."""
        return self._live().metrics()

    def _live(self):
        if self._core is None:
            raise InputError("this Scheduler was closed")
        return self._core

    def close(self) -> None:
        """Stop: running and waiting requests end as cancelled; the Model is usable again."""
        if self._core is not None:
            self._core.stop()
            self._core = None
            self._model._lock.scheduler = False

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
