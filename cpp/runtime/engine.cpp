#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "common.h"
#include "cuda_api.h"
#include "runtime/prompt.h"
#include "unicode.h"

namespace aircache {

void EngineParams::validate() const {
    if (model_path.empty() && !model_file) throw InputError("no model path given");
    if (n_ctx < 1 || n_ctx > (int64_t(1) << 24)) throw InputError(strprintf("n_ctx must be in [1, 16777216] (got %lld)", static_cast<long long>(n_ctx)));
    if (n_batch < 1) throw InputError(strprintf("n_batch must be >= 1 (got %lld)", static_cast<long long>(n_batch)));
    if (n_threads < 0 || n_threads > 1024) throw InputError(strprintf("n_threads must be in [0, 1024] (got %d)", n_threads));
    if (n_gpu_layers < -1) throw InputError(strprintf("n_gpu_layers must be -1 (all) or >= 0 (got %d)", n_gpu_layers));
    constexpr int64_t kMaxImageTokens = int64_t{1} << 24;
    if (image_min_tokens < 0 || image_min_tokens > kMaxImageTokens || image_max_tokens < 0 || image_max_tokens > kMaxImageTokens)
        throw InputError(strprintf("image_min_tokens and image_max_tokens must be in [0, %lld] (got %lld and %lld; 0 = the "
                                   "model's default)", static_cast<long long>(kMaxImageTokens),
                                   static_cast<long long>(image_min_tokens), static_cast<long long>(image_max_tokens)));
    if (image_min_tokens > 0 && image_max_tokens > 0 && image_min_tokens > image_max_tokens)
        throw InputError(strprintf("image_min_tokens (%lld) is above image_max_tokens (%lld)",
                                   static_cast<long long>(image_min_tokens), static_cast<long long>(image_max_tokens)));
    parse_device(device);
}

Engine::Engine(const EngineParams& p) : params_(p) {
    const auto t_load = std::chrono::steady_clock::now();
    params_.validate();
    device_ = resolve_device(params_.device);
    if (params_.n_threads == 0) params_.n_threads = physical_cores();
    pool_ = std::make_unique<ThreadPool>(params_.n_threads);
    cpu_ = make_cpu_backend(*pool_);
    if (device_.cuda()) {
        dev_ = make_cuda_backend(device_.index);
    } else if (device_.kind == DeviceSpec::TEST) {
        std::vector<Op> decline;
        for (const std::string& n : device_.decline) decline.push_back(op_from_name(n));
        dev_ = make_test_backend(*pool_, decline);
    }
    if (dev_) dev_->verbose = params_.verbose;

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
        const TextConfig& tc = model_->config();
        const VisionConfig& vc = vision_->config();
        if (vc.n_pos_axes != tc.n_pos_axes)
            throw InputError(strprintf("the mmproj '%s' (projector %s) gives images %d-axis positions but the text "
                                       "model '%s' (%s) uses %d-axis RoPE: they do not belong together (wrong mmproj?)",
                                       params_.mmproj_path.c_str(), vc.projector.c_str(), vc.n_pos_axes,
                                       params_.model_path.c_str(), tc.arch.c_str(), tc.n_pos_axes));
        if (vc.n_deepstack != tc.n_deepstack)
            throw InputError(strprintf("the mmproj '%s' gives %d DeepStack feature sets but the text model '%s' takes %d: "
                                       "they do not belong together (wrong mmproj?)", params_.mmproj_path.c_str(),
                                       vc.n_deepstack, params_.model_path.c_str(), tc.n_deepstack));
        vision_->set_image_token_limits(params_.image_min_tokens, params_.image_max_tokens);
        const int32_t t = tokenizer_ ? tokenizer_->find_token(vision_->image_token()) : -1;
        image_token_id_ = t >= 0 ? t : static_cast<int32_t>(model_->config().n_vocab);
        if (vision_->has_markup() && t < 0)  // its images are written as text with these tokens
            throw InputError(strprintf("the mmproj '%s' (projector %s) writes images with the token '%s', which the "
                                       "vocabulary of '%s' does not have (wrong model file?)",
                                       params_.mmproj_path.c_str(), vision_->config().projector.c_str(),
                                       vision_->image_token(), params_.model_path.c_str()));
    }
    if (params_.check_tensors) {
        check_all_tensors(*file_, *pool_);
        if (mmproj_) check_all_tensors(*mmproj_, *pool_);
    }
    // placement: the first n_gpu_layers text layers (all by default, with the output) and the whole
    // vision tower on the device
    const int n_layer = static_cast<int>(model_->config().n_layer);
    text_c_ = std::make_unique<Compute>(*cpu_, dev_.get(), n_layer, offload_layers(device_, params_.n_gpu_layers, n_layer));
    text_c_->place(model_->params());
    if (vision_) {
        vision_c_ = std::make_unique<Compute>(*cpu_, dev_.get(), 1, dev_ ? 1 : 0);
        vision_c_->place(vision_->params());
    }
    if (device_.cuda() && n_device_layers() > 0 &&
        (params_.kv_type_k != params_.kv_type_v || kv_type_quantized(params_.kv_type_k)))
        throw UnsupportedError(strprintf(
            "KV cache types K %s / V %s: the CUDA backend's cache kernels read K and V both f16 or both f32 "
            "(q8_0 / q4_0 caches run on the CPU: --device cpu, or -ngl 0)",
            kv_type_name(params_.kv_type_k), kv_type_name(params_.kv_type_v)));
    kv_ = new_cache();
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
            if (vision_->dynamic_resolution())
                std::fprintf(stderr, "aircache: mmproj %s: projector %s, %lld ViT layers of width %lld, dynamic resolution "
                                     "(patch %lld, 2x2 merge) -> tokens of %lld%s\n", params_.mmproj_path.c_str(),
                             v.projector.c_str(), static_cast<long long>(v.n_layer), static_cast<long long>(v.n_embd),
                             static_cast<long long>(v.patch_size), static_cast<long long>(v.n_embd_out),
                             v.n_deepstack ? strprintf(" + %d DeepStack sets", v.n_deepstack).c_str() : "");
            else
                std::fprintf(stderr, "aircache: mmproj %s: projector %s, %lld ViT layers of width %lld, %lld px / patch %lld -> "
                                     "%lld tokens of %lld%s\n", params_.mmproj_path.c_str(), v.projector.c_str(),
                             static_cast<long long>(v.n_layer), static_cast<long long>(v.n_embd),
                             static_cast<long long>(v.image_size), static_cast<long long>(v.patch_size),
                             static_cast<long long>(v.n_tokens), static_cast<long long>(v.n_embd_out),
                             vision_->layout_note().c_str());
        }
        if (dev_)
            std::fprintf(stderr, "aircache: device %s: %s; %d of %lld text layers%s and %s on it (%s of weights)%s%s\n",
                         device_.name().c_str(),
                         device_.cuda() ? cuda::device_description(device_.index).c_str() : "host-memory test backend",
                         n_device_layers(), static_cast<long long>(c.n_layer),
                         text_c_->output_on_device() ? " + output" : "", vision_ ? "the vision tower" : "no vision tower",
                         format_bytes(device_weight_bytes()).c_str(), device_.cuda() ? "; prefill GEMMs: " : "",
                         device_.cuda() ? cuda::gemm_backend(device_.index).c_str() : "");
        const std::string kv_types = params_.kv_type_k == params_.kv_type_v
                                         ? kv_type_name(params_.kv_type_k)
                                         : strprintf("K %s / V %s", kv_type_name(params_.kv_type_k), kv_type_name(params_.kv_type_v));
        std::fprintf(stderr, "aircache: KV cache %s x %lld positions (%s), %d threads, chat template %s, loaded in %.0f ms\n",
                     kv_types.c_str(), static_cast<long long>(params_.n_ctx),
                     format_bytes(kv_->capacity_bytes()).c_str(), params_.n_threads, chat_template_name(chat_template_),
                     std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_load).count());
    }
}

