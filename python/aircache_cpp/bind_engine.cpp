// bind_engine.cpp — _core.Engine, Generation, BatchGeneration, Session: argument conversion only
// (the logic is in cpp/runtime and cpp/eval).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "common.h"
#include "backend/backend.h"
#include "eval/evaluate.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "runtime/scheduler.h"
#include "unicode.h"

namespace nb = nanobind;
using namespace aircache;

namespace {

using IdArray = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using RgbArray = nb::ndarray<const uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu>;

// RGB uint8 arrays (HxWx3, made by aircache_cpp.image.to_rgb_array) -> Images.
std::vector<Image> to_images(const std::vector<RgbArray>& arrays) {
    std::vector<Image> out;
    for (const RgbArray& a : arrays) {
        if (a.shape(2) != 3) throw InputError("images must be HxWx3 RGB arrays at this point");
        out.push_back(image_from_pixels(a.data(), static_cast<int>(a.shape(0)), static_cast<int>(a.shape(1)), 3));
    }
    return out;
}

template <class T> nb::ndarray<nb::numpy, T> array_of(const std::vector<T>& v) {
    auto* heap = new std::vector<T>(v);
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    size_t shape[1] = {heap->size()};
    return nb::ndarray<nb::numpy, T>(heap->data(), 1, shape, owner);
}

compress::CompressParams compress_params(const std::string& policy, double budget, const std::string& scope,
                                         const std::string& selection, const std::map<std::string, std::string>& options) {
    compress::CompressParams p;
    p.policy = policy;
    p.budget = budget;
    p.scope = compress::scope_from_name(scope);
    p.selection = compress::selection_from_name(selection);
    p.options = options;
    return p;
}

nb::dict report_dict(const CompressionReport& r) {
    nb::dict d;
    d["kv_policy"] = r.params.policy;
    d["kv_budget"] = r.params.budget;
    d["kv_scope"] = std::string(compress::scope_name(r.params.scope));
    d["kv_selection"] = std::string(compress::selection_name(r.params.selection));
    nb::list kept;
    if (r.kept_heads.empty()) {
        for (const auto& k : r.kept) kept.append(array_of(k));
    } else {
        for (const auto& layer : r.kept_heads) {
            nb::list heads;
            for (const auto& k : layer) heads.append(array_of(k));
            kept.append(heads);
        }
    }
    d["kept"] = kept;
    // positions of the kept rows: per layer [n_kept][n_pos_axes] (per layer and KV head in kv_head mode)
    auto pos_array = [&](const std::vector<int32_t>& v) {
        auto* heap = new std::vector<int32_t>(v);
        nb::capsule owner(heap, [](void* q) noexcept { delete static_cast<std::vector<int32_t>*>(q); });
        const size_t A = static_cast<size_t>(std::max(r.n_pos_axes, 1));
        size_t shape[2] = {heap->size() / A, A};
        return nb::ndarray<nb::numpy, int32_t>(heap->data(), 2, shape, owner);
    };
    nb::list kept_pos;
    if (r.kept_pos_heads.empty()) {
        for (const auto& k : r.kept_pos) kept_pos.append(pos_array(k));
    } else {
        for (const auto& layer : r.kept_pos_heads) {
            nb::list heads;
            for (const auto& k : layer) heads.append(pos_array(k));
            kept_pos.append(heads);
        }
    }
    d["kept_pos"] = kept_pos;
    d["visual_kept"] = array_of(r.visual_kept);
    d["total_kept"] = array_of(r.total_kept);
    d["layer_window"] = array_of(r.layer_window);
    d["kv_bytes_before"] = r.kv_bytes_before;
    d["kv_bytes_after"] = r.kv_bytes_after;
    d["importance_ms"] = r.importance_ms;
    d["compact_ms"] = r.compact_ms;
    nb::dict diag;
    for (const auto& [k, v] : r.diagnostics) diag[k.c_str()] = array_of(v);
    d["diagnostics"] = diag;
    d["hit_rate"] = r.hit_rate;
    d["hit_rate_per_layer"] = array_of(r.hit_rate_per_layer);
    return d;
}

nb::dict stats_dict(const GenerationStats& s) {
    nb::dict d;
    d["n_prompt"] = s.n_prompt;
    d["n_images"] = s.n_images;
    d["n_visual"] = s.n_visual;
    d["image_encode_ms"] = s.image_encode_ms;
    d["n_generated"] = s.n_generated;
    d["prefill_ms"] = s.prefill_ms;
    d["prefill_tokens_per_s"] = s.prefill_tps();
    d["decode_ms"] = s.decode_ms;
    d["decode_tokens_per_s"] = s.decode_tps();
    d["sample_ms"] = s.sample_ms;
    d["kv_bytes"] = s.kv_bytes;
    d["kv_capacity_bytes"] = s.kv_capacity_bytes;
    d["stop_reason"] = s.stop_reason;
    nb::dict r = report_dict(s.compression);
    for (auto [k, v] : r) d[k] = v;
    d["kv_capacity_bytes"] = s.kv_capacity_bytes;
    d["batch_size"] = s.batch_size;
    d["batch_decode_tokens_per_s"] = s.batch_decode_tps;
    return d;
}

nb::dict histogram_dict(const Histogram& h) {
    nb::dict d;
    d["bounds"] = h.bounds;
    d["counts"] = h.counts;
    d["sum"] = h.sum;
    d["count"] = h.count;
    return d;
}

nb::dict metrics_dict(const SchedulerMetrics& m) {
    nb::dict d;
    d["requests_submitted"] = m.requests_submitted;
    d["requests_finished"] = m.requests_finished;
    d["requests_failed"] = m.requests_failed;
    d["requests_cancelled"] = m.requests_cancelled;
    d["requests_rejected"] = m.requests_rejected;
    d["prompt_tokens"] = m.prompt_tokens;
    d["generated_tokens"] = m.generated_tokens;
    d["decode_steps"] = m.decode_steps;
    d["prefill_chunks"] = m.prefill_chunks;
    d["queue_depth"] = m.queue_depth;
    d["slots_busy"] = m.slots_busy;
    d["n_parallel"] = m.n_parallel;
    d["kv_bytes_before_compaction"] = m.kv_bytes_before;
    d["kv_bytes_after_compaction"] = m.kv_bytes_after;
    d["kv_bytes_in_use"] = m.kv_bytes_in_use;
    d["kv_capacity_bytes"] = m.kv_capacity_bytes;
    d["time_to_first_token_seconds"] = histogram_dict(m.time_to_first_token);
    d["time_per_output_token_seconds"] = histogram_dict(m.time_per_token);
    d["request_duration_seconds"] = histogram_dict(m.request_duration);
    d["queue_wait_seconds"] = histogram_dict(m.queue_wait);
    return d;
}

// Generation options (aircache_cpp.model packs them): sampling, stopping, compression.
GenerateParams gen_params(const nb::dict& d) {
    GenerateParams p;
    auto get = [&](const char* k) -> nb::handle {
        if (!d.contains(k)) throw InputError(std::string("internal: generation option '") + k + "' missing");
        return d[k];
    };
    p.max_tokens = nb::cast<int>(get("max_tokens"));
    p.sampling.temperature = nb::cast<float>(get("temperature"));
    p.sampling.top_k = nb::cast<int>(get("top_k"));
    p.sampling.top_p = nb::cast<float>(get("top_p"));
    p.sampling.min_p = nb::cast<float>(get("min_p"));
    p.sampling.repeat_penalty = nb::cast<float>(get("repeat_penalty"));
    p.sampling.repeat_last_n = nb::cast<int>(get("repeat_last_n"));
    p.sampling.seed = nb::cast<uint64_t>(get("seed"));
    p.stop = nb::cast<std::vector<std::string>>(get("stop"));
    p.compression = compress_params(nb::cast<std::string>(get("kv_policy")), nb::cast<double>(get("kv_budget")),
                                    nb::cast<std::string>(get("kv_scope")), nb::cast<std::string>(get("kv_selection")),
                                    nb::cast<std::map<std::string, std::string>>(get("kv_options")));
    if (d.contains("prompt_logits")) p.prompt_logits = nb::cast<bool>(d["prompt_logits"]);
    return p;
}

// [(role, [(is_image, text), ...]), ...] -> messages
std::vector<ChatMessage> chat_messages(const nb::list& msgs) {
    std::vector<ChatMessage> out;
    for (nb::handle h : msgs) {
        nb::tuple t = nb::cast<nb::tuple>(h);
        ChatMessage m;
        m.role = nb::cast<std::string>(t[0]);
        for (nb::handle ph : nb::cast<nb::list>(t[1])) {
            nb::tuple pt = nb::cast<nb::tuple>(ph);
            m.parts.push_back(ChatPart{nb::cast<bool>(pt[0]), nb::cast<std::string>(pt[1])});
        }
        out.push_back(std::move(m));
    }
    return out;
}

nb::ndarray<nb::numpy, float> to_numpy(std::vector<float>&& v, std::vector<size_t> shape) {
    auto* heap = new std::vector<float>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    return nb::ndarray<nb::numpy, float>(heap->data(), shape.size(), shape.data(), owner);
}

}  // namespace

