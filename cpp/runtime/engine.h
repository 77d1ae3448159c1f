// runtime/engine.h — one loaded model: its files, tokenizer, backends, vision side and caches, and
// feeding rows into a cache.
//
//   EngineParams p; p.model_path = "model.gguf"; p.mmproj_path = "mmproj.gguf";
//   Engine e(p);
//   Prompt pr = make_prompt(e, e.build_prompt("What is this?", {&img}), {e.encode_image(img)});
//   e.feed(pr, 0, pr.size(), e.kv(), logits, false);      // prefill (runtime/prompt.h)
//   Generation g(e, ids, gen_params, {img});              // a request (runtime/generation.h)
//
// What happens around it lives in its own files: prompts and input checks (runtime/prompt.h), the
// compression runner (runtime/compression.h), generation, batches and sessions
// (runtime/generation.h), research evaluation (eval/evaluate.h). An Engine serves one request at a
// time (callers serialize; the Python layer holds a lock).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/compute.h"
#include "chat.h"
#include "compress/policy.h"
#include "compress/stats.h"
#include "device.h"
#include "gguf.h"
#include "image.h"
#include "kv_cache.h"
#include "multimodal/media.h"
#include "text_model.h"
#include "threadpool.h"
#include "tokenizer.h"
#include "vision_model.h"

namespace aircache {

struct Prompt;

struct EngineParams {
    std::string model_path;
    std::string mmproj_path;  // vision tower + projector; empty: text only
    // Already opened files (e.g. built in memory by make_random_model): used instead of the paths.
    std::shared_ptr<const GGUFFile> model_file, mmproj_file;
    ImageMode image_mode = ImageMode::Pad;
    std::string chat_template;  // "" / "auto": from the file (default llava); "llava", "chatml", "none"
    int64_t n_ctx = 4096;     // KV positions per layer (prompt + generated)
    int n_threads = 0;        // 0: physical cores
    int64_t n_batch = 512;    // prompt tokens per forward pass
    // KV-cache storage of keys and values (llama.cpp's -ctk / -ctv): f16 (default), f32, q8_0, q4_0.
    KVType kv_type_k = KVType::F16;
    KVType kv_type_v = KVType::F16;
    // Where to run: "auto" (a CUDA device when built with CUDA and one is present, else the CPU;
    // the environment variable AIRCACHE_DEVICE overrides), "cpu", "cuda", "cuda:N".
    std::string device = "auto";
    // Text layers on the device (llama.cpp's -ngl): -1 = all (with the output projection); the rest
    // run on the CPU. Ignored on the CPU. The vision tower runs on the device whenever there is one.
    int n_gpu_layers = -1;
    // Dynamic-resolution images (Qwen-VL): limits on an image's tokens (llama.cpp's --image-min-tokens /
    // --image-max-tokens); 0: the family's defaults (HF's processor). Fixed-size projectors ignore them.
    int64_t image_min_tokens = 0;
    int64_t image_max_tokens = 0;
    bool verbose = false;     // load summary on stderr (quiet by default)
    // Scan every weight for NaN/inf at load (llama.cpp's --check-tensors; norms, biases and other
    // small tensors are always checked).
    bool check_tensors = false;
    void validate() const;
};

class Engine {
public:
    explicit Engine(const EngineParams& p);
    ~Engine();

    const EngineParams& params() const { return params_; }
    const DeviceSpec& device() const { return device_; }  // resolved ("auto" decided)
    const TextModel& model() const { return *model_; }
    const TextConfig& config() const { return model_->config(); }
    ThreadPool& pool() { return *pool_; }
    Backend& cpu() { return *cpu_; }
    Compute& text_compute() { return *text_c_; }
    int n_device_layers() const { return text_c_->n_device_layers(); }
    size_t device_weight_bytes() const;
    bool vision_on_device() const { return vision_c_ && vision_c_->device() != nullptr; }
    // (backend, op, type) of every op the backends have run since load (tests: what a model path
    // uses, and where).
    std::vector<std::vector<std::string>> ops_used() const;

    // --- tokenizer ---
    // InputError when the file has no tokenizer metadata.
    const Tokenizer& tokenizer() const;
    bool has_tokenizer() const { return tokenizer_ != nullptr; }
    // Text -> ids: BOS first when add_bos and the vocabulary uses one; special-token text (e.g.
    // "</s>") becomes those tokens when parse_special.
    std::vector<int32_t> tokenize(const std::string& text, bool add_bos = true, bool parse_special = true) const;
    std::string detokenize(const std::vector<int32_t>& ids, bool skip_special = true) const;

