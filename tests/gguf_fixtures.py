"""Test fixtures for the GGUF reader and the quant formats, shared by pytest and the C++ test
driver (through `malformed_corpus.py`, which writes them to a directory with a manifest).

- `RawGGUF`: a byte-level GGUF serializer that can write *defective* files. Its output for valid
  content is checked byte for byte against gguf-py's `GGUFWriter` (tests/test_gguf_reader.py), so
  the defects are the only thing that differs from files the reference writer produces.
- `quant_blocks(type, n_blocks, rng)`: raw blocks for every supported ggml type — quantized by
  gguf-py where it can, random bit patterns with finite scales otherwise.
- `malformed_cases()`: the table of defective files, each with the exception class and a regex
  that the reader's message must match.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

# GGUF value type ids
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
               U64: "<Q", I64: "<q", F64: "<d"}

# ggml type ids used below
T_F32, T_F16, T_Q4_0, T_Q8_0, T_Q4_K, T_IQ2_XXS, T_Q2_0 = 0, 1, 2, 8, 12, 16, 42

SUPPORTED_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def write_gguf(path, arch: str, build: Callable) -> str:
    """Write a GGUF file with gguf-py's GGUFWriter (the reference writer); `build(writer)` adds KVs
    and tensors."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def gstr(s: bytes | str) -> bytes:
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("<Q", len(s)) + s


def scalar(t: int, v) -> bytes:
    return struct.pack(_SCALAR_FMT[t], v)


@dataclass
class KV:
    key: bytes | str
    type: int
    payload: bytes  # everything after the type field

    @staticmethod
    def of(key: str, t: int, v) -> "KV":
        if t == STR:
            return KV(key, t, gstr(v))
        if t == ARR:
            raise ValueError("use KV.array")
        return KV(key, t, scalar(t, v))

    @staticmethod
    def array(key: str, et: int, values: Sequence) -> "KV":
        body = struct.pack("<IQ", et, len(values))
        for v in values:
            body += gstr(v) if et == STR else scalar(et, v)
        return KV(key, ARR, body)

    def encode(self) -> bytes:
        return gstr(self.key) + struct.pack("<I", self.type) + self.payload


@dataclass
class TI:
    name: bytes | str
    ne: Sequence[int]
    type: int
    offset: int
    n_dims: Optional[int] = None  # defaults to len(ne)

    def encode(self) -> bytes:
        nd = len(self.ne) if self.n_dims is None else self.n_dims
        out = gstr(self.name) + struct.pack("<I", nd)
        for d in self.ne:
            out += struct.pack("<Q", d & 0xFFFFFFFFFFFFFFFF)
        return out + struct.pack("<IQ", self.type, self.offset)


@dataclass
class RawGGUF:
    kvs: List[KV] = field(default_factory=list)
    tensors: List[TI] = field(default_factory=list)
    data: bytes = b""
    version: int = 3
    magic: bytes = b"GGUF"
    alignment: int = 32
    n_tensors: Optional[int] = None  # override the counts
    n_kv: Optional[int] = None

    def encode(self, boundaries: Optional[list] = None) -> bytes:
        """The file bytes; `boundaries` (if given) receives the offset after every header field."""
        out = bytearray()

        def put(b: bytes) -> None:
            out.extend(b)
            if boundaries is not None:
                boundaries.append(len(out))

        put(self.magic)
        put(struct.pack("<I", self.version))
        put(struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors))
        put(struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv))
        for kv in self.kvs:
            k = kv.key.encode() if isinstance(kv.key, str) else kv.key
            put(struct.pack("<Q", len(k)))
            put(k)
            put(struct.pack("<I", kv.type))
            put(kv.payload)
        for t in self.tensors:
            enc = t.encode()
            name = t.name.encode() if isinstance(t.name, str) else t.name
            put(enc[:8])
            put(enc[8:8 + len(name)])
            rest = enc[8 + len(name):]
            put(rest[:4])
            for i in range(len(t.ne)):
                put(rest[4 + 8 * i: 12 + 8 * i])
            put(rest[4 + 8 * len(t.ne):8 + 8 * len(t.ne)])
            put(rest[8 + 8 * len(t.ne):])
        if self.tensors:
            pad = (-len(out)) % self.alignment
            out.extend(b"\0" * pad)
            if boundaries is not None:
                boundaries.append(len(out))
        out.extend(self.data)
        return bytes(out)


