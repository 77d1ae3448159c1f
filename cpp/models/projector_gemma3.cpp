// models/projector_gemma3.cpp — Gemma 3's vision side (`clip.projector_type = gemma3`): a SigLIP ViT
// (the CLIP tower of models/clip.h without class token or pre-norm, with its post-norm and tanh
// GELU, as HF's SiglipVisionModel), then HF's Gemma3MultiModalProjector: the patch grid averaged in
// k x k blocks (k = clip.vision.projector.scale_factor, default 4: 64 x 64 patches -> 256 tokens),
// RMSNorm (mm.soft_emb_norm, stored 1 + w), and the projection mm.input_projection (stored as HF's
// [vision, text] matrix; always F16 in llama.cpp's files). Preprocessing as HF's
// Gemma3ImageProcessor: a stretch to image_size x image_size with Pillow's bilinear filter (not
// llama.cpp's letterbox), mean = std = 0.5 from the file. An image is one bidirectional item: its
// rows attend to each other both ways (HF's token_type_ids; llama.cpp's non-causal image chunk).
#include <cmath>

#include "common.h"
#include "models/clip.h"
#include "tensor.h"

namespace aircache {

namespace {

class Gemma3Vision final : public VisionModel {
public:
    explicit Gemma3Vision(std::shared_ptr<const GGUFFile> file) : VisionModel(std::move(file)) {
        const GGUFFile& f = *file_;
        cfg_.projector = "gemma3";
        tower_.load(f, cfg_);
        if (cfg_.class_token) f.fail("a gemma3 (SigLIP) tower has no class embedding, but the file has 'v.class_embd'");
        cfg_.act = Activation::GELUTanh;
        tower_.set_activation(cfg_.act);
        const int64_t side = cfg_.image_size / cfg_.patch_size;
        k_ = vision_bounded(f, "clip.vision.projector.scale_factor", f.get_u32("clip.vision.projector.scale_factor", 4), 1,
                            side);
        if (side % k_ != 0)
            f.fail(strprintf("clip.vision.projector.scale_factor %lld does not divide the %lld x %lld patch grid",
                             static_cast<long long>(k_), static_cast<long long>(side), static_cast<long long>(side)));
        cfg_.n_tokens = (side / k_) * (side / k_);
        const int64_t C = cfg_.n_embd;
        norm_ = vision_vector(f, "mm.soft_emb_norm.weight", C);
        // mm.input_projection: ne [text, vision] (HF's x @ W); transposed once into [text][vision] rows
        const GGUFTensorInfo* t = f.find_tensor("mm.input_projection.weight");
        if (!t) f.fail("missing projector tensor 'mm.input_projection.weight'");
        if (t->ne[1] != C || t->ne[2] != 1 || t->ne[3] != 1 || t->ne[0] < 1)
            f.fail("tensor 'mm.input_projection.weight' has shape " + t->shape_str() +
                   strprintf(", expected [n_embd_text, %lld]", static_cast<long long>(C)));
        const int64_t OUT = t->ne[0];
        const std::vector<float> w = dequantize_tensor(*t, f.path());
        check_finite(f, "mm.input_projection.weight", w.data(), static_cast<int64_t>(w.size()));
        std::vector<float> wt(w.size());
        for (int64_t i = 0; i < C; ++i)
            for (int64_t o = 0; o < OUT; ++o) wt[static_cast<size_t>(o * C + i)] = w[static_cast<size_t>(i * OUT + o)];
        proj_ = Param::f32("mm.input_projection", std::move(wt), OUT);
        cfg_.n_embd_out = OUT;
    }

    ParamGroups params() override {
        ParamGroups g;
        g.layers.emplace_back();
        tower_.add_params(g.layers[0]);
        for (Param* p : {&norm_, &proj_}) g.layers[0].push_back(p);
        return g;
    }

    int64_t n_image_tokens(const Image*, int64_t) const override { return cfg_.n_tokens; }

    ImagePreprocess preprocess(ImageMode) const override {
        ImagePreprocess p = VisionModel::preprocess(ImageMode::Stretch);
        p.filter = Resample::Bilinear;
        return p;
    }

    MediaItem encode(const Image& img, ImageMode mode, Compute& c, int64_t) override {
        Backend& be = c.layer(0);
        const int64_t side = cfg_.image_size / cfg_.patch_size, NT = cfg_.n_tokens, C = cfg_.n_embd;
        const int64_t OUT = cfg_.n_embd_out;
        c.require(be, tower_.work_bytes(be) + sizeof(float) * static_cast<size_t>(NT * (2 * C + OUT)),
                  strprintf("encoding an image (%lld patches)", static_cast<long long>(side * side)));
        const std::vector<float> px = preprocess_image(img, preprocess(mode));
        const Tensor feat = tower_.forward(px.data(), c, be);
        Ops ops = c.ops(be);
        Tensor pooled = c.scratch(be, kPool, GGMLType::F32, NT, C);
        ops.avg_pool(feat, side, side, k_, pooled);
        Tensor normed = c.scratch(be, kNorm, GGMLType::F32, NT, C);
        ops.rms_norm(pooled, &norm_, cfg_.eps, normed);
        Tensor y = c.scratch(be, kOut, GGMLType::F32, NT, OUT);
        ops.matmul(proj_, normed, y);
        MediaItem m;
        m.n_rows = NT;
        m.n_embd = OUT;
        m.bidirectional = true;
        m.embd.resize(static_cast<size_t>(NT * OUT));
        Compute::download(y, m.embd.data());
        return m;
    }

    const char* image_token() const override { return "<image_soft_token>"; }

private:
    enum Slot { kPool = 100, kNorm, kOut };
    ClipTower tower_;
    Param norm_, proj_;
    int64_t k_ = 4;
};

}  // namespace

std::unique_ptr<VisionModel> make_projector_gemma3(std::shared_ptr<const GGUFFile> file) {
    return std::make_unique<Gemma3Vision>(std::move(file));
}

}  // namespace aircache
