// models/projector_qwen.cpp — the Qwen-VL vision side: projectors `qwen2vl_merger` (Qwen2-VL),
// `qwen2.5vl_merger` (Qwen2.5-VL) and `qwen3vl_merger` (Qwen3-VL), as HF transformers computes them.
//
// Dynamic resolution: an image is resized by smart_resize (factor = patch x merge) within the pixel
// limits and cut into patches in 2x2-merge-block order (image.h, preprocess_dynamic: HF's
// pixel_values). Each patch row holds two temporal frames (a still image repeated); the Conv3d patch
// embedding is one matrix over that row, built at load from the file's two kernel slices
// (v.patch_embd.weight, .weight.1). The ViT: 2-D RoPE (NeoX pairs, the first half of the pairs on the
// patch row, the second on the column), full non-causal attention over the image; blocks of
// norm -> attention -> residual, norm -> MLP -> residual.
//   Qwen2-VL    LayerNorm, quick-GELU MLP.
//   Qwen2.5-VL  RMSNorm, SwiGLU MLP with biases, window attention: the merged tokens are reordered
//               into windows of 112 px (4 x 4 merged tokens; HF's window index), layers
//               (l + 1) % n_wa_pattern == 0 attend over the whole image, the others within their
//               window; the merger's output is put back into raster order.
//   Qwen3-VL    patch size 16, a patch-embedding bias, the learned 2-D position table resampled
//               bilinearly (align corners) to the image's grid, LayerNorm, tanh-GELU MLP, fused QKV;
//               DeepStack: after the tap blocks (v.deepstack.B.*), a merger with a norm over the
//               4 x width group gives features the text model's first layers add.
// The merger: the norm per patch (Qwen3 DeepStack: over the group), 2x2 blocks as rows of 4 x width,
// linear -> GELU (erf, as HF; llama.cpp uses tanh) -> linear. The image's tokens are the merged grid
// in raster order at M-RoPE positions (t, h, w) = (0, row, col) from the item's start.
//
// The pixel limits are HF's checkpoint defaults (the GGUF carries none): Qwen2/2.5 3136 ..
// 12,845,056 px, Qwen3 65,536 .. 16,777,216 px; image_min_tokens / image_max_tokens (merged tokens)
// replace them.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "tensor.h"
#include "vision_model.h"