# -------------------------------------------------------------------------------------------------
# A small valid file (the base of most defects)
# -------------------------------------------------------------------------------------------------

def base_kvs() -> List[KV]:
    return [
        KV.of("general.architecture", STR, "llama"),
        KV.of("general.name", STR, "fixture"),
        KV.of("llama.block_count", U32, 2),
        KV.of("llama.rope.freq_base", F32, 10000.0),
        KV.array("tokenizer.ggml.tokens", STR, ["<unk>", "<s>", "</s>", "a"]),
        KV.array("tokenizer.ggml.scores", F32, [0.0, 0.0, 0.0, -1.0]),
    ]


def base_file() -> RawGGUF:
    """Two tensors: F32 [8, 2] (64 bytes) at 0 and F16 [16] (32 bytes) at 64."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 8)).astype(np.float32).tobytes()
    b = rng.standard_normal(16).astype(np.float16).tobytes()
    return RawGGUF(kvs=base_kvs(),
                   tensors=[TI("a.weight", [8, 2], T_F32, 0), TI("b.weight", [16], T_F16, 64)],
                   data=a + b)


# -------------------------------------------------------------------------------------------------
# Quant blocks
# -------------------------------------------------------------------------------------------------

# Offsets of the f16 scale fields inside each block (to keep them finite in random blocks).
_F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def quant_blocks(type_name: str, n_blocks: int, rng: np.random.Generator, mode: str = "auto") -> np.ndarray:
    """uint8 array of n_blocks raw blocks of `type_name`.

    mode "quantize": gguf-py's quantizer on normal data (types it can quantize);
    mode "random": random bits everywhere, finite random f16 scales (every type);
    mode "auto": "quantize" where gguf-py can, else "random".
    For F32/F16/BF16 "random" covers every bit pattern, NaN and infinities included.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf import quants as gq

    qt = GGMLQuantizationType[type_name]
    block, size = GGML_QUANT_SIZES[qt]
    can_quantize = type_name in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
    if mode == "auto":
        mode = "quantize" if can_quantize else "random"
    if mode == "quantize":
        x = (rng.standard_normal(n_blocks * block) * rng.uniform(0.1, 3.0)).astype(np.float32)
        x[::7] *= 5.0  # outliers
        return np.asarray(gq.quantize(x.reshape(1, -1), qt), dtype=np.uint8).reshape(-1)
    raw = rng.integers(0, 256, size=n_blocks * size, dtype=np.uint8)
    blocks = raw.reshape(n_blocks, size)
    for off in _F16_FIELDS.get(type_name, []):
        scales = (rng.uniform(-2.0, 2.0, n_blocks) * 10.0 ** rng.integers(-4, 2, n_blocks)).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def reference_dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf import quants as gq

    return np.asarray(gq.dequantize(raw, GGMLQuantizationType[type_name]), dtype=np.float32).reshape(-1)


# -------------------------------------------------------------------------------------------------
# The malformed table
# -------------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    data: bytes
    error: str  # "FormatError" | "UnsupportedError"
    pattern: str  # regex (ECMAScript- and Python-compatible) the message must match


def _patch_len(data: bytes, marker: bytes, value: int) -> bytes:
    raw = bytearray(data)
    pos = raw.find(marker) - 8
    raw[pos:pos + 8] = struct.pack("<Q", value)
    return bytes(raw)


def _with(f: Callable[[RawGGUF], None]) -> bytes:
    g = base_file()
    f(g)
    return g.encode()


