// models/projector_idefics3.cpp — SmolVLM / SmolVLM2 / Idefics3's vision side
// (`clip.projector_type = idefics3`): HF's SmolVLMImageProcessor cuts an image into tiles (the long
// side to clip.vision.preproc_image_size, both sides up to multiples of the tile, LANCZOS; tiles
// row-major, then the whole image as one tile: image.h preprocess_tiles); each tile goes through a
// SigLIP ViT (the CLIP tower of models/clip.h without class token or pre-norm, with its post-norm and
// tanh GELU); HF's SmolVLMConnector then pixel-shuffles the patch grid by s =
// clip.vision.projector.scale_factor (each s x s block of patches becomes one token whose features
// are the block's patches, row offset outer, column offset inner) and projects with one linear map
// without bias (mm.model.fc). A tile is (image_size / patch_size / s)^2 tokens; an image's tokens are
// its tiles' in order. In the prompt the tiles are separated by marker tokens exactly as HF's
// SmolVLMProcessor writes them (image_text): "<fake_token_around_image><row_r_col_c>" before each
// tile, "\n" after each row of tiles, "\n<fake_token_around_image><global-img>" before the global
// view and "<fake_token_around_image>" after it; an image that fits one tile is not split.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "models/clip.h"
#include "tensor.h"

namespace aircache {

namespace {

constexpr int64_t kMaxLongestEdge = 1 << 16, kMaxTilesPerSide = 32;  // real files: 4 (the vocabulary has markers up to 6)

class Idefics3Vision final : public VisionModel {
public:
    explicit Idefics3Vision(std::shared_ptr<const GGUFFile> file) : VisionModel(std::move(file)) {
        const GGUFFile& f = *file_;
        cfg_.projector = "idefics3";
        tower_.load(f, cfg_);
        if (cfg_.class_token) f.fail("an idefics3 (SigLIP) tower has no class embedding, but the file has 'v.class_embd'");
        cfg_.act = Activation::GELUTanh;  // SigLIP's gelu_pytorch_tanh, whatever clip.use_gelu says
        tower_.set_activation(cfg_.act);
        const int64_t side = cfg_.image_size / cfg_.patch_size, C = cfg_.n_embd;

        // the connector: [C * s^2] features per token -> the text width
        const char* kFc = "mm.model.fc.weight";
        const GGUFTensorInfo* fc = f.find_tensor(kFc);
        if (!fc) f.fail(std::string("missing projector tensor '") + kFc + "'");
        const char* kScale = "clip.vision.projector.scale_factor";
        if (f.has(kScale)) {
            s_ = vision_bounded(f, kScale, f.get_u32(kScale), 1, side);
        } else {  // older files: the factor the connector's input width implies
            s_ = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(fc->ne[0]) / static_cast<double>(C))));
            if (s_ < 1 || s_ * s_ * C != fc->ne[0])
                f.fail(strprintf("key '%s' is missing and tensor '%s' (shape %s) takes no square multiple of "
                                 "clip.vision.embedding_length %lld", kScale, kFc, fc->shape_str().c_str(),
                                 static_cast<long long>(C)));
        }
        if (side % s_ != 0)
            f.fail(strprintf("key '%s' is %lld, which does not divide the %lld x %lld patch grid of a tile "
                             "(clip.vision.image_size %lld / patch_size %lld)", kScale, static_cast<long long>(s_),
                             static_cast<long long>(side), static_cast<long long>(side),
                             static_cast<long long>(cfg_.image_size), static_cast<long long>(cfg_.patch_size)));
        if (fc->ne[0] != C * s_ * s_)
            f.fail(strprintf("tensor '%s' has shape %s: it takes %lld features per token, but key '%s' = %lld with "
                             "clip.vision.embedding_length %lld gives %lld", kFc, fc->shape_str().c_str(),
                             static_cast<long long>(fc->ne[0]), kScale, static_cast<long long>(s_),
                             static_cast<long long>(C), static_cast<long long>(C * s_ * s_)));
        const int64_t OUT = fc->ne[1];
        if (OUT < 1 || OUT > (int64_t(1) << 20))
            f.fail(strprintf("tensor '%s' has shape %s: its output width is out of range", kFc, fc->shape_str().c_str()));
        fc_ = vision_matrix(f, kFc, {C * s_ * s_, OUT});
        cfg_.n_embd_out = OUT;
        cfg_.n_tokens = (side / s_) * (side / s_);  // per tile

        // HF's size["longest_edge"]; without the key, the converter's own fallback (the tile: no split)
        const char* kEdge = "clip.vision.preproc_image_size";
        longest_edge_ = f.has(kEdge) ? vision_bounded(f, kEdge, f.get_u32(kEdge), 1, kMaxLongestEdge) : cfg_.image_size;
        const int64_t per_side = (std::min<int64_t>(longest_edge_, 4096) + cfg_.image_size - 1) / cfg_.image_size;
        if (per_side > kMaxTilesPerSide)
            f.fail(strprintf("key '%s' is %lld: with tiles of %lld px (clip.vision.image_size) an image would be up to "
                             "%lld x %lld tiles (at most %lld per side are supported)", kEdge,
                             static_cast<long long>(longest_edge_), static_cast<long long>(cfg_.image_size),
                             static_cast<long long>(per_side), static_cast<long long>(per_side),
                             static_cast<long long>(kMaxTilesPerSide)));

