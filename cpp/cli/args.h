// cli/args.h — the command-line parser aircache-cli and aircache-bench share: one table of flags
// (llama.cpp's names where one exists), the engine, KV-compression and sampling flags registered
// once for both programs.
//
//   ArgParser ap("aircache-cli");
//   add_engine_flags(ap, params, kEngineAll);
//   add_kv_flags(ap, compression);
//   ap.option({"-p", "--prompt"}, [&](const std::string& v) { prompt = v; });
//   std::vector<std::string> rest = ap.parse(args);    // UsageError for an unknown flag
#pragma once

#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "compress/policy.h"
#include "runtime/engine.h"
#include "runtime/generation.h"

namespace aircache {
namespace cli {

// Bad command-line usage (exit status 2, one line on stderr).
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class ArgParser {
public:
    explicit ArgParser(std::string prog) : prog_(std::move(prog)) {}
    // A flag without a value.
    void flag(std::vector<std::string> names, std::function<void()> f);
    // A flag with a value (the next argument).
    void option(std::vector<std::string> names, std::function<void(const std::string&)> f);
    // Applies the flags in order; returns the arguments that are not flags (none expected: a
    // caller that takes positional arguments says so). UsageError for an unknown flag or a
    // missing value.
    std::vector<std::string> parse(const std::vector<std::string>& args) const;

private:
    struct Entry {
        std::vector<std::string> names;
        bool value;
        std::function<void(const std::string&)> f;
    };
    std::string prog_;
    std::vector<Entry> entries_;
};

// A number (UsageError naming the flag otherwise).
template <class T> T parse_num(const std::string& flag, const std::string& v) {
    std::istringstream in(v);
    T x;
    if (!(in >> x) || !in.eof()) throw UsageError(flag + ": '" + v + "' is not a valid number");
    return x;
}
// A comma-separated list of numbers / of words.
template <class T> std::vector<T> parse_list(const std::string& flag, const std::string& v) {
    std::vector<T> out;
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(parse_num<T>(flag, item));
    if (out.empty()) throw UsageError(flag + " needs a value");
    return out;
}
std::vector<std::string> split_list(const std::string& v);

// The engine flags: -m/--model, --mmproj, -c/--ctx-size, -b/--batch-size, --kv-type, -ctk/--cache-type-k,
// -ctv/--cache-type-v,
// --device, -ngl/--n-gpu-layers/--gpu-layers, --image-mode, --chat-template, --verbose,
// --check-tensors; and, with
// `threads`, -t/--threads.
void add_engine_flags(ArgParser& ap, EngineParams& p, bool threads);
// KV compression: --kv-scope, --kv-selection, --kv-opt NAME=VALUE (repeatable); and, with
// `policy`, --kv-policy and --kv-budget (the bench takes lists of those instead).
void add_kv_flags(ArgParser& ap, compress::CompressParams& p, bool policy);
// Sampling and stopping: -n, --temp, --top-k, --top-p, --min-p, --repeat-penalty,
// --repeat-last-n, -s/--seed (seed_given set when given), --stop (repeatable).
void add_sampling_flags(ArgParser& ap, GenerateParams& p, bool& seed_given);

}  // namespace cli
}  // namespace aircache
