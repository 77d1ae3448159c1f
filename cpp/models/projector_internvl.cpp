// models/projector_internvl.cpp — InternVL 2.5 / 3's vision side (`clip.projector_type = internvl`), as
// HF transformers' InternVLModel computes it:
//   preprocessing  HF's GotOcr2ImageProcessor with crop_to_patches (InternVLProcessor's setting; the
//                  same rule as InternVL's own dynamic_preprocess): the grid of clip.vision.preproc_
//                  min_tiles .. preproc_max_tiles tiles (defaults 1 and 12, llama.cpp's) closest to the
//                  image's aspect ratio, the image stretched over it (Pillow bicubic), tiles row-major,
//                  then the thumbnail (the whole image as one tile) when there is more than one tile
//                  (image.h canvas_grid / preprocess_canvas);
//   InternViT      per tile: the patch embedding (conv with bias), the class embedding first, the
//                  position embedding; blocks of norm1 -> attention (Q/K/V biases, or none; an RMSNorm
//                  of q and of k over the whole width when the file has attn_q_norm / attn_k_norm, as
//                  InternViT-6B) -> output projection -> times the layer scale ls1 -> residual, norm2 ->
//                  MLP (the file's activation) -> times ls2 -> residual. The norms are LayerNorms when
//                  the file stores their biases (InternViT-300M) and RMSNorms when it stores none
//                  (InternViT-6B's norm_type rms_norm; llama.cpp's converter writes no norm type). No
//                  final norm; the last layer's output without the class token is the feature grid;
//   pixel shuffle  by s = clip.vision.projector.scale_factor (1 / downsample_ratio = 2): each s x s
//                  block of patches becomes one token whose features are the block's patches, row offset
//                  outer, column offset inner (HF's pixel_shuffle, ps_version v2);
//   projector      mm.model.mlp.0 (LayerNorm, eps 1e-5), mm.model.mlp.1 (Linear), GELU (erf), mm.model.
//                  mlp.3 (Linear).
// A tile is (image_size / patch_size / s)^2 tokens (256 for the real 448 px / 14 px / 2). In the
// prompt an image is "<img>" + "<IMG_CONTEXT>" x (all its tiles' tokens) + "</img>", as
// InternVLProcessor writes it: the context tokens are the image's rows, <img> and </img> are text.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "tensor.h"
#include "vision_model.h"

