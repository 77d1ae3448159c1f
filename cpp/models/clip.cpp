#include "models/clip.h"

#include <algorithm>
#include <cmath>

#include "common.h"

namespace aircache {

namespace {
constexpr int64_t kMaxImageSize = 8192, kMaxWidth = 1 << 16, kMaxLayers = 256, kMaxHeads = 256;
}  // namespace

void ClipTower::load(const GGUFFile& f, VisionConfig& c) {
    c.image_size = vision_bounded(f, "clip.vision.image_size", f.get_u32("clip.vision.image_size"), 1, kMaxImageSize);
    c.patch_size = vision_bounded(f, "clip.vision.patch_size", f.get_u32("clip.vision.patch_size"), 1, c.image_size);
    // a size that is not a multiple of the patch leaves its last pixels out, as HF's strided conv does
    // (SigLIP-so400m at 384 px / 14: 27 x 27 patches, SmolVLM2-2.2B's tiles)
    c.n_embd = vision_bounded(f, "clip.vision.embedding_length", f.get_u32("clip.vision.embedding_length"), 1, kMaxWidth);
    c.n_head = vision_bounded(f, "clip.vision.attention.head_count", f.get_u32("clip.vision.attention.head_count"), 1,
                              kMaxHeads);
    if (c.n_embd % c.n_head != 0)
        f.fail(strprintf("clip.vision.embedding_length %lld is not a multiple of clip.vision.attention.head_count %lld",
                         static_cast<long long>(c.n_embd), static_cast<long long>(c.n_head)));
    const int64_t n_stored = vision_bounded(f, "clip.vision.block_count", f.get_u32("clip.vision.block_count"), 1, kMaxLayers);
    f.check_block_tensors("v.blk.", n_stored, "key 'clip.vision.block_count'");
    c.eps = f.get_f32("clip.vision.attention.layer_norm_epsilon", 1e-5f);
    if (!(c.eps > 0.0f && c.eps < 1.0f))  // NaN fails too
        f.fail(strprintf("key 'clip.vision.attention.layer_norm_epsilon' is %g, outside (0, 1)", c.eps));
    read_image_mean_std(f, c);
    const bool gelu = f.get_bool("clip.use_gelu", false), silu = f.get_bool("clip.use_silu", false);
    if (gelu && silu) f.fail("both clip.use_gelu and clip.use_silu are set");
    c.act = gelu ? Activation::GELU : silu ? Activation::SiLU : Activation::QuickGELU;

    // Which hidden states feed the projector: explicit indices, or the last stored layer's output.
    c.feature_layers.clear();
    if (f.has("clip.vision.feature_layer")) {
        for (int64_t k : f.get_int_array("clip.vision.feature_layer")) {
            if (k < 0 || k > n_stored)
                f.fail(strprintf("clip.vision.feature_layer lists hidden state %lld; the file stores %lld layers",
                                 static_cast<long long>(k), static_cast<long long>(n_stored)));
            c.feature_layers.push_back(k);
        }
        if (c.feature_layers.empty()) f.fail("clip.vision.feature_layer is empty");
        c.n_layer = *std::max_element(c.feature_layers.begin(), c.feature_layers.end());
    } else {
        c.n_layer = n_stored;
        c.feature_layers = {n_stored};
    }

    const int64_t C = c.n_embd, P = c.patch_size, side = c.image_size / c.patch_size;
    c.n_patches = side * side;
    c.class_token = f.find_tensor("v.class_embd") != nullptr;
    const int64_t T = c.n_patches + (c.class_token ? 1 : 0);

    // patch embedding: conv kernel ne [P, P, 3, C] used as a [C][3*P*P] matrix
    const GGUFTensorInfo* pt = f.find_tensor("v.patch_embd.weight");
    if (!pt) f.fail("missing tensor 'v.patch_embd.weight'");
    if (!(pt->ne[0] == P && pt->ne[1] == P && pt->ne[2] == 3 && pt->ne[3] == C))
        f.fail("tensor 'v.patch_embd.weight' has shape " + pt->shape_str() + strprintf(", expected [%lld, %lld, 3, %lld]",
               static_cast<long long>(P), static_cast<long long>(P), static_cast<long long>(C)));
    if (pt->info->block_size != 1)
        throw UnsupportedError(f.path() + ": a quantized patch embedding (" + pt->info->name + ") is not supported");
    require_supported(pt->type, "tensor 'v.patch_embd.weight' in " + f.path());
    patch_w_ = Param::view("v.patch_embd.weight", pt->data, pt->type, C, 3 * P * P);
    patch_b_ = vision_vector(f, "v.patch_embd.bias", C, false);
    if (c.class_token) class_embd_ = vision_vector(f, "v.class_embd", C);
    pos_embd_ = vision_vector(f, "v.position_embd.weight", C * T);
    pos_embd_ = Param::f32("v.position_embd.weight",
                           std::vector<float>(pos_embd_.host_f32(), pos_embd_.host_f32() + C * T), T);
    pre_ln_w_ = vision_vector(f, "v.pre_ln.weight", C, false);
    pre_ln_b_ = vision_vector(f, "v.pre_ln.bias", C, static_cast<bool>(pre_ln_w_));
    post_ln_w_ = vision_vector(f, "v.post_ln.weight", C, false);
    post_ln_b_ = vision_vector(f, "v.post_ln.bias", C, static_cast<bool>(post_ln_w_));

    // encoder layers (FFN width from the tensors: the converter's feed_forward_length is not trusted)
    const GGUFTensorInfo* up0 = f.find_tensor("v.blk.0.ffn_up.weight");
    const GGUFTensorInfo* down0 = f.find_tensor("v.blk.0.ffn_down.weight");
    if (!up0 || !down0) f.fail("missing tensor 'v.blk.0.ffn_up.weight' or 'v.blk.0.ffn_down.weight'");
    // llama.cpp's rule for legacy LLaVA files: the up projection is the matrix whose input (ne[0]) is n_embd
    const bool swapped = down0->ne[0] == C && up0->ne[0] != C;
    c.n_ff = swapped ? down0->ne[1] : up0->ne[1];
    layers_.assign(static_cast<size_t>(c.n_layer), Layer{});
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const std::string p = "v.blk." + std::to_string(l) + ".";
        Layer& L = layers_[static_cast<size_t>(l)];
        L.ln1_w = vision_vector(f, p + "ln1.weight", C);
        L.ln1_b = vision_vector(f, p + "ln1.bias", C);
        L.ln2_w = vision_vector(f, p + "ln2.weight", C);
        L.ln2_b = vision_vector(f, p + "ln2.bias", C);
        L.wq = vision_matrix(f, p + "attn_q.weight", {C, C});
        L.wk = vision_matrix(f, p + "attn_k.weight", {C, C});
        L.wv = vision_matrix(f, p + "attn_v.weight", {C, C});
        L.wo = vision_matrix(f, p + "attn_out.weight", {C, C});
        L.bq = vision_vector(f, p + "attn_q.bias", C);
        L.bk = vision_vector(f, p + "attn_k.bias", C);
        L.bv = vision_vector(f, p + "attn_v.bias", C);
        L.bo = vision_vector(f, p + "attn_out.bias", C);
        const std::string up = swapped ? "ffn_down" : "ffn_up", down = swapped ? "ffn_up" : "ffn_down";
        L.w_up = vision_matrix(f, p + up + ".weight", {C, c.n_ff});
        L.w_down = vision_matrix(f, p + down + ".weight", {c.n_ff, C});
        L.b_up = vision_vector(f, p + up + ".bias", c.n_ff);
        L.b_down = vision_vector(f, p + down + ".bias", C);
    }
    cfg_ = c;
}