Engine::~Engine() = default;

size_t Engine::device_weight_bytes() const {
    return text_c_->device_bytes() + (vision_c_ ? vision_c_->device_bytes() : 0);
}

std::vector<std::vector<std::string>> Engine::ops_used() const {
    std::vector<std::vector<std::string>> out;
    for (Backend* be : {cpu_.get(), dev_.get()})
        if (be)
            for (const auto& [op, type] : be->used()) out.push_back({be->name(), op_name(op), type_info(type).name});
    return out;
}

const VisionModel& Engine::vision() const {
    if (!vision_) throw InputError("this model was loaded without an mmproj (vision) file: images cannot be used");
    return *vision_;
}

int64_t Engine::n_image_tokens(const Image* img) const {
    return vision().n_image_tokens(img, img ? img->max_tokens : 0);
}

std::vector<int64_t> Engine::image_token_counts(std::vector<Image>& images, int64_t text_rows) const {
    std::vector<int64_t> counts;
    int64_t sum = 0;
    for (const Image& img : images) {
        counts.push_back(n_image_tokens(&img));
        sum += counts.back();
    }
    const int64_t n_ctx = params_.n_ctx;
    if (images.empty() || text_rows + sum <= n_ctx || !vision().dynamic_resolution()) return counts;
    const int64_t avail = n_ctx - text_rows;
    const int64_t n = static_cast<int64_t>(images.size());
    if (avail < n)
        throw InputError(strprintf("the prompt does not fit the context: its text takes %lld of the %lld positions "
                                   "(n_ctx), leaving %lld for %lld image(s)", static_cast<long long>(text_rows),
                                   static_cast<long long>(n_ctx), static_cast<long long>(std::max<int64_t>(avail, 0)),
                                   static_cast<long long>(n)));
    int64_t fitted = 0;
    for (size_t i = 0; i < images.size(); ++i) {
        const int64_t before = counts[i];
        images[i].max_tokens = std::max<int64_t>(1, before * avail / sum);
        counts[i] = n_image_tokens(&images[i]);
        fitted += counts[i];
        if (params_.verbose)
            std::fprintf(stderr, "aircache: image %zu (%dx%d) downscaled from %lld to %lld tokens to fit the context "
                                 "(n_ctx = %lld, %lld text positions)\n", i, images[i].width, images[i].height,
                         static_cast<long long>(before), static_cast<long long>(counts[i]), static_cast<long long>(n_ctx),
                         static_cast<long long>(text_rows));
    }
    if (text_rows + fitted > n_ctx)
        throw InputError(strprintf("the prompt does not fit the context: %lld text positions and %lld image tokens "
                                   "(downscaled from %lld) exceed n_ctx = %lld", static_cast<long long>(text_rows),
                                   static_cast<long long>(fitted), static_cast<long long>(sum),
                                   static_cast<long long>(n_ctx)));
    return counts;
}

