#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <numeric>

#include "common.h"
#include "cuda_api.h"
#include "unicode.h"

namespace aircache {

void EngineParams::validate() const {
    if (model_path.empty() && !model_file) throw InputError("no model path given");
    if (n_ctx < 1 || n_ctx > (int64_t(1) << 24)) throw InputError(strprintf("n_ctx must be in [1, 16777216] (got %lld)", static_cast<long long>(n_ctx)));
    if (n_batch < 1) throw InputError(strprintf("n_batch must be >= 1 (got %lld)", static_cast<long long>(n_batch)));
    if (n_threads < 0 || n_threads > 1024) throw InputError(strprintf("n_threads must be in [0, 1024] (got %d)", n_threads));
    if (n_gpu_layers < -1) throw InputError(strprintf("n_gpu_layers must be -1 (all) or >= 0 (got %d)", n_gpu_layers));
    parse_device(device);
}

Engine::Engine(const EngineParams& p) : params_(p) {
    const auto t_load = std::chrono::steady_clock::now();
    params_.validate();
    device_ = resolve_device(params_.device);
    if (params_.n_threads == 0) params_.n_threads = physical_cores();
    file_ = params_.model_file ? params_.model_file : std::shared_ptr<const GGUFFile>(GGUFFile::open(params_.model_path));
    if (params_.model_path.empty()) params_.model_path = file_->path();
    model_ = TextModel::load(file_);
    if (file_->has("tokenizer.ggml.model")) {
        tokenizer_ = Tokenizer::from_gguf(*file_);
        if (tokenizer_->n_vocab() != model_->config().n_vocab)
            file_->fail(strprintf("the tokenizer has %d tokens but the model's vocabulary is %lld", tokenizer_->n_vocab(),
                                  static_cast<long long>(model_->config().n_vocab)));
    }
    chat_template_ = chat_template_for(file_->get_str("tokenizer.chat_template", ""), params_.chat_template);
    if (!params_.mmproj_path.empty() || params_.mmproj_file) {
        mmproj_ = params_.mmproj_file ? params_.mmproj_file
                                      : std::shared_ptr<const GGUFFile>(GGUFFile::open(params_.mmproj_path));
        if (params_.mmproj_path.empty()) params_.mmproj_path = mmproj_->path();
        vision_ = VisionModel::load(mmproj_);
        const int64_t out = vision_->config().n_embd_out, E = model_->config().n_embd;
        if (out != E)
            throw InputError(strprintf("the mmproj '%s' projects to %lld dimensions but the text model '%s' has "
                                       "n_embd %lld: they do not belong together (wrong mmproj?)",
                                       params_.mmproj_path.c_str(), static_cast<long long>(out),
                                       params_.model_path.c_str(), static_cast<long long>(E)));
        const int32_t t = tokenizer_ ? tokenizer_->find_token(kImageMarker) : -1;
        image_token_id_ = t >= 0 ? t : static_cast<int32_t>(model_->config().n_vocab);
    }
    if (device_.cuda()) {
        const int n_off = offload_layers(device_, params_.n_gpu_layers, static_cast<int>(model_->config().n_layer));
        model_->offload(n_off, device_.index);
        if (vision_) vision_->offload(device_.index);
    }
    kv_ = std::make_unique<KVCache>(model_->kv_config(params_.n_ctx, params_.kv_type));
    pool_ = std::make_unique<ThreadPool>(params_.n_threads);
    if (params_.verbose) {
        const TextConfig& c = model_->config();
        uint64_t bytes = 0;
        for (const GGUFTensorInfo& t : file_->tensors()) bytes += t.nbytes;
        std::fprintf(stderr, "aircache: model %s: %s, %lld layers, n_embd %lld, %lld/%lld heads, n_ff %lld, vocab %lld, "
                             "%s of weights%s\n", params_.model_path.c_str(), c.arch.c_str(),
                     static_cast<long long>(c.n_layer), static_cast<long long>(c.n_embd), static_cast<long long>(c.n_head),
                     static_cast<long long>(c.n_head_kv), static_cast<long long>(c.n_ff), static_cast<long long>(c.n_vocab),
                     format_bytes(bytes).c_str(), c.tied_output ? ", tied output" : "");
        if (vision_) {
            const VisionConfig& v = vision_->config();
            std::fprintf(stderr, "aircache: mmproj %s: projector %s, %lld ViT layers of width %lld, %lld px / patch %lld -> "
                                 "%lld tokens of %lld\n", params_.mmproj_path.c_str(), v.projector.c_str(),
                         static_cast<long long>(v.n_layer), static_cast<long long>(v.n_embd),
                         static_cast<long long>(v.image_size), static_cast<long long>(v.patch_size),
                         static_cast<long long>(v.n_tokens), static_cast<long long>(v.n_embd_out));
        }
        if (device_.cuda())
            std::fprintf(stderr, "aircache: device %s: %s; %d of %lld text layers%s and %s on the GPU (%s of weights); "
                                 "prefill GEMMs: %s\n", device_.name().c_str(),
                         cuda::device_description(device_.index).c_str(), model_->n_device_layers(),
                         static_cast<long long>(model_->config().n_layer),
                         model_->n_device_layers() == model_->config().n_layer ? " + output" : "",
                         vision_ ? "the vision tower" : "no vision tower",
                         format_bytes(model_->device_weight_bytes() + (vision_ ? vision_->device_weight_bytes() : 0)).c_str(),
                         cuda::gemm_backend(device_.index).c_str());
        std::fprintf(stderr, "aircache: KV cache %s x %lld positions (%s), %d threads, chat template %s, loaded in %.0f ms\n",
                     kv_type_name(params_.kv_type), static_cast<long long>(params_.n_ctx),
                     format_bytes(kv_->capacity_bytes()).c_str(), params_.n_threads, chat_template_name(chat_template_),
                     std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_load).count());
    }
}

