#include "cli/args.h"

#include "common.h"

namespace aircache {
namespace cli {

void ArgParser::flag(std::vector<std::string> names, std::function<void()> f) {
    entries_.push_back(Entry{std::move(names), false, [f](const std::string&) { f(); }});
}

void ArgParser::option(std::vector<std::string> names, std::function<void(const std::string&)> f) {
    entries_.push_back(Entry{std::move(names), true, std::move(f)});
}

std::vector<std::string> ArgParser::parse(const std::vector<std::string>& args) const {
    std::vector<std::string> rest;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        const Entry* hit = nullptr;
        for (const Entry& e : entries_)
            for (const std::string& n : e.names)
                if (n == a) hit = &e;
        if (!hit) {
            if (a.size() > 1 && a[0] == '-') throw UsageError("unknown option '" + a + "' (see " + prog_ + " --help)");
            rest.push_back(a);
            continue;
        }
        if (!hit->value) {
            hit->f("");
            continue;
        }
        if (i + 1 >= args.size()) throw UsageError(a + " needs a value");
        hit->f(args[++i]);
    }
    return rest;
}

std::vector<std::string> split_list(const std::string& v) {
    std::vector<std::string> out;
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

void add_engine_flags(ArgParser& ap, EngineParams& p, bool threads) {
    ap.option({"-m", "--model"}, [&p](const std::string& v) { p.model_path = v; });
    ap.option({"--mmproj"}, [&p](const std::string& v) { p.mmproj_path = v; });
    ap.option({"-c", "--ctx-size"}, [&p](const std::string& v) { p.n_ctx = parse_num<int64_t>("-c", v); });
    ap.option({"-b", "--batch-size"}, [&p](const std::string& v) { p.n_batch = parse_num<int64_t>("-b", v); });
    ap.option({"--kv-type"}, [&p](const std::string& v) { p.kv_type_k = p.kv_type_v = kv_type_from_name(v); });
    ap.option({"-ctk", "--cache-type-k"}, [&p](const std::string& v) { p.kv_type_k = kv_type_from_name(v); });
    ap.option({"-ctv", "--cache-type-v"}, [&p](const std::string& v) { p.kv_type_v = kv_type_from_name(v); });
    ap.option({"--device"}, [&p](const std::string& v) { p.device = v; });
    ap.option({"-ngl", "--n-gpu-layers", "--gpu-layers"},
              [&p](const std::string& v) { p.n_gpu_layers = parse_num<int>("-ngl", v); });
    ap.option({"--image-mode"}, [&p](const std::string& v) {
        if (v == "pad") p.image_mode = ImageMode::Pad;
        else if (v == "crop") p.image_mode = ImageMode::Crop;
        else throw UsageError("--image-mode: '" + v + "' (valid: pad, crop)");
    });
    ap.option({"--chat-template"}, [&p](const std::string& v) { p.chat_template = v; });
    ap.option({"--image-min-tokens"},
              [&p](const std::string& v) { p.image_min_tokens = parse_num<int64_t>("--image-min-tokens", v); });
    ap.option({"--image-max-tokens"},
              [&p](const std::string& v) { p.image_max_tokens = parse_num<int64_t>("--image-max-tokens", v); });
    ap.flag({"--verbose"}, [&p]() { p.verbose = true; });
    ap.flag({"--check-tensors"}, [&p]() { p.check_tensors = true; });
    if (threads) ap.option({"-t", "--threads"}, [&p](const std::string& v) { p.n_threads = parse_num<int>("-t", v); });
}

void add_kv_flags(ArgParser& ap, compress::CompressParams& p, bool policy) {
    if (policy) {
        ap.option({"--kv-policy"}, [&p](const std::string& v) { p.policy = v; });
        ap.option({"--kv-budget"}, [&p](const std::string& v) { p.budget = parse_num<double>("--kv-budget", v); });
    }
    ap.option({"--kv-scope"}, [&p](const std::string& v) { p.scope = compress::scope_from_name(v); });
    ap.option({"--kv-selection"}, [&p](const std::string& v) { p.selection = compress::selection_from_name(v); });
    ap.option({"--kv-opt"}, [&p](const std::string& kv) {
        const size_t eq = kv.find('=');
        if (eq == std::string::npos || eq == 0) throw UsageError("--kv-opt takes NAME=VALUE (got '" + kv + "')");
        p.options[kv.substr(0, eq)] = kv.substr(eq + 1);
    });
}

void add_sampling_flags(ArgParser& ap, GenerateParams& p, bool& seed_given) {
    ap.option({"-n", "--n-predict"}, [&p](const std::string& v) { p.max_tokens = parse_num<int>("-n", v); });
    ap.option({"--temp"}, [&p](const std::string& v) { p.sampling.temperature = parse_num<float>("--temp", v); });
    ap.option({"--top-k"}, [&p](const std::string& v) { p.sampling.top_k = parse_num<int>("--top-k", v); });
    ap.option({"--top-p"}, [&p](const std::string& v) { p.sampling.top_p = parse_num<float>("--top-p", v); });
    ap.option({"--min-p"}, [&p](const std::string& v) { p.sampling.min_p = parse_num<float>("--min-p", v); });
    ap.option({"--repeat-penalty"},
              [&p](const std::string& v) { p.sampling.repeat_penalty = parse_num<float>("--repeat-penalty", v); });
    ap.option({"--repeat-last-n"},
              [&p](const std::string& v) { p.sampling.repeat_last_n = parse_num<int>("--repeat-last-n", v); });
    ap.option({"-s", "--seed"}, [&p, &seed_given](const std::string& v) {
        const long long sd = parse_num<long long>("-s", v);
        if (sd >= 0) {
            p.sampling.seed = static_cast<uint64_t>(sd);
            seed_given = true;
        }
    });
    ap.option({"--stop"}, [&p](const std::string& v) { p.stop.push_back(v); });
}

}  // namespace cli
}  // namespace aircache