std::vector<int32_t> Engine::build_fitted(std::vector<Image>& images,
                                          const std::function<std::vector<int32_t>(const std::vector<int64_t>&)>& build,
                                          int64_t other_rows) const {
    std::vector<int64_t> counts;
    int64_t sum = 0;
    for (const Image& img : images) {
        counts.push_back(n_image_tokens(&img));
        sum += counts.back();
    }
    std::vector<int32_t> ids = build(counts);
    if (images.empty()) return ids;
    const std::vector<int64_t> fitted =
        image_token_counts(images, other_rows + static_cast<int64_t>(ids.size()) - sum);
    if (fitted != counts) ids = build(fitted);
    if (!vision().has_markup()) return ids;
    // each image's run (the builder writes fitted[i] image rows per image, in order) as its ids
    std::vector<int32_t> out;
    size_t k = 0;
    int64_t left = 0;  // image rows of image k - 1 not yet replaced
    for (int32_t id : ids) {
        if (id != image_token_id_) {
            out.push_back(id);
            continue;
        }
        if (left == 0) {
            if (k >= images.size()) throw Error("internal: a prompt with more image rows than images");
            const std::vector<int32_t> t = image_ids(images[k]);
            out.insert(out.end(), t.begin(), t.end());
            left = fitted[k++];
        }
        --left;
    }
    if (k != images.size() || left != 0) throw Error("internal: a prompt whose image rows do not match its images");
    return out;
}