def truncations() -> List[Tuple[int, bytes]]:
    """The base file cut at every header field boundary, and inside the data section."""
    g = base_file()
    bounds: list = []
    full = g.encode(bounds)
    cuts = sorted(set([0] + bounds[:-1] + [bounds[-1] + 1, len(full) - 1]))
    return [(c, full[:c]) for c in cuts if c < len(full)]


def malformed_cases() -> List[Case]:
    C = Case
    cases: List[Case] = []
    for cut, data in truncations():
        pat = "empty file" if cut == 0 else "truncated"
        cases.append(C(f"truncated_at_{cut}", data, "FormatError", pat))

    def kv_tail(kv: KV) -> Callable[[RawGGUF], None]:
        return lambda g: g.kvs.append(kv)

    def set_attr(**kw) -> Callable[[RawGGUF], None]:
        return lambda g: [setattr(g, k, v) for k, v in kw.items()]

    def tensor(i: int, **kw) -> Callable[[RawGGUF], None]:
        return lambda g: [setattr(g.tensors[i], k, v) for k, v in kw.items()]

    add = lambda name, mut, pat, err="FormatError": cases.append(C(name, _with(mut), err, pat))  # noqa: E731

    add("bad_magic", set_attr(magic=b"GGUX"), "bad magic")
    add("bad_magic_ggml", set_attr(magic=b"ggml"), "bad magic")
    add("version_0", set_attr(version=0), "version 0")
    add("version_1", set_attr(version=1), "version 1")
    add("version_4", set_attr(version=4), "version 4")
    add("big_endian", set_attr(version=0x03000000), "big-endian", "UnsupportedError")
    add("tensor_count_huge", set_attr(n_tensors=1 << 40), "tensor count 1099511627776 cannot fit")
    add("tensor_count_negative", set_attr(n_tensors=(1 << 64) - 3), "tensor count .* negative")
    add("kv_count_huge", set_attr(n_kv=1 << 50), "metadata count 1125899906842624 cannot fit")
    add("kv_count_negative", set_attr(n_kv=(1 << 63) + 1), "metadata count .* negative")
    # Length fields patched in place: the u64 right before a marker string gets a new value.
    cases.append(C("key_length_beyond_file", _patch_len(base_file().encode(), b"tokenizer.ggml.scores", 1 << 20),
                   "FormatError", "truncated file: key of metadata entry #5"))
    add("key_empty", kv_tail(KV(b"", U32, scalar(U32, 1))), "empty key")
    cases.append(C("key_length_2_63", _patch_len(_with(kv_tail(KV.of("zz.key", U32, 1))), b"zz.key", 1 << 63),
                   "FormatError", "key of metadata entry #6 has length 9223372036854775808, above the limit"))
    add("array_count_2_62", kv_tail(KV("big.array", ARR, struct.pack("<IQ", U32, 1 << 62))),
        "array length 4611686018427387904 is above the limit")
    add("array_count_beyond_file", kv_tail(KV("big.array", ARR, struct.pack("<IQ", U32, 1 << 28))),
        "array of 268435456 UINT32 values .* runs past the end")
    add("string_array_count_beyond_file", kv_tail(KV("big.strings", ARR, struct.pack("<IQ", STR, 1 << 28))),
        "array of 268435456 strings cannot fit")
    add("string_length_2_63", kv_tail(KV("s.key", STR, struct.pack("<Q", 1 << 63))),
        "string value of key 's.key' has length 9223372036854775808, above the limit")
    add("string_length_beyond_file", kv_tail(KV("s.key", STR, struct.pack("<Q", 1 << 29) + b"abc")),
        "truncated file: string value of key 's.key'")
    add("string_in_array_beyond_file",
        kv_tail(KV("s.arr", ARR, struct.pack("<IQ", STR, 2) + gstr("ok") + struct.pack("<Q", 1 << 20))),
        "truncated file: element 1 of key 's.arr'")
    add("duplicate_key", kv_tail(KV.of("general.name", STR, "again")), "duplicate key 'general.name'")
    add("invalid_value_type", kv_tail(KV("bad.type", 13, scalar(U32, 0))), "key 'bad.type' has invalid value type 13")
    add("invalid_array_elem_type", kv_tail(KV("bad.arr", ARR, struct.pack("<IQ", 99, 1))),
        "array has invalid element type 99")
    add("nested_array", kv_tail(KV("nested", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U8, 1) + b"\x01")),
        "nested arrays")
    add("invalid_bool", kv_tail(KV("flag", BOOL, b"\x02")), "key 'flag' has an invalid bool byte 2")
    add("invalid_bool_in_array", kv_tail(KV("flags", ARR, struct.pack("<IQ", BOOL, 3) + b"\x00\x01\x07")),
        "element 2 is an invalid bool byte 7")
    add("alignment_wrong_type", kv_tail(KV.of("general.alignment", U64, 32)),
        "general.alignment' has type UINT64, must be UINT32")
    add("alignment_string", kv_tail(KV.of("general.alignment", STR, "32")),
        "general.alignment' has type STRING, must be UINT32")
    add("alignment_not_power_of_two", kv_tail(KV.of("general.alignment", U32, 48)),
        "general.alignment' is 48: must be a power of two")
    add("alignment_zero", kv_tail(KV.of("general.alignment", U32, 0)), "general.alignment' is 0: must be a power of two")
    add("alignment_huge", kv_tail(KV.of("general.alignment", U32, 1 << 30)),
        "general.alignment' is 1073741824: must be a power of two between 1 and 65536")
    add("tensor_name_too_long", tensor(0, name="n" * 64), "tensor name is 64 bytes long .* above the limit of 63")
    add("tensor_name_empty", tensor(0, name=""), "tensor info #0 has an empty name")
    cases.append(C("tensor_name_length_2_63", _patch_len(base_file().encode(), b"a.weight", 1 << 63),
                   "FormatError", "tensor name is 9223372036854775808 bytes long"))
    add("n_dims_0", tensor(0, n_dims=0, ne=[]), "tensor 'a.weight' has n_dims 0")
    add("n_dims_5", tensor(0, ne=[2, 2, 2, 2, 1], n_dims=5), "tensor 'a.weight' has n_dims 5")
    add("dim_zero", tensor(0, ne=[8, 0]), "tensor 'a.weight': dimension 1 is 0")
    add("dim_negative", tensor(0, ne=[(1 << 64) - 8, 2]), "tensor 'a.weight': dimension 0 is negative")
    add("element_count_overflow", tensor(0, ne=[1 << 32, 1 << 32, 4]), "element count of shape .* overflows")
    add("byte_size_overflow_f32", tensor(0, ne=[1 << 62]), "byte size of F32 shape .* overflows")
    add("byte_size_overflow_q8_0", tensor(0, type=T_Q8_0, ne=[(1 << 63) - (1 << 58), 1]),
        "byte size of Q8_0 shape .* overflows")
    add("row_not_multiple_of_block", tensor(0, type=T_Q8_0, ne=[48, 2]),
        "row length 48 is not a multiple of the Q8_0 block size 32")
    add("unknown_type_id", tensor(0, type=99), "tensor 'a.weight' has unknown ggml type id 99")
    add("removed_type_id", tensor(0, type=4), "unknown ggml type id 4")
    add("type_without_layout", tensor(0, type=T_Q2_0, ne=[128, 1]), "Q2_0 .* layout", "UnsupportedError")
    add("offset_misaligned", tensor(1, offset=48), "tensor 'b.weight': data offset 48 is not a multiple of the alignment 32")
    add("offset_out_of_range", tensor(1, offset=1 << 40), "tensor 'b.weight': data .* extends past the end of the file")
    add("offset_near_2_64", tensor(1, offset=(1 << 64) - 32), "tensor 'b.weight': data .* extends past the end")
    add("overlapping_tensors", tensor(1, offset=32), "tensors 'a.weight' .* and 'b.weight' .* overlap")
    add("duplicate_tensor_name", tensor(1, name="a.weight"), "duplicate tensor name 'a.weight'")
    add("data_section_truncated", lambda g: setattr(g, "data", g.data[:-10]),
        "tensor 'b.weight': data .* extends past the end of the file.*truncated")
    add("data_section_missing", lambda g: setattr(g, "data", b""), "extends past the end of the file")
    return cases