const VisionModel& Engine::vision() const {
    if (!vision_) throw InputError("this model was loaded without an mmproj (vision) file: images cannot be used");
    return *vision_;
}

int64_t Engine::n_image_tokens() const { return vision().config().n_tokens; }

std::vector<float> Engine::encode_image(const Image& img) {
    vision();
    const std::vector<float> px = preprocess_image(img, vision_->preprocess(params_.image_mode));
    std::vector<float> out(static_cast<size_t>(vision_->config().n_tokens * vision_->config().n_embd_out));
    vision_->encode(px.data(), out.data(), *pool_);
    return out;
}

std::vector<int32_t> Engine::build_prompt(const std::string& prompt, int n_images, const std::string& template_name) const {
    const ChatTemplate t = template_name.empty() ? chat_template_
                                                 : chat_template_for(file_->get_str("tokenizer.chat_template", ""), template_name);
    if (n_images > 0) vision();
    if (!vision_) return tokenize(apply_chat_template(t, prompt, 0), true, true);
    const std::vector<std::string> pieces = split_at_image_markers(apply_chat_template(t, prompt, n_images));
    std::vector<int32_t> ids;
    const Tokenizer& tok = tokenizer();
    if (tok.add_bos() && tok.bos() >= 0) ids.push_back(tok.bos());
    for (size_t i = 0; i < pieces.size(); ++i) {
        if (i > 0) ids.insert(ids.end(), static_cast<size_t>(n_image_tokens()), image_token_id_);
        // each piece on its own, with its own SentencePiece space prefix (as llama.cpp's mtmd does;
        // equal to HF's legacy LLaVA tokenizer after an <image> token)
        if (!pieces[i].empty()) {
            std::vector<int32_t> part = tok.encode(pieces[i], false, true);
            ids.insert(ids.end(), part.begin(), part.end());
        }
    }
    return ids;
}

const Tokenizer& Engine::tokenizer() const {
    if (!tokenizer_) throw InputError(params_.model_path + ": the file has no tokenizer (tokenizer.ggml.* metadata)");
    return *tokenizer_;
}

std::vector<int32_t> Engine::tokenize(const std::string& text, bool add_bos, bool parse_special) const {
    const Tokenizer& t = tokenizer();
    std::vector<int32_t> ids;
    if (add_bos && t.add_bos() && t.bos() >= 0) ids.push_back(t.bos());
    std::vector<int32_t> body = t.encode(text, /*add_special=*/false, parse_special);
    ids.insert(ids.end(), body.begin(), body.end());
    return ids;
}