std::vector<int32_t> Engine::image_ids(const Image& img) const {
    const std::string text = vision().image_text(&img);
    const int64_t n = n_image_tokens(&img);
    if (text.empty()) return std::vector<int32_t>(static_cast<size_t>(n), image_token_id_);
    std::vector<int32_t> ids = tokenize(text, /*add_bos=*/false, /*parse_special=*/true);
    const int64_t got = std::count(ids.begin(), ids.end(), image_token_id_);
    if (got != n)
        throw InputError(strprintf("%s: the vocabulary does not keep each '%s' of an image's text as one token (%lld "
                                   "of %lld): the model and mmproj do not belong together", params_.model_path.c_str(),
                                   vision_->image_token(), static_cast<long long>(got), static_cast<long long>(n)));
    return ids;
}

int64_t Engine::text_rows(const std::vector<int32_t>& ids) const {
    int64_t n = 0;
    for (int32_t id : ids) n += !has_vision() || id != image_token_id_;
    return n;
}

std::vector<float> Engine::pixel_values(const Image& img, int64_t& rows, int64_t& cols) const {
    return vision().pixel_values(img, params_.image_mode, img.max_tokens, rows, cols);
}

MediaItem Engine::encode_image(const Image& img) {
    vision();
    MediaItem item = vision_->encode(img, params_.image_mode, *vision_c_, img.max_tokens);
    if (vision_->has_markup()) {
        // the image's ids from its first image row to its last: image rows -1, markers their id
        const std::vector<int32_t> ids = image_ids(img);
        const auto first = std::find(ids.begin(), ids.end(), image_token_id_);
        const auto last = std::find(ids.rbegin(), ids.rend(), image_token_id_).base();
        for (auto i = first; i != last; ++i) item.layout.push_back(*i == image_token_id_ ? -1 : *i);
    }
    return item;
}

ChatTemplate Engine::chat_template(const std::string& name) const {
    if (name.empty() || name == "auto") return chat_template_;
    return chat_template_for(file_->get_str("tokenizer.chat_template", ""), name);
}

std::vector<int32_t> Engine::tokenize_with_images(const std::string& text, const std::vector<int64_t>& image_tokens,
                                                  bool add_bos) const {
    const Tokenizer& tok = tokenizer();
    if (image_tokens.empty() && !vision_) return tokenize(text, add_bos, true);
    const std::vector<std::string> pieces = split_at_image_markers(text);
    if (pieces.size() != image_tokens.size() + 1)
        throw InputError(strprintf("the prompt has %zu image markers (<image>) but %zu images were given",
                                   pieces.size() - 1, image_tokens.size()));
    if (!image_tokens.empty()) vision();
    std::vector<int32_t> ids;
    if (add_bos && tok.add_bos() && tok.bos() >= 0) ids.push_back(tok.bos());
    for (size_t i = 0; i < pieces.size(); ++i) {
        if (i > 0) ids.insert(ids.end(), static_cast<size_t>(image_tokens[i - 1]), image_token_id_);
        // each piece on its own, with its own SentencePiece space prefix (as llama.cpp's mtmd does;
        // equal to HF's legacy LLaVA tokenizer after an <image> token)
        if (!pieces[i].empty()) {
            std::vector<int32_t> part = tok.encode(pieces[i], false, true);
            ids.insert(ids.end(), part.begin(), part.end());
        }
    }
    return ids;
}

