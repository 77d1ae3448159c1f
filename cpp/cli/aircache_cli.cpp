// aircache-cli — the command-line front end.
//
//   aircache-cli --version                 build information (same as aircache_cpp.build_info())
//   aircache-cli info FILE [--metadata] [--tensors]
//                                          architecture, hyperparameters, tensor types and sizes
//
// Errors: one line on stderr ("aircache-cli: error: ...") and a non-zero exit status
// (1 for a bad file or request, 2 for bad command-line usage).
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common.h"
#include "gguf.h"
#include "runtime_info.h"

using namespace aircache;

namespace {

const char* kUsage =
    "usage: aircache-cli [options] [command]\n"
    "\n"
    "commands:\n"
    "  info FILE [--metadata] [--tensors]\n"
    "                    describe a GGUF file (text model or mmproj): architecture, key\n"
    "                    hyperparameters, tokenizer, tensor count, a histogram of tensor types\n"
    "                    and total sizes. --metadata prints every metadata key, --tensors the\n"
    "                    tensor table.\n"
    "\n"
    "options:\n"
    "  -h, --help        show this help and exit\n"
    "  --version         print version and build information (compiler, CUDA, SIMD) and exit\n"
    "\n"
    "This build reads GGUF files; text and image generation are not part of it yet.\n";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

const char* file_type_name(uint32_t ft) {
    switch (ft) {
        case 0: return "F32";
        case 1: return "F16";
        case 2: return "Q4_0";
        case 3: return "Q4_1";
        case 7: return "Q8_0";
        case 8: return "Q5_0";
        case 9: return "Q5_1";
        case 10: return "Q2_K";
        case 11: return "Q3_K_S";
        case 12: return "Q3_K_M";
        case 13: return "Q3_K_L";
        case 14: return "Q4_K_S";
        case 15: return "Q4_K_M";
        case 16: return "Q5_K_S";
        case 17: return "Q5_K_M";
        case 18: return "Q6_K";
        case 32: return "BF16";
        case 1024: return "guessed";
        default: return nullptr;
    }
}

// A metadata value as one short line.
std::string value_str(const GGUFValue& v, size_t max_items = 8) {
    auto scalar = [&](uint64_t i) -> std::string {
        switch (v.elem) {
            case GGUFType::FLOAT32: case GGUFType::FLOAT64: return strprintf("%g", v.float_at(i));
            case GGUFType::BOOL: return v.int_at(i) ? "true" : "false";
            case GGUFType::UINT64: return std::to_string(v.uint_at(i));
            case GGUFType::STRING: return "\"" + printable(v.strings[i], 60) + "\"";
            default: return std::to_string(v.int_at(i));
        }
    };
    if (!v.is_array()) return scalar(0);
    std::string s = "[";
    for (uint64_t i = 0; i < v.count && i < max_items; ++i) {
        if (i) s += ", ";
        s += scalar(i);
    }
    if (v.count > max_items) s += strprintf(", ... (%llu items)", static_cast<unsigned long long>(v.count));
    return s + "]";
}

std::string count_str(int64_t n) {
    if (n >= 1000000000) return strprintf("%.2f B", n / 1e9);
    if (n >= 1000000) return strprintf("%.2f M", n / 1e6);
    if (n >= 1000) return strprintf("%.2f K", n / 1e3);
    return std::to_string(n);
}

int cmd_info(const std::vector<std::string>& args) {
    std::string path;
    bool show_meta = false, show_tensors = false;
    for (const std::string& a : args) {
        if (a == "--metadata") show_meta = true;
        else if (a == "--tensors") show_tensors = true;
        else if (a == "-h" || a == "--help") { std::fputs(kUsage, stdout); return 0; }
        else if (!a.empty() && a[0] == '-') throw UsageError("info: unknown option '" + a + "'");
        else if (path.empty()) path = a;
        else throw UsageError("info: more than one FILE given ('" + path + "', '" + a + "')");
    }
    if (path.empty()) throw UsageError("info: missing FILE");

    auto f = GGUFFile::open(path);
    const std::string arch = f->architecture();
    std::printf("file:          %s (%s)\n", path.c_str(), format_bytes(f->file_size()).c_str());
    std::printf("format:        GGUF v%u, alignment %llu, %zu metadata keys, %zu tensors, data at offset %llu\n",
                f->version(), static_cast<unsigned long long>(f->alignment()), f->kvs().size(), f->tensors().size(),
                static_cast<unsigned long long>(f->data_offset()));
    std::printf("architecture:  %s\n", arch.empty() ? "(none: general.architecture missing)" : printable(arch).c_str());
    if (const GGUFValue* v = f->find("general.name"); v && v->type == GGUFType::STRING)
        std::printf("name:          %s\n", printable(v->strings[0]).c_str());
    if (const GGUFValue* v = f->find("general.file_type"); v && v->is_integer()) {
        const uint32_t ft = static_cast<uint32_t>(v->uint_at(0));
        const char* n = file_type_name(ft);
        std::printf("file type:     %s (%u)\n", n ? n : "unknown", ft);
    }

    // Key hyperparameters: every scalar under the architecture's prefix (works for any family,
    // "clip" included).
    if (!arch.empty()) {
        const std::string prefix = arch + ".";
        std::vector<const GGUFKV*> hp;
        for (const GGUFKV& kv : f->kvs())
            if (kv.key.compare(0, prefix.size(), prefix) == 0 && (!kv.value.is_array() || kv.value.count <= 8)) hp.push_back(&kv);
        if (!hp.empty()) {
            std::printf("hyperparameters:\n");
            for (const GGUFKV* kv : hp)
                std::printf("  %-40s %s\n", printable(kv->key.substr(prefix.size())).c_str(), value_str(kv->value).c_str());
        }
    }
    if (const GGUFValue* tm = f->find("tokenizer.ggml.model"); tm && tm->type == GGUFType::STRING) {
        std::string line = "tokenizer:     " + printable(tm->strings[0]);
        if (const GGUFValue* pre = f->find("tokenizer.ggml.pre"); pre && pre->type == GGUFType::STRING)
            line += " (pre " + printable(pre->strings[0]) + ")";
        if (const GGUFValue* toks = f->find("tokenizer.ggml.tokens"); toks && toks->is_array())
            line += strprintf(", %llu tokens", static_cast<unsigned long long>(toks->count));
        for (const char* k : {"bos", "eos"}) {
            const GGUFValue* id = f->find(std::string("tokenizer.ggml.") + k + "_token_id");
            if (id && id->is_integer()) line += strprintf(", %s %lld", k, static_cast<long long>(id->int_at(0)));
        }
        if (f->has("tokenizer.chat_template")) line += ", chat template";
        std::printf("%s\n", line.c_str());
    }

    // Histogram of tensor types.
    struct Acc { int count = 0; int64_t elems = 0; uint64_t bytes = 0; };
    std::map<std::string, Acc> hist;
    Acc total;
    for (const GGUFTensorInfo& t : f->tensors()) {
        Acc& a = hist[t.info->name];
        a.count++; a.elems += t.n_elements; a.bytes += t.nbytes;
        total.count++; total.elems += t.n_elements; total.bytes += t.nbytes;
    }
    std::printf("tensor types:\n  %-8s %7s %12s %12s %s\n", "type", "count", "elements", "bytes", "");
    for (const auto& [name, a] : hist) {
        const TypeInfo* ti = type_info_by_name(name);
        std::printf("  %-8s %7d %12s %12s%s\n", name.c_str(), a.count, count_str(a.elems).c_str(),
                    format_bytes(a.bytes).c_str(), ti && !ti->supported ? "   (not supported by this runtime)" : "");
    }
    std::printf("  %-8s %7d %12s %12s\n", "total", total.count, count_str(total.elems).c_str(),
                format_bytes(total.bytes).c_str());
    if (total.elems > 0)
        std::printf("bits/weight:   %.2f\n", 8.0 * static_cast<double>(total.bytes) / static_cast<double>(total.elems));

    if (show_meta) {
        std::printf("metadata:\n");
        for (const GGUFKV& kv : f->kvs())
            std::printf("  %-44s %-16s %s\n", printable(kv.key).c_str(), kv.value.type_name().c_str(),
                        value_str(kv.value).c_str());
    }
    if (show_tensors) {
        std::printf("tensors:\n  %-40s %-8s %-24s %12s %14s\n", "name", "type", "ne", "bytes", "offset");
        for (const GGUFTensorInfo& t : f->tensors())
            std::printf("  %-40s %-8s %-24s %12llu %14llu\n", printable(t.name).c_str(), t.info->name, t.shape_str().c_str(),
                        static_cast<unsigned long long>(t.nbytes), static_cast<unsigned long long>(t.offset));
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.empty()) {
            std::fputs(kUsage, stderr);
            return 2;
        }
        const std::string& a0 = args[0];
        if (a0 == "-h" || a0 == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (a0 == "--version") {
            std::fputs(build_info_text().c_str(), stdout);
            return 0;
        }
        if (a0 == "info") return cmd_info(std::vector<std::string>(args.begin() + 1, args.end()));
        throw UsageError("unknown command or option '" + a0 + "' (see aircache-cli --help)");
    } catch (const UsageError& e) {
        std::fprintf(stderr, "aircache-cli: usage error: %s\n", e.what());
        return 2;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "aircache-cli: error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        std::string msg = e.what();
        for (char& c : msg)
            if (c == '\n') c = ' ';
        std::fprintf(stderr, "aircache-cli: error: %s\n", msg.c_str());
        return 1;
    }
}
