// models/clip.h — the CLIP ViT vision tower (LLaVA-1.5's; the towers of LLaVA-NeXT and others reuse
// it): patch embedding, class embedding, position embedding, pre-LN, LayerNorm + MHA + MLP blocks
// with the activation the file declares, the features of the listed hidden states concatenated,
// class token dropped (HF's LLaVA feature selection). Both mmproj conventions load: llama.cpp's
// legacy LLaVA converter (n-1 layers stored, vision FFN up/down names swapped: repaired by shape)
// and files with correct names. The patch grid is floor(image_size / patch_size) a side (the
// convolution's stride leaves a remainder of pixels out, as in HF).
#pragma once

#include <vector>

#include "vision_model.h"

namespace aircache {

class ClipTower {
public:
    // Reads the tower's hyperparameters into `c` (image/patch size, widths, layers, eps, mean/std,
    // activation, feature layers) and its weights.
    void load(const GGUFFile& f, VisionConfig& c);
    void add_params(std::vector<Param*>& group);
    // The MLP activation, where the family fixes it (SigLIP: tanh GELU, whatever clip.use_gelu says).
    void set_activation(Activation a) { cfg_.act = a; }
    // pixels: host [3][image_size][image_size] (CHW, normalised). Returns the features
    // [n_patches][n_embd * feature_layers.size()] on `be` (a slot of `c`).
    Tensor forward(const float* pixels, Compute& c, Backend& be);
    // Working memory forward() takes on `be` (its scratch slots, the pixels on a device).
    size_t work_bytes(const Backend& be) const;

private:
    enum Slot { kPix, kX, kXB, kQ, kK, kV, kAtt, kFF, kFeat0 };
    struct Layer {
        Param ln1_w, ln1_b, ln2_w, ln2_b, bq, bk, bv, bo, b_up, b_down;
        Param wq, wk, wv, wo, w_up, w_down;
    };
    VisionConfig cfg_;
    Param patch_w_, patch_b_, class_embd_, pos_embd_, pre_ln_w_, pre_ln_b_, post_ln_w_, post_ln_b_;
    std::vector<Layer> layers_;
};

}  // namespace aircache
