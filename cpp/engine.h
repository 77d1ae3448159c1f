// engine.h — one loaded model and the life of a request on it.
//
//   EngineParams p; p.model_path = "model.gguf";
//   Engine e(p);
//   std::vector<float> lg = e.logits(ids);             // [n][n_vocab], a fresh sequence
//   Generation g(e, e.tokenize("Once upon", true), gp);  // a request: step() yields text pieces
//   std::string piece; while (g.step(piece)) std::cout << piece;
//
// An Engine owns the mapped file, the model, one KV cache of n_ctx positions and a thread pool.
// It serves one request at a time (callers serialize; the Python layer holds a lock).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chat.h"
#include "compress/policy.h"
#include "compress/stats.h"
#include "device.h"
#include "gguf.h"
#include "image.h"
#include "kv_cache.h"
#include "sampler.h"
#include "text_model.h"
#include "threadpool.h"
#include "tokenizer.h"
#include "vision_model.h"

namespace aircache {

struct EngineParams {
    std::string model_path;
    std::string mmproj_path;  // vision tower + projector (LLaVA); empty: text only
    // Already opened files (e.g. built in memory by make_random_model): used instead of the paths.
    std::shared_ptr<const GGUFFile> model_file, mmproj_file;
    ImageMode image_mode = ImageMode::Pad;
    std::string chat_template;  // "" / "auto": from the file (default llava); "llava", "chatml", "none"
    int64_t n_ctx = 4096;     // KV positions per layer (prompt + generated)
    int n_threads = 0;        // 0: physical cores
    int64_t n_batch = 512;    // prompt tokens per forward pass
    KVType kv_type = KVType::F16;
    // Where to run: "auto" (a CUDA device when built with CUDA and one is present, else the CPU;
    // the environment variable AIRCACHE_DEVICE overrides), "cpu", "cuda", "cuda:N".
    std::string device = "auto";
    // Text layers on the GPU (llama.cpp's -ngl): -1 = all (with the output projection); the rest run
    // on the CPU. Ignored on the CPU. The vision tower runs on the GPU whenever the device is one.
    int n_gpu_layers = -1;
    bool verbose = false;     // load summary on stderr (quiet by default)
    void validate() const;
};

// What KV compression did to one prompt (ALGORITHMS.md "Reported per request and layer").
struct CompressionReport {
    compress::CompressParams params;
    int64_t n_prompt = 0, n_visual = 0;
    bool compacted = false;                                      // false: the cache was left as is
    std::vector<std::vector<int32_t>> kept;                      // [layer] kept prompt positions
    std::vector<std::vector<std::vector<int32_t>>> kept_heads;   // [layer][kv head] (kv_head mode)
    std::vector<int64_t> visual_kept, total_kept;                // per layer
    uint64_t kv_bytes_before = 0;    // the full prompt's KV
    uint64_t kv_bytes_after = 0;     // in use after compaction
    uint64_t kv_capacity_bytes = 0;  // allocated
    double importance_ms = 0.0, plan_ms = 0.0, compact_ms = 0.0;
    std::map<std::string, std::vector<double>> diagnostics;
    // Cache hit rate (Engine::evaluate with hit_rate): per layer, the recall of the top-k candidates
    // ranked by the first continuation token's attention in the full-cache run, k = kept candidates.
    double hit_rate = -1.0;
    std::vector<double> hit_rate_per_layer;
};

// One compression setting evaluated by Engine::evaluate.
struct PolicyEvaluation {
    std::vector<float> logits;  // [rows][n_vocab]
    CompressionReport report;
};

struct GenerateParams {
    int max_tokens = 256;            // -1: until end-of-generation or the context is full
    SamplerParams sampling;
    compress::CompressParams compression;  // applied once, after prefill
    std::vector<std::string> stop;   // stop strings: generation ends before the first occurrence
    void validate() const;
};

struct GenerationStats {
    int64_t n_prompt = 0;        // prompt positions prefilled (text tokens + image embeddings)
    int64_t n_images = 0;
    int64_t n_visual = 0;        // prompt positions holding image embeddings
    double image_encode_ms = 0.0;
    int64_t n_generated = 0;     // tokens sampled (the end-of-generation token included)
    double prefill_ms = 0.0;
    double decode_ms = 0.0;      // forward passes of generated tokens + sampling
    double sample_ms = 0.0;
    double prefill_tps() const { return prefill_ms > 0 ? 1000.0 * n_prompt / prefill_ms : 0.0; }
    double decode_tps() const { return decode_ms > 0 ? 1000.0 * decode_steps / decode_ms : 0.0; }
    int64_t decode_steps = 0;    // forward passes in the decode loop
    uint64_t kv_bytes = 0;       // KV cache bytes in use at the end
    uint64_t kv_capacity_bytes = 0;
    std::string stop_reason;     // "eos" | "stop" | "length" | "context"
    CompressionReport compression;
    int64_t batch_size = 1;              // sequences decoded together (BatchGeneration)
    double batch_decode_tps = 0.0;       // tokens per second of the whole batch's decode
};

class Engine {
public:
    explicit Engine(const EngineParams& p);
    ~Engine();