# -------------------------------------------------------------------------------------------------
# Typed-getter fixture
# -------------------------------------------------------------------------------------------------

def typed_file() -> bytes:
    """Every scalar and array type, for the typed-getter tests (keys 't.*')."""
    kvs = [
        KV.of("general.architecture", STR, "test"),
        KV.of("t.u8", U8, 200), KV.of("t.i8", I8, -5), KV.of("t.u16", U16, 60000), KV.of("t.i16", I16, -30000),
        KV.of("t.u32", U32, 4000000000), KV.of("t.i32", I32, -7), KV.of("t.i32pos", I32, 123),
        KV.of("t.u64", U64, 1 << 40), KV.of("t.u64big", U64, (1 << 63) + 5), KV.of("t.i64", I64, -(1 << 40)),
        KV.of("t.f32", F32, 1.5), KV.of("t.f64", F64, 2.25), KV.of("t.bool", BOOL, 1), KV.of("t.str", STR, "héllo"),
        KV.array("t.arr_str", STR, ["a", "", "ü€"]), KV.array("t.arr_f32", F32, [1.0, -2.5]),
        KV.array("t.arr_i32", I32, [1, -2, 3]), KV.array("t.arr_u8", U8, [0, 255]),
        KV.array("t.arr_u64big", U64, [1, (1 << 64) - 1]), KV.array("t.arr_empty", I32, []),
    ]
    return RawGGUF(kvs=kvs).encode()


