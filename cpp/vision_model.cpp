#include "vision_model.h"

#include <algorithm>
#include <cstring>

#include "common.h"
#include "gpu_model.h"

namespace aircache {

namespace {

constexpr int64_t kMaxImageSize = 8192, kMaxWidth = 1 << 16, kMaxLayers = 256, kMaxHeads = 256;

int64_t bounded(const GGUFFile& f, const std::string& key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        f.fail(strprintf("key '%s' is %lld, outside the sane range [%lld, %lld]", key.c_str(), static_cast<long long>(v),
                         static_cast<long long>(lo), static_cast<long long>(hi)));
    return v;
}

std::string shape_of(const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

}  // namespace

VisionModel::~VisionModel() = default;

Weight VisionModel::weight(const std::string& name, std::vector<int64_t> ne) const {
    const GGUFTensorInfo* t = file_->find_tensor(name);
    if (!t) file_->fail("missing tensor '" + name + "'");
    bool ok = ne.size() <= 4;
    for (size_t i = 0; ok && i < 4; ++i) ok = t->ne[i] == (i < ne.size() ? ne[i] : 1);
    if (!ok) file_->fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected " + shape_of(ne));
    return Weight::from(*t, file_->path());
}

std::vector<float> VisionModel::vec(const std::string& name, int64_t n, bool required) const {
    const GGUFTensorInfo* t = file_->find_tensor(name);
    if (!t) {
        if (required) file_->fail("missing tensor '" + name + "'");
        return {};
    }
    if (t->n_elements != n)
        file_->fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected " + std::to_string(n) + " elements");
    return dequantize_tensor(*t, file_->path());
}

std::unique_ptr<VisionModel> VisionModel::load(std::shared_ptr<const GGUFFile> file) {
    std::unique_ptr<VisionModel> m(new VisionModel());
    m->file_ = file;
    const GGUFFile& f = *file;
    VisionConfig& c = m->cfg_;
    const std::string arch = f.get_str("general.architecture", "");
    if (arch != "clip")
        throw InputError(f.path() + ": not an mmproj file (general.architecture is '" + printable(arch) +
                         "', expected 'clip')");
    if (!f.get_bool("clip.has_vision_encoder", true))
        throw UnsupportedError(f.path() + ": the mmproj file has no vision encoder (clip.has_vision_encoder = false)");
    if (f.has("clip.projector_type")) c.projector = f.get_str("clip.projector_type");
    else if (f.has("clip.vision.projector_type")) c.projector = f.get_str("clip.vision.projector_type");
    else if (f.get_bool("clip.has_llava_projector", false)) c.projector = "mlp";
    else f.fail("missing metadata key 'clip.projector_type'");
    if (c.projector != "mlp")
        throw UnsupportedError(f.path() + ": projector type '" + printable(c.projector) +
                               "' is not supported (supported: mlp, the LLaVA-1.5 projector)");
    if (f.has("mm.3.weight"))
        throw UnsupportedError(f.path() + ": an mlp_norm projector (mm.1/mm.3/mm.4 tensors) is not supported");

    c.image_size = bounded(f, "clip.vision.image_size", f.get_u32("clip.vision.image_size"), 1, kMaxImageSize);
    c.patch_size = bounded(f, "clip.vision.patch_size", f.get_u32("clip.vision.patch_size"), 1, c.image_size);
    if (c.image_size % c.patch_size != 0)
        f.fail(strprintf("clip.vision.image_size %lld is not a multiple of clip.vision.patch_size %lld",
                         static_cast<long long>(c.image_size), static_cast<long long>(c.patch_size)));
    c.n_embd = bounded(f, "clip.vision.embedding_length", f.get_u32("clip.vision.embedding_length"), 1, kMaxWidth);
    c.n_head = bounded(f, "clip.vision.attention.head_count", f.get_u32("clip.vision.attention.head_count"), 1, kMaxHeads);
    if (c.n_embd % c.n_head != 0)
        f.fail(strprintf("clip.vision.embedding_length %lld is not a multiple of clip.vision.attention.head_count %lld",
                         static_cast<long long>(c.n_embd), static_cast<long long>(c.n_head)));
    const int64_t n_stored = bounded(f, "clip.vision.block_count", f.get_u32("clip.vision.block_count"), 1, kMaxLayers);
    c.eps = f.get_f32("clip.vision.attention.layer_norm_epsilon", 1e-5f);
    if (f.has("clip.vision.image_mean")) {
        std::vector<float> mean = f.get_f32_array("clip.vision.image_mean");
        std::vector<float> std_ = f.get_f32_array("clip.vision.image_std");
        if (mean.size() < 3 || std_.size() < 3) f.fail("clip.vision.image_mean/image_std need 3 values");
        for (int i = 0; i < 3; ++i) {
            if (!(std_[static_cast<size_t>(i)] > 0.0f)) f.fail("clip.vision.image_std must be positive");
            c.mean[i] = mean[static_cast<size_t>(i)];
            c.std[i] = std_[static_cast<size_t>(i)];
        }
    }
    const bool gelu = f.get_bool("clip.use_gelu", false), silu = f.get_bool("clip.use_silu", false);
    if (gelu && silu) f.fail("both clip.use_gelu and clip.use_silu are set");
    c.act = gelu ? cpu::Activation::GELU : silu ? cpu::Activation::SiLU : cpu::Activation::QuickGELU;

    // Which hidden states feed the projector: explicit indices, or the last stored layer's output.
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
        f.fail("tensor 'v.patch_embd.weight' has shape " + pt->shape_str() + ", expected " + shape_of({P, P, 3, C}));
    if (pt->info->block_size != 1)
        throw UnsupportedError(f.path() + ": a quantized patch embedding (" + pt->info->name + ") is not supported");
    m->patch_w_ = Weight::from(*pt, f.path());
    m->patch_w_.n_cols = 3 * P * P;
    m->patch_w_.n_rows = C;
    m->patch_w_.row_bytes = row_bytes(*pt->info, 3 * P * P);
    m->patch_b_ = m->vec("v.patch_embd.bias", C, false);
    if (c.class_token) m->class_embd_ = m->vec("v.class_embd", C);
    m->pos_embd_ = m->vec("v.position_embd.weight", C * T);
    m->pre_ln_w_ = m->vec("v.pre_ln.weight", C, false);
    m->pre_ln_b_ = m->vec("v.pre_ln.bias", C, !m->pre_ln_w_.empty());
    m->post_ln_w_ = m->vec("v.post_ln.weight", C, false);
    m->post_ln_b_ = m->vec("v.post_ln.bias", C, !m->post_ln_w_.empty());

    // encoder layers (FFN width from the tensors: the converter's feed_forward_length is not trusted)
    const GGUFTensorInfo* up0 = f.find_tensor("v.blk.0.ffn_up.weight");
    const GGUFTensorInfo* down0 = f.find_tensor("v.blk.0.ffn_down.weight");
    if (!up0 || !down0) f.fail("missing tensor 'v.blk.0.ffn_up.weight' or 'v.blk.0.ffn_down.weight'");
    // llama.cpp's rule for legacy LLaVA files: the up projection is the matrix whose input (ne[0]) is n_embd
    const bool swapped = down0->ne[0] == C && up0->ne[0] != C;
    c.n_ff = swapped ? down0->ne[1] : up0->ne[1];
    m->layers_.resize(static_cast<size_t>(c.n_layer));
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const std::string p = "v.blk." + std::to_string(l) + ".";
        Layer& L = m->layers_[static_cast<size_t>(l)];
        L.ln1_w = m->vec(p + "ln1.weight", C);
        L.ln1_b = m->vec(p + "ln1.bias", C);
        L.ln2_w = m->vec(p + "ln2.weight", C);
        L.ln2_b = m->vec(p + "ln2.bias", C);
        L.wq = m->weight(p + "attn_q.weight", {C, C});
        L.wk = m->weight(p + "attn_k.weight", {C, C});
        L.wv = m->weight(p + "attn_v.weight", {C, C});
        L.wo = m->weight(p + "attn_out.weight", {C, C});
        L.bq = m->vec(p + "attn_q.bias", C);
        L.bk = m->vec(p + "attn_k.bias", C);
        L.bv = m->vec(p + "attn_v.bias", C);
        L.bo = m->vec(p + "attn_out.bias", C);
        const std::string up = swapped ? "ffn_down" : "ffn_up", down = swapped ? "ffn_up" : "ffn_down";
        L.w_up = m->weight(p + up + ".weight", {C, c.n_ff});
        L.w_down = m->weight(p + down + ".weight", {c.n_ff, C});
        L.b_up = m->vec(p + up + ".bias", c.n_ff);
        L.b_down = m->vec(p + down + ".bias", C);
    }