    const EngineParams& params() const { return params_; }
    const DeviceSpec& device() const { return device_; }  // resolved ("auto" decided)
    const TextModel& model() const { return *model_; }
    const TextConfig& config() const { return model_->config(); }
    KVCache& kv() { return *kv_; }
    ThreadPool& pool() { return *pool_; }
    // InputError when the file has no tokenizer metadata.
    const Tokenizer& tokenizer() const;
    bool has_tokenizer() const { return tokenizer_ != nullptr; }

    // Prompt text -> ids: BOS first when add_bos and the vocabulary uses one; special-token text
    // (e.g. "</s>") becomes those tokens when parse_special.
    std::vector<int32_t> tokenize(const std::string& text, bool add_bos = true, bool parse_special = true) const;
    std::string detokenize(const std::vector<int32_t>& ids, bool skip_special = true) const;

    // --- vision ---
    bool has_vision() const { return vision_ != nullptr; }
    const VisionModel& vision() const;  // InputError without an mmproj
    // The id that marks image positions in a sequence (HF's LLaVA convention): the vocabulary's
    // "<image>" token when it has one, else n_vocab (a placeholder outside the vocabulary).
    int32_t image_token_id() const { return image_token_id_; }
    int64_t n_image_tokens() const;  // embeddings per image
    // Preprocess + vision tower + projector: [n_image_tokens][n_embd].
    std::vector<float> encode_image(const Image& img);
    ChatTemplate chat_template() const { return chat_template_; }

    // The prompt of a request: the chat template (the engine's, or `template_name` when given)
    // around `prompt`, images placed at their markers (or at the start), tokenized piece by piece;
    // each image becomes a run of n_image_tokens() image_token_id() entries.
    std::vector<int32_t> build_prompt(const std::string& prompt, int n_images, const std::string& template_name = "") const;

    // Logits of every position of a fresh sequence ([n][n_vocab], row-major). Positions holding
    // image_token_id() take the images' embeddings in order (HF's convention). InputError when the
    // sequence is empty, longer than n_ctx, holds ids outside the vocabulary, or its image
    // positions do not match the images.
    // With compression: the first n_prompt positions (all when n_prompt <= 0) are prefilled and
    // compressed; the rest are fed over the compacted cache (teacher forcing). `report` (optional)
    // receives what compression did.
    std::vector<float> logits(const std::vector<int32_t>& ids, const std::vector<Image>& images = {},
                              const compress::CompressParams& compression = {}, int64_t n_prompt = 0,
                              CompressionReport* report = nullptr);

    // Feeds ids[0..n) at positions pos0.. (image positions from `image_embd`, one [n_image_tokens]
    // [n_embd] buffer per image, consumed in order from image `first_image`) in chunks of n_batch,
    // appending to the cache. Logits: of every position into `logits` when `all_logits`, else of
    // the last one. `stats`: the importance pass (the last chunk then covers its window).
    void feed(const std::vector<int32_t>& ids, const std::vector<std::vector<float>>& image_embd, int32_t pos0,
              float* logits, bool all_logits, compress::StatsCollector* stats = nullptr, size_t first_image = 0,
              KVCache* kv = nullptr);
    // One token per sequence at once (decoding a batch): tokens[i] at pos[i] into caches[i];
    // logits [n][n_vocab].
    void decode_batch(const std::vector<int32_t>& tokens, const std::vector<int32_t>& pos,
                      const std::vector<KVCache*>& caches, float* logits);
    // Cache i of a batch (0 is the engine's own; the others are allocated on first use, like it).
    KVCache& batch_cache(size_t i);

    // --- KV compression ---
    // The prompt as the policies see it (visual positions: the image_token_id() entries).
    compress::PromptLayout layout_of(const std::vector<int32_t>& prompt) const;
    compress::ModelShape shape() const;
    // Checks a request before any work: policy, options, budget, scope (InputError otherwise).
    void check_compression(const compress::CompressParams& p) const;
    // Prefills `prompt` (fresh cache) with the statistics the policy needs, plans, compacts the
    // cache; logits of the last prompt position (or of all, into `logits`, when all_logits).
    CompressionReport prefill_compressed(const std::vector<int32_t>& prompt, const std::vector<std::vector<float>>& image_embd,
                                         const compress::CompressParams& p, float* logits, bool all_logits,
                                         KVCache* kv = nullptr);
    // Plans and compacts the freshly prefilled prompt cache with statistics gathered for `req`
    // (a request that covers the policy's own, possibly merged with others).
    CompressionReport compress_prefilled(const compress::PromptLayout& layout, const compress::CompressParams& p,
                                         const compress::StatsRequest& req, const compress::StatsCollector* stats,
                                         KVCache* kv = nullptr);

