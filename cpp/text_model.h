// text_model.h — decoder-only language models read from a llama.cpp-style GGUF file.
//
//   auto m = TextModel::load(file);                  // architecture from general.architecture
//   KVCache kv(m->kv_config(n_ctx, KVType::F16));
//   m->forward(batch, kv, logits, pool);               // appends K/V, writes logits of wanted rows
//
// One file per architecture under cpp/models/ over the shared kernels (cpu/ops.h); adding a family
// is adding a file and a line in the table in text_model.cpp. Hyperparameters come from the
// GGUF metadata and are validated against sane maxima and against the tensor shapes: a file
// claiming 1e9 layers is a FormatError naming the key, not an allocation.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "compress/stats.h"
#include "cpu/ops.h"
#include "gguf.h"
#include "kv_cache.h"
#include "tensor.h"
#include "threadpool.h"

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
    cpu::RopeStyle rope_style = cpu::RopeStyle::Norm;
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
    const int32_t* pos = nullptr;
    const int32_t* seq = nullptr;
    const uint8_t* want_logits = nullptr;
    // The importance pass of KV compression: after each layer's attention the model hands it the
    // batch's post-RoPE queries (the cache holds the keys). Null: no statistics.
    compress::StatsCollector* stats = nullptr;
};

class TextModel {
public:
    virtual ~TextModel() = default;

    // Reads the architecture named in the file; UnsupportedError for architectures not built in.
    static std::unique_ptr<TextModel> load(std::shared_ptr<const GGUFFile> file);
    static std::vector<std::string> supported_architectures();

    const TextConfig& config() const { return cfg_; }
    const GGUFFile& file() const { return *file_; }
    // The cache this model writes: its device layers where the model offloaded them.
    KVCacheConfig kv_config(int64_t capacity, KVType type) const;

    // Moves the first n_layers text layers (all, with the output projection, when n_layers >= n_layer)
    // to CUDA device `device`: their weights are uploaded once and those layers then run there
    // (llama.cpp's -ngl). 0: everything on the CPU. UnsupportedError without CUDA; OutOfMemory when
    // the weights do not fit. Caches made before must be made again (kv_config changes).
    virtual void offload(int n_layers, int device);
    int n_device_layers() const { return n_device_layers_; }
    int device() const { return device_; }
    size_t device_weight_bytes() const { return device_weight_bytes_; }

    // Embedding rows of token ids: out [n][n_embd]. InputError for ids outside the vocabulary.
    void embed_tokens(const int32_t* ids, int64_t n, float* out) const;

    // Runs the batch through every layer (appending each row's K/V to its sequence's cache, which
    // must have room) and writes the logits of the wanted rows, in order, to `logits`
    // ([n_wanted][n_vocab]). One weight read per layer serves every row of every sequence.
    virtual void forward(const TextBatch& batch, KVCache* const* caches, float* logits, ThreadPool& pool) = 0;
    void forward(const TextBatch& batch, KVCache& kv, float* logits, ThreadPool& pool) {
        KVCache* c = &kv;
        forward(batch, &c, logits, pool);
    }

protected:
    explicit TextModel(std::shared_ptr<const GGUFFile> file) : file_(std::move(file)) {}

    // Loading helpers: FormatError naming the tensor when missing or of the wrong shape.
    Weight weight(const std::string& name, std::vector<int64_t> ne) const;
    Weight optional_weight(const std::string& name, std::vector<int64_t> ne) const;
    std::vector<float> vector(const std::string& name, int64_t n) const;
    std::vector<float> optional_vector(const std::string& name, int64_t n) const;

    std::shared_ptr<const GGUFFile> file_;
    TextConfig cfg_;
    Weight tok_embd_;
    int n_device_layers_ = 0;
    int device_ = 0;
    size_t device_weight_bytes_ = 0;
};

// Hyperparameters of a llama-family file (llama, and the architectures sharing its keys), validated.
TextConfig read_llama_like_config(const GGUFFile& f, const std::string& arch);

}  // namespace aircache