std::string Engine::detokenize(const std::vector<int32_t>& ids, bool skip_special) const {
    const Tokenizer& t = tokenizer();
    for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] < 0 || ids[i] >= t.n_vocab())
            throw InputError(strprintf("token id %d at position %zu is outside the vocabulary [0, %d)", ids[i], i, t.n_vocab()));
    return utf8_sanitize(t.decode(ids, skip_special));
}

Engine::~Engine() = default;

int64_t Engine::check_sequence(const std::vector<int32_t>& ids, size_t n_images) const {
    const int64_t n = static_cast<int64_t>(ids.size()), V = config().n_vocab;
    if (n == 0) throw InputError("the input sequence is empty");
    if (n > params_.n_ctx)
        throw InputError(strprintf("the sequence is %lld positions, longer than the context (n_ctx = %lld)",
                                   static_cast<long long>(n), static_cast<long long>(params_.n_ctx)));
    int64_t n_img = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t id = ids[static_cast<size_t>(i)];
        if (vision_ && id == image_token_id_) {
            ++n_img;
            continue;
        }
        if (id < 0 || id >= V)
            throw InputError(strprintf("token id %d at position %lld is outside the vocabulary [0, %lld)", id,
                                       static_cast<long long>(i), static_cast<long long>(V)));
    }
    if (n_images > 0 && !vision_) vision();
    const int64_t need = vision_ ? static_cast<int64_t>(n_images) * n_image_tokens() : 0;
    if (n_img != need)
        throw InputError(strprintf("the sequence holds %lld image positions (id %d) but %zu image(s) need %lld",
                                   static_cast<long long>(n_img), image_token_id_, n_images, static_cast<long long>(need)));
    return n_img;
}

void Engine::feed(const std::vector<int32_t>& ids, const std::vector<std::vector<float>>& image_embd, int32_t pos0,
                  float* logits, bool all_logits, compress::StatsCollector* stats, size_t first_image, KVCache* kv) {
    KVCache& cache = kv ? *kv : *kv_;
    const int64_t n = static_cast<int64_t>(ids.size()), E = config().n_embd, V = config().n_vocab;
    const int64_t per_image = vision_ ? n_image_tokens() : 0;
    // the importance pass needs its window [tail, n) in the last chunk (prompt positions = indices)
    const int64_t tail = stats ? std::min<int64_t>(stats->last_chunk_start() - pos0, n) : n;
    std::vector<int32_t> pos;
    std::vector<uint8_t> want;
    std::vector<float> embd;
    int64_t img_row = static_cast<int64_t>(first_image) * per_image;  // image positions consumed so far
    auto is_img = [&](int64_t i) { return vision_ && ids[static_cast<size_t>(i)] == image_token_id_; };
    int64_t i0 = 0;
    while (i0 < n) {
        // a chunk: all text or all image, at most n_batch positions, not crossing `tail`; from `tail`
        // on (the importance window, text) one chunk however long
        const bool img = is_img(i0);
        const int64_t limit = i0 < tail ? std::min(tail, i0 + params_.n_batch) : n;
        int64_t i1 = i0;
        while (i1 < limit && is_img(i1) == img) ++i1;
        const int64_t m = i1 - i0;
        pos.resize(static_cast<size_t>(m));
        std::iota(pos.begin(), pos.end(), static_cast<int32_t>(pos0 + i0));
        want.assign(static_cast<size_t>(m), all_logits ? 1 : 0);
        const bool last = i1 == n;
        if (last) want.back() = 1;
        TextBatch b;
        b.n = m;
        b.pos = pos.data();
        b.want_logits = want.data();
        b.stats = stats;
        if (img) {
            embd.resize(static_cast<size_t>(m * E));
            for (int64_t r = 0; r < m; ++r, ++img_row) {
                const std::vector<float>& src = image_embd.at(static_cast<size_t>(img_row / per_image));
                std::copy(src.begin() + (img_row % per_image) * E, src.begin() + (img_row % per_image + 1) * E,
                          embd.begin() + r * E);
            }
            b.embd = embd.data();
        } else {
            b.tokens = ids.data() + i0;
        }
        float* out = all_logits ? logits + i0 * V : (last ? logits : nullptr);
        model_->forward(b, cache, out, *pool_);
        i0 = i1;
    }
}

