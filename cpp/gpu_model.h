// gpu_model.h — the model forwards on a CUDA device (cuda/decoder.cu, cuda/vision.cu), as seen from
// the host models. A host model hands over views of its weights once; the runner uploads them
// (raw, in their GGUF type) and keeps them on the device for its lifetime. Without CUDA in the
// build, the factories throw UnsupportedError (cpp/nocuda/cuda_stub.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kv_cache.h"
#include "tensor.h"
#include "text_model.h"

namespace aircache {
namespace gpu {

// The decoder (models/llama.cpp's LLaMA block) as weight views; vectors (norm gains, biases) are
// float32 host arrays, null when the model has none.
struct DecoderWeights {
    TextConfig cfg;
    const float* inv_freq = nullptr;  // n_rot / 2 rotary frequencies
    struct Layer {
        const float *attn_norm = nullptr, *ffn_norm = nullptr;
        const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;
        Weight wq, wk, wv, wo, w_gate, w_up, w_down;
    };
    std::vector<Layer> layers;
    const float* out_norm = nullptr;
    Weight output;
};

class Decoder {
public:
    virtual ~Decoder() = default;
    virtual int n_layers() const = 0;          // text layers on the device: [0, n_layers())
    virtual bool has_output() const = 0;       // output norm + projection on the device (all layers are)
    virtual size_t weight_bytes() const = 0;   // device memory the weights take
    // Runs the batch through the device layers: x [n][n_embd] holds the input embeddings (host).
    // Each row's K/V go to its sequence's cache (whose device layers must be those of this decoder),
    // the importance pass (b.stats) is fed from the device. With has_output(), writes the logits of
    // the wanted rows to `logits` like TextModel::forward; otherwise x receives the hidden states
    // after the device layers for the host to continue.
    virtual void forward(const TextBatch& b, KVCache* const* caches, float* x, float* logits) = 0;
};

// n_layers of w.layers (the first ones) on `device`; the output too when n_layers == all.
std::unique_ptr<Decoder> make_decoder(const DecoderWeights& w, int n_layers, int device);

// The CLIP vision tower + mlp projector (vision_model.cpp) as weight views.
struct VisionWeights {
    int64_t n_embd = 0, n_ff = 0, n_head = 0, n_layer = 0, patch_size = 0, image_size = 0;
    int64_t n_patches = 0;
    bool class_token = true;
    float eps = 1e-5f;
    int act = 0;  // cpu::Activation
    std::vector<int64_t> feature_layers;
    Weight patch_w;
    const float *patch_b = nullptr, *class_embd = nullptr, *pos_embd = nullptr;
    const float *pre_ln_w = nullptr, *pre_ln_b = nullptr, *post_ln_w = nullptr, *post_ln_b = nullptr;
    struct Layer {
        const float *ln1_w, *ln1_b, *ln2_w, *ln2_b, *bq, *bk, *bv, *bo, *b_up, *b_down;
        Weight wq, wk, wv, wo, w_up, w_down;
    };
    std::vector<Layer> layers;
    Weight mm0, mm2;
    const float *mm0_b = nullptr, *mm2_b = nullptr;
};

class VisionEncoder {
public:
    virtual ~VisionEncoder() = default;
    virtual size_t weight_bytes() const = 0;
    // cols: [n_patches][3 * patch * patch] image patches (host); out: [n_patches][n_embd_out] (host).
    virtual void encode(const float* cols, float* out) = 0;
};

std::unique_ptr<VisionEncoder> make_vision_encoder(const VisionWeights& w, int device);

}  // namespace gpu
}  // namespace aircache