void ClipTower::add_params(std::vector<Param*>& g) {
    for (Param* p : {&patch_w_, &patch_b_, &class_embd_, &pos_embd_, &pre_ln_w_, &pre_ln_b_, &post_ln_w_, &post_ln_b_})
        g.push_back(p);
    for (Layer& L : layers_)
        for (Param* p : {&L.ln1_w, &L.ln1_b, &L.ln2_w, &L.ln2_b, &L.bq, &L.bk, &L.bv, &L.bo, &L.b_up, &L.b_down, &L.wq,
                         &L.wk, &L.wv, &L.wo, &L.w_up, &L.w_down})
            g.push_back(p);
}

size_t ClipTower::work_bytes(const Backend& be) const {
    const VisionConfig& v = cfg_;
    const size_t C = static_cast<size_t>(v.n_embd), S = static_cast<size_t>(v.image_size);
    const size_t NP = static_cast<size_t>(v.n_patches), T = NP + (v.class_token ? 1 : 0);
    const size_t nf = v.feature_layers.size(), FF = static_cast<size_t>(v.n_ff);
    size_t floats = T * C * 5 + T * FF + nf * NP * C;  // x, q, k, v, att; ff; the features
    floats += std::max(T * C, nf > 1 ? NP * C * nf : 0);  // xb (the concatenation reuses it)
    if (!be.is_host()) floats += 3 * S * S;
    return floats * sizeof(float);
}