void Engine::decode_batch(const std::vector<int32_t>& tokens, const std::vector<int32_t>& pos,
                          const std::vector<KVCache*>& caches, float* logits) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    std::vector<int32_t> seq(static_cast<size_t>(n));
    std::iota(seq.begin(), seq.end(), 0);
    TextBatch b;
    b.n = n;
    b.tokens = tokens.data();
    b.pos = pos.data();
    b.seq = seq.data();
    model_->forward(b, caches.data(), logits, *pool_);
}

KVCache& Engine::batch_cache(size_t i) {
    if (i == 0) return *kv_;
    while (batch_kv_.size() < i) batch_kv_.push_back(std::make_unique<KVCache>(kv_->config()));
    return *batch_kv_[i - 1];
}

compress::PromptLayout Engine::layout_of(const std::vector<int32_t>& prompt) const {
    compress::PromptLayout l;
    l.m = static_cast<int64_t>(prompt.size());
    l.is_visual.assign(prompt.size(), 0);
    if (vision_)
        for (size_t i = 0; i < prompt.size(); ++i)
            if (prompt[i] == image_token_id_) {
                l.visual.push_back(static_cast<int32_t>(i));
                l.is_visual[i] = 1;
            }
    return l;
}

compress::ModelShape Engine::shape() const {
    compress::ModelShape s;
    s.n_layer = static_cast<int>(config().n_layer);
    s.n_head = static_cast<int>(config().n_head);
    s.n_head_kv = static_cast<int>(config().n_head_kv);
    return s;
}

void Engine::check_compression(const compress::CompressParams& p) const {
    const compress::Policy& pol = compress::find_policy(p.policy);
    if (!(p.budget > 0.0 && p.budget <= 1.0))
        throw InputError(strprintf("kv_budget must be in (0, 1] (got %g)", p.budget));
    pol.check_scope(p.scope);
    compress::parse_options(pol, p.options);
}

CompressionReport Engine::prefill_compressed(const std::vector<int32_t>& prompt,
                                             const std::vector<std::vector<float>>& image_embd,
                                             const compress::CompressParams& p, float* logits, bool all_logits,
                                             KVCache* kv) {
    KVCache& cache = kv ? *kv : *kv_;
    check_compression(p);
    const compress::Policy& pol = compress::find_policy(p.policy);
    const compress::ParsedOptions opt = compress::parse_options(pol, p.options);
    const compress::PromptLayout layout = layout_of(prompt);
    const compress::StatsRequest req = pol.request(layout, p, opt);
    std::unique_ptr<compress::StatsCollector> stats;
    if (!req.empty()) stats = std::make_unique<compress::StatsCollector>(req, layout, shape(), config().head_dim);
    cache.clear();
    feed(prompt, image_embd, 0, logits, all_logits, stats.get(), 0, &cache);
    return compress_prefilled(layout, p, req, stats.get(), &cache);
}

