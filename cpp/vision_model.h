// vision_model.h — the vision tower and projector of an mmproj GGUF (llama.cpp's `clip` files).
//
//   auto v = VisionModel::load(mmproj_file);
//   std::vector<float> px = preprocess_image(img, v->preprocess());   // [3][S][S]
//   v->encode(px.data(), out, pool);                                   // [n_tokens][n_embd_out]
//
// Supported: CLIP-style ViT (patch embedding, class embedding, position embedding, pre-LN,
// LayerNorm + MHA + MLP blocks with the activation the file declares) and the `mlp` projector
// (linear -> GELU -> linear) of LLaVA-1.5. The features follow HF: class token first, the feature
// layer's output (the last stored layer, or the hidden states `clip.vision.feature_layer` lists,
// concatenated), class token dropped. Both mmproj conventions load: llama.cpp's legacy LLaVA
// converter (n-1 layers stored, vision FFN up/down names swapped: repaired by shape) and files
// with correct names.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "gguf.h"
#include "image.h"
#include "tensor.h"
#include "threadpool.h"

namespace aircache {

namespace gpu {
class VisionEncoder;
}

struct VisionConfig {
    std::string projector;        // "mlp"
    int64_t image_size = 0;
    int64_t patch_size = 0;
    int64_t n_embd = 0;           // ViT width
    int64_t n_ff = 0;
    int64_t n_head = 0;
    int64_t n_layer = 0;          // layers run (stored layers up to the deepest feature layer)
    float eps = 1e-5f;
    float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    cpu::Activation act = cpu::Activation::QuickGELU;
    std::vector<int64_t> feature_layers;  // hidden-state indices (0 = embeddings after pre-LN)
    bool class_token = true;
    int64_t n_patches = 0;        // (image_size / patch_size)^2
    int64_t n_tokens = 0;         // embeddings per image handed to the language model
    int64_t n_embd_out = 0;       // projector output width (the text model's n_embd)
};

class VisionModel {
public:
    static std::unique_ptr<VisionModel> load(std::shared_ptr<const GGUFFile> file);
    ~VisionModel();

    const VisionConfig& config() const { return cfg_; }
    // Preprocessing parameters from the file (image size, mean, std) in the given mode.
    ImagePreprocess preprocess(ImageMode mode) const;

    // pixels: [3][image_size][image_size] (CHW float, normalised); out: [n_tokens][n_embd_out].
    void encode(const float* pixels, float* out, ThreadPool& pool);

    // Runs the tower and projector on CUDA device `device` from now on (weights uploaded once);
    // device < 0: back on the CPU. UnsupportedError without CUDA.
    void offload(int device);
    bool on_device() const { return gpu_ != nullptr; }
    size_t device_weight_bytes() const;

private:
    VisionModel() = default;
    struct Layer {
        std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b, bq, bk, bv, bo, b_up, b_down;
        Weight wq, wk, wv, wo, w_up, w_down;
    };
    Weight weight(const std::string& name, std::vector<int64_t> ne) const;
    std::vector<float> vec(const std::string& name, int64_t n, bool required = true) const;

    std::shared_ptr<const GGUFFile> file_;
    VisionConfig cfg_;
    Weight patch_w_;                                  // [n_embd][3*P*P]
    std::vector<float> patch_b_, class_embd_, pos_embd_, pre_ln_w_, pre_ln_b_, post_ln_w_, post_ln_b_;
    std::vector<Layer> layers_;
    Weight mm0_, mm2_;
    std::vector<float> mm0_b_, mm2_b_;
    std::unique_ptr<gpu::VisionEncoder> gpu_;
};

}  // namespace aircache