namespace aircache {

namespace {

constexpr int64_t kMaxImageSize = 8192, kMaxWidth = 1 << 16, kMaxLayers = 256, kMaxHeads = 256, kMaxTiles = 256;
constexpr float kProjectorEps = 1e-5f;  // HF's nn.LayerNorm default (the projector's mlp1.0)
constexpr float kQkNormEps = 1e-6f;     // HF's InternVLVisionRMSNorm default (q_norm / k_norm)

class InternVLVision final : public VisionModel {
public:
    explicit InternVLVision(std::shared_ptr<const GGUFFile> file) : VisionModel(std::move(file)) {
        const GGUFFile& f = *file_;
        VisionConfig& c = cfg_;
        c.projector = "internvl";
        c.image_size = vision_bounded(f, "clip.vision.image_size", f.get_u32("clip.vision.image_size"), 1, kMaxImageSize);
        c.patch_size = vision_bounded(f, "clip.vision.patch_size", f.get_u32("clip.vision.patch_size"), 1, c.image_size);
        c.n_embd = vision_bounded(f, "clip.vision.embedding_length", f.get_u32("clip.vision.embedding_length"), 1, kMaxWidth);
        c.n_head = vision_bounded(f, "clip.vision.attention.head_count", f.get_u32("clip.vision.attention.head_count"), 1,
                                  kMaxHeads);
        if (c.n_embd % c.n_head != 0)
            f.fail(strprintf("clip.vision.embedding_length %lld is not a multiple of clip.vision.attention.head_count %lld",
                             static_cast<long long>(c.n_embd), static_cast<long long>(c.n_head)));
        c.n_layer = vision_bounded(f, "clip.vision.block_count", f.get_u32("clip.vision.block_count"), 1, kMaxLayers);
        f.check_block_tensors("v.blk.", c.n_layer, "key 'clip.vision.block_count'");
        const std::string last = "v.blk." + std::to_string(c.n_layer - 1) + ".ln1.weight";
        if (!f.find_tensor(last))
            f.fail(strprintf("key 'clip.vision.block_count' is %lld but the file has no layer %lld (missing tensor '%s')",
                             static_cast<long long>(c.n_layer), static_cast<long long>(c.n_layer - 1), last.c_str()));
        c.eps = f.get_f32("clip.vision.attention.layer_norm_epsilon", 1e-6f);
        if (!(c.eps > 0.0f && c.eps < 1.0f))
            f.fail(strprintf("key 'clip.vision.attention.layer_norm_epsilon' is %g, outside (0, 1)", c.eps));
        c.mean[0] = 0.485f, c.mean[1] = 0.456f, c.mean[2] = 0.406f;  // InternVL's (ImageNet) when the file has none
        c.std[0] = 0.229f, c.std[1] = 0.224f, c.std[2] = 0.225f;
        read_image_mean_std(f, c);
        const bool gelu = f.get_bool("clip.use_gelu", false), silu = f.get_bool("clip.use_silu", false);
        if (gelu && silu) f.fail("both clip.use_gelu and clip.use_silu are set");
        if (!gelu && !silu)  // llama.cpp's converter writes one of them (it refuses other activations)
            f.fail("neither clip.use_gelu nor clip.use_silu is set (an internvl tower's MLP activation)");
        c.act = gelu ? Activation::GELU : Activation::SiLU;

        const int64_t C = c.n_embd, P = c.patch_size, side = c.image_size / c.patch_size;
        c.n_patches = side * side;
        c.class_token = true;
        const int64_t T = c.n_patches + 1;

        // embeddings: the conv kernel ne [P, P, 3, C] used as a [C][3*P*P] matrix, its bias, the class
        // embedding, the position table [T][C] (the class token's row first)
        const GGUFTensorInfo* pt = f.find_tensor("v.patch_embd.weight");
        if (!pt) f.fail("missing tensor 'v.patch_embd.weight'");
        if (!(pt->ne[0] == P && pt->ne[1] == P && pt->ne[2] == 3 && pt->ne[3] == C))
            f.fail("tensor 'v.patch_embd.weight' has shape " + pt->shape_str() +
                   strprintf(", expected [%lld, %lld, 3, %lld] (clip.vision.patch_size, clip.vision.embedding_length)",
                             static_cast<long long>(P), static_cast<long long>(P), static_cast<long long>(C)));
        if (pt->info->block_size != 1)
            throw UnsupportedError(f.path() + ": a quantized patch embedding (" + pt->info->name + ") is not supported");
        require_supported(pt->type, "tensor 'v.patch_embd.weight' in " + f.path());
        patch_w_ = Param::view("v.patch_embd.weight", pt->data, pt->type, C, 3 * P * P);
        patch_b_ = vision_vector(f, "v.patch_embd.bias", C);
        class_embd_ = vision_vector(f, "v.class_embd", C);
        const GGUFTensorInfo* pe = f.find_tensor("v.position_embd.weight");
        if (pe && pe->n_elements != C * T)
            f.fail(strprintf("tensor 'v.position_embd.weight' has shape %s: %lld rows of %lld, but clip.vision.image_size "
                             "%lld / patch_size %lld gives %lld x %lld patches + the class token = %lld",
                             pe->shape_str().c_str(), static_cast<long long>(pe->n_elements / std::max<int64_t>(C, 1)),
                             static_cast<long long>(C), static_cast<long long>(c.image_size),
                             static_cast<long long>(P), static_cast<long long>(side), static_cast<long long>(side),
                             static_cast<long long>(T)));
        pos_embd_ = vision_vector(f, "v.position_embd.weight", C * T);
        pos_embd_ = Param::f32("v.position_embd.weight",
                               std::vector<float>(pos_embd_.host_f32(), pos_embd_.host_f32() + C * T), T);

        // blocks: the FFN width from the tensors; norms LayerNorm (biases) or RMSNorm (none), Q/K/V
        // biases and the q/k norms present in every layer or in none
        const GGUFTensorInfo* up0 = f.find_tensor("v.blk.0.ffn_up.weight");
        if (!up0) f.fail("missing tensor 'v.blk.0.ffn_up.weight'");
        c.n_ff = up0->ne[1];
        if (c.n_ff < 1 || c.n_ff > (int64_t(1) << 20))
            f.fail("tensor 'v.blk.0.ffn_up.weight' has shape " + up0->shape_str() + ": its width is out of range");
        layer_norm_ = f.find_tensor("v.blk.0.ln1.bias") != nullptr;
        qkv_bias_ = f.find_tensor("v.blk.0.attn_q.bias") != nullptr;
        qk_norm_ = f.find_tensor("v.blk.0.attn_q_norm.weight") != nullptr;
        auto same = [&](const std::string& name, bool want, const char* what) {
            if ((f.find_tensor(name) != nullptr) != want)
                f.fail(strprintf("tensor '%s' is %s, but layer 0 %s %s: every layer must have the same kind", name.c_str(),
                                 want ? "missing" : "present", want ? "has" : "has no", what));
        };
        layers_.assign(static_cast<size_t>(c.n_layer), Layer{});
        for (int64_t l = 0; l < c.n_layer; ++l) {
            const std::string p = "v.blk." + std::to_string(l) + ".";
            Layer& L = layers_[static_cast<size_t>(l)];
            for (const char* n : {"ln1.bias", "ln2.bias"}) same(p + n, layer_norm_, "norm biases (LayerNorm)");
            for (const char* n : {"attn_q.bias", "attn_k.bias", "attn_v.bias"}) same(p + n, qkv_bias_, "Q/K/V biases");
            for (const char* n : {"attn_q_norm.weight", "attn_k_norm.weight"}) same(p + n, qk_norm_, "q/k norms");
            L.ln1_w = vision_vector(f, p + "ln1.weight", C);
            L.ln2_w = vision_vector(f, p + "ln2.weight", C);
            if (layer_norm_) {
                L.ln1_b = vision_vector(f, p + "ln1.bias", C);
                L.ln2_b = vision_vector(f, p + "ln2.bias", C);
            }
            L.wq = vision_matrix(f, p + "attn_q.weight", {C, C});
            L.wk = vision_matrix(f, p + "attn_k.weight", {C, C});
            L.wv = vision_matrix(f, p + "attn_v.weight", {C, C});
            L.wo = vision_matrix(f, p + "attn_out.weight", {C, C});
            if (qkv_bias_) {
                L.bq = vision_vector(f, p + "attn_q.bias", C);
                L.bk = vision_vector(f, p + "attn_k.bias", C);
                L.bv = vision_vector(f, p + "attn_v.bias", C);
            }
            L.bo = vision_vector(f, p + "attn_out.bias", C);
            if (qk_norm_) {
                L.q_norm = vision_vector(f, p + "attn_q_norm.weight", C);
                L.k_norm = vision_vector(f, p + "attn_k_norm.weight", C);
            }
            L.ls1 = vision_vector(f, p + "ls1.weight", C);
            L.ls2 = vision_vector(f, p + "ls2.weight", C);
            L.w_up = vision_matrix(f, p + "ffn_up.weight", {C, c.n_ff});
            L.b_up = vision_vector(f, p + "ffn_up.bias", c.n_ff);
            L.w_down = vision_matrix(f, p + "ffn_down.weight", {c.n_ff, C});
            L.b_down = vision_vector(f, p + "ffn_down.bias", C);
        }

        // pixel shuffle factor and the projector: LayerNorm over C s^2, Linear to the text width, GELU, Linear
        const char* kScale = "clip.vision.projector.scale_factor";
        const char* kNorm = "mm.model.mlp.0.weight";
        const GGUFTensorInfo* norm = f.find_tensor(kNorm);
        if (!norm) f.fail(std::string("missing projector tensor '") + kNorm + "'");
        if (f.has(kScale)) {
            s_ = vision_bounded(f, kScale, f.get_u32(kScale), 1, side);
        } else {  // the factor the projector's input width implies
            s_ = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(norm->n_elements) / static_cast<double>(C))));
            if (s_ < 1 || s_ * s_ * C != norm->n_elements)
                f.fail(strprintf("key '%s' is missing and tensor '%s' (shape %s) is no square multiple of "
                                 "clip.vision.embedding_length %lld wide", kScale, kNorm, norm->shape_str().c_str(),
                                 static_cast<long long>(C)));
        }
        if (side % s_ != 0)
            f.fail(strprintf("key '%s' is %lld, which does not divide the %lld x %lld patch grid of a tile "
                             "(clip.vision.image_size %lld / patch_size %lld)", kScale, static_cast<long long>(s_),
                             static_cast<long long>(side), static_cast<long long>(side),
                             static_cast<long long>(c.image_size), static_cast<long long>(c.patch_size)));
        const int64_t CS = C * s_ * s_;
        if (norm->n_elements != CS)
            f.fail(strprintf("tensor '%s' has shape %s: the projector takes %lld features per token, but key '%s' = "
                             "%lld with clip.vision.embedding_length %lld gives %lld", kNorm, norm->shape_str().c_str(),
                             static_cast<long long>(norm->n_elements), kScale, static_cast<long long>(s_),
                             static_cast<long long>(C), static_cast<long long>(CS)));
        mm_norm_w_ = vision_vector(f, kNorm, CS);
        mm_norm_b_ = vision_vector(f, "mm.model.mlp.0.bias", CS);
        const GGUFTensorInfo* fc1 = f.find_tensor("mm.model.mlp.1.weight");
        if (!fc1) f.fail("missing projector tensor 'mm.model.mlp.1.weight'");
        const int64_t OUT = fc1->ne[1];
        if (OUT < 1 || OUT > (int64_t(1) << 20))
            f.fail("tensor 'mm.model.mlp.1.weight' has shape " + fc1->shape_str() + ": its output width is out of range");
        mm_fc1_ = vision_matrix(f, "mm.model.mlp.1.weight", {CS, OUT});
        mm_fc1_b_ = vision_vector(f, "mm.model.mlp.1.bias", OUT);
        mm_fc2_ = vision_matrix(f, "mm.model.mlp.3.weight", {OUT, OUT});
        mm_fc2_b_ = vision_vector(f, "mm.model.mlp.3.bias", OUT);
        if (f.has("clip.vision.projection_dim") && f.get_u32("clip.vision.projection_dim") != static_cast<uint64_t>(OUT))
            f.fail(strprintf("key 'clip.vision.projection_dim' is %u but tensor 'mm.model.mlp.1.weight' projects to %lld",
                             f.get_u32("clip.vision.projection_dim"), static_cast<long long>(OUT)));
        c.n_embd_out = OUT;
        c.n_tokens = (side / s_) * (side / s_);  // per tile