CompressionReport Engine::compress_prefilled(const compress::PromptLayout& layout, const compress::CompressParams& p,
                                             const compress::StatsRequest& req, const compress::StatsCollector* stats,
                                             KVCache* kv) {
    using Clock = std::chrono::steady_clock;
    KVCache& cache = kv ? *kv : *kv_;
    const compress::Policy& pol = compress::find_policy(p.policy);
    const compress::ParsedOptions opt = compress::parse_options(pol, p.options);
    const compress::ModelShape sh = shape();
    CompressionReport rep;
    rep.params = p;
    rep.n_prompt = layout.m;
    rep.n_visual = static_cast<int64_t>(layout.visual.size());
    rep.kv_bytes_before = cache.bytes_in_use();
    if (stats) rep.importance_ms = stats->elapsed_ms();

    const auto tp = Clock::now();
    const std::vector<compress::LayerStats> no_stats(static_cast<size_t>(sh.n_layer));
    const compress::PlanContext ctx{layout, sh, p, opt, req, stats ? stats->stats() : no_stats};
    compress::Plan plan = pol.plan(ctx);
    rep.plan_ms = std::chrono::duration<double, std::milli>(Clock::now() - tp).count();
    rep.importance_ms += rep.plan_ms;
    rep.diagnostics = std::move(plan.diagnostics);

    const auto tc = Clock::now();
    const int L = sh.n_layer;
    auto count_visual = [&](const std::vector<int32_t>& kept) {
        int64_t c = 0;
        for (int32_t k : kept) c += layout.is_visual[static_cast<size_t>(k)];
        return c;
    };
    if (plan.identity) {
        std::vector<int32_t> all(static_cast<size_t>(layout.m));
        std::iota(all.begin(), all.end(), 0);
        rep.kept.assign(static_cast<size_t>(L), all);
    } else if (p.selection == compress::Selection::Layer) {
        for (int l = 0; l < L; ++l) cache.compact(l, plan.kept[static_cast<size_t>(l)]);
        rep.kept = std::move(plan.kept);
        rep.compacted = true;
    } else {
        for (int l = 0; l < L; ++l) cache.compact_heads(l, plan.kept_heads[static_cast<size_t>(l)]);
        rep.kept_heads = std::move(plan.kept_heads);
        rep.compacted = true;
    }
    rep.compact_ms = std::chrono::duration<double, std::milli>(Clock::now() - tc).count();
    for (int l = 0; l < L; ++l) {
        const std::vector<int32_t>& k = rep.kept_heads.empty() ? rep.kept[static_cast<size_t>(l)]
                                                               : rep.kept_heads[static_cast<size_t>(l)][0];
        rep.total_kept.push_back(static_cast<int64_t>(k.size()));
        int64_t v = 0;
        if (rep.kept_heads.empty()) v = count_visual(k);
        else  // every head keeps as many; report the mean of the visual counts over heads
            for (const auto& kh : rep.kept_heads[static_cast<size_t>(l)]) v += count_visual(kh);
        rep.visual_kept.push_back(rep.kept_heads.empty() ? v : v / static_cast<int64_t>(rep.kept_heads[static_cast<size_t>(l)].size()));
    }
    rep.kv_bytes_after = cache.bytes_in_use();
    rep.kv_capacity_bytes = cache.capacity_bytes();
    return rep;
}