    // Many compression settings on one sequence with one prefill (per group of settings whose
    // statistics can be merged): ids[0..n_prompt) is the prompt, the rest the continuation fed
    // teacher-forced over each compacted cache. Returns, per setting, the logits of the absolute
    // `rows` (each >= n_prompt - 1; empty: every continuation row and the last prompt row) and the
    // report; with hit_rate, each report carries the cache hit rate.
    std::vector<PolicyEvaluation> evaluate(const std::vector<int32_t>& ids, const std::vector<Image>& images,
                                           int64_t n_prompt, const std::vector<compress::CompressParams>& settings,
                                           const std::vector<int64_t>& rows, bool hit_rate);
    // Checks ids against the vocabulary and the image count; returns the number of image positions.
    int64_t check_sequence(const std::vector<int32_t>& ids, size_t n_images) const;

private:
    EngineParams params_;
    DeviceSpec device_;
    std::shared_ptr<const GGUFFile> file_;
    std::unique_ptr<TextModel> model_;
    std::unique_ptr<KVCache> kv_;
    std::unique_ptr<ThreadPool> pool_;
    std::unique_ptr<Tokenizer> tokenizer_;
    std::vector<std::unique_ptr<KVCache>> batch_kv_;  // caches 1.. of batches
    std::shared_ptr<const GGUFFile> mmproj_;
    std::unique_ptr<VisionModel> vision_;
    int32_t image_token_id_ = -1;
    ChatTemplate chat_template_ = ChatTemplate::Llava;
};

// The sampling, text and stop state of one sequence, shared by Generation and BatchGeneration.
// start() prefills the prompt into a cache (images encoded, compression applied) and samples the
// first token; then, while !done(), the caller feeds next_token() at next_pos() and hands the
// logits to accept(). Pieces: the text that became final (possibly empty: an incomplete UTF-8
// character, or text held back because it could be the start of a stop string). The text is
// always valid UTF-8: bytes that can never form a character become U+FFFD, as HF's decode does.
class SequenceState {
public:
    SequenceState(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images = {});
    void start(KVCache& kv, std::string& piece);
    int32_t next_token() const { return history_.back(); }
    int32_t next_pos() const { return static_cast<int32_t>(history_.size() - 1); }
    void accept(const float* logits, double forward_ms, std::string& piece);
    void finish(const std::string& reason, std::string& piece);  // e.g. "context" when the cache is full
    bool done() const { return done_; }

    const std::string& text() const { return text_; }                    // final text so far
    const std::vector<int32_t>& tokens() const { return generated_; }    // generated ids (no EOG)
    const GenerationStats& stats() const { return stats_; }

private:
    void sample(const float* logits, std::string& piece);
    std::string take_emittable(bool final);

    Engine& e_;
    KVCache* kv_ = nullptr;
    std::vector<int32_t> prompt_;
    std::vector<Image> images_;
    GenerateParams p_;
    Sampler sampler_;
    StreamDecoder decoder_;
    std::vector<int32_t> history_;      // prompt + generated, for the repetition penalty
    std::vector<int32_t> generated_;
    std::vector<float> logits_;
    std::string text_;                  // decoded text (may end with held-back characters)
    size_t emitted_ = 0;                // bytes of text_ already handed out
    bool done_ = false;
    GenerationStats stats_;
};

// One request in progress on an Engine (it uses the engine's cache): prefill on the first step,
// then one token per step. step() returns false once finished. Concatenated pieces equal text().
class Generation {
public:
    Generation(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images = {});
    bool step(std::string& piece);
    bool done() const { return s_.done(); }
    const std::string& text() const { return s_.text(); }
    const std::vector<int32_t>& tokens() const { return s_.tokens(); }
    const GenerationStats& stats() const { return s_.stats(); }

private:
    Engine& e_;
    SequenceState s_;
    bool started_ = false;
    std::vector<float> logits_;
};

// Several requests decoded together: each prompt is prefilled (and compressed) into its own cache,
// then every step feeds the next token of every unfinished sequence in one forward pass, so one
// read of the weights serves the whole batch; every sequence keeps its own per-layer lengths.
// Greedy results equal the sequences generated one by one (and sampled ones too: each sequence
// samples with the same seed as it would alone).
class BatchGeneration {
public:
    BatchGeneration(Engine& e, std::vector<std::vector<int32_t>> prompts, std::vector<std::vector<Image>> images,
                    const GenerateParams& p);
    BatchGeneration(const BatchGeneration&) = delete;
    BatchGeneration& operator=(const BatchGeneration&) = delete;
    // Advances every unfinished sequence by one token; pieces[i] gets sequence i's new text.
    // Returns false once all are finished.
    bool step(std::vector<std::string>& pieces);
    size_t size() const { return seqs_.size(); }
    const SequenceState& sequence(size_t i) const { return *seqs_[i]; }
    // Sequence i's stats with the batch-level decode throughput filled in.
    GenerationStats stats(size_t i) const;
    double decode_ms() const { return decode_ms_; }       // batched forward passes
    int64_t decode_steps() const { return decode_steps_; }
    int64_t decoded_tokens() const { return decoded_tokens_; }  // sequence-tokens fed in those passes

private:
    Engine& e_;
    std::vector<std::unique_ptr<SequenceState>> seqs_;
    bool started_ = false;
    double decode_ms_ = 0.0;
    int64_t decode_steps_ = 0, decoded_tokens_ = 0;
    std::vector<float> logits_;
};

}  // namespace aircache