namespace aircache {

namespace {

constexpr int64_t kMaxWidth = 1 << 16, kMaxLayers = 256, kMaxHeads = 256;

enum class Kind { Qwen2, Qwen25, Qwen3 };

class QwenVision final : public VisionModel {
public:
    QwenVision(std::shared_ptr<const GGUFFile> file, Kind kind) : VisionModel(std::move(file)), kind_(kind) {
        const GGUFFile& f = *file_;
        cfg_.projector = kind == Kind::Qwen2 ? "qwen2vl_merger" : kind == Kind::Qwen25 ? "qwen2.5vl_merger" : "qwen3vl_merger";
        cfg_.patch_size = vision_bounded(f, "clip.vision.patch_size", f.get_u32("clip.vision.patch_size"), 1, 1024);
        cfg_.image_size = f.get_u32("clip.vision.image_size", 0);  // a placeholder for these projectors
        merge_ = vision_bounded(f, "clip.vision.spatial_merge_size", f.get_u32("clip.vision.spatial_merge_size", 2), 1, 8);
        if (merge_ != 2)
            throw UnsupportedError(f.path() + strprintf(": clip.vision.spatial_merge_size %lld is not supported (2 only)",
                                                        static_cast<long long>(merge_)));
        const int64_t C = cfg_.n_embd =
            vision_bounded(f, "clip.vision.embedding_length", f.get_u32("clip.vision.embedding_length"), 1, kMaxWidth);
        cfg_.n_head = vision_bounded(f, "clip.vision.attention.head_count", f.get_u32("clip.vision.attention.head_count"),
                                     1, kMaxHeads);
        if (C % cfg_.n_head != 0 || (C / cfg_.n_head) % 4 != 0)
            f.fail(strprintf("clip.vision.embedding_length %lld over %lld heads does not give a head size divisible by 4 "
                             "(the 2-D RoPE needs it)", static_cast<long long>(C), static_cast<long long>(cfg_.n_head)));
        cfg_.n_layer = vision_bounded(f, "clip.vision.block_count", f.get_u32("clip.vision.block_count"), 1, kMaxLayers);
        f.check_block_tensors("v.blk.", cfg_.n_layer, "key 'clip.vision.block_count'");
        cfg_.eps = f.get_f32("clip.vision.attention.layer_norm_epsilon", 1e-6f);
        if (!(cfg_.eps > 0.0f && cfg_.eps < 1.0f))
            f.fail(strprintf("key 'clip.vision.attention.layer_norm_epsilon' is %g, outside (0, 1)", cfg_.eps));
        if (kind == Kind::Qwen3)  // HF's Qwen3-VL processor (the converter writes them anyway)
            for (int i = 0; i < 3; ++i) cfg_.mean[i] = cfg_.std[i] = 0.5f;
        read_image_mean_std(f, cfg_);
        cfg_.act = kind == Kind::Qwen2 ? Activation::QuickGELU : kind == Kind::Qwen25 ? Activation::SiLU : Activation::GELUTanh;
        if (kind == Kind::Qwen25) {
            wa_pattern_ = vision_bounded(f, "clip.vision.n_wa_pattern", f.get_u32("clip.vision.n_wa_pattern"), 1, cfg_.n_layer);
            window_ = f.get_u32("clip.vision.window_size", 112);
            if (window_ % (cfg_.patch_size * merge_) != 0 || window_ <= 0)
                f.fail(strprintf("clip.vision.window_size %lld is not a multiple of patch x merge (%lld)",
                                 static_cast<long long>(window_), static_cast<long long>(cfg_.patch_size * merge_)));
        }
        const int64_t P = cfg_.patch_size;
        // default pixel limits of the checkpoints (HF's preprocessor_config.json)
        default_min_ = min_pixels_ = kind == Kind::Qwen3 ? 65536 : 3136;
        default_max_ = max_pixels_ = kind == Kind::Qwen3 ? 16777216 : 12845056;

        // patch embedding: [C][3 * 2 * P * P] in HF's row order (channel, frame, pixel row, pixel column);
        // both kernels' shapes checked before the matrix is allocated (its size is the metadata's)
        const int64_t K = 3 * 2 * P * P;
        const GGUFTensorInfo* frames[2];
        for (int t = 0; t < 2; ++t) {
            const std::string name = t == 0 ? "v.patch_embd.weight" : "v.patch_embd.weight.1";
            const GGUFTensorInfo* pt = frames[t] = f.find_tensor(name);
            if (!pt) f.fail("missing tensor '" + name + "' (the Conv3d kernel's frame " + std::to_string(t) + ")");
            if (!(pt->ne[0] == P && pt->ne[1] == P && pt->ne[2] == 3 && pt->ne[3] == C))
                f.fail("tensor '" + name + "' has shape " + pt->shape_str() +
                       strprintf(", expected [%lld, %lld, 3, %lld]", static_cast<long long>(P), static_cast<long long>(P),
                                 static_cast<long long>(C)));
        }
        std::vector<float> pw(static_cast<size_t>(C * K));
        for (int t = 0; t < 2; ++t) {
            const std::string name = frames[t]->name;
            const std::vector<float> w = dequantize_tensor(*frames[t], f.path());
            check_finite(f, name, w.data(), static_cast<int64_t>(w.size()));
            for (int64_t c = 0; c < C; ++c)
                for (int64_t ch = 0; ch < 3; ++ch)
                    for (int64_t y = 0; y < P; ++y)
                        for (int64_t x = 0; x < P; ++x)
                            pw[static_cast<size_t>(c * K + ((ch * 2 + t) * P + y) * P + x)] =
                                w[static_cast<size_t>(((c * 3 + ch) * P + y) * P + x)];
        }
        patch_w_ = Param::f32("v.patch_embd", std::move(pw), C);
        patch_b_ = vision_vector(f, "v.patch_embd.bias", C, kind == Kind::Qwen3);
        if (kind == Kind::Qwen3) {
            const GGUFTensorInfo* pe = f.find_tensor("v.position_embd.weight");
            if (!pe) f.fail("missing tensor 'v.position_embd.weight'");
            const int64_t n_pos = pe->ne[1];
            side_ = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n_pos))));
            if (pe->ne[0] != C || pe->ne[2] != 1 || pe->ne[3] != 1 || side_ * side_ != n_pos || side_ < 1)
                f.fail("tensor 'v.position_embd.weight' has shape " + pe->shape_str() +
                       strprintf(", expected [%lld, n] with n a perfect square", static_cast<long long>(C)));
            pos_table_ = dequantize_tensor(*pe, f.path());
            check_finite(f, "v.position_embd.weight", pos_table_.data(), static_cast<int64_t>(pos_table_.size()));
        }

        // blocks (the MLP width from the tensors: the converter's feed_forward_length is wrong for Qwen2-VL)
        const GGUFTensorInfo* up0 = f.find_tensor("v.blk.0.ffn_up.weight");
        const GGUFTensorInfo* down0 = f.find_tensor("v.blk.0.ffn_down.weight");
        if (!up0 || !down0) f.fail("missing tensor 'v.blk.0.ffn_up.weight' or 'v.blk.0.ffn_down.weight'");
        const bool swapped = down0->ne[0] == C && up0->ne[0] != C;  // llama.cpp's rule for swapped up/down
        cfg_.n_ff = swapped ? down0->ne[1] : up0->ne[1];
        const int64_t FF = cfg_.n_ff;
        const bool rms = kind == Kind::Qwen25;
        layers_.resize(static_cast<size_t>(cfg_.n_layer));
        for (int64_t l = 0; l < cfg_.n_layer; ++l) {
            const std::string p = "v.blk." + std::to_string(l) + ".";
            Layer& L = layers_[static_cast<size_t>(l)];
            L.ln1_w = vision_vector(f, p + "ln1.weight", C);
            L.ln2_w = vision_vector(f, p + "ln2.weight", C);
            if (!rms) {
                L.ln1_b = vision_vector(f, p + "ln1.bias", C);
                L.ln2_b = vision_vector(f, p + "ln2.bias", C);
            }
            if (f.find_tensor(p + "attn_qkv.weight")) {
                // fused QKV (Qwen3-VL's converter): three views of the [3C][C] rows
                const Param qkv = vision_matrix(f, p + "attn_qkv.weight", {C, 3 * C});
                const Tensor& h = qkv.host();
                const uint8_t* base = static_cast<const uint8_t*>(h.data);
                L.wq = Param::view(p + "attn_q", base, h.type, C, C);
                L.wk = Param::view(p + "attn_k", base + h.row_bytes * static_cast<size_t>(C), h.type, C, C);
                L.wv = Param::view(p + "attn_v", base + h.row_bytes * static_cast<size_t>(2 * C), h.type, C, C);
                const Param b = vision_vector(f, p + "attn_qkv.bias", 3 * C);
                const float* bv = b.host_f32();
                L.bq = Param::f32(p + "attn_q.bias", std::vector<float>(bv, bv + C));
                L.bk = Param::f32(p + "attn_k.bias", std::vector<float>(bv + C, bv + 2 * C));
                L.bv = Param::f32(p + "attn_v.bias", std::vector<float>(bv + 2 * C, bv + 3 * C));
            } else {
                L.wq = vision_matrix(f, p + "attn_q.weight", {C, C});
                L.wk = vision_matrix(f, p + "attn_k.weight", {C, C});
                L.wv = vision_matrix(f, p + "attn_v.weight", {C, C});
                L.bq = vision_vector(f, p + "attn_q.bias", C);
                L.bk = vision_vector(f, p + "attn_k.bias", C);
                L.bv = vision_vector(f, p + "attn_v.bias", C);
            }
            L.wo = vision_matrix(f, p + "attn_out.weight", {C, C});
            L.bo = vision_vector(f, p + "attn_out.bias", C);
            const std::string up = swapped ? "ffn_down" : "ffn_up", down = swapped ? "ffn_up" : "ffn_down";
            L.w_up = vision_matrix(f, p + up + ".weight", {C, FF});
            L.b_up = vision_vector(f, p + up + ".bias", FF);
            L.w_down = vision_matrix(f, p + down + ".weight", {FF, C});
            L.b_down = vision_vector(f, p + down + ".bias", C);
            if (kind == Kind::Qwen25) {
                L.w_gate = vision_matrix(f, p + "ffn_gate.weight", {C, FF});
                L.b_gate = vision_vector(f, p + "ffn_gate.bias", FF);
            }
        }

        // merger
        const int64_t C4 = 4 * C;
        post_ln_w_ = vision_vector(f, "v.post_ln.weight", C);
        if (!rms) post_ln_b_ = vision_vector(f, "v.post_ln.bias", C);
        const GGUFTensorInfo* t0 = f.find_tensor("mm.0.weight");
        const GGUFTensorInfo* t2 = f.find_tensor("mm.2.weight");
        if (!t0 || !t2) f.fail("missing projector tensor 'mm.0.weight' or 'mm.2.weight'");
        mm0_ = vision_matrix(f, "mm.0.weight", {C4, t0->ne[1]});
        mm0_b_ = vision_vector(f, "mm.0.bias", t0->ne[1]);
        mm2_ = vision_matrix(f, "mm.2.weight", {t0->ne[1], t2->ne[1]});
        mm2_b_ = vision_vector(f, "mm.2.bias", t2->ne[1]);
        cfg_.n_embd_out = t2->ne[1];
        const int64_t OUT = cfg_.n_embd_out;
        if (kind == Kind::Qwen3) {
            for (int64_t l = 0; l < cfg_.n_layer; ++l) {
                const std::string p = "v.deepstack." + std::to_string(l) + ".";
                if (!f.find_tensor(p + "fc1.weight")) continue;
                Tap t;
                t.block = l;
                t.norm_w = vision_vector(f, p + "norm.weight", C4);
                t.norm_b = vision_vector(f, p + "norm.bias", C4);
                const GGUFTensorInfo* fc1 = f.find_tensor(p + "fc1.weight");
                t.fc1 = vision_matrix(f, p + "fc1.weight", {C4, fc1->ne[1]});
                t.fc1_b = vision_vector(f, p + "fc1.bias", fc1->ne[1]);
                t.fc2 = vision_matrix(f, p + "fc2.weight", {fc1->ne[1], OUT});
                t.fc2_b = vision_vector(f, p + "fc2.bias", OUT);
                taps_.push_back(std::move(t));
            }
            for (const GGUFTensorInfo& t : f.tensors())
                if (t.name.rfind("v.deepstack.", 0) == 0) {
                    const long long b = std::atoll(t.name.c_str() + 12);
                    if (b < 0 || b >= cfg_.n_layer)
                        f.fail(strprintf("tensor '%s' names ViT block %lld; the file has %lld blocks", t.name.c_str(), b,
                                         static_cast<long long>(cfg_.n_layer)));
                }
        }
        cfg_.n_deepstack = static_cast<int>(taps_.size());
        cfg_.n_pos_axes = 3;
        cfg_.feature_layers = {cfg_.n_layer};
        cfg_.class_token = false;

        // 2-D RoPE of the ViT: D/2 pairs, pair p < D/4 on the patch row with frequency p, the rest on
        // the column with frequency p - D/4 (HF: theta 10000 over head_dim / 2)
        const int64_t D = C / cfg_.n_head, q = D / 4;
        std::vector<float> inv(static_cast<size_t>(D / 2));
        std::vector<int32_t> axis(static_cast<size_t>(D / 2));
        for (int64_t p = 0; p < D / 2; ++p) {
            const int64_t i = p % q;
            inv[static_cast<size_t>(p)] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(D / 2));
            axis[static_cast<size_t>(p)] = p < q ? 0 : 1;
        }
        inv_freq_ = Param::f32("v.rope.inv_freq", std::move(inv));
        pair_axis_ = Param::i32("v.rope.pair_axis", std::move(axis));
    }

    ParamGroups params() override {
        ParamGroups g;
        g.layers.emplace_back();
        std::vector<Param*>& v = g.layers[0];
        for (Param* p : {&patch_w_, &patch_b_, &post_ln_w_, &post_ln_b_, &mm0_, &mm0_b_, &mm2_, &mm2_b_, &inv_freq_,
                         &pair_axis_})
            v.push_back(p);
        for (Layer& L : layers_)
            for (Param* p : {&L.ln1_w, &L.ln1_b, &L.ln2_w, &L.ln2_b, &L.wq, &L.wk, &L.wv, &L.wo, &L.bq, &L.bk, &L.bv,
                             &L.bo, &L.w_gate, &L.b_gate, &L.w_up, &L.b_up, &L.w_down, &L.b_down})
                v.push_back(p);
        for (Tap& t : taps_)
            for (Param* p : {&t.norm_w, &t.norm_b, &t.fc1, &t.fc1_b, &t.fc2, &t.fc2_b}) v.push_back(p);
        return g;
    }

    void set_image_token_limits(int64_t min_tokens, int64_t max_tokens) override {
        const int64_t f = cfg_.patch_size * merge_;
        if (min_tokens < 0 || max_tokens < 0)
            throw InputError("image_min_tokens and image_max_tokens must not be negative");
        if (min_tokens > 0 && max_tokens > 0 && min_tokens > max_tokens)
            throw InputError(strprintf("image_min_tokens (%lld) is above image_max_tokens (%lld)",
                                       static_cast<long long>(min_tokens), static_cast<long long>(max_tokens)));
        constexpr int64_t kMaxTokens = int64_t{1} << 24;
        if (min_tokens > kMaxTokens || max_tokens > kMaxTokens)
            throw InputError(strprintf("image_min_tokens / image_max_tokens above %lld", static_cast<long long>(kMaxTokens)));
        // only a minimum above the default maximum: the maximum rises to it
        const int64_t hi = max_tokens > 0 ? max_tokens * f * f : std::max(default_max_, min_tokens * f * f);
        const int64_t lo = min_tokens > 0 ? min_tokens * f * f : std::min(default_min_, hi);
        min_pixels_ = lo;
        max_pixels_ = hi;
    }

    bool dynamic_resolution() const override { return true; }
    const char* image_token() const override { return "<|image_pad|>"; }

    int64_t n_image_tokens(const Image* img, int64_t max_tokens) const override {
        if (!img) throw InputError("the number of tokens of a " + cfg_.projector + " image depends on its size");
        const DynamicPreprocess pp = dyn(max_tokens);
        const int64_t f = cfg_.patch_size * merge_;
        const auto [h, w] = smart_resize(img->height, img->width, static_cast<int>(f), pp.min_pixels, pp.max_pixels);
        return (h / f) * (w / f);
    }

    std::vector<float> pixel_values(const Image& img, ImageMode, int64_t max_tokens, int64_t& rows,
                                    int64_t& cols) const override {
        DynamicPatches d = preprocess_dynamic(img, dyn(max_tokens));
        rows = d.grid_t * d.grid_h * d.grid_w;
        cols = d.row_size;
        return std::move(d.rows);
    }

    MediaItem encode(const Image& img, ImageMode, Compute& c, int64_t max_tokens) override {
        Backend& be = c.layer(0);
        // the working memory is checked before the pixels are cut into patch rows (with large
        // image_min_tokens those alone can be gigabytes)
        const DynamicPreprocess pp = dyn(max_tokens);
        const int64_t P = cfg_.patch_size;
        const auto [ph, pw] = smart_resize(img.height, img.width, static_cast<int>(P * merge_), pp.min_pixels, pp.max_pixels);
        const int64_t C = cfg_.n_embd, H = cfg_.n_head, D = C / H, FF = cfg_.n_ff, OUT = cfg_.n_embd_out;
        const int64_t gh = ph / P, gw = pw / P, N = gh * gw, K = 3 * 2 * P * P, mh = gh / 2, mw = gw / 2, M = mh * mw;
        const int64_t HID = mm0_.host().rows;
        const size_t floats = static_cast<size_t>(N * K + N * 2 * 2 + N * C * 6 + N * FF * 2 + M * HID + M * OUT +
                                                  static_cast<int64_t>(taps_.size() + 1) * M * OUT);
        c.require(be, floats * sizeof(float),
                  strprintf("encoding an image (%lldx%lld patches, %lld tokens)", static_cast<long long>(gw),
                            static_cast<long long>(gh), static_cast<long long>(M)));
        const DynamicPatches d = preprocess_dynamic(img, pp);  // the same grid (smart_resize)

        // merged-token order of the sequence the ViT runs over: raster, or (Qwen2.5) window by window
        std::vector<int32_t> order(static_cast<size_t>(M));
        std::vector<int32_t> win_of(static_cast<size_t>(M), 0);  // window of each position in `order`
        if (kind_ == Kind::Qwen25) {
            const int64_t ws = window_ / (cfg_.patch_size * merge_);
            size_t k = 0;
            int32_t w = 0;
            for (int64_t wy = 0; wy < mh; wy += ws)
                for (int64_t wx = 0; wx < mw; wx += ws, ++w)
                    for (int64_t y = wy; y < std::min(mh, wy + ws); ++y)
                        for (int64_t x = wx; x < std::min(mw, wx + ws); ++x) {
                            win_of[k] = w;
                            order[k++] = static_cast<int32_t>(y * mw + x);
                        }
        } else {
            for (int64_t m = 0; m < M; ++m) order[static_cast<size_t>(m)] = static_cast<int32_t>(m);
        }
        // the patch rows in that order, each patch's (row, column) for the RoPE, and (Qwen2.5) the key
        // range of each row's window
        std::vector<float> px(static_cast<size_t>(N * K));
        std::vector<int32_t> pos(static_cast<size_t>(N * 2)), ranges;
        for (int64_t k = 0; k < M; ++k) {
            const int64_t m = order[static_cast<size_t>(k)], my = m / mw, mx = m % mw;
            std::memcpy(px.data() + k * 4 * K, d.rows.data() + m * 4 * K, sizeof(float) * static_cast<size_t>(4 * K));
            for (int64_t j = 0; j < 4; ++j) {
                pos[static_cast<size_t>((k * 4 + j) * 2)] = static_cast<int32_t>(my * 2 + j / 2);
                pos[static_cast<size_t>((k * 4 + j) * 2 + 1)] = static_cast<int32_t>(mx * 2 + j % 2);
            }
        }
        if (kind_ == Kind::Qwen25) {
            ranges.resize(static_cast<size_t>(N * 2));
            for (int64_t k = 0; k < M;) {
                int64_t e = k;
                while (e < M && win_of[static_cast<size_t>(e)] == win_of[static_cast<size_t>(k)]) ++e;
                for (int64_t r = k * 4; r < e * 4; ++r) {
                    ranges[static_cast<size_t>(r * 2)] = static_cast<int32_t>(k * 4);
                    ranges[static_cast<size_t>(r * 2 + 1)] = static_cast<int32_t>(e * 4);
                }
                k = e;
            }
        }

        Ops ops = c.ops(be);
        const Tensor tpx = c.upload(be, kPix, px.data(), GGMLType::F32, N, K);
        Tensor x = c.scratch(be, kX, GGMLType::F32, N, C);
        ops.matmul(patch_w_, tpx, x, patch_b_ ? &patch_b_ : nullptr);
        std::vector<float> pe;
        if (kind_ == Kind::Qwen3) {
            pe = position_embedding(d.grid_h, d.grid_w);
            ops.add(x, c.upload(be, kPosEmb, pe.data(), GGMLType::F32, N, C));
        }
        const Tensor tpos = c.upload(be, kPos, pos.data(), GGMLType::I32, N, 2);
        Tensor trng;
        if (!ranges.empty()) trng = c.upload(be, kRanges, ranges.data(), GGMLType::I32, N, 2);
        RopeParams rope;
        rope.style = RopeStyle::Neox;
        rope.n_rot = D;
        rope.n_axes = 2;
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));

        Tensor xb = c.scratch(be, kXB, GGMLType::F32, N, C), q = c.scratch(be, kQ, GGMLType::F32, N, C);
        Tensor k = c.scratch(be, kK, GGMLType::F32, N, C), v = c.scratch(be, kV, GGMLType::F32, N, C);
        Tensor att = c.scratch(be, kAtt, GGMLType::F32, N, C), ff = c.scratch(be, kFF, GGMLType::F32, N, FF);
        Tensor ff2 = kind_ == Kind::Qwen25 ? c.scratch(be, kFF2, GGMLType::F32, N, FF) : Tensor{};
        MediaItem item;
        item.n_deepstack = static_cast<int>(taps_.size());
        item.deepstack.resize(static_cast<size_t>(item.n_deepstack * M * OUT));
        std::vector<float> host(static_cast<size_t>(M * OUT));
        auto norm = [&](const Tensor& in, const Param& w, const Param& b, const Tensor& out) {
            if (kind_ == Kind::Qwen25) ops.rms_norm(in, &w, cfg_.eps, out);
            else ops.layer_norm(in, &w, &b, cfg_.eps, out);
        };
        // rows of `y` [M][OUT] in the sequence's raster order into dst
        auto take = [&](const Tensor& y, float* dst) {
            Compute::download(y, host.data());
            for (int64_t kk = 0; kk < M; ++kk)
                std::memcpy(dst + static_cast<int64_t>(order[static_cast<size_t>(kk)]) * OUT, host.data() + kk * OUT,
                            sizeof(float) * static_cast<size_t>(OUT));
        };
        for (int64_t l = 0; l < cfg_.n_layer; ++l) {
            const Layer& L = layers_[static_cast<size_t>(l)];
            norm(x, L.ln1_w, L.ln1_b, xb);
            ops.matmul(L.wq, xb, q, &L.bq);
            ops.matmul(L.wk, xb, k, &L.bk);
            ops.matmul(L.wv, xb, v, &L.bv);
            ops.rope(q, H, D, tpos, inv_freq_, &pair_axis_, rope);
            ops.rope(k, H, D, tpos, inv_freq_, &pair_axis_, rope);
            const bool full = kind_ != Kind::Qwen25 || (l + 1) % wa_pattern_ == 0;
            ops.attention(q, k, v, H, H, D, full ? nullptr : &trng, scale, att);
            ops.matmul(L.wo, att, xb, &L.bo);
            ops.add(x, xb);
            norm(x, L.ln2_w, L.ln2_b, xb);
            if (kind_ == Kind::Qwen25) {
                ops.matmul(L.w_gate, xb, ff, &L.b_gate);
                ops.matmul(L.w_up, xb, ff2, &L.b_up);
                ops.glu(ff, ff2, cfg_.act);
            } else {
                ops.matmul(L.w_up, xb, ff, &L.b_up);
                ops.activation(ff, cfg_.act);
            }
            ops.matmul(L.w_down, ff, xb, &L.b_down);
            ops.add(x, xb);
            for (size_t t = 0; t < taps_.size(); ++t) {
                const Tap& T = taps_[t];
                if (T.block != l) continue;
                // DeepStack merger: the group of four as one row, normed over 4C
                Tensor g = c.scratch(be, kGroup, GGMLType::F32, M, 4 * C);
                ops.layer_norm(x.reshape(M, 4 * C), &T.norm_w, &T.norm_b, cfg_.eps, g);
                Tensor h = c.scratch(be, kHid, GGMLType::F32, M, T.fc1.host().rows);
                ops.matmul(T.fc1, g, h, &T.fc1_b);
                ops.activation(h, Activation::GELU);
                Tensor y = c.scratch(be, kOut, GGMLType::F32, M, OUT);
                ops.matmul(T.fc2, h, y, &T.fc2_b);
                take(y, item.deepstack.data() + t * static_cast<size_t>(M * OUT));
            }
        }
        // the merger: norm per patch, groups of four, mm.0 -> GELU -> mm.2
        norm(x, post_ln_w_, post_ln_b_, xb);
        Tensor h = c.scratch(be, kHid, GGMLType::F32, M, HID);
        ops.matmul(mm0_, xb.reshape(M, 4 * C), h, &mm0_b_);
        ops.activation(h, Activation::GELU);
        Tensor y = c.scratch(be, kOut, GGMLType::F32, M, OUT);
        ops.matmul(mm2_, h, y, &mm2_b_);

        item.n_rows = M;
        item.n_embd = OUT;
        item.embd.resize(static_cast<size_t>(M * OUT));
        take(y, item.embd.data());
        item.pos.resize(static_cast<size_t>(M * 3));
        for (int64_t m = 0; m < M; ++m) {
            item.pos[static_cast<size_t>(m * 3)] = 0;
            item.pos[static_cast<size_t>(m * 3 + 1)] = static_cast<int32_t>(m / mw);
            item.pos[static_cast<size_t>(m * 3 + 2)] = static_cast<int32_t>(m % mw);
        }
        return item;
    }

