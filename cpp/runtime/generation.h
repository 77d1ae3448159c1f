// runtime/generation.h — requests on an Engine: one sequence (Generation), several decoded together
// (BatchGeneration), and conversations that keep their cache between turns (Session).
//
//   Generation g(e, e.build_prompt("Describe it.", {e.n_image_tokens(&img)}), params, {img});
//   std::string piece; while (g.step(piece)) std::cout << piece;
//
//   Session s(e, compression, "");                 // the engine's chat template
//   auto t1 = s.send(ChatMessage{"user", {image, text}}, params, {img});
//   while (t1->step(piece)) ...;                  // turn 1: prefilled, compressed, answered
//   auto t2 = s.send(ChatMessage{"user", {text}}, params, {});   // appended to the compacted cache
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chat.h"
#include "runtime/compression.h"
#include "runtime/engine.h"
#include "sampler.h"

namespace aircache {

struct GenerateParams {
    int max_tokens = 256;            // -1: until end-of-generation or the context is full
    SamplerParams sampling;
    compress::CompressParams compression;  // applied once, after prefill
    std::vector<std::string> stop;   // stop strings: generation ends before the first occurrence
    bool prompt_logits = false;      // keep the logits of every prompt row (Generation::prompt_logits)
    void validate() const;
};

struct GenerationStats {
    int64_t n_prompt = 0;        // prompt rows prefilled (text tokens + image embeddings)
    int64_t n_images = 0;
    int64_t n_visual = 0;        // prompt rows holding image embeddings
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

// The sampling, text and stop state of one sequence, shared by Generation and BatchGeneration.
// start() prefills the prompt into a cache (images encoded, compression applied) and samples the
// first token; then, while !done(), the caller feeds next_token() into the cache and hands the
// logits to accept(). Pieces: the text that became final (possibly empty: an incomplete UTF-8
// character, or text held back because it could be the start of a stop string). The text is
// always valid UTF-8: bytes that can never form a character become U+FFFD, as HF's decode does.
class SequenceState {
public:
    // literal_prefix: the prompt's first rows that are text whatever their ids (a session turn's
    // first row, the previous answer's last sampled token: make_prompt's `literal`).
    SequenceState(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images = {},
                  int64_t literal_prefix = 0);
    // A fresh sequence: the prompt prefilled (and compressed) into `kv`.
    void start(KVCache& kv, std::string& piece);
    // A conversation turn: `kv` already holds the rows `history`; the prompt continues it. With
    // `recompress`, history + prompt are prefilled again from scratch and compressed (the turn
    // that brings the conversation's first images; start() is the turn without history);
    // otherwise the prompt is appended in full.
    // `history_literal`: which history rows are text whatever their ids (the answers' tokens).
    void start_turn(KVCache& kv, const std::vector<int32_t>& history, bool recompress, std::string& piece,
                    const std::vector<uint8_t>& history_literal = {});
    // start_turn in steps (a scheduler interleaves them with other sequences' decoding): begin_turn
    // encodes the images and sets the prefill up; each prefill_step feeds one chunk (Prefill) and,
    // after the last, compresses and samples the first token (into `piece`): true from then on.
    void begin_turn(KVCache& kv, const std::vector<int32_t>& history, bool recompress,
                    const std::vector<uint8_t>& history_literal = {});
    bool prefill_step(std::string& piece);
    bool prefilling() const { return prefill_ != nullptr; }
    int64_t prefill_rows_left() const { return prefill_ ? prefill_->rows() - prefill_->rows_done() : 0; }
    int32_t next_token() const { return history_.back(); }
    void accept(const float* logits, double forward_ms, std::string& piece);
    void finish(const std::string& reason, std::string& piece);  // e.g. "context" when the cache is full
    bool done() const { return done_; }