# (getter kind, key, expected value or None, error regex or None)
TYPED_CHECKS = [
    ("u32", "t.u8", 200, None), ("u32", "t.u16", 60000, None), ("u32", "t.u32", 4000000000, None),
    ("u32", "t.i32pos", 123, None), ("u32", "t.u64", None, "key 't.u64' value 1099511627776 does not fit in u32"),
    ("u32", "t.i32", None, "key 't.i32' value -7 does not fit in u32"),
    ("u32", "t.str", None, "key 't.str' has type STRING, expected an integer \\(u32\\)"),
    ("u32", "t.f32", None, "key 't.f32' has type FLOAT32, expected an integer"),
    ("u32", "t.missing", None, "missing metadata key 't.missing'"),
    ("i32", "t.i8", -5, None), ("i32", "t.i16", -30000, None), ("i32", "t.u32", None, "does not fit in i32"),
    ("i64", "t.i64", -(1 << 40), None), ("i64", "t.u64", 1 << 40, None),
    ("i64", "t.u64big", None, "key 't.u64big' value 9223372036854775813 does not fit in i64"),
    ("u64", "t.u64big", (1 << 63) + 5, None), ("u64", "t.i64", None, "does not fit in u64"),
    ("f32", "t.f32", 1.5, None), ("f32", "t.f64", 2.25, None), ("f32", "t.u8", 200.0, None),
    ("f32", "t.str", None, "key 't.str' has type STRING, expected a number"),
    ("bool", "t.bool", True, None), ("bool", "t.u8", None, "key 't.u8' has type UINT8, expected BOOL"),
    ("str", "t.str", "héllo", None), ("str", "t.u32", None, "key 't.u32' has type UINT32, expected STRING"),
    ("str_array", "t.arr_str", ["a", "", "ü€"], None),
    ("str_array", "t.arr_i32", None, "key 't.arr_i32' has type ARRAY\\[INT32\\], expected ARRAY\\[STRING\\]"),
    ("f32_array", "t.arr_f32", [1.0, -2.5], None), ("f32_array", "t.arr_i32", [1.0, -2.0, 3.0], None),
    ("f32_array", "t.arr_str", None, "expected an array of numbers"),
    ("int_array", "t.arr_i32", [1, -2, 3], None), ("int_array", "t.arr_u8", [0, 255], None),
    ("int_array", "t.arr_empty", [], None),
    ("int_array", "t.arr_u64big", None, "element 1 value 18446744073709551615 does not fit in i64"),
    ("int_array", "t.arr_f32", None, "expected an array of integers"),
]


