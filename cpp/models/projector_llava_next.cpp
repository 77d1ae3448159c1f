// models/projector_llava_next.cpp — LLaVA-NeXT (1.6): an `mlp` mmproj with grid pinpoints (llama.cpp's
// legacy llava-1.6 files: llava_surgery_v2.py + convert_image_encoder_to_gguf.py), run as HF's
// LlavaNextForConditionalGeneration does. Each image becomes the base image and the tiles of its best
// grid resolution (multimodal/anyres.h, HF's processor exactly); every crop goes through the CLIP
// tower (models/clip.h: the file's feature layers, class token dropped) and the mlp projector (linear
// -> GELU -> linear); the tiles' features form one (rows * side) x (cols * side) map, unpadded as HF's
// unpad_image, each kept row followed by the learned image newline (`model.image_newline`, as the
// surgery script names it, or `v.image_newline`); the base image's features come first. The newline
// rows are embedding rows that are not compression candidates (text for the policies).
//
// Keys read (each validated): clip.vision.image_grid_pinpoints (flat (height, width) pairs as HF's
// config lists them, multiples of clip.vision.image_size), clip.vision.mm_patch_merge_type
// ("spatial_unpad" when present), clip.vision.image_aspect_ratio ("anyres" when present),
// clip.vision.mm_projector_type ("mlp2x_gelu" when present); the tower's keys as for LLaVA-1.5.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "models/clip.h"
#include "multimodal/anyres.h"

namespace aircache {

namespace {

constexpr int64_t kMaxPinpoints = 256, kMaxTilesPerImage = 64;

class LlavaNext final : public VisionModel {
public:
    explicit LlavaNext(std::shared_ptr<const GGUFFile> file) : VisionModel(std::move(file)) {
        const GGUFFile& f = *file_;
        cfg_.projector = "mlp";
        if (f.has("mm.3.weight"))
            throw UnsupportedError(f.path() + ": an mlp_norm projector (mm.1/mm.3/mm.4 tensors) is not supported");
        check_string(f, "clip.vision.mm_patch_merge_type", "spatial_unpad",
                     "the feature grid unpadded with a newline after each row: HF's LlavaNext");
        check_string(f, "clip.vision.image_aspect_ratio", "anyres", "HF's LlavaNext tiling");
        check_string(f, "clip.vision.mm_projector_type", "mlp2x_gelu", "linear -> GELU -> linear, the mm.0 / mm.2 tensors");
        tower_.load(f, cfg_);
        if (!cfg_.class_token)
            f.fail("a LLaVA-NeXT (anyres) CLIP tower has a class token (HF drops it from the features), but the file "
                   "has no 'v.class_embd'");
        const int64_t in = cfg_.n_embd * static_cast<int64_t>(cfg_.feature_layers.size());
        const GGUFTensorInfo* t0 = f.find_tensor("mm.0.weight");
        const GGUFTensorInfo* t2 = f.find_tensor("mm.2.weight");
        if (!t0 || !t2) f.fail("missing projector tensor 'mm.0.weight' or 'mm.2.weight'");
        mm0_ = vision_matrix(f, "mm.0.weight", {in, t0->ne[1]});
        mm2_ = vision_matrix(f, "mm.2.weight", {t0->ne[1], t2->ne[1]});
        mm0_b_ = vision_vector(f, "mm.0.bias", t0->ne[1]);
        mm2_b_ = vision_vector(f, "mm.2.bias", t2->ne[1]);
        cfg_.n_embd_out = t2->ne[1];
        cfg_.n_tokens = cfg_.n_patches;  // per crop

        // the learned newline, in the text model's embedding space (not projected)
        const char* nl = f.find_tensor("model.image_newline") ? "model.image_newline" : "v.image_newline";
        if (!f.find_tensor(nl))
            f.fail("the file has clip.vision.image_grid_pinpoints (LLaVA-NeXT anyres) but no image newline tensor "
                   "('model.image_newline' or 'v.image_newline')");
        newline_ = vision_vector(f, nl, cfg_.n_embd_out);

        // grid pinpoints: flat (height, width) pairs, multiples of the tile
        const char* kPin = "clip.vision.image_grid_pinpoints";
        const uint64_t n = f.get_array_len(kPin);
        if (n < 2 || n % 2 != 0 || n > 2 * kMaxPinpoints)
            f.fail(strprintf("key '%s' has %llu values: expected (height, width) pairs, 1 to %lld of them", kPin,
                             static_cast<unsigned long long>(n), static_cast<long long>(kMaxPinpoints)));
        const std::vector<int64_t> v = f.get_int_array(kPin);
        const int64_t S = cfg_.image_size;
        for (size_t i = 0; i < v.size(); i += 2) {
            const int64_t h = v[i], w = v[i + 1];
            if (h < S || w < S || h % S != 0 || w % S != 0)
                f.fail(strprintf("key '%s' lists (%lld, %lld): pinpoints are positive multiples of the %lld px tile "
                                 "(clip.vision.image_size)", kPin, static_cast<long long>(h), static_cast<long long>(w),
                                 static_cast<long long>(S)));
            if ((h / S) * (w / S) > kMaxTilesPerImage)
                f.fail(strprintf("key '%s' lists (%lld, %lld): %lld x %lld tiles of %lld px (at most %lld per image are "
                                 "supported)", kPin, static_cast<long long>(h), static_cast<long long>(w),
                                 static_cast<long long>(h / S), static_cast<long long>(w / S),
                                 static_cast<long long>(S), static_cast<long long>(kMaxTilesPerImage)));
            pre_.pinpoints.emplace_back(static_cast<int>(h), static_cast<int>(w));
        }
        pre_.tile = static_cast<int>(S);
        pre_.patch = static_cast<int>(cfg_.patch_size);
        for (int c = 0; c < 3; ++c) {
            pre_.mean[c] = cfg_.mean[c];
            pre_.std[c] = cfg_.std[c];
        }
        const int64_t side = S / cfg_.patch_size;
        if (side * side != cfg_.n_patches) throw Error("internal: a CLIP grid that is not square");
    }