    // --- vision ---
    bool has_vision() const { return vision_ != nullptr; }
    const VisionModel& vision() const;  // InputError without an mmproj
    // The id that marks image rows in a sequence (HF's convention): the vocabulary's "<image>" token
    // when it has one, else n_vocab (a placeholder outside the vocabulary).
    int32_t image_token_id() const { return image_token_id_; }
    // Rows `img` takes in a sequence (the image-token ids HF's processor writes for it); null: an
    // image of the model's default size (InputError when the family has none).
    int64_t n_image_tokens(const Image* img = nullptr) const;
    // The rows of each image in a prompt whose other rows number text_rows. When they would not fit
    // the context, dynamic-resolution images are downscaled (their max_tokens set, shares in
    // proportion to their sizes) as smart_resize would for a lower image_max_tokens, with one line on
    // stderr when verbose; InputError naming the numbers when the prompt still does not fit.
    // Deterministic: the prompt builders and the request computing it again agree.
    std::vector<int64_t> image_token_counts(std::vector<Image>& images, int64_t text_rows) const;
    // The ids `build(counts)` makes for the images' token counts, the images fitted to the context
    // (image_token_counts with the text rows the first build gives, plus `other_rows` already in the
    // sequence, e.g. a session's history). Where images carry marker tokens (SmolVLM's tiles), each
    // image's run of image rows then becomes its image_ids().
    std::vector<int32_t> build_fitted(std::vector<Image>& images,
                                      const std::function<std::vector<int32_t>(const std::vector<int64_t>&)>& build,
                                      int64_t other_rows = 0) const;
    // Rows of ids that are not image rows.
    int64_t text_rows(const std::vector<int32_t>& ids) const;
    // The ids of `img` as HF's processor writes them in place of its marker: its image_token_id()
    // rows, and where the family interleaves marker tokens (SmolVLM's tiles) those around and
    // between them (VisionModel::image_text, tokenized).
    std::vector<int32_t> image_ids(const Image& img) const;
    // The preprocessed pixels of `img` ([rows][cols]: VisionModel::pixel_values).
    std::vector<float> pixel_values(const Image& img, int64_t& rows, int64_t& cols) const;
    // Preprocess + vision tower + projector: the image's media item (its embedding rows; with the
    // layout of its marker tokens where the family has them, placed by make_prompt).
    MediaItem encode_image(const Image& img);
    ChatTemplate chat_template() const { return chat_template_; }
    // The template named, or the engine's ("" / "auto": the engine's).
    ChatTemplate chat_template(const std::string& name) const;

    // The ids of a request: the chat template (the engine's, or `template_name`) around `prompt`,
    // images placed at their markers (or at the start), tokenized piece by piece; image i becomes
    // image_tokens[i] image_token_id() rows.
    std::vector<int32_t> build_prompt(const std::string& prompt, const std::vector<int64_t>& image_tokens,
                                      const std::string& template_name = "") const;
    // The same for a text that already holds the template (markers where images go).
    std::vector<int32_t> tokenize_with_images(const std::string& text, const std::vector<int64_t>& image_tokens,
                                              bool add_bos = true) const;

    // --- caches ---
    // A cache of n_ctx rows per layer, each layer where its model layer runs.
    std::unique_ptr<KVCache> new_cache() const;
    KVCache& kv() { return *kv_; }  // the engine's own (generate, logits)
    // Cache i of a batch (0 is the engine's own; the others are allocated on first use).
    KVCache& batch_cache(size_t i);

    // --- feeding ---
    // Feeds rows [r0, r1) of `p` into `kv` (appending; positions continue from kv.next_position()
    // by the model's rule, media items at their own) in chunks of n_batch: text and media in
    // separate chunks, a bidirectional item whole, and the importance window of `stats` (rows
    // [stats->last_chunk_start(), m)) in the last one. Logits: of every row into `logits` when
    // all_logits ([r1 - r0][n_vocab]), else of row r1 - 1.
    void feed(const Prompt& p, int64_t r0, int64_t r1, KVCache& kv, float* logits, bool all_logits,
              compress::StatsCollector* stats = nullptr);
    // The first chunk feed(p, r0, r1, ...) would run; returns where it ended (feed is these chunks
    // in a row, so a prefill cut into feed_chunk calls, e.g. between other requests' decode steps,
    // computes exactly what one feed does). Logits: of the chunk's rows when all_logits
    // ([end - r0][n_vocab]), else of row r1 - 1 when the chunk is the last.
    int64_t feed_chunk(const Prompt& p, int64_t r0, int64_t r1, KVCache& kv, float* logits, bool all_logits,
                       compress::StatsCollector* stats = nullptr);
    // One token per sequence at once (decoding a batch): tokens[i] into caches[i] at its next
    // position; logits [n][n_vocab].
    void decode_batch(const std::vector<int32_t>& tokens, const std::vector<KVCache*>& caches, float* logits);

    // The model as the compression policies see it: the layers that hold the whole prompt (every
    // layer, except Gemma 3's sliding-window layers, which keep their window: docs/compression.md).
    compress::ModelShape shape() const;

private:
    EngineParams params_;
    DeviceSpec device_;
    std::unique_ptr<ThreadPool> pool_;
    std::unique_ptr<Backend> cpu_, dev_;
    std::unique_ptr<Compute> text_c_, vision_c_;
    std::shared_ptr<const GGUFFile> file_;
    std::unique_ptr<TextModel> model_;
    std::unique_ptr<KVCache> kv_;
    std::unique_ptr<Tokenizer> tokenizer_;
    std::vector<std::unique_ptr<KVCache>> batch_kv_;  // caches 1.. of batches
    std::shared_ptr<const GGUFFile> mmproj_;
    std::unique_ptr<VisionModel> vision_;
    int32_t image_token_id_ = -1;
    ChatTemplate chat_template_ = ChatTemplate::Llava;
    std::vector<float> embd_, deep_;   // feed's scratch
};

}  // namespace aircache