# -------------------------------------------------------------------------------------------------
# Rewriting a GGUF file with changes (for bad-metadata tests)
# -------------------------------------------------------------------------------------------------

def rewrite_gguf(src: str, dst: str, kv: Optional[dict] = None, tensors: Optional[Callable] = None) -> str:
    """Copy `src` to `dst` with gguf-py, changing metadata and tensors.

    kv: {key: value} replaces or adds (value as (python value, GGUFValueType) or (value, ARRAY,
        sub_type)); {key: None} removes the key.
    tensors: f(name, array, ggml_type) -> None (drop) | (name, array, ggml_type).
    """
    import gguf

    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    kv = dict(kv or {})
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key in kv:
            continue
        types = [gguf.GGUFValueType(t) for t in f.types]
        w.add_key_value(key, f.contents(), types[0], sub_type=types[1] if len(types) > 1 else None)
    for key, val in kv.items():
        if val is None:
            continue
        if key == "general.architecture":
            w.kv_data[0][key] = gguf.GGUFValue(val[0], val[1])
            continue
        w.add_key_value(key, val[0], val[1], sub_type=val[2] if len(val) > 2 else None)
    for t in r.tensors:
        item = (t.name, np.array(t.data), t.tensor_type)
        if tensors is not None:
            item = tensors(*item)
            if item is None:
                continue
        name, data, tt = item
        w.add_tensor(name, data, raw_dtype=tt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def random_weight_blocks(type_name: str, rows: int, cols: int, rng: np.random.Generator,
                         target_std: float) -> np.ndarray:
    """uint8 blocks [rows, bytes_per_row] of `type_name` with random quants and scales chosen so the
    dequantized weights have about `target_std` (every value is linear in the block scales)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    n_blocks = rows * cols // block
    raw = quant_blocks(type_name, n_blocks, rng, "random").reshape(n_blocks, size)
    offs = _F16_FIELDS[type_name]
    for off in offs:  # scales of one magnitude, random sign for d-like fields
        raw[:, off:off + 2] = (rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    std = float(reference_dequantize(raw.reshape(-1), type_name).std())
    for off in offs:
        s = raw[:, off:off + 2].copy().view(np.float16).astype(np.float32) * (target_std / std)
        raw[:, off:off + 2] = s.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, -1)


def hf_state_from_gguf(path: str, n_head: int, n_head_kv: int) -> dict:
    """A LLaMA state dict (HF names, float32 torch tensors) from a GGUF file, dequantized by gguf-py
    and with the Q/K rows un-permuted: the reference model for exactly the weights in the file."""
    import gguf
    import torch

    layer = {"attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
             "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
             "attn_output.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
             "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
             "ffn_down.weight": "mlp.down_proj.weight"}

    def unpermute(w: np.ndarray, nh: int) -> np.ndarray:
        hd = w.shape[0] // nh
        return w.reshape(nh, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    sd = {}
    for t in gguf.GGUFReader(path).tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(x) for x in reversed(t.shape)))  # numpy order
        n = t.name
        if n == "token_embd.weight":
            sd["model.embed_tokens.weight"] = w
        elif n == "output_norm.weight":
            sd["model.norm.weight"] = w
        elif n == "output.weight":
            sd["lm_head.weight"] = w
        else:
            _, i, rest = n.split(".", 2)
            if rest == "attn_q.weight":
                w = unpermute(w, n_head)
            elif rest == "attn_k.weight":
                w = unpermute(w, n_head_kv)
            sd[f"model.layers.{i}.{layer[rest]}"] = w
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}