    ParamGroups params() override {
        ParamGroups g;
        g.layers.emplace_back();
        tower_.add_params(g.layers[0]);
        for (Param* p : {&mm0_, &mm0_b_, &mm2_, &mm2_b_}) g.layers[0].push_back(p);
        return g;
    }

    int64_t n_image_tokens(const Image* img, int64_t) const override { return grid(img, "number of tokens").n_tokens(); }

    bool size_dependent() const override { return true; }

    std::pair<int, int> typical_image_size() const override {
        int side = 0;  // the largest square pinpoint (llava-1.6: 672 px, 2 x 2 tiles: 576 + 48 x 48 features)
        for (const auto& [h, w] : pre_.pinpoints)
            if (h == w) side = std::max(side, h);
        if (side == 0) return VisionModel::typical_image_size();
        return {side, side};
    }

    int64_t n_visual_tokens(const Image* img) const override { return grid(img, "number of tokens").n_features(); }

    std::string layout_note() const override {
        std::string grids;
        for (const auto& [h, w] : pre_.pinpoints)
            grids += strprintf("%s%dx%d", grids.empty() ? "" : ", ", h / pre_.tile, w / pre_.tile);
        return " per crop; anyres: the base image + tiles in grids (rows x cols) " + grids +
               ", unpadded, a newline after each feature row";
    }

    std::vector<float> pixel_values(const Image& img, ImageMode, int64_t, int64_t& rows, int64_t& cols) const override {
        AnyresGrid g;
        std::vector<float> px = preprocess_anyres(img, pre_, &g);
        rows = g.n_crops() * 3 * cfg_.image_size;
        cols = cfg_.image_size;
        return px;
    }