        // the tiles: llama.cpp's keys and defaults (1 .. 12, the checkpoints' min/max_dynamic_patch)
        const char* kMin = "clip.vision.preproc_min_tiles";
        const char* kMax = "clip.vision.preproc_max_tiles";
        canvas_.tile = static_cast<int>(c.image_size);
        canvas_.min_tiles = static_cast<int>(f.has(kMin) ? vision_bounded(f, kMin, f.get_u32(kMin), 1, kMaxTiles) : 1);
        canvas_.max_tiles = static_cast<int>(f.has(kMax) ? vision_bounded(f, kMax, f.get_u32(kMax), 1, kMaxTiles) : 12);
        if (canvas_.min_tiles > canvas_.max_tiles)
            f.fail(strprintf("key '%s' is %d, more than '%s' = %d", kMin, canvas_.min_tiles, kMax, canvas_.max_tiles));
        if (int64_t(canvas_.max_tiles) * c.image_size * c.image_size > kMaxImagePixels)
            f.fail(strprintf("key '%s' is %d: %d tiles of %lld px (clip.vision.image_size) are more pixels than an image "
                             "may have", kMax, canvas_.max_tiles, canvas_.max_tiles, static_cast<long long>(c.image_size)));
        for (int i = 0; i < 3; ++i) {
            canvas_.mean[i] = c.mean[i];
            canvas_.std[i] = c.std[i];
        }

