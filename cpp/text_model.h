// text_model.h — decoder-only language models read from a llama.cpp-style GGUF file.
//
//   auto m = TextModel::load(file);                  // architecture from general.architecture
//   Compute c(cpu, device, m->config().n_layer, n_gpu_layers);
//   c.place(m->params());                            // weights to where their layers run
//   KVCache kv(m->kv_config(n_ctx, KVType::F16, KVType::F16, c));
//   m->forward(batch, &kv_ptr, logits, c);           // appends K/V, writes logits of wanted rows
//
// One file per architecture under cpp/models/, its forward written once over the backend ops
// (backend/ops.h), whatever backend each layer was placed on; adding a family is adding a file and
// a line in the table in text_model.cpp. Hyperparameters come from the GGUF metadata and are
// validated against sane maxima and against the tensor shapes: a file claiming 1e9 layers is a
// FormatError naming the key, not an allocation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/compute.h"
#include "compress/stats.h"
#include "gguf.h"
#include "kv_cache.h"
#include "tensor.h"

namespace aircache {

struct TextConfig {
    std::string arch;
    int64_t n_vocab = 0;
    int64_t n_embd = 0;
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    int64_t n_ff = 0;
    int64_t n_ctx_train = 0;
    int64_t n_rot = 0;                // rotated dims per head
    float rms_eps = 1e-5f;
    float rope_theta = 10000.0f;
    float rope_freq_scale = 1.0f;     // 1 / linear scaling factor
    RopeStyle rope_style = RopeStyle::Norm;
    int n_pos_axes = 1;               // position components per token (3 for M-RoPE)
    int n_deepstack = 0;              // layers that take DeepStack vision features (Qwen3-VL)
    int64_t sliding_window = 0;       // positions a sliding-window layer keeps (0: none)
    std::vector<int64_t> layer_window;  // per layer: its window (0: the layer sees the whole sequence); empty: none
    bool tied_output = false;         // output projection = token embedding
};

// A batch: n inputs given as token ids or as embeddings ([n][n_embd], e.g. image features), at
// explicit positions, each row belonging to a sequence (seq[t] indexes the caches handed to
// forward(); null: every row is sequence 0). Rows of one sequence come in order. Rows with
// want_logits[t] != 0 get logits (all rows when null).
struct TextBatch {
    int64_t n = 0;
    const int32_t* tokens = nullptr;
    const float* embd = nullptr;
    const int32_t* pos = nullptr;        // [n][n_pos_axes] RoPE positions
    const int32_t* seq = nullptr;
    const uint8_t* want_logits = nullptr;
    // Bidirectional spans (an image whose tokens attend both ways): span_end[t] >= 0 is one past the
    // last batch row of row t's span, whose keys row t also sees; null or -1: causal.
    const int32_t* span_end = nullptr;
    // The importance pass of KV compression: after each layer's attention the model hands it the
    // batch's post-RoPE queries (the cache holds the keys). Null: no statistics.
    compress::StatsCollector* stats = nullptr;
    // DeepStack (Qwen3-VL): [n_deepstack][n][n_embd] features added to the output of layer k < n_deepstack
    // (zero rows for text). Null: none.
    const float* deepstack = nullptr;
    int n_deepstack = 0;
};

class TextModel {
public:
    virtual ~TextModel() = default;

    // Reads the architecture named in the file; UnsupportedError for architectures not built in.
    static std::unique_ptr<TextModel> load(std::shared_ptr<const GGUFFile> file);
    static std::vector<std::string> supported_architectures();

    const TextConfig& config() const { return cfg_; }
    const GGUFFile& file() const { return *file_; }
    // Every parameter, by the layer it belongs to (placement: Compute::place).
    virtual ParamGroups params() = 0;
    // The cache this model writes, each layer on the backend the layer runs on.
    KVCacheConfig kv_config(int64_t capacity, KVType type_k, KVType type_v, const Compute& c) const;

    // The model's position rule for n text tokens that follow a sequence whose next position is
    // `start` (KVCache::next_position()): [n][n_pos_axes]. 1-D RoPE: the original index; M-RoPE:
    // every axis one past the largest position so far.
    virtual void text_positions(int32_t start, int64_t n, int32_t* out) const;

    // Embedding rows of token ids (times the family's embedding scale, e.g. Gemma's sqrt(n_embd)):
    // out [n][n_embd]. InputError for ids outside the vocabulary.
    void embed_tokens(const int32_t* ids, int64_t n, float* out) const;

    // Runs the batch through every layer (appending each row's K/V to its sequence's cache, which
    // must have room) and writes the logits of the wanted rows, in order, to `logits`
    // ([n_wanted][n_vocab], host). One weight read per layer serves every row of every sequence.
    virtual void forward(const TextBatch& batch, KVCache* const* caches, float* logits, Compute& c) = 0;

protected:
    explicit TextModel(std::shared_ptr<const GGUFFile> file) : file_(std::move(file)) {}

    // Loading helpers: FormatError naming the tensor when missing or of the wrong shape. Matrices
    // stay views of the mapped file; vectors are dequantized to F32 once.
    Param matrix(const std::string& name, std::vector<int64_t> ne) const;
    Param optional_matrix(const std::string& name, std::vector<int64_t> ne) const;
    Param vector(const std::string& name, int64_t n) const;
    Param optional_vector(const std::string& name, int64_t n) const;

    std::shared_ptr<const GGUFFile> file_;
    TextConfig cfg_;
    Param tok_embd_;  // host only: embedding rows are read on the CPU
    float embd_scale_ = 1.0f;
};

// Hyperparameters of a llama-family file (llama, and the architectures sharing its keys), validated.
TextConfig read_llama_like_config(const GGUFFile& f, const std::string& arch);

}  // namespace aircache