    MediaItem encode(const Image& img, ImageMode, Compute& c, int64_t) override {
        Backend& be = c.layer(0);
        AnyresGrid g;
        const std::vector<float> px = preprocess_anyres(img, pre_, &g);
        const int64_t NC = g.n_crops(), NP = cfg_.n_patches, Hd = mm0_.host().rows, OUT = cfg_.n_embd_out;
        const int64_t S = cfg_.image_size, side = g.side;
        c.require(be, tower_.work_bytes(be) + sizeof(float) * static_cast<size_t>(NP * (Hd + OUT)),
                  strprintf("encoding an image (%lld crops of %lld patches)", static_cast<long long>(NC),
                            static_cast<long long>(NP)));
        // every crop through the tower and the projector: [NC][NP][OUT] on the host
        std::vector<float> feats(static_cast<size_t>(NC * NP * OUT));
        Ops ops = c.ops(be);
        for (int64_t k = 0; k < NC; ++k) {
            const Tensor feat = tower_.forward(px.data() + static_cast<size_t>(k * 3 * S * S), c, be);
            Tensor hid = c.scratch(be, kHid, GGMLType::F32, NP, Hd);
            ops.matmul(mm0_, feat, hid, &mm0_b_);
            ops.activation(hid, Activation::GELU);
            Tensor y = c.scratch(be, kOut, GGMLType::F32, NP, OUT);
            ops.matmul(mm2_, hid, y, &mm2_b_);
            Compute::download(y, feats.data() + static_cast<size_t>(k * NP * OUT));
        }
        // HF's pack_image_features: the base crop, then each kept row of the tiles' feature map
        // (row-major over the map) followed by the newline
        MediaItem m;
        m.n_rows = g.n_tokens();
        m.n_embd = OUT;
        m.embd.resize(static_cast<size_t>(m.n_rows * OUT));
        m.visual.assign(static_cast<size_t>(m.n_rows), 1);
        float* o = m.embd.data();
        std::copy_n(feats.data(), NP * OUT, o);
        int64_t r = NP;
        const float* nl = newline_.host_f32();
        for (int fr = g.row0; fr < g.row1; ++fr) {
            for (int fc = g.col0; fc < g.col1; ++fc) {
                const int64_t crop = 1 + (fr / side) * g.cols + fc / side, patch = (fr % side) * side + fc % side;
                std::copy_n(feats.data() + static_cast<size_t>((crop * NP + patch) * OUT), OUT, o + r * OUT);
                ++r;
            }
            std::copy_n(nl, OUT, o + r * OUT);
            m.visual[static_cast<size_t>(r)] = 0;  // a newline row: text for the compression policies
            ++r;
        }
        if (r != m.n_rows) throw Error("internal: a packed LLaVA-NeXT image of the wrong length");
        return m;
    }

private:
    enum Slot { kHid = 100, kOut };

    static void check_string(const GGUFFile& f, const char* key, const char* want, const char* what) {
        if (!f.has(key)) return;
        const std::string v = f.get_str(key);
        if (v != want)
            throw UnsupportedError(f.path() + ": key '" + key + "' is '" + printable(v) + "'; only '" + want + "' (" +
                                   what + ") is supported");
    }

    AnyresGrid grid(const Image* img, const char* what) const {
        if (!img)
            throw InputError(strprintf("the %s of a LLaVA-NeXT (anyres) image depends on its size: pass the image", what));
        return anyres_grid(img->width, img->height, pre_);
    }

    ClipTower tower_;
    Param mm0_, mm0_b_, mm2_, mm2_b_, newline_;
    AnyresPreprocess pre_;
};

}  // namespace

std::unique_ptr<VisionModel> make_projector_llava_next(std::shared_ptr<const GGUFFile> file) {
    return std::make_unique<LlavaNext>(std::move(file));
}

}  // namespace aircache