    // projector: mm.0 [C * n_features -> H], GELU, mm.2 [H -> n_embd_out]
    const int64_t in = C * static_cast<int64_t>(c.feature_layers.size());
    const GGUFTensorInfo* t0 = f.find_tensor("mm.0.weight");
    const GGUFTensorInfo* t2 = f.find_tensor("mm.2.weight");
    if (!t0 || !t2) f.fail("missing projector tensor 'mm.0.weight' or 'mm.2.weight'");
    m->mm0_ = m->weight("mm.0.weight", {in, t0->ne[1]});
    m->mm2_ = m->weight("mm.2.weight", {t0->ne[1], t2->ne[1]});
    m->mm0_b_ = m->vec("mm.0.bias", t0->ne[1]);
    m->mm2_b_ = m->vec("mm.2.bias", t2->ne[1]);
    c.n_embd_out = t2->ne[1];
    c.n_tokens = c.n_patches;
    return m;
}

static const float* opt(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

void VisionModel::offload(int device) {
    gpu_.reset();
    if (device < 0) return;
    const VisionConfig& c = cfg_;
    gpu::VisionWeights w;
    w.n_embd = c.n_embd;
    w.n_ff = c.n_ff;
    w.n_head = c.n_head;
    w.n_layer = c.n_layer;
    w.patch_size = c.patch_size;
    w.image_size = c.image_size;
    w.n_patches = c.n_patches;
    w.class_token = c.class_token;
    w.eps = c.eps;
    w.act = static_cast<int>(c.act);
    w.feature_layers = c.feature_layers;
    w.patch_w = patch_w_;
    w.patch_b = opt(patch_b_);
    w.class_embd = opt(class_embd_);
    w.pos_embd = opt(pos_embd_);
    w.pre_ln_w = opt(pre_ln_w_);
    w.pre_ln_b = opt(pre_ln_b_);
    w.post_ln_w = opt(post_ln_w_);
    w.post_ln_b = opt(post_ln_b_);
    for (const Layer& L : layers_) {
        gpu::VisionWeights::Layer g;
        g.ln1_w = L.ln1_w.data();
        g.ln1_b = L.ln1_b.data();
        g.ln2_w = L.ln2_w.data();
        g.ln2_b = L.ln2_b.data();
        g.bq = L.bq.data();
        g.bk = L.bk.data();
        g.bv = L.bv.data();
        g.bo = L.bo.data();
        g.b_up = L.b_up.data();
        g.b_down = L.b_down.data();
        g.wq = L.wq;
        g.wk = L.wk;
        g.wv = L.wv;
        g.wo = L.wo;
        g.w_up = L.w_up;
        g.w_down = L.w_down;
        w.layers.push_back(g);
    }
    w.mm0 = mm0_;
    w.mm2 = mm2_;
    w.mm0_b = mm0_b_.data();
    w.mm2_b = mm2_b_.data();
    gpu_ = gpu::make_vision_encoder(w, device);
}

size_t VisionModel::device_weight_bytes() const { return gpu_ ? gpu_->weight_bytes() : 0; }

ImagePreprocess VisionModel::preprocess(ImageMode mode) const {
    ImagePreprocess p;
    p.image_size = static_cast<int>(cfg_.image_size);
    for (int i = 0; i < 3; ++i) {
        p.mean[i] = cfg_.mean[i];
        p.std[i] = cfg_.std[i];
    }
    p.mode = mode;
    return p;
}

void VisionModel::encode(const float* pixels, float* out, ThreadPool& pool) {
    const VisionConfig& c = cfg_;
    const int64_t C = c.n_embd, P = c.patch_size, S = c.image_size, side = S / P, NP = c.n_patches;
    const int64_t cls = c.class_token ? 1 : 0, T = NP + cls, H = c.n_head, D = C / H;

    // patches -> [NP][3*P*P] (c, ky, kx order, as the conv kernel), then the embedding matmul
    std::vector<float> cols(static_cast<size_t>(NP * 3 * P * P));
    for (int64_t py = 0; py < side; ++py)
        for (int64_t px = 0; px < side; ++px) {
            float* dst = cols.data() + (py * side + px) * 3 * P * P;
            for (int64_t ch = 0; ch < 3; ++ch)
                for (int64_t ky = 0; ky < P; ++ky)
                    std::memcpy(dst + (ch * P + ky) * P, pixels + (ch * S + py * P + ky) * S + px * P, sizeof(float) * P);
        }
    if (gpu_) {
        gpu_->encode(cols.data(), out);
        return;
    }
    std::vector<float> x(static_cast<size_t>(T * C)), xb(static_cast<size_t>(T * C));
    cpu::matmul(patch_w_, cols.data(), NP, x.data() + cls * C, pool, patch_b_.empty() ? nullptr : patch_b_.data());
    if (cls) std::copy(class_embd_.begin(), class_embd_.end(), x.begin());
    cpu::add(x.data(), pos_embd_.data(), T * C);
    if (!pre_ln_w_.empty()) cpu::layernorm(x.data(), pre_ln_w_.data(), pre_ln_b_.data(), T, C, c.eps, x.data(), pool);

    // features: hidden states by index (0 = after pre-LN), concatenated in the listed order
    const int64_t nf = static_cast<int64_t>(c.feature_layers.size());
    std::vector<float> feat(static_cast<size_t>(NP * C * nf));
    auto take = [&](int64_t hidden_index, const std::vector<float>& h) {
        for (size_t i = 0; i < c.feature_layers.size(); ++i)
            if (c.feature_layers[i] == hidden_index)
                for (int64_t t = 0; t < NP; ++t)
                    std::copy(h.begin() + (t + cls) * C, h.begin() + (t + cls + 1) * C,
                              feat.begin() + (t * nf + static_cast<int64_t>(i)) * C);
    };
    take(0, x);

    std::vector<float> q(static_cast<size_t>(T * C)), k(q.size()), v(q.size()), att(q.size());
    std::vector<float> ff(static_cast<size_t>(T * c.n_ff));
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const Layer& L = layers_[static_cast<size_t>(l)];
        cpu::layernorm(x.data(), L.ln1_w.data(), L.ln1_b.data(), T, C, c.eps, xb.data(), pool);
        cpu::matmul(L.wq, xb.data(), T, q.data(), pool, L.bq.data());
        cpu::matmul(L.wk, xb.data(), T, k.data(), pool, L.bk.data());
        cpu::matmul(L.wv, xb.data(), T, v.data(), pool, L.bv.data());
        cpu::attention_dense(q.data(), k.data(), v.data(), T, H, D, att.data(), pool);
        cpu::matmul(L.wo, att.data(), T, xb.data(), pool, L.bo.data());
        cpu::add(x.data(), xb.data(), T * C);
        cpu::layernorm(x.data(), L.ln2_w.data(), L.ln2_b.data(), T, C, c.eps, xb.data(), pool);
        cpu::matmul(L.w_up, xb.data(), T, ff.data(), pool, L.b_up.data());
        cpu::activation(ff.data(), T * c.n_ff, c.act, pool);
        cpu::matmul(L.w_down, ff.data(), T, xb.data(), pool, L.b_down.data());
        cpu::add(x.data(), xb.data(), T * C);
        if (l + 1 == c.n_layer && !post_ln_w_.empty())
            cpu::layernorm(x.data(), post_ln_w_.data(), post_ln_b_.data(), T, C, c.eps, x.data(), pool);
        take(l + 1, x);
    }

    // projector
    const int64_t Hd = mm0_.n_rows;
    std::vector<float> hid(static_cast<size_t>(NP * Hd));
    cpu::matmul(mm0_, feat.data(), NP, hid.data(), pool, mm0_b_.data());
    cpu::activation(hid.data(), NP * Hd, cpu::Activation::GELU, pool);
    cpu::matmul(mm2_, hid.data(), NP, out, pool, mm2_b_.data());
}

}  // namespace aircache