Tensor ClipTower::forward(const float* pixels, Compute& c, Backend& be) {
    const VisionConfig& v = cfg_;
    const int64_t C = v.n_embd, S = v.image_size, NP = v.n_patches, cls = v.class_token ? 1 : 0, T = NP + cls;
    const int64_t H = v.n_head, D = C / H, FF = v.n_ff;
    const int64_t nf = static_cast<int64_t>(v.feature_layers.size());
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    Ops ops = c.ops(be);

    // embeddings: patches (the conv), the class embedding first, position embeddings, pre-LN
    const Tensor px = c.upload(be, kPix, pixels, GGMLType::F32, 3 * S, S);
    Tensor x = c.scratch(be, kX, GGMLType::F32, T, C);
    ops.patch_embed(px, 3, S, S, v.patch_size, patch_w_, &patch_b_, x.slice_rows(cls, NP));
    if (cls) be.copy(x.data, class_embd_.on(be).data, sizeof(float) * static_cast<size_t>(C));
    ops.add(x, pos_embd_);
    if (pre_ln_w_) ops.layer_norm(x, &pre_ln_w_, &pre_ln_b_, v.eps, x);

    // features: hidden states by index (0 = after pre-LN), concatenated in the listed order
    std::vector<Tensor> feats(static_cast<size_t>(nf));
    auto take = [&](int64_t hidden_index) {
        for (int64_t i = 0; i < nf; ++i)
            if (v.feature_layers[static_cast<size_t>(i)] == hidden_index) {
                Tensor f = c.scratch(be, kFeat0 + static_cast<int>(i), GGMLType::F32, NP, C);
                be.copy(f.data, x.slice_rows(cls, NP).data, f.bytes());
                feats[static_cast<size_t>(i)] = f;
            }
    };
    take(0);

    Tensor xb = c.scratch(be, kXB, GGMLType::F32, T, C), q = c.scratch(be, kQ, GGMLType::F32, T, C);
    Tensor k = c.scratch(be, kK, GGMLType::F32, T, C), val = c.scratch(be, kV, GGMLType::F32, T, C);
    Tensor att = c.scratch(be, kAtt, GGMLType::F32, T, C), ff = c.scratch(be, kFF, GGMLType::F32, T, FF);
    for (int64_t l = 0; l < v.n_layer; ++l) {
        const Layer& L = layers_[static_cast<size_t>(l)];
        ops.layer_norm(x, &L.ln1_w, &L.ln1_b, v.eps, xb);
        ops.matmul(L.wq, xb, q, &L.bq);
        ops.matmul(L.wk, xb, k, &L.bk);
        ops.matmul(L.wv, xb, val, &L.bv);
        ops.attention(q, k, val, H, H, D, nullptr, scale, att);
        ops.matmul(L.wo, att, xb, &L.bo);
        ops.add(x, xb);
        ops.layer_norm(x, &L.ln2_w, &L.ln2_b, v.eps, xb);
        ops.matmul(L.w_up, xb, ff, &L.b_up);
        ops.activation(ff, v.act);
        ops.matmul(L.w_down, ff, xb, &L.b_down);
        ops.add(x, xb);
        if (l + 1 == v.n_layer && post_ln_w_) ops.layer_norm(x, &post_ln_w_, &post_ln_b_, v.eps, x);
        take(l + 1);
    }
    if (nf == 1) return feats[0];
    Tensor out = c.scratch(be, kXB, GGMLType::F32, NP, C * nf);
    ops.concat(feats, out);
    return out;
}

}  // namespace aircache