    const std::string& text() const { return text_; }                    // final text so far
    const std::vector<int32_t>& tokens() const { return generated_; }    // generated ids (no EOG)
    int32_t last_sampled() const { return last_sampled_; }               // the final token sampled (EOG included)
    const GenerationStats& stats() const { return stats_; }
    const std::vector<int32_t>& prompt() const { return prompt_; }
    const std::vector<uint8_t>& prompt_literal() const { return literal_; }  // make_prompt's `literal` of prompt()
    const std::vector<float>& prompt_logits() const { return prompt_logits_; }  // [n_prompt][n_vocab] when asked

private:
    void encode_images();
    void sample(const float* logits, std::string& piece);
    std::string take_emittable(bool final);

    Engine& e_;
    KVCache* kv_ = nullptr;
    std::vector<int32_t> prompt_;
    std::vector<uint8_t> literal_;      // per prompt row: text whatever its id (empty: none)
    std::vector<Image> images_;
    std::vector<MediaItem> media_;
    GenerateParams p_;
    Sampler sampler_;
    StreamDecoder decoder_;
    std::vector<int32_t> history_;      // prompt + generated, for the repetition penalty
    std::vector<int32_t> generated_;
    std::vector<float> logits_, prompt_logits_;
    std::string text_;                  // decoded text (may end with held-back characters)
    size_t emitted_ = 0;                // bytes of text_ already handed out
    int32_t last_sampled_ = -1;
    bool done_ = false;
    GenerationStats stats_;
    std::unique_ptr<Prefill> prefill_;  // between begin_turn and the last prefill_step
    int64_t h_ = 0;                     // history rows before this turn's prompt
    std::chrono::steady_clock::time_point t_prefill_;
};

class Session;

// One request in progress on an Engine (it uses the engine's cache, or a session's): prefill on the
// first step, then one token per step. step() returns false once finished. Concatenated pieces
// equal text().
class Generation {
public:
    Generation(Engine& e, std::vector<int32_t> prompt, const GenerateParams& p, std::vector<Image> images = {},
               int64_t literal_prefix = 0);
    ~Generation();
    bool step(std::string& piece);
    bool done() const { return s_.done(); }
    const std::string& text() const { return s_.text(); }
    const std::vector<int32_t>& tokens() const { return s_.tokens(); }
    const GenerationStats& stats() const { return s_.stats(); }
    const std::vector<float>& prompt_logits() const { return s_.prompt_logits(); }

private:
    friend class Session;
    Engine& e_;
    SequenceState s_;
    Session* session_ = nullptr;
    KVCache* kv_;
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

// A conversation that keeps its KV cache between turns. Each turn renders one message through the
// chat template (closing the previous answer as the template does), appends its rows to the
// cache and generates the answer. Compression (the session's policy) is applied once: after the
// prefill of the first turn that brings images (the conversation so far is prefilled again then,
// so the policy sees it whole); later turns append to the compacted cache, their images in full.
class Session {
public:
    Session(Engine& e, const compress::CompressParams& compression, const std::string& chat_template = "",
            const std::string& system = "");
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // A user turn: the message's parts (text, and one image part per entry of `images`, in order).
    // The returned Generation runs on the session's cache; the turn's answer becomes part of the
    // conversation when it finishes. One turn at a time (InputError otherwise).
    std::unique_ptr<Generation> send(const ChatMessage& message, GenerateParams p, std::vector<Image> images);
    // Every row in the cache's order: the turns' prompts and the answers fed so far.
    const std::vector<int32_t>& ids() const { return ids_; }
    bool compressed() const { return compressed_; }
    const CompressionReport& compression() const { return report_; }
    int n_turns() const { return turns_; }
    void reset();
    KVCache& kv() { return *kv_; }

private:
    friend class Generation;
    void finished(const SequenceState& s);  // a turn's generation ended

    Engine& e_;
    compress::CompressParams compression_;
    ChatTemplate template_;
    std::string system_;
    std::unique_ptr<KVCache> kv_;
    std::vector<int32_t> ids_;
    std::vector<uint8_t> literal_;  // per row of ids_: a generated token (text whatever its id)
    int32_t pending_ = -1;     // the last answer's final token (sampled, not yet fed)
    std::string last_stop_;    // how the last answer ended
    bool compressed_ = false, busy_ = false, has_images_ = false, compressing_turn_ = false;
    int turns_ = 0;
    CompressionReport report_;
};

}  // namespace aircache