std::vector<PolicyEvaluation> Engine::evaluate(const std::vector<int32_t>& ids, const std::vector<Image>& images,
                                               int64_t n_prompt, const std::vector<compress::CompressParams>& settings,
                                               const std::vector<int64_t>& rows_in, bool hit_rate) {
    check_sequence(ids, images.size());
    const int64_t n = static_cast<int64_t>(ids.size()), V = config().n_vocab;
    if (n_prompt < 1 || n_prompt > n) throw InputError(strprintf("n_prompt must be in [1, %lld]", static_cast<long long>(n)));
    std::vector<int64_t> rows = rows_in;
    if (rows.empty())
        for (int64_t r = n_prompt - 1; r < n; ++r) rows.push_back(r);
    for (int64_t r : rows)
        if (r < n_prompt - 1 || r >= n)
            throw InputError(strprintf("row %lld is outside [n_prompt - 1, n) = [%lld, %lld)", static_cast<long long>(r),
                                       static_cast<long long>(n_prompt - 1), static_cast<long long>(n)));
    if (hit_rate && n_prompt == n) throw InputError("the cache hit rate needs at least one continuation token");
    for (const compress::CompressParams& p : settings) check_compression(p);

    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + n_prompt), rest(ids.begin() + n_prompt, ids.end());
    const compress::PromptLayout layout = layout_of(prompt);
    std::vector<std::vector<float>> embd;
    for (const Image& img : images) embd.push_back(encode_image(img));
    const size_t prompt_images =
        vision_ ? static_cast<size_t>(static_cast<int64_t>(layout.visual.size()) / n_image_tokens()) : 0;

    // group the settings whose statistics merge into one request (one prefill per group)
    std::vector<compress::StatsRequest> group_req;
    std::vector<int> group_of(settings.size());
    for (size_t i = 0; i < settings.size(); ++i) {
        const compress::Policy& pol = compress::find_policy(settings[i].policy);
        const compress::StatsRequest r = pol.request(layout, settings[i], compress::parse_options(pol, settings[i].options));
        int g = -1;
        for (size_t j = 0; j < group_req.size() && g < 0; ++j) {
            compress::StatsRequest merged = group_req[j];
            try {
                merged.merge(r);
                group_req[j] = merged;
                g = static_cast<int>(j);
            } catch (const InputError&) {
            }
        }
        if (g < 0) {
            group_req.push_back(r);
            g = static_cast<int>(group_req.size()) - 1;
        }
        group_of[i] = g;
    }

    std::vector<PolicyEvaluation> out(settings.size());
    std::vector<float> last(static_cast<size_t>(V)), cont(static_cast<size_t>(std::max<int64_t>(n - n_prompt, 1) * V));
    KVCache snapshot(kv_->config());
    std::vector<std::vector<double>> ref_attention;  // [layer][prompt position]: head-mean, full cache
    for (size_t g = 0; g < group_req.size(); ++g) {
        std::unique_ptr<compress::StatsCollector> stats;
        if (!group_req[g].empty())
            stats = std::make_unique<compress::StatsCollector>(group_req[g], layout, shape(), config().head_dim);
        kv_->clear();
        feed(prompt, embd, 0, last.data(), false, stats.get());
        snapshot.restore(*kv_);
        if (hit_rate && ref_attention.empty()) {
            // the first continuation token's attention over the full prompt cache
            compress::PromptLayout one = layout;
            one.m = n_prompt + 1;
            one.is_visual.push_back(0);
            compress::StatsRequest req;
            req.colsum_from = {n_prompt};
            compress::StatsCollector first(req, one, shape(), config().head_dim);
            feed({rest[0]}, embd, static_cast<int32_t>(n_prompt), cont.data(), false, &first, prompt_images);
            const compress::ModelShape sh = shape();
            for (int l = 0; l < sh.n_layer; ++l) {
                std::vector<double> a = compress::head_mean(first.stats()[static_cast<size_t>(l)].colsum[0], n_prompt + 1, sh, -1);
                a.resize(static_cast<size_t>(n_prompt));
                ref_attention.push_back(std::move(a));
            }
        }
        for (size_t i = 0; i < settings.size(); ++i) {
            if (group_of[i] != static_cast<int>(g)) continue;
            kv_->restore(snapshot);
            PolicyEvaluation& ev = out[i];
            ev.report = compress_prefilled(layout, settings[i], group_req[g], stats.get());
            if (n > n_prompt) feed(rest, embd, static_cast<int32_t>(n_prompt), cont.data(), true, nullptr, prompt_images);
            ev.logits.resize(rows.size() * static_cast<size_t>(V));
            for (size_t k = 0; k < rows.size(); ++k) {
                const float* src = rows[k] == n_prompt - 1 ? last.data() : cont.data() + (rows[k] - n_prompt) * V;
                std::copy(src, src + V, ev.logits.begin() + static_cast<std::ptrdiff_t>(k * static_cast<size_t>(V)));
            }
            if (hit_rate) {
                const std::vector<int32_t> cands = compress::candidates(layout, settings[i].scope);
                double sum = 0.0;
                for (size_t l = 0; l < ref_attention.size(); ++l) {
                    // kept candidates (per KV head: averaged over the heads)
                    const std::vector<std::vector<int32_t>> sets =
                        ev.report.kept_heads.empty() ? std::vector<std::vector<int32_t>>{ev.report.kept[l]} : ev.report.kept_heads[l];
                    double layer_rate = 0.0;
                    for (const std::vector<int32_t>& kept : sets) {
                        std::vector<int32_t> kc;
                        for (int32_t c : cands)
                            if (std::binary_search(kept.begin(), kept.end(), c)) kc.push_back(c);
                        std::vector<int32_t> order = cands;
                        const std::vector<double>& a = ref_attention[l];
                        std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return a[x] > a[y]; });
                        size_t hits = 0;
                        for (size_t t = 0; t < kc.size(); ++t) hits += std::binary_search(kc.begin(), kc.end(), order[t]);
                        layer_rate += kc.empty() ? 1.0 : static_cast<double>(hits) / static_cast<double>(kc.size());
                    }
                    layer_rate /= static_cast<double>(sets.size());
                    ev.report.hit_rate_per_layer.push_back(layer_rate);
                    sum += layer_rate;
                }
                ev.report.hit_rate = sum / static_cast<double>(ref_attention.size());
            }
        }
    }
    return out;
}