void aircache_bind_engine(nb::module_& m) {
    m.def("list_policies", []() {
        nb::list out;
        for (const compress::Policy* p : compress::all_policies()) {
            nb::dict d;
            d["name"] = p->name();
            d["description"] = p->description();
            nb::list opts;
            for (const compress::OptionSpec& o : p->options()) {
                nb::dict od;
                od["name"] = o.name;
                od["kind"] = o.kind == compress::OptionSpec::Float ? "float" : o.kind == compress::OptionSpec::Int ? "int"
                             : o.kind == compress::OptionSpec::Bool ? "bool" : "choice";
                od["default"] = o.def;
                od["description"] = o.describe();
                if (o.kind == compress::OptionSpec::Choice) od["choices"] = o.choices;
                opts.append(od);
            }
            d["options"] = opts;
            out.append(d);
        }
        return out;
    }, "Every KV policy with its options and defaults.");
    m.def("describe_policies", &compress::describe_policies, "list_policies() as text (aircache-cli --list-policies).");

    m.def("_utf8_sanitize", [](nb::bytes b) {
        std::string s = utf8_sanitize(std::string_view(b.c_str(), b.size()));
        return nb::str(s.data(), s.size());
    }, "Test hook: invalid UTF-8 replaced by U+FFFD (maximal subparts).");

    nb::class_<BatchGeneration>(m, "BatchGeneration", "Requests decoded together; step() returns each one's new text.")
        .def("__init__",
             [](BatchGeneration* self, Engine& e, std::vector<IdArray> prompts, std::vector<std::vector<RgbArray>> images,
                nb::dict opts) {
                 const GenerateParams p = gen_params(opts);
                 std::vector<std::vector<int32_t>> ps;
                 for (const IdArray& a : prompts) ps.emplace_back(a.data(), a.data() + a.size());
                 std::vector<std::vector<Image>> imgs;
                 for (const auto& list : images) imgs.push_back(to_images(list));
                 new (self) BatchGeneration(e, std::move(ps), std::move(imgs), p);
             },
             nb::arg("engine"), nb::arg("prompts"), nb::arg("images"), nb::arg("options"), nb::keep_alive<1, 2>())
        .def("step",
             [](BatchGeneration& g) -> nb::object {
                 std::vector<std::string> pieces;
                 bool more;
                 {
                     nb::gil_scoped_release nogil;
                     more = g.step(pieces);
                 }
                 if (!more) return nb::none();
                 nb::list l;
                 for (const std::string& p : pieces) l.append(nb::str(p.data(), p.size()));
                 return std::move(l);
             })
        .def_prop_ro("size", &BatchGeneration::size)
        .def("text", [](const BatchGeneration& g, size_t i) { return g.sequence(i).text(); })
        .def("tokens", [](const BatchGeneration& g, size_t i) { return g.sequence(i).tokens(); })
        .def("stats", [](const BatchGeneration& g, size_t i) { return stats_dict(g.stats(i)); });

    nb::class_<Generation>(m, "Generation", "A request in progress; step() returns the next text piece.")
        .def("__init__",
             [](Generation* self, Engine& e, IdArray prompt, std::vector<RgbArray> images, nb::dict opts) {
                 new (self) Generation(e, std::vector<int32_t>(prompt.data(), prompt.data() + prompt.size()),
                                       gen_params(opts), to_images(images));
             },
             nb::arg("engine"), nb::arg("prompt"), nb::arg("images"), nb::arg("options"), nb::keep_alive<1, 2>())
        .def("step",
             [](Generation& g) -> nb::object {
                 std::string piece;
                 bool more;
                 {
                     nb::gil_scoped_release nogil;
                     more = g.step(piece);
                 }
                 if (!more) return nb::none();
                 return nb::str(piece.data(), piece.size());
             },
             "The next piece of text ('' when nothing became final), or None when finished.")
        .def_prop_ro("done", &Generation::done)
        .def_prop_ro("text", [](const Generation& g) { return g.text(); })
        .def_prop_ro("tokens", [](const Generation& g) { return g.tokens(); })
        .def_prop_ro("stats", [](const Generation& g) { return stats_dict(g.stats()); })
        .def("prompt_logits_of",
             [](const Generation& g, const Engine& e) -> nb::object {
                 const std::vector<float>& lg = g.prompt_logits();
                 if (lg.empty()) return nb::none();
                 const size_t V = static_cast<size_t>(e.config().n_vocab);
                 return nb::cast(to_numpy(std::vector<float>(lg), {lg.size() / V, V}));
             },
             "The logits of the turn's prompt rows [n][n_vocab] (asked with prompt_logits), else None.");

    nb::class_<Session>(m, "Session", "A conversation keeping its KV cache between turns.")
        .def("__init__",
             [](Session* self, Engine& e, const std::string& kv_policy, double kv_budget, const std::string& kv_scope,
                const std::string& kv_selection, const std::map<std::string, std::string>& kv_options,
                const std::string& chat_template, const std::string& system) {
                 new (self) Session(e, compress_params(kv_policy, kv_budget, kv_scope, kv_selection, kv_options),
                                    chat_template, system);
             },
             nb::arg("engine"), nb::arg("kv_policy"), nb::arg("kv_budget"), nb::arg("kv_scope"), nb::arg("kv_selection"),
             nb::arg("kv_options"), nb::arg("chat_template"), nb::arg("system"), nb::keep_alive<1, 2>())
        .def("send",
             [](Session& s, nb::list parts, std::vector<RgbArray> images, nb::dict opts) {
                 ChatMessage msg;
                 msg.role = "user";
                 for (nb::handle ph : parts) {
                     nb::tuple pt = nb::cast<nb::tuple>(ph);
                     msg.parts.push_back(ChatPart{nb::cast<bool>(pt[0]), nb::cast<std::string>(pt[1])});
                 }
                 const GenerateParams p = gen_params(opts);
                 std::vector<Image> imgs = to_images(images);
                 nb::gil_scoped_release nogil;
                 return s.send(msg, p, std::move(imgs));
             },
             nb::arg("parts"), nb::arg("images"), nb::arg("options"), nb::keep_alive<0, 1>(),
             "Starts a user turn; returns its Generation (step it to the end).")
        .def_prop_ro("ids", [](const Session& s) { return s.ids(); })
        .def_prop_ro("compressed", &Session::compressed)
        .def_prop_ro("n_turns", &Session::n_turns)
        .def_prop_ro("compression", [](const Session& s) { return report_dict(s.compression()); })
        .def_prop_ro("kv_bytes", [](Session& s) { return s.kv().bytes_in_use(); })
        .def("reset", &Session::reset);

    nb::class_<Engine>(m, "Engine", "A loaded model with its KV cache and thread pool.")
        .def("__init__",
             [](Engine* self, const std::string& path, const std::string& mmproj, int64_t n_ctx, int n_threads,
                int64_t n_batch, const std::string& kv_type, const std::string& image_mode, const std::string& chat_template,
                bool verbose, const std::string& device, int n_gpu_layers, bool check_tensors, int64_t image_min_tokens,
                int64_t image_max_tokens, const std::string& kv_type_k, const std::string& kv_type_v) {
                 EngineParams p;
                 p.image_min_tokens = image_min_tokens;
                 p.image_max_tokens = image_max_tokens;
                 p.check_tensors = check_tensors;
                 p.device = device;
                 p.n_gpu_layers = n_gpu_layers;
                 p.model_path = path;
                 p.mmproj_path = mmproj;
                 if (image_mode == "pad") p.image_mode = ImageMode::Pad;
                 else if (image_mode == "crop") p.image_mode = ImageMode::Crop;
                 else throw InputError("unknown image_mode '" + image_mode + "' (valid: pad, crop)");
                 p.chat_template = chat_template;
                 p.verbose = verbose;
                 p.n_ctx = n_ctx;
                 p.n_threads = n_threads;
                 p.n_batch = n_batch;
                 p.kv_type_k = kv_type_from_name(kv_type_k.empty() ? kv_type : kv_type_k);
                 p.kv_type_v = kv_type_from_name(kv_type_v.empty() ? kv_type : kv_type_v);
                 nb::gil_scoped_release nogil;
                 new (self) Engine(p);
             },
             nb::arg("model_path"), nb::arg("mmproj") = "", nb::arg("n_ctx") = 4096, nb::arg("n_threads") = 0,
             nb::arg("n_batch") = 512, nb::arg("kv_type") = "f16", nb::arg("image_mode") = "pad",
             nb::arg("chat_template") = "", nb::arg("verbose") = false, nb::arg("device") = "auto",
             nb::arg("n_gpu_layers") = -1, nb::arg("check_tensors") = false, nb::arg("image_min_tokens") = 0,
             nb::arg("image_max_tokens") = 0, nb::arg("kv_type_k") = "", nb::arg("kv_type_v") = "")
        .def("logits",
             [](Engine& e, IdArray ids, std::vector<RgbArray> images, const std::string& kv_policy, double kv_budget,
                const std::string& kv_scope, const std::string& kv_selection,
                const std::map<std::string, std::string>& kv_options, int64_t n_prompt) {
                 std::vector<int32_t> v(ids.data(), ids.data() + ids.size());
                 std::vector<Image> imgs = to_images(images);
                 const compress::CompressParams cp = compress_params(kv_policy, kv_budget, kv_scope, kv_selection, kv_options);
                 std::vector<float> out;
                 CompressionReport rep;
                 {
                     nb::gil_scoped_release nogil;
                     out = logits(e, v, imgs, cp, n_prompt, &rep);
                 }
                 return nb::make_tuple(to_numpy(std::move(out), {v.size(), static_cast<size_t>(e.config().n_vocab)}),
                                       report_dict(rep));
             },
             nb::arg("ids"), nb::arg("images"), nb::arg("kv_policy") = "full", nb::arg("kv_budget") = 1.0,
             nb::arg("kv_scope") = "visual", nb::arg("kv_selection") = "layer",
             nb::arg("kv_options") = std::map<std::string, std::string>{}, nb::arg("n_prompt") = 0)
        .def("evaluate",
             [](Engine& e, IdArray ids, std::vector<RgbArray> images, int64_t n_prompt, nb::list settings,
                std::vector<int64_t> rows, bool hit_rate) {
                 std::vector<int32_t> v(ids.data(), ids.data() + ids.size());
                 std::vector<Image> imgs = to_images(images);
                 std::vector<compress::CompressParams> ps;
                 for (nb::handle h : settings) {
                     nb::dict d = nb::cast<nb::dict>(h);
                     ps.push_back(compress_params(nb::cast<std::string>(d["kv_policy"]), nb::cast<double>(d["kv_budget"]),
                                                  nb::cast<std::string>(d["kv_scope"]), nb::cast<std::string>(d["kv_selection"]),
                                                  nb::cast<std::map<std::string, std::string>>(d["kv_options"])));
                 }
                 std::vector<PolicyEvaluation> out;
                 {
                     nb::gil_scoped_release nogil;
                     out = evaluate_policies(e, v, imgs, n_prompt, ps, rows, hit_rate);
                 }
                 nb::list res;
                 for (PolicyEvaluation& ev : out) {
                     const size_t nr = ev.logits.size() / static_cast<size_t>(e.config().n_vocab);
                     res.append(nb::make_tuple(to_numpy(std::move(ev.logits), {nr, static_cast<size_t>(e.config().n_vocab)}),
                                               report_dict(ev.report)));
                 }
                 return res;
             },
             nb::arg("ids"), nb::arg("images"), nb::arg("n_prompt"), nb::arg("settings"), nb::arg("rows"),
             nb::arg("hit_rate") = false)
        .def("build_prompt",
             [](const Engine& e, const std::string& prompt, int n_images, const std::string& tmpl) {
                 if (n_images < 0) throw InputError("n_images must be >= 0");
                 std::vector<int64_t> counts;
                 if (n_images > 0) counts.assign(static_cast<size_t>(n_images), e.n_image_tokens(nullptr));
                 nb::gil_scoped_release nogil;
                 return e.build_prompt(prompt, counts, tmpl);
             },
             nb::arg("prompt"), nb::arg("n_images"), nb::arg("chat_template") = "")
        .def("build_prompt_for",
             [](const Engine& e, const std::string& prompt, std::vector<RgbArray> images, const std::string& tmpl) {
                 std::vector<Image> imgs = to_images(images);
                 nb::gil_scoped_release nogil;
                 return e.build_fitted(imgs, [&](const std::vector<int64_t>& counts) {
                     return e.build_prompt(prompt, counts, tmpl);
                 });
             },
             nb::arg("prompt"), nb::arg("images"), nb::arg("chat_template") = "",
             "The ids generate() feeds for `prompt` with these images (each image's own token count).")
        .def("build_chat",
             [](const Engine& e, nb::list messages, std::vector<RgbArray> images, const std::string& tmpl,
                bool add_generation_prompt) {
                 const std::vector<ChatMessage> msgs = chat_messages(messages);
                 std::vector<Image> imgs = to_images(images);
                 nb::gil_scoped_release nogil;
                 const std::string text = render_chat(e.chat_template(tmpl), msgs, add_generation_prompt);
                 return e.build_fitted(imgs, [&](const std::vector<int64_t>& counts) {
                     return e.tokenize_with_images(text, counts);
                 });
             },
             nb::arg("messages"), nb::arg("images"), nb::arg("chat_template") = "", nb::arg("add_generation_prompt") = true,
             "The ids of a conversation: [(role, [(is_image, text), ...]), ...] through the chat template.")
        .def("render_chat",
             [](const Engine& e, nb::list messages, const std::string& tmpl, bool add_generation_prompt) {
                 return render_chat(e.chat_template(tmpl), chat_messages(messages), add_generation_prompt);
             },
             nb::arg("messages"), nb::arg("chat_template") = "", nb::arg("add_generation_prompt") = true)
        .def("encode_image",
             [](Engine& e, RgbArray image, bool deepstack) {
                 std::vector<Image> imgs = to_images({image});
                 MediaItem item;
                 {
                     nb::gil_scoped_release nogil;
                     item = e.encode_image(imgs[0]);
                 }
                 const size_t n = static_cast<size_t>(item.n_rows), E = static_cast<size_t>(item.n_embd);
                 if (!deepstack) return nb::cast(to_numpy(std::move(item.embd), {n, E}));
                 const size_t nd = static_cast<size_t>(item.n_deepstack);
                 return nb::object(nb::make_tuple(to_numpy(std::move(item.embd), {n, E}),
                                                  to_numpy(std::move(item.deepstack), {nd, n, E})));
             },
             nb::arg("image"), nb::arg("deepstack") = false)
        .def("pixel_values",
             [](const Engine& e, RgbArray image) {
                 std::vector<Image> imgs = to_images({image});
                 int64_t rows = 0, cols = 0;
                 std::vector<float> px;
                 {
                     nb::gil_scoped_release nogil;
                     px = e.pixel_values(imgs[0], rows, cols);
                 }
                 return to_numpy(std::move(px), {static_cast<size_t>(rows), static_cast<size_t>(cols)});
             },
             nb::arg("image"))
        .def("n_image_tokens",
             [](const Engine& e, std::optional<RgbArray> image) {
                 if (!image) return e.n_image_tokens(nullptr);
                 std::vector<Image> imgs = to_images({*image});
                 return e.n_image_tokens(&imgs[0]);
             },
             nb::arg("image").none())
        .def_prop_ro("has_vision", &Engine::has_vision)
        .def_prop_ro("image_token_id", [](const Engine& e) { return e.has_vision() ? e.image_token_id() : -1; })
        .def_prop_ro("chat_template", [](const Engine& e) { return std::string(chat_template_name(e.chat_template())); })
        .def("tokenize",
             [](const Engine& e, const std::string& text, bool add_bos, bool parse_special) {
                 nb::gil_scoped_release nogil;
                 return e.tokenize(text, add_bos, parse_special);
             },
             nb::arg("text"), nb::arg("add_bos") = true, nb::arg("parse_special") = true)
        .def("detokenize",
             [](const Engine& e, const std::vector<int32_t>& ids, bool skip_special) {
                 std::string s;
                 {
                     nb::gil_scoped_release nogil;
                     s = e.detokenize(ids, skip_special);
                 }
                 return nb::str(s.data(), s.size());
             },
             nb::arg("ids"), nb::arg("skip_special") = true)
        .def_prop_ro("has_tokenizer", &Engine::has_tokenizer)
        .def_prop_ro("bos", [](const Engine& e) { return e.has_tokenizer() ? e.tokenizer().bos() : -1; })
        .def_prop_ro("eos", [](const Engine& e) { return e.has_tokenizer() ? e.tokenizer().eos() : -1; })
        .def_prop_ro("n_vocab", [](const Engine& e) { return e.config().n_vocab; })
        .def_prop_ro("n_embd", [](const Engine& e) { return e.config().n_embd; })
        .def_prop_ro("n_layer", [](const Engine& e) { return e.config().n_layer; })
        .def_prop_ro("n_head", [](const Engine& e) { return e.config().n_head; })
        .def_prop_ro("n_head_kv", [](const Engine& e) { return e.config().n_head_kv; })
        .def_prop_ro("n_ctx", [](const Engine& e) { return e.params().n_ctx; })
        .def_prop_ro("n_ctx_train", [](const Engine& e) { return e.config().n_ctx_train; })
        .def_prop_ro("n_threads", [](const Engine& e) { return e.params().n_threads; })
        .def_prop_ro("architecture", [](const Engine& e) { return e.config().arch; })
        .def_prop_ro("kv_type_k", [](const Engine& e) { return std::string(kv_type_name(e.params().kv_type_k)); })
        .def_prop_ro("kv_type_v", [](const Engine& e) { return std::string(kv_type_name(e.params().kv_type_v)); })
        .def_prop_ro("device", [](const Engine& e) { return e.device().name(); })
        .def_prop_ro("n_gpu_layers", [](const Engine& e) { return e.n_device_layers(); })
        .def_prop_ro("vision_on_gpu", [](const Engine& e) { return e.vision_on_device(); })
        .def_prop_ro("n_pos_axes", [](const Engine& e) { return e.config().n_pos_axes; })
        .def_prop_ro("ops_used", &Engine::ops_used,
                     "(backend, op, type) of every op the backends have run since load.");

    nb::exception<QueueFull>(m, "QueueFull", m.attr("Error"));
    nb::class_<ScheduledRequest>(m, "ScheduledRequest", "A request submitted to a Scheduler.")
        .def("next",
             [](ScheduledRequest& r, double timeout) -> nb::object {
                 std::string piece;
                 bool more;
                 {
                     nb::gil_scoped_release nogil;
                     more = r.next(piece, timeout);
                 }
                 if (!more) return nb::none();
                 return nb::str(piece.data(), piece.size());
             },
             nb::arg("timeout") = -1.0,
             "New text (waiting up to `timeout` s, < 0: no limit; '' on a timeout), None once finished; raises "
             "the request's error.")
        .def("cancel", &ScheduledRequest::cancel)
        .def_prop_ro("done", &ScheduledRequest::done)
        .def_prop_ro("id", &ScheduledRequest::id)
        .def_prop_ro("text", &ScheduledRequest::text)
        .def_prop_ro("tokens", &ScheduledRequest::tokens)
        .def_prop_ro("stats", [](const ScheduledRequest& r) { return stats_dict(r.stats()); });

    nb::class_<Scheduler>(m, "Scheduler", "Continuous batching of requests over one Engine.")
        .def("__init__",
             [](Scheduler* self, Engine& e, int n_parallel, int queue_size) {
                 SchedulerParams p;
                 p.n_parallel = n_parallel;
                 p.queue_size = queue_size;
                 new (self) Scheduler(e, p);
             },
             nb::arg("engine"), nb::arg("n_parallel"), nb::arg("queue_size"), nb::keep_alive<1, 2>())
        .def("submit",
             [](Scheduler& s, IdArray prompt, std::vector<RgbArray> images, nb::dict opts) {
                 std::vector<int32_t> ids(prompt.data(), prompt.data() + prompt.size());
                 std::vector<Image> imgs = to_images(images);
                 const GenerateParams p = gen_params(opts);
                 nb::gil_scoped_release nogil;
                 return s.submit(std::move(ids), std::move(imgs), p);
             },
             nb::arg("prompt"), nb::arg("images"), nb::arg("options"))
        .def("metrics", [](const Scheduler& s) { return metrics_dict(s.metrics()); })
        .def("stop",
             [](Scheduler& s) {
                 nb::gil_scoped_release nogil;
                 s.stop();
             });

    m.def("_backend_ops", []() {
        std::vector<std::string> v;
        for (Op op : all_ops()) v.push_back(op_name(op));
        return v;
    }, "Every op of the backend table.");
    m.def("_cuda_supports", [](const std::string& op, const std::string& type) {
        const TypeInfo* ti = type_info_by_name(type);
        if (!ti) throw InputError("unknown type '" + type + "'");
        return cuda_supports(op_from_name(op), ti->type);
    }, nb::arg("op"), nb::arg("type"), "What the CUDA backend declares it runs (False in a build without CUDA).");
}