private:
    enum Slot { kPix, kX, kXB, kQ, kK, kV, kAtt, kFF, kFF2, kPos, kPosEmb, kRanges, kHid, kOut, kGroup };
    struct Layer {
        Param ln1_w, ln1_b, ln2_w, ln2_b, wq, wk, wv, wo, bq, bk, bv, bo, w_gate, b_gate, w_up, b_up, w_down, b_down;
    };
    struct Tap {
        int64_t block = 0;
        Param norm_w, norm_b, fc1, fc1_b, fc2, fc2_b;
    };

    DynamicPreprocess dyn(int64_t max_tokens) const {
        DynamicPreprocess p;
        p.patch_size = static_cast<int>(cfg_.patch_size);
        p.merge_size = static_cast<int>(merge_);
        p.temporal_patch_size = 2;
        p.min_pixels = min_pixels_;
        p.max_pixels = max_pixels_;
        if (max_tokens > 0) {
            const int64_t f = cfg_.patch_size * merge_;
            p.max_pixels = std::min(p.max_pixels, max_tokens * f * f);
            p.min_pixels = std::min(p.min_pixels, p.max_pixels);
        }
        for (int i = 0; i < 3; ++i) {
            p.mean[i] = cfg_.mean[i];
            p.std[i] = cfg_.std[i];
        }
        return p;
    }

    // Qwen3-VL: the learned side x side table resampled to the gh x gw patch grid (bilinear, align
    // corners, HF's taps and weights in float32), rows in the patches' 2x2-block order.
    std::vector<float> position_embedding(int64_t gh, int64_t gw) const {
        const int64_t C = cfg_.n_embd, S = side_;
        auto taps = [&](int64_t i, int64_t size, int64_t t[2], float w[2]) {
            const float src = static_cast<float>(i) * static_cast<float>(S - 1) / static_cast<float>(std::max<int64_t>(size - 1, 1));
            const float fl = std::floor(src);
            for (int o = 0; o < 2; ++o) {
                t[o] = std::clamp<int64_t>(static_cast<int64_t>(fl) + o, 0, S - 1);
                w[o] = std::max(0.0f, 1.0f - std::fabs(src - fl - static_cast<float>(o)));
            }
        };
        std::vector<float> out(static_cast<size_t>(gh * gw * C));
        const int64_t mw = gw / 2;
        for (int64_t r = 0; r < gh * gw; ++r) {
            const int64_t blk = r / 4, in = r % 4, y = (blk / mw) * 2 + in / 2, x = (blk % mw) * 2 + in % 2;
            int64_t ty[2], tx[2];
            float wy[2], wx[2];
            taps(y, gh, ty, wy);
            taps(x, gw, tx, wx);
            float* o = out.data() + r * C;
            for (int a = 0; a < 2; ++a)
                for (int b = 0; b < 2; ++b) {
                    const float w = wy[a] * wx[b];
                    const float* e = pos_table_.data() + (ty[a] * S + tx[b]) * C;
                    for (int64_t j = 0; j < C; ++j) o[j] += e[j] * w;
                }
        }
        return out;
    }

    Kind kind_;
    int64_t merge_ = 2, wa_pattern_ = 1, window_ = 112, side_ = 0;
    int64_t min_pixels_ = 0, max_pixels_ = 0, default_min_ = 0, default_max_ = 0;
    Param patch_w_, patch_b_, post_ln_w_, post_ln_b_, mm0_, mm0_b_, mm2_, mm2_b_, inv_freq_, pair_axis_;
    std::vector<float> pos_table_;
    std::vector<Layer> layers_;
    std::vector<Tap> taps_;
};

}  // namespace

std::unique_ptr<VisionModel> make_projector_qwen2vl(std::shared_ptr<const GGUFFile> file) {
    return std::make_unique<QwenVision>(std::move(file), Kind::Qwen2);
}
std::unique_ptr<VisionModel> make_projector_qwen25vl(std::shared_ptr<const GGUFFile> file) {
    return std::make_unique<QwenVision>(std::move(file), Kind::Qwen25);
}
std::unique_ptr<VisionModel> make_projector_qwen3vl(std::shared_ptr<const GGUFFile> file) {
    return std::make_unique<QwenVision>(std::move(file), Kind::Qwen3);
}

}  // namespace aircache