        // pixel shuffle as a row gather: row ((i' * n + j') * s + m) * s + k of the gathered patches is
        // patch (i' s + m, j' s + k), so the gathered [patches][C] viewed as [tokens][C s^2] is HF's output
        const int64_t n = side / s_;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j)
                for (int64_t m = 0; m < s_; ++m)
                    for (int64_t k = 0; k < s_; ++k) shuffle_.push_back(static_cast<int32_t>((i * s_ + m) * side + j * s_ + k));
    }

    ParamGroups params() override {
        ParamGroups g;
        g.layers.emplace_back();
        std::vector<Param*>& v = g.layers[0];
        for (Param* p : {&patch_w_, &patch_b_, &class_embd_, &pos_embd_, &mm_norm_w_, &mm_norm_b_, &mm_fc1_, &mm_fc1_b_,
                         &mm_fc2_, &mm_fc2_b_})
            v.push_back(p);
        for (Layer& L : layers_)
            for (Param* p : {&L.ln1_w, &L.ln1_b, &L.ln2_w, &L.ln2_b, &L.wq, &L.wk, &L.wv, &L.wo, &L.bq, &L.bk, &L.bv,
                             &L.bo, &L.q_norm, &L.k_norm, &L.ls1, &L.ls2, &L.w_up, &L.b_up, &L.w_down, &L.b_down})
                v.push_back(p);
        return g;
    }

    bool has_markup() const override { return true; }
    const char* image_token() const override { return "<IMG_CONTEXT>"; }

    int64_t n_image_tokens(const Image* img, int64_t) const override {
        const Image& im = image(img, "number of tokens");
        return canvas_tiles(im.width, im.height, canvas_) * cfg_.n_tokens;
    }

    std::string image_text(const Image* img) const override {
        const int64_t n = n_image_tokens(img, 0);
        std::string s = "<img>";
        s.reserve(static_cast<size_t>(n) * 13 + 11);
        for (int64_t i = 0; i < n; ++i) s += image_token();
        return s + "</img>";
    }

    std::vector<float> pixel_values(const Image& img, ImageMode, int64_t, int64_t& rows, int64_t& cols) const override {
        std::vector<float> px = preprocess_canvas(img, canvas_);
        rows = static_cast<int64_t>(px.size()) / cfg_.image_size;
        cols = cfg_.image_size;
        return px;
    }

    MediaItem encode(const Image& img, ImageMode, Compute& c, int64_t) override {
        Backend& be = c.layer(0);
        const VisionConfig& v = cfg_;
        const int64_t n_tiles = canvas_tiles(img.width, img.height, canvas_);
        const int64_t NT = v.n_tokens, NP = v.n_patches, C = v.n_embd, T = NP + 1, S = v.image_size;
        const int64_t OUT = v.n_embd_out, FF = v.n_ff;
        size_t floats = static_cast<size_t>(T * C * 6 + T * FF + NP * C + 2 * NT * OUT);  // x xb q k v att, ff, shuffle, out
        if (!be.is_host()) floats += static_cast<size_t>(3 * S * S);
        c.require(be, floats * sizeof(float) + sizeof(int32_t) * static_cast<size_t>(NP),
                  strprintf("encoding an image (%lld tiles of %lldx%lld patches)", static_cast<long long>(n_tiles),
                            static_cast<long long>(S / v.patch_size), static_cast<long long>(S / v.patch_size)));
        const std::vector<float> px = preprocess_canvas(img, canvas_);
        MediaItem m;
        m.n_rows = n_tiles * NT;
        m.n_embd = OUT;
        m.embd.resize(static_cast<size_t>(m.n_rows * OUT));
        Ops ops = c.ops(be);
        const Tensor idx = c.upload(be, kIdx, shuffle_.data(), GGMLType::I32, NP, 1);
        for (int64_t t = 0; t < n_tiles; ++t) {
            const Tensor x = tower(px.data() + static_cast<size_t>(t * 3 * S * S), c, be);
            Tensor shuffled = c.scratch(be, kShuffle, GGMLType::F32, NP, C);
            ops.get_rows(x.slice_rows(1, NP), idx, shuffled);  // the class token dropped
            const Tensor tok = shuffled.reshape(NT, C * s_ * s_);
            ops.layer_norm(tok, &mm_norm_w_, &mm_norm_b_, kProjectorEps, tok);
            Tensor h = c.scratch(be, kH, GGMLType::F32, NT, OUT);
            ops.matmul(mm_fc1_, tok, h, &mm_fc1_b_);
            ops.activation(h, Activation::GELU);
            Tensor y = c.scratch(be, kOut, GGMLType::F32, NT, OUT);
            ops.matmul(mm_fc2_, h, y, &mm_fc2_b_);
            Compute::download(y, m.embd.data() + static_cast<size_t>(t * NT * OUT));
        }
        return m;
    }