std::vector<float> Engine::logits(const std::vector<int32_t>& ids, const std::vector<Image>& images,
                                  const compress::CompressParams& compression, int64_t n_prompt, CompressionReport* report) {
    check_sequence(ids, images.size());
    check_compression(compression);
    const int64_t n = static_cast<int64_t>(ids.size());
    if (n_prompt <= 0 || n_prompt > n) n_prompt = n;
    std::vector<std::vector<float>> embd;
    for (const Image& img : images) embd.push_back(encode_image(img));
    const int64_t V = config().n_vocab;
    std::vector<float> out(static_cast<size_t>(n * V));
    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + n_prompt);
    CompressionReport rep = prefill_compressed(prompt, embd, compression, out.data(), true);
    if (n_prompt < n) {
        // images consumed by the prompt; the rest (if any) belong to the continuation
        size_t used = 0;
        if (vision_)
            used = static_cast<size_t>(std::count(prompt.begin(), prompt.end(), image_token_id_) / n_image_tokens());
        const std::vector<int32_t> rest(ids.begin() + n_prompt, ids.end());
        feed(rest, embd, static_cast<int32_t>(n_prompt), out.data() + n_prompt * V, true, nullptr, used);
    }
    if (report) *report = std::move(rep);
    return out;
}

// ------------------------------------------------------------------------------------------------
// Generation
// ------------------------------------------------------------------------------------------------

void GenerateParams::validate() const {
    if (max_tokens < -1) throw InputError(strprintf("max_tokens must be >= 0, or -1 for no limit (got %d)", max_tokens));
    for (const std::string& s : stop)
        if (s.empty()) throw InputError("stop strings must not be empty");
    sampling.validate();
}

namespace {
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
}  // namespace

SequenceState::SequenceState(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images)
    : e_(e), prompt_(std::move(prompt)), images_(std::move(images)), p_(p), sampler_(p.sampling),
      decoder_(e.tokenizer()) {
    p_.validate();
    const int64_t n = static_cast<int64_t>(prompt_.size());
    if (n == 0) throw InputError("the prompt is empty (no tokens)");
    if (n > e_.params().n_ctx)
        throw InputError(strprintf("the prompt is %lld positions, longer than the context (n_ctx = %lld)",
                                   static_cast<long long>(n), static_cast<long long>(e_.params().n_ctx)));
    stats_.n_visual = e_.check_sequence(prompt_, images_.size());
    e_.check_compression(p_.compression);
    stats_.n_images = static_cast<int64_t>(images_.size());
    history_ = prompt_;
    logits_.resize(static_cast<size_t>(e_.config().n_vocab));
    stats_.n_prompt = n;
}

void SequenceState::start(KVCache& kv, std::string& piece) {
    piece.clear();
    kv_ = &kv;
    const auto ti = Clock::now();
    std::vector<std::vector<float>> embd;
    for (const Image& img : images_) embd.push_back(e_.encode_image(img));
    images_.clear();
    stats_.image_encode_ms = ms_since(ti);
    const auto t0 = Clock::now();
    stats_.compression = e_.prefill_compressed(prompt_, embd, p_.compression, logits_.data(), false, &kv);
    // prefill time without the compression work (reported separately)
    stats_.prefill_ms = ms_since(t0) - stats_.compression.importance_ms - stats_.compression.compact_ms;
    if (p_.max_tokens == 0) {
        finish("length", piece);
        return;
    }
    sample(logits_.data(), piece);
}

void SequenceState::accept(const float* logits, double forward_ms, std::string& piece) {
    piece.clear();
    stats_.decode_ms += forward_ms;
    stats_.decode_steps++;
    sample(logits, piece);
}

std::string SequenceState::take_emittable(bool final) {
    size_t end = text_.size();
    if (!final) {
        // hold back the longest tail that could still grow into a stop string
        for (const std::string& s : p_.stop)
            for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k)
                if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
                    end = std::min(end, text_.size() - k);
                    break;
                }
    }
    if (end < emitted_) end = emitted_;
    std::string out = text_.substr(emitted_, end - emitted_);
    emitted_ = end;
    return out;
}

void SequenceState::finish(const std::string& reason, std::string& piece) {
    text_ += utf8_sanitize(decoder_.flush());
    piece += take_emittable(true);
    stats_.stop_reason = reason;
    if (kv_) {
        stats_.kv_bytes = kv_->bytes_in_use();
        stats_.kv_capacity_bytes = kv_->capacity_bytes();
    }
    done_ = true;
}