std::vector<int32_t> Engine::build_prompt(const std::string& prompt, const std::vector<int64_t>& image_tokens,
                                          const std::string& template_name) const {
    const ChatTemplate t = chat_template(template_name);
    if (!image_tokens.empty()) vision();
    if (!vision_) return tokenize(apply_chat_template(t, prompt, 0), true, true);
    return tokenize_with_images(apply_chat_template(t, prompt, static_cast<int>(image_tokens.size())), image_tokens);
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

std::unique_ptr<KVCache> Engine::new_cache() const {
    KVCacheConfig c = model_->kv_config(params_.n_ctx, params_.kv_type_k, params_.kv_type_v, *text_c_);
    c.initial = 0;  // layers allocate as prompts and answers need (a prefill reserves its rows at once)
    return std::make_unique<KVCache>(c);
}

KVCache& Engine::batch_cache(size_t i) {
    if (i == 0) return *kv_;
    while (batch_kv_.size() < i) batch_kv_.push_back(new_cache());
    return *batch_kv_[i - 1];
}

compress::ModelShape Engine::shape() const {
    compress::ModelShape s;
    const std::vector<int64_t>& w = config().layer_window;
    s.n_layer = 0;
    for (int l = 0; l < static_cast<int>(config().n_layer); ++l)
        if (w.empty() || w[static_cast<size_t>(l)] == 0) {
            if (!w.empty()) s.layers.push_back(l);
            ++s.n_layer;
        }
    s.n_head = static_cast<int>(config().n_head);
    s.n_head_kv = static_cast<int>(config().n_head_kv);
    return s;
}

void Engine::feed(const Prompt& p, int64_t r0, int64_t r1, KVCache& kv, float* logits, bool all_logits,
                  compress::StatsCollector* stats) {
    const int64_t V = config().n_vocab;
    for (int64_t i = r0; i < r1;) i = feed_chunk(p, i, r1, kv, all_logits ? logits + (i - r0) * V : logits, all_logits, stats);
}

int64_t Engine::feed_chunk(const Prompt& p, int64_t r0, int64_t r1, KVCache& kv, float* logits, bool all_logits,
                           compress::StatsCollector* stats) {
    const int64_t E = config().n_embd, A = config().n_pos_axes, n = r1 - r0;
    if (n <= 0) return r1;
    // positions of rows [r0, r1): text by the model's rule, media items at their own offsets from
    // where the item starts, continuing from the cache's next position
    std::vector<int32_t> pos(static_cast<size_t>(n * A));
    std::vector<int32_t> span_end(static_cast<size_t>(n), -1);  // bidirectional items, in feed rows
    int32_t cursor = kv.next_position();
    for (const Segment& s : p.segments) {
        const int64_t a = std::max(s.begin, r0), b = std::min(s.end, r1);
        if (a >= b) continue;
        int32_t* out = pos.data() + (a - r0) * A;
        if (s.item < 0) {
            model_->text_positions(cursor, b - a, out);
        } else {
            const MediaItem& it = p.media[static_cast<size_t>(s.item)];
            if (a > s.begin && (!it.pos.empty() || it.bidirectional))
                throw InputError(strprintf("rows %lld.. start inside image %d (rows %lld..%lld): an image with its own "
                                           "positions or attention is fed whole", static_cast<long long>(a), s.item,
                                           static_cast<long long>(s.begin), static_cast<long long>(s.end - 1)));
            const int32_t start = cursor - static_cast<int32_t>(a - s.begin);
            for (int64_t r = a; r < b; ++r)
                for (int64_t x = 0; x < A; ++x)
                    out[(r - a) * A + x] = start + it.pos_offset(r - s.begin, static_cast<int>(x), static_cast<int>(A));
            if (it.bidirectional)
                for (int64_t r = a; r < b; ++r) span_end[static_cast<size_t>(r - r0)] = static_cast<int32_t>(b - r0);
        }
        for (int64_t i = 0; i < (b - a) * A; ++i) cursor = std::max(cursor, out[i] + 1);
    }

    // the importance pass needs its window [tail, m) in the last chunk
    const int64_t tail = stats ? std::max(r0, std::min(stats->last_chunk_start(), r1)) : r1;
    auto seg_of = [&](int64_t r) -> const Segment& {
        for (const Segment& s : p.segments)
            if (r >= s.begin && r < s.end) return s;
        throw Error("internal: a prompt row outside its segments");
    };
    std::vector<uint8_t> want;
    std::vector<int32_t> spans;
    const int64_t i0 = r0;
    {
        // the chunk: text or media rows, at most n_batch of them, not crossing `tail`, a bidirectional
        // item whole; from `tail` on (the importance window) one chunk however long, text and the
        // non-visual end of a media item together (LLaVA-NeXT's last newline row is in the window)
        const Segment& s0 = seg_of(i0);
        bool media = s0.item >= 0;
        int64_t i1;
        // an item with its own positions or attention goes whole (its positions count from its start)
        auto whole = [&](const Segment& s) {
            if (s.item < 0) return false;
            const MediaItem& it = p.media[static_cast<size_t>(s.item)];
            return it.bidirectional || !it.pos.empty();
        };
        if (whole(s0)) {
            i1 = std::min(s0.end, r1);
        } else if (i0 >= tail) {
            i1 = r1;
            for (int64_t r = i0; r < i1 && !media; r = seg_of(r).end) media = seg_of(r).item >= 0;
        } else {
            const int64_t limit = i0 < tail ? std::min(tail, i0 + params_.n_batch) : r1;
            i1 = i0;
            while (i1 < limit) {
                const Segment& s = seg_of(i1);
                if ((s.item >= 0) != media || whole(s)) break;
                i1 = std::min(limit, s.end);
            }
        }
        const int64_t m = i1 - i0;
        want.assign(static_cast<size_t>(m), all_logits ? 1 : 0);
        const bool last = i1 == r1;
        if (last) want.back() = 1;
        TextBatch b;
        b.n = m;
        b.pos = pos.data() + (i0 - r0) * A;
        b.want_logits = want.data();
        b.stats = stats;
        if (media) {
            // bidirectional spans in this chunk's rows
            bool any = false;
            spans.assign(static_cast<size_t>(m), -1);
            for (int64_t r = 0; r < m; ++r) {
                const int32_t e = span_end[static_cast<size_t>(i0 - r0 + r)];
                if (e >= 0) spans[static_cast<size_t>(r)] = static_cast<int32_t>(e - (i0 - r0));
                any = any || e >= 0;
            }
            embd_.resize(static_cast<size_t>(m * E));
            for (int64_t r = i0; r < i1; ++r) {
                const Segment& s = seg_of(r);
                if (s.item < 0) {  // a text row of the importance window's chunk
                    model_->embed_tokens(&p.ids[static_cast<size_t>(r)], 1, embd_.data() + (r - i0) * E);
                    continue;
                }
                const MediaItem& it = p.media[static_cast<size_t>(s.item)];
                const int64_t k = r - s.begin;
                if (it.is_embedding(k)) std::copy(it.embd.begin() + k * E, it.embd.begin() + (k + 1) * E, embd_.begin() + (r - i0) * E);
                else model_->embed_tokens(&it.tokens[static_cast<size_t>(k)], 1, embd_.data() + (r - i0) * E);
            }
            b.embd = embd_.data();
            if (any) b.span_end = spans.data();
            // DeepStack features of the chunk's rows, [n_deepstack][m][E] (zero where an item has none)
            int nds = 0;
            for (int64_t r = i0; r < i1; ++r)
                if (seg_of(r).item >= 0) nds = std::max(nds, p.media[static_cast<size_t>(seg_of(r).item)].n_deepstack);
            if (nds > 0) {
                deep_.assign(static_cast<size_t>(nds * m * E), 0.0f);
                for (int64_t r = i0; r < i1; ++r) {
                    const Segment& s = seg_of(r);
                    if (s.item < 0) continue;
                    const MediaItem& it = p.media[static_cast<size_t>(s.item)];
                    const int64_t k = r - s.begin;
                    for (int d = 0; d < it.n_deepstack; ++d)
                        std::copy_n(it.deepstack.begin() + (d * it.n_rows + k) * E, E, deep_.begin() + (d * m + r - i0) * E);
                }
                b.deepstack = deep_.data();
                b.n_deepstack = nds;
            }
        } else {
            b.tokens = p.ids.data() + i0;
        }
        float* out = all_logits ? logits : (last ? logits : nullptr);
        KVCache* c = &kv;
        model_->forward(b, &c, out, *text_c_);
        return i1;
    }
}

void Engine::decode_batch(const std::vector<int32_t>& tokens, const std::vector<KVCache*>& caches, float* logits) {
    const int64_t n = static_cast<int64_t>(tokens.size()), A = config().n_pos_axes;
    std::vector<int32_t> seq(static_cast<size_t>(n)), pos(static_cast<size_t>(n * A));
    std::iota(seq.begin(), seq.end(), 0);
    for (int64_t i = 0; i < n; ++i) model_->text_positions(caches[static_cast<size_t>(i)]->next_position(), 1, pos.data() + i * A);
    TextBatch b;
    b.n = n;
    b.tokens = tokens.data();
    b.pos = pos.data();
    b.seq = seq.data();
    model_->forward(b, caches.data(), logits, *text_c_);
}

}  // namespace aircache