private:
    enum Slot { kPix, kX, kXB, kQ, kK, kV, kAtt, kFF, kIdx, kShuffle, kH, kOut };
    struct Layer {
        Param ln1_w, ln1_b, ln2_w, ln2_b, bq, bk, bv, bo, q_norm, k_norm, ls1, ls2, b_up, b_down;
        Param wq, wk, wv, wo, w_up, w_down;
    };

    const Image& image(const Image* img, const char* what) const {
        if (!img)
            throw InputError(strprintf("the %s of an internvl image depends on its size (its tiles): pass the image", what));
        return *img;
    }

    // One tile (host CHW [3][S][S], normalised) through InternViT: its last hidden state [1 + NP][C] on `be`
    // (the class token's row first).
    Tensor tower(const float* pixels, Compute& c, Backend& be) {
        const VisionConfig& v = cfg_;
        const int64_t C = v.n_embd, S = v.image_size, NP = v.n_patches, T = NP + 1, H = v.n_head, D = C / H;
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
        Ops ops = c.ops(be);
        const Tensor px = c.upload(be, kPix, pixels, GGMLType::F32, 3 * S, S);
        Tensor x = c.scratch(be, kX, GGMLType::F32, T, C);
        ops.patch_embed(px, 3, S, S, v.patch_size, patch_w_, &patch_b_, x.slice_rows(1, NP));
        be.copy(x.data, class_embd_.on(be).data, sizeof(float) * static_cast<size_t>(C));
        ops.add(x, pos_embd_);
        Tensor xb = c.scratch(be, kXB, GGMLType::F32, T, C), q = c.scratch(be, kQ, GGMLType::F32, T, C);
        Tensor k = c.scratch(be, kK, GGMLType::F32, T, C), val = c.scratch(be, kV, GGMLType::F32, T, C);
        Tensor att = c.scratch(be, kAtt, GGMLType::F32, T, C), ff = c.scratch(be, kFF, GGMLType::F32, T, v.n_ff);
        auto norm = [&](const Tensor& in, const Param& w, const Param& b, const Tensor& out) {
            if (layer_norm_) ops.layer_norm(in, &w, &b, v.eps, out);
            else ops.rms_norm(in, &w, v.eps, out);
        };
        for (const Layer& L : layers_) {
            norm(x, L.ln1_w, L.ln1_b, xb);
            ops.matmul(L.wq, xb, q, qkv_bias_ ? &L.bq : nullptr);
            ops.matmul(L.wk, xb, k, qkv_bias_ ? &L.bk : nullptr);
            ops.matmul(L.wv, xb, val, qkv_bias_ ? &L.bv : nullptr);
            if (qk_norm_) {  // over the whole width, before the heads are split (HF, the original InternAttention)
                ops.rms_norm(q, &L.q_norm, kQkNormEps, q);
                ops.rms_norm(k, &L.k_norm, kQkNormEps, k);
            }
            ops.attention(q, k, val, H, H, D, nullptr, scale, att);
            ops.matmul(L.wo, att, xb, &L.bo);
            ops.mul(xb, L.ls1);
            ops.add(x, xb);
            norm(x, L.ln2_w, L.ln2_b, xb);
            ops.matmul(L.w_up, xb, ff, &L.b_up);
            ops.activation(ff, v.act);
            ops.matmul(L.w_down, ff, xb, &L.b_down);
            ops.mul(xb, L.ls2);
            ops.add(x, xb);
        }
        return x;
    }

    Param patch_w_, patch_b_, class_embd_, pos_embd_;
    Param mm_norm_w_, mm_norm_b_, mm_fc1_, mm_fc1_b_, mm_fc2_, mm_fc2_b_;
    std::vector<Layer> layers_;
    bool layer_norm_ = true, qkv_bias_ = true, qk_norm_ = false;
    int64_t s_ = 2;
    CanvasPreprocess canvas_;
    std::vector<int32_t> shuffle_;
};

}  // namespace

std::unique_ptr<VisionModel> make_projector_internvl(std::shared_ptr<const GGUFFile> file) {
    return std::make_unique<InternVLVision>(std::move(file));
}

}  // namespace aircache