void SequenceState::sample(const float* logits, std::string& piece) {
    const int64_t V = e_.config().n_vocab;
    const auto ts = Clock::now();
    const int32_t id = sampler_.sample(logits, V, history_);
    stats_.sample_ms += ms_since(ts);
    stats_.n_generated++;
    if (e_.tokenizer().is_eog(id)) {
        finish("eos", piece);
        return;
    }
    history_.push_back(id);
    generated_.push_back(id);
    text_ += utf8_sanitize(decoder_.push(id));
    // stop strings: search only where a new match can start
    size_t longest = 0;
    for (const std::string& s : p_.stop) longest = std::max(longest, s.size());
    if (longest) {
        const size_t from = emitted_ > longest ? emitted_ - longest : 0;
        size_t cut = std::string::npos;
        for (const std::string& s : p_.stop) {
            const size_t at = text_.find(s, from);
            if (at != std::string::npos) cut = std::min(cut, at);
        }
        if (cut != std::string::npos) {
            text_.resize(std::max(cut, emitted_));
            piece += take_emittable(true);
            stats_.stop_reason = "stop";
            stats_.kv_bytes = kv_->bytes_in_use();
            stats_.kv_capacity_bytes = kv_->capacity_bytes();
            done_ = true;
            return;
        }
    }
    piece += take_emittable(false);
    if (p_.max_tokens >= 0 && stats_.n_generated >= p_.max_tokens) {
        finish("length", piece);
        return;
    }
    // the cache is full when its longest layer is (after compaction, layers hold fewer entries
    // than positions: positions go on from the original prompt length)
    int64_t longest_layer = 0;
    for (int l = 0; l < e_.config().n_layer; ++l) longest_layer = std::max(longest_layer, kv_->length(l));
    if (longest_layer >= kv_->capacity()) finish("context", piece);
}

Generation::Generation(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images)
    : e_(e), s_(e, std::move(prompt), p, std::move(images)) {}

bool Generation::step(std::string& piece) {
    piece.clear();
    if (s_.done()) return false;
    if (!started_) {
        started_ = true;
        s_.start(e_.kv(), piece);
        return true;
    }
    const auto t0 = Clock::now();
    logits_.resize(static_cast<size_t>(e_.config().n_vocab));
    e_.feed({s_.next_token()}, {}, s_.next_pos(), logits_.data(), false);
    s_.accept(logits_.data(), ms_since(t0), piece);
    return true;
}

BatchGeneration::BatchGeneration(Engine& e, std::vector<std::vector<int32_t>> prompts,
                                 std::vector<std::vector<Image>> images, const GenerateParams& p)
    : e_(e) {
    if (prompts.empty()) throw InputError("a batch needs at least one request");
    if (images.size() != prompts.size()) images.resize(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i)
        seqs_.push_back(std::make_unique<SequenceState>(e, std::move(prompts[i]), p, std::move(images[i])));
}

GenerationStats BatchGeneration::stats(size_t i) const {
    GenerationStats st = seqs_[i]->stats();
    st.batch_size = static_cast<int64_t>(seqs_.size());
    st.batch_decode_tps = decode_ms_ > 0 ? 1000.0 * static_cast<double>(decoded_tokens_) / decode_ms_ : 0.0;
    return st;
}

bool BatchGeneration::step(std::vector<std::string>& pieces) {
    pieces.assign(seqs_.size(), std::string());
    if (!started_) {
        started_ = true;
        for (size_t i = 0; i < seqs_.size(); ++i) seqs_[i]->start(e_.batch_cache(i), pieces[i]);
        return true;
    }
    std::vector<int32_t> tokens, pos;
    std::vector<KVCache*> caches;
    std::vector<size_t> which;
    for (size_t i = 0; i < seqs_.size(); ++i) {
        if (seqs_[i]->done()) continue;
        tokens.push_back(seqs_[i]->next_token());
        pos.push_back(seqs_[i]->next_pos());
        caches.push_back(&e_.batch_cache(i));
        which.push_back(i);
    }
    if (which.empty()) return false;
    const int64_t V = e_.config().n_vocab;
    logits_.resize(which.size() * static_cast<size_t>(V));
    const auto t0 = Clock::now();
    e_.decode_batch(tokens, pos, caches, logits_.data());
    const double ms = ms_since(t0);
    decode_ms_ += ms;
    decode_steps_++;
    decoded_tokens_ += static_cast<int64_t>(which.size());
    for (size_t k = 0; k < which.size(); ++k)
        seqs_[which[k]]->accept(logits_.data() + k * static_cast<size_t>(V), ms, pieces[which[k]]);
    return true;
}

}  // namespace aircache
