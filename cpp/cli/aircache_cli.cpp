// aircache-cli — the command-line front end.
//
//   aircache-cli -m model.gguf -p "prompt" -n 64 [--temp 0 ...]   generate text
//   aircache-cli --version                 build information (same as aircache_cpp.build_info())
//   aircache-cli info FILE [--metadata] [--tensors]
//                                          architecture, hyperparameters, tensor types and sizes
//
// Errors: one line on stderr ("aircache-cli: error: ...") and a non-zero exit status
// (1 for a bad file or request, 2 for bad command-line usage).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>
#if defined(__APPLE__)
#include <mach-o/dyld.h>
#elif !defined(_WIN32)
#include <unistd.h>
#endif

#include "common.h"
#include "cli/args.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "gguf.h"
#include "runtime_info.h"

using namespace aircache;

namespace {

const char* kUsage =
    "usage: aircache-cli [-m MODEL.gguf] -p PROMPT [options]   generate text\n"
    "       aircache-cli info FILE [--metadata] [--tensors]     describe a GGUF file\n"
    "       aircache-cli --version | --help\n"
    "\n"
    "generation (llama.cpp flag names):\n"
    "  -m, --model FILE        text-model GGUF (llama.cpp conventions, any supported quantization).\n"
    "                          Without -m: the bundled demo model (a small LLaVA trained on the scenes\n"
    "                          of examples/; one line on stderr says so; AIRCACHE_DEMO_DIR overrides\n"
    "                          where demo.gguf and demo-mmproj.gguf are looked for)\n"
    "  --demo NAME             which bundled demo model runs without -m: llava (default) or qwen2vl\n"
    "                          (a small Qwen2-VL: any image size, several images, list answers;\n"
    "                          examples/qwen2vl/)\n"
    "  --mmproj FILE           vision tower + projector GGUF (llama.cpp mmproj: LLaVA-1.5 mlp,\n"
    "                          Qwen2-VL / Qwen2.5-VL / Qwen3-VL mergers, gemma3, idefics3 (SmolVLM),\n"
    "                          internvl (InternVL 2.5 / 3))\n"
    "  --image FILE            an image (PNG or JPEG; repeatable, in order). The prompt places them\n"
    "                          with <image> markers, else they go first\n"
    "  -p, --prompt TEXT       the prompt; -f, --file FILE reads it from a file\n"
    "  --chat-template NAME    auto (from the file; default llava: \"USER: <image>\\n... ASSISTANT:\"),\n"
    "                          llava, chatml, qwen2-vl, qwen3-vl, gemma3, smolvlm, internvl,\n"
    "                          llava-next-mistral ([INST] ... [/INST]), vicuna-v1 (llava + LLaVA's system\n"
    "                          message), or none\n"
    "                          (the prompt as is)\n"
    "  --image-mode pad|crop   pad: LLaVA-1.5 square padding with the mean colour (default);\n"
    "                          crop: HF's resize-shortest-side + centre crop\n"
    "  --image-min-tokens N    dynamic-resolution images (Qwen-VL): at least N tokens per image\n"
    "  --image-max-tokens N    ... and at most N (default: the checkpoint's, 4 or 64 .. 16384)\n"
    "  -n, --n-predict N       tokens to generate (default 256; -1: until end of text or a full context)\n"
    "  -c, --ctx-size N        context size: KV positions for prompt + output (default 4096)\n"
    "  -t, --threads N         CPU threads (default: physical cores)\n"
    "  -b, --batch-size N      prompt tokens per forward pass (default 512)\n"
    "  --temp T                temperature, 0 = greedy (default 0)\n"
    "  --top-k N               top-k (default 40; 0 = off)\n"
    "  --top-p P               top-p (default 0.95; 1 = off)\n"
    "  --min-p P               min-p (default 0.05; 0 = off)\n"
    "  --repeat-penalty F      repetition penalty (default 1.0 = off)\n"
    "  --repeat-last-n N       tokens the penalty looks back (default 64; -1 = all)\n"
    "  -s, --seed N            sampling seed (default: random)\n"
    "  --stop TEXT             stop string (repeatable); the text ends before it\n"
    "  --kv-type TYPE          KV cache storage of keys and values: f16 (default), f32, q8_0, q4_0\n"
    "                          (q8_0: half the memory of f16, q4_0: 28 %; CPU only; compaction works\n"
    "                          on every type)\n"
    "  -ctk, --cache-type-k T  the keys' type alone; -ctv, --cache-type-v T the values'\n"
    "  --device NAME           auto (default: the first CUDA GPU when built with CUDA and one is\n"
    "                          present, else the CPU; AIRCACHE_DEVICE overrides), cpu, cuda, cuda:N\n"
    "  -ngl, --n-gpu-layers N  text layers on the GPU (default -1: all, with the output); the rest run\n"
    "                          on the CPU. The vision tower runs on the GPU whenever the device is one\n"
    "\n"
    "KV compression (applied once, after the prefill; see --list-policies):\n"
    "  --kv-policy NAME        full (default), random, streaming, h2o, snapkv, pyramidkv, vlcache, aircache,\n"
    "                          mosaic; recommended: --kv-policy mosaic --kv-budget 0.1 (this project's\n"
    "                          policy: the fewest broken answers in docs/quality.md)\n"
    "  --kv-budget R           fraction of the candidates kept, in (0, 1] (default 1.0)\n"
    "  --kv-scope visual|all   candidates: the image positions (text always kept; default) or every position\n"
    "  --kv-selection layer|kv_head   one kept set per layer (default) or per KV head\n"
    "  --kv-opt NAME=VALUE     a policy option (repeatable), e.g. --kv-opt mo_beta=4\n"
    "  --list-policies         print every policy with its options and defaults, and exit\n"
    "  --verbose               print model information on stderr\n"
    "  --check-tensors         scan every weight for NaN/inf at load (norms and biases are always checked)\n"
    "\n"
    "The generated text goes to stdout, timings to stderr. Exit status: 0 ok, 1 bad file or\n"
    "request, 2 bad command line.\n"
    "\n"
    "info: architecture, key hyperparameters, tokenizer, tensor count, a histogram of tensor types\n"
    "and total sizes of any GGUF file (text model or mmproj); --metadata prints every key,\n"
    "--tensors the tensor table.\n";

using cli::UsageError;

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

// --- the bundled demo model ------------------------------------------------------------------------

std::string executable_dir(const char* argv0) {
    std::string path;
#if defined(__APPLE__)
    char buf[4096];
    uint32_t n = sizeof(buf);
    if (_NSGetExecutablePath(buf, &n) == 0) path = buf;
#elif !defined(_WIN32)
    char buf[4096];
    const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n > 0) path.assign(buf, static_cast<size_t>(n));
#endif
    if (path.empty() && argv0) path = argv0;
    const size_t slash = path.find_last_of("/\\");
    return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

bool file_exists(const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return f.good();
}

const char* g_argv0 = nullptr;

// Where the demo model's two GGUF files are: $AIRCACHE_DEMO_DIR, then the installed copy next to the
// executable (<prefix>/bin/aircache-cli -> <prefix>/share/aircache-cpp/demo, what `pip install`
// lays out), then the source tree this binary was built from.
struct DemoFiles {
    const char* name;
    const char* text;
    const char* mmproj;
};
constexpr DemoFiles kDemos[] = {{"llava", "demo.gguf", "demo-mmproj.gguf"},
                                {"qwen2vl", "qwen2vl-demo.gguf", "qwen2vl-demo-mmproj.gguf"}};

const DemoFiles& demo_files(const std::string& name) {
    for (const DemoFiles& d : kDemos)
        if (name == d.name) return d;
    throw UsageError("--demo: unknown demo model '" + name + "' (the bundled ones: llava, qwen2vl)");
}

std::string find_demo_dir(const DemoFiles& demo) {
    std::vector<std::string> dirs;
    if (const char* env = std::getenv("AIRCACHE_DEMO_DIR"); env && *env) dirs.push_back(env);
    else {
        dirs.push_back(executable_dir(g_argv0) + "/../share/aircache-cpp/demo");
#ifdef AIRCACHE_DEMO_SOURCE_DIR
        dirs.push_back(AIRCACHE_DEMO_SOURCE_DIR);
#endif
    }
    for (const std::string& d : dirs)
        if (file_exists(d + "/" + demo.text) && file_exists(d + "/" + demo.mmproj)) return d;
    std::string tried;
    for (const std::string& d : dirs) tried += (tried.empty() ? "" : ", ") + d;
    throw UsageError("missing -m MODEL.gguf, and the bundled demo model was not found (" + std::string(demo.name) +
                     ": looked for " + demo.text + " + " + demo.mmproj + " in " + tried + ")");
}

// --- generation ----------------------------------------------------------------------------------

struct GenOptions {
    EngineParams engine;
    GenerateParams gen;
    std::vector<std::string> images;
    std::string prompt;
    std::string demo;
    bool have_prompt = false;
    bool seed_given = false;
    bool verbose = false;
};

GenOptions parse_gen(const std::vector<std::string>& args) {
    GenOptions o;
    o.gen.sampling.temperature = 0.0f;
    cli::ArgParser ap("aircache-cli");
    cli::add_engine_flags(ap, o.engine, true);
    cli::add_kv_flags(ap, o.gen.compression, true);
    cli::add_sampling_flags(ap, o.gen, o.seed_given);
    ap.option({"--image"}, [&](const std::string& v) { o.images.push_back(v); });
    ap.option({"--demo"}, [&](const std::string& v) {
        demo_files(v);  // an unknown name is a usage error here
        o.demo = v;
    });
    ap.option({"-p", "--prompt"}, [&](const std::string& v) {
        o.prompt = v;
        o.have_prompt = true;
    });
    ap.option({"-f", "--file"}, [&](const std::string& path) {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw InputError("cannot read the prompt file '" + path + "'");
        std::ostringstream ss;
        ss << in.rdbuf();
        o.prompt = ss.str();
        o.have_prompt = true;
    });
    const std::vector<std::string> rest = ap.parse(args);
    if (!rest.empty()) throw UsageError("unexpected argument '" + rest[0] + "' (see aircache-cli --help)");
    o.verbose = o.engine.verbose;
    if (!o.demo.empty() && !o.engine.model_path.empty()) throw UsageError("--demo and -m exclude each other");
    if (o.engine.model_path.empty()) {
        if (!o.engine.mmproj_path.empty()) throw UsageError("--mmproj without -m MODEL.gguf");
        const DemoFiles& demo = demo_files(o.demo.empty() ? "llava" : o.demo);
        const std::string d = find_demo_dir(demo);
        o.engine.model_path = d + "/" + demo.text;
        o.engine.mmproj_path = d + "/" + demo.mmproj;
        std::fprintf(stderr, "aircache-cli: no -m given: using the bundled demo model %s (%s/%s + %s)\n", demo.name,
                     d.c_str(), demo.text, demo.mmproj);
    }
    if (!o.have_prompt) throw UsageError("missing -p PROMPT (or -f FILE)");
    if (!o.images.empty() && o.engine.mmproj_path.empty())
        throw UsageError("--image needs --mmproj (the vision tower of the model)");
    if (!o.seed_given) o.gen.sampling.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    return o;
}

int cmd_generate(const std::vector<std::string>& args) {
    GenOptions o = parse_gen(args);
    o.gen.validate();
    o.engine.verbose = o.verbose;
    Engine engine(o.engine);
    check_compression(engine, o.gen.compression);
    std::vector<Image> images;
    for (const std::string& path : o.images) images.push_back(load_image_file(path));
    std::vector<int32_t> prompt_ids =
        engine.build_fitted(images, [&](const std::vector<int64_t>& counts) { return engine.build_prompt(o.prompt, counts); });
    Generation g(engine, std::move(prompt_ids), o.gen, std::move(images));
    std::string piece;
    while (g.step(piece)) {
        if (!piece.empty()) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        }
    }
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const GenerationStats& s = g.stats();
    if (s.n_images > 0)
        std::fprintf(stderr, "aircache: images    %6lld images %10.2f ms  (%lld visual positions)\n",
                     static_cast<long long>(s.n_images), s.image_encode_ms, static_cast<long long>(s.n_visual));
    std::fprintf(stderr, "aircache: prompt    %6lld tokens %10.2f ms  %10.2f tokens/s\n", static_cast<long long>(s.n_prompt),
                 s.prefill_ms, s.prefill_tps());
    std::fprintf(stderr, "aircache: generated %6lld tokens %10.2f ms  %10.2f tokens/s  (stop: %s)\n",
                 static_cast<long long>(s.n_generated), s.decode_ms, s.decode_tps(), s.stop_reason.c_str());
    const CompressionReport& c = s.compression;
    if (c.compacted) {
        int64_t vis = 0, tot = 0, planned = 0, window = 0;
        for (size_t l = 0; l < c.visual_kept.size(); ++l) {
            if (c.layer_window[l] > 0) {  // a sliding-window layer kept its window, not the budget
                window = c.layer_window[l];
                continue;
            }
            vis += c.visual_kept[l];
            tot += c.total_kept[l];
            ++planned;
        }
        const double L = static_cast<double>(std::max<int64_t>(planned, 1));
        std::fprintf(stderr, "aircache: KV policy %s, budget %g (%s scope, per %s): kept %.1f of %lld visual positions "
                             "(%.1f%%), %.1f of %lld prompt positions per layer\n",
                     c.params.policy.c_str(), c.params.budget, compress::scope_name(c.params.scope),
                     compress::selection_name(c.params.selection), vis / L, static_cast<long long>(c.n_visual),
                     c.n_visual ? 100.0 * vis / L / static_cast<double>(c.n_visual) : 0.0, tot / L,
                     static_cast<long long>(c.n_prompt));
        if (window > 0)
            std::fprintf(stderr, "aircache: KV budget over the %lld layers that hold the whole prompt; the other %lld "
                                 "(sliding-window) layers keep the last %lld positions\n",
                         static_cast<long long>(planned), static_cast<long long>(c.visual_kept.size() - planned),
                         static_cast<long long>(window - 1));
        std::fprintf(stderr, "aircache: KV bytes  %s -> %s after compaction (importance pass %.2f ms, compaction %.2f ms)\n",
                     format_bytes(c.kv_bytes_before).c_str(), format_bytes(c.kv_bytes_after).c_str(), c.importance_ms,
                     c.compact_ms);
    }
    std::fprintf(stderr, "aircache: KV cache  %s in use, %s allocated\n", format_bytes(s.kv_bytes).c_str(),
                 format_bytes(s.kv_capacity_bytes).c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    g_argv0 = argc > 0 ? argv[0] : nullptr;
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
        if (a0 == "--list-policies") {
            std::fputs(compress::describe_policies().c_str(), stdout);
            return 0;
        }
        if (a0 == "info") return cmd_info(std::vector<std::string>(args.begin() + 1, args.end()));
        if (a0.size() > 1 && a0[0] == '-') return cmd_generate(args);
        throw UsageError("unknown command '" + a0 + "' (see aircache-cli --help)");
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