        // pixel shuffle as a row gather: row ((i' * n + j') * s + m) * s + k of the gathered patches is
        // patch (i' s + m, j' s + k), so the gathered [patches][C] viewed as [tokens][C s^2] is HF's
        // pixel_shuffle output
        const int64_t n = side / s_;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j)
                for (int64_t m = 0; m < s_; ++m)
                    for (int64_t k = 0; k < s_; ++k)
                        shuffle_.push_back(static_cast<int32_t>((i * s_ + m) * side + j * s_ + k));
    }

    ParamGroups params() override {
        ParamGroups g;
        g.layers.emplace_back();
        tower_.add_params(g.layers[0]);
        g.layers[0].push_back(&fc_);
        return g;
    }

    bool has_markup() const override { return true; }
    const char* image_token() const override { return "<image>"; }

    int64_t n_image_tokens(const Image* img, int64_t) const override {
        return grid(img, "number of tokens").n_tiles() * cfg_.n_tokens;
    }

    std::string image_text(const Image* img) const override {
        const TileGrid g = grid(img, "text");
        std::string run;
        for (int64_t i = 0; i < cfg_.n_tokens; ++i) run += image_token();
        const std::string fake = "<fake_token_around_image>";
        std::string s;
        for (int r = 1; r <= g.rows; ++r) {
            for (int c = 1; c <= g.cols; ++c) s += fake + strprintf("<row_%d_col_%d>", r, c) + run;
            s += "\n";
        }
        return s + (g.rows > 0 ? "\n" : "") + fake + "<global-img>" + run + fake;
    }

    std::vector<float> pixel_values(const Image& img, ImageMode, int64_t, int64_t& rows, int64_t& cols) const override {
        TileGrid g;
        std::vector<float> px = preprocess_tiles(img, tiles(), &g);
        rows = g.n_tiles() * 3 * cfg_.image_size;
        cols = cfg_.image_size;
        return px;
    }

    MediaItem encode(const Image& img, ImageMode, Compute& c, int64_t) override {
        Backend& be = c.layer(0);
        const TileGrid g = grid(&img, "tiles");
        const int64_t T = g.n_tiles(), NT = cfg_.n_tokens, NP = cfg_.n_patches, C = cfg_.n_embd;
        const int64_t OUT = cfg_.n_embd_out, M = cfg_.image_size;
        c.require(be, tower_.work_bytes(be) + sizeof(float) * static_cast<size_t>(NP * C + NT * OUT) +
                          sizeof(int32_t) * static_cast<size_t>(NP),
                  strprintf("encoding an image (%lld tiles of %lldx%lld patches)", static_cast<long long>(T),
                            static_cast<long long>(M / cfg_.patch_size), static_cast<long long>(M / cfg_.patch_size)));
        const std::vector<float> px = preprocess_tiles(img, tiles());
        MediaItem m;
        m.n_rows = T * NT;
        m.n_embd = OUT;
        m.embd.resize(static_cast<size_t>(m.n_rows * OUT));
        Ops ops = c.ops(be);
        const Tensor idx = c.upload(be, kIdx, shuffle_.data(), GGMLType::I32, NP, 1);
        for (int64_t t = 0; t < T; ++t) {
            const Tensor feat = tower_.forward(px.data() + static_cast<size_t>(t * 3 * M * M), c, be);
            Tensor shuffled = c.scratch(be, kShuffle, GGMLType::F32, NP, C);
            ops.get_rows(feat, idx, shuffled);
            Tensor y = c.scratch(be, kOut, GGMLType::F32, NT, OUT);
            ops.matmul(fc_, shuffled.reshape(NT, C * s_ * s_), y);
            Compute::download(y, m.embd.data() + static_cast<size_t>(t * NT * OUT));
        }
        return m;
    }

private:
    enum Slot { kIdx = 100, kShuffle, kOut };

    TilePreprocess tiles() const {
        TilePreprocess p;
        p.longest_edge = static_cast<int>(longest_edge_);
        p.tile = static_cast<int>(cfg_.image_size);
        for (int i = 0; i < 3; ++i) {
            p.mean[i] = cfg_.mean[i];
            p.std[i] = cfg_.std[i];
        }
        return p;
    }

    TileGrid grid(const Image* img, const char* what) const {
        if (!img)
            throw InputError(strprintf("the %s of an idefics3 (SmolVLM) image depends on its size: pass the image", what));
        return tile_grid(img->width, img->height, tiles());
    }

    ClipTower tower_;
    Param fc_;
    int64_t s_ = 2, longest_edge_ = 0;
    std::vector<int32_t> shuffle_;
};

}  // namespace

std::unique_ptr<VisionModel> make_projector_idefics3(std::shared_ptr<const GGUFFile> file) {
    return std::make_unique<Idefics3Vision>(std::move(file));
}

}  // namespace aircache
