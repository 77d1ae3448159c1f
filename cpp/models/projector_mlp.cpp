// models/projector_mlp.cpp — LLaVA-1.5: the CLIP tower (models/clip.h) and the `mlp` projector
// (linear -> GELU -> linear), one image = one run of n_patches rows (1-D positions, causal), at a
// fixed size (pad to a square with the mean colour, or resize + centre crop: ImageMode). A file with
// clip.vision.image_grid_pinpoints is LLaVA-NeXT (projector_llava_next.cpp).
#include <cmath>

#include "common.h"
#include "models/clip.h"

namespace aircache {

namespace {

class LlavaMlp final : public VisionModel {
public:
    explicit LlavaMlp(std::shared_ptr<const GGUFFile> file) : VisionModel(std::move(file)) {
        const GGUFFile& f = *file_;
        cfg_.projector = "mlp";
        if (f.has("mm.3.weight"))
            throw UnsupportedError(f.path() + ": an mlp_norm projector (mm.1/mm.3/mm.4 tensors) is not supported");
        tower_.load(f, cfg_);
        // projector: mm.0 [C * n_features -> Hd], GELU, mm.2 [Hd -> n_embd_out]
        const int64_t in = cfg_.n_embd * static_cast<int64_t>(cfg_.feature_layers.size());
        const GGUFTensorInfo* t0 = f.find_tensor("mm.0.weight");
        const GGUFTensorInfo* t2 = f.find_tensor("mm.2.weight");
        if (!t0 || !t2) f.fail("missing projector tensor 'mm.0.weight' or 'mm.2.weight'");
        mm0_ = vision_matrix(f, "mm.0.weight", {in, t0->ne[1]});
        mm2_ = vision_matrix(f, "mm.2.weight", {t0->ne[1], t2->ne[1]});
        mm0_b_ = vision_vector(f, "mm.0.bias", t0->ne[1]);
        mm2_b_ = vision_vector(f, "mm.2.bias", t2->ne[1]);
        cfg_.n_embd_out = t2->ne[1];
        cfg_.n_tokens = cfg_.n_patches;
    }

    ParamGroups params() override {
        ParamGroups g;
        g.layers.emplace_back();
        tower_.add_params(g.layers[0]);
        for (Param* p : {&mm0_, &mm0_b_, &mm2_, &mm2_b_}) g.layers[0].push_back(p);
        return g;
    }

    int64_t n_image_tokens(const Image*, int64_t) const override { return cfg_.n_patches; }

    MediaItem encode(const Image& img, ImageMode mode, Compute& c, int64_t) override {
        Backend& be = c.layer(0);
        const int64_t NP = cfg_.n_patches, Hd = mm0_.host().rows, OUT = cfg_.n_embd_out;
        c.require(be, tower_.work_bytes(be) + sizeof(float) * static_cast<size_t>(NP * (Hd + OUT)),
                  strprintf("encoding an image (%lld patches)", static_cast<long long>(NP)));
        const std::vector<float> px = preprocess_image(img, preprocess(mode));
        const Tensor feat = tower_.forward(px.data(), c, be);
        Ops ops = c.ops(be);
        Tensor hid = c.scratch(be, kHid, GGMLType::F32, NP, Hd);
        ops.matmul(mm0_, feat, hid, &mm0_b_);
        ops.activation(hid, Activation::GELU);
        Tensor y = c.scratch(be, kOut, GGMLType::F32, NP, OUT);
        ops.matmul(mm2_, hid, y, &mm2_b_);
        MediaItem m;
        m.n_rows = NP;
        m.n_embd = OUT;
        m.embd.resize(static_cast<size_t>(NP * OUT));
        Compute::download(y, m.embd.data());
        return m;
    }

private:
    enum Slot { kHid = 100, kOut };
    ClipTower tower_;
    Param mm0_, mm0_b_, mm2_, mm2_b_;
};

}  // namespace

std::unique_ptr<VisionModel> make_projector_llava_next(std::shared_ptr<const GGUFFile> file);

std::unique_ptr<VisionModel> make_projector_mlp(std::shared_ptr<const GGUFFile> file) {
    // grid pinpoints: LLaVA-NeXT's anyres (models/projector_llava_next.cpp)
    if (file->has("clip.vision.image_grid_pinpoints")) return make_projector_llava_next(std::move(file));
    return std::make_unique<LlavaMlp>(std::move(file));
}

}  // namespace aircache
