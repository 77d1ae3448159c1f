// libFuzzer target for the GGUF reader: any input either parses (then every accessor and the
// dequantization of every supported tensor stay inside the buffer) or throws FormatError /
// UnsupportedError. A file with tokenizer metadata is also loaded as a Tokenizer, which encodes
// and decodes the input's first bytes. ASan + UBSan catch everything else.
//
//   ./fuzz_gguf -max_total_time=60 CORPUS_DIR/valid CORPUS_DIR/malformed
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common.h"
#include "gguf.h"
#include "quants.h"
#include "tokenizer.h"

using namespace aircache;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        auto f = GGUFFile::from_memory(data, size, "<fuzz>");
        for (const GGUFKV& kv : f->kvs()) {
            const GGUFValue& v = kv.value;
            if (v.is_array() && v.elem != GGUFType::STRING)
                for (uint64_t i = 0; i < v.count && i < 64; ++i) (void)v.float_at(i);
            try { (void)f->get_u32(kv.key); } catch (const FormatError&) {}
            try { (void)f->get_str(kv.key); } catch (const FormatError&) {}
            try { (void)f->get_int_array(kv.key); } catch (const FormatError&) {}
            try { (void)f->get_f32_array(kv.key); } catch (const FormatError&) {}
        }
        std::vector<float> row;
        for (const GGUFTensorInfo& t : f->tensors()) {
            if (!t.info->supported || t.ne[0] > (1 << 16)) continue;
            row.resize(static_cast<size_t>(t.ne[0]));
            const size_t rb = row_bytes(*t.info, t.ne[0]);
            const int64_t rows = t.n_rows() < 4 ? t.n_rows() : 4;
            for (int64_t r = 0; r < rows; ++r) dequantize_row(t.type, t.data + r * rb, row.data(), t.ne[0]);
        }
        if (f->has("tokenizer.ggml.model")) {
            auto tok = Tokenizer::from_gguf(*f);
            const std::string_view text(reinterpret_cast<const char*>(data), size < 256 ? size : 256);
            const std::vector<int32_t> ids = tok->encode(text, true, true);
            (void)tok->decode(ids, false);
        }
    } catch (const FormatError&) {
    } catch (const UnsupportedError&) {
    }
    return 0;
}
