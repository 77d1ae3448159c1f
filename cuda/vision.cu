// vision.cu — the CLIP vision tower and mlp projector on a CUDA device (vision_model.cpp's encode,
// step for step). The host extracts the patches; everything after runs on the device.
#include <algorithm>

#include "cuda_api.h"
#include "gpu_model.h"
#include "ops.cuh"

namespace aircache {
namespace gpu {

namespace {

using cuda::DeviceBuffer;
using cuda::DeviceWeight;
using cuda::Exec;

class CudaVision final : public VisionEncoder {
public:
    CudaVision(const VisionWeights& w, int device) : w_(w), device_(device), ex_(device) {
        cuda::DeviceGuard g(device);
        const int64_t C = w.n_embd;
        if (C % w.n_head != 0 || C / w.n_head > cuda::kMaxHeadDim)
            throw UnsupportedError("the CUDA vision tower supports head dimensions up to 256");
        patch_w_ = weight(w.patch_w);
        patch_b_ = vec(w.patch_b, C);
        class_embd_ = vec(w.class_embd, C);
        pos_embd_ = vec(w.pos_embd, (w.n_patches + (w.class_token ? 1 : 0)) * C);
        pre_ln_w_ = vec(w.pre_ln_w, C);
        pre_ln_b_ = vec(w.pre_ln_b, C);
        post_ln_w_ = vec(w.post_ln_w, C);
        post_ln_b_ = vec(w.post_ln_b, C);
        for (const VisionWeights::Layer& s : w.layers) {
            Layer L;
            L.ln1_w = vec(s.ln1_w, C);
            L.ln1_b = vec(s.ln1_b, C);
            L.ln2_w = vec(s.ln2_w, C);
            L.ln2_b = vec(s.ln2_b, C);
            L.bq = vec(s.bq, C);
            L.bk = vec(s.bk, C);
            L.bv = vec(s.bv, C);
            L.bo = vec(s.bo, C);
            L.b_up = vec(s.b_up, w.n_ff);
            L.b_down = vec(s.b_down, C);
            L.wq = weight(s.wq);
            L.wk = weight(s.wk);
            L.wv = weight(s.wv);
            L.wo = weight(s.wo);
            L.w_up = weight(s.w_up);
            L.w_down = weight(s.w_down);
            layers_.push_back(std::move(L));
        }
        mm0_ = weight(w.mm0);
        mm2_ = weight(w.mm2);
        mm0_b_ = vec(w.mm0_b, w.mm0.n_rows);
        mm2_b_ = vec(w.mm2_b, w.mm2.n_rows);
        ex_.sync();
        // the host views are not needed after the upload
        w_.layers.clear();
    }

    size_t weight_bytes() const override { return weight_bytes_; }

    void encode(const float* cols, float* out) override {
        cuda::DeviceGuard g(device_);
        const int64_t C = w_.n_embd, P = w_.patch_size, NP = w_.n_patches, cls = w_.class_token ? 1 : 0;
        const int64_t T = NP + cls, H = w_.n_head, D = C / H, FF = w_.n_ff;
        const int64_t nf = static_cast<int64_t>(w_.feature_layers.size());
        const int64_t Hd = mm0_.n_rows, OUT = mm2_.n_rows;
        auto f = [](int64_t k) { return sizeof(float) * static_cast<size_t>(k); };
        DeviceBuffer d_cols = cuda::upload_buffer(ex_, cols, f(NP * 3 * P * P));
        DeviceBuffer x(f(T * C)), xb(f(T * C)), q(f(T * C)), k(f(T * C)), v(f(T * C)), att(f(T * C));
        DeviceBuffer ff(f(T * FF)), feat(f(NP * C * nf)), hid(f(NP * Hd)), y(f(NP * OUT));
        float* dx = x.as<float>();

        cuda::matmul(ex_, patch_w_, d_cols.as<float>(), NP, dx + cls * C, patch_b_.as<float>());
        if (cls) AC_CUDA_CHECK(cudaMemcpyAsync(dx, class_embd_.get(), f(C), cudaMemcpyDeviceToDevice, ex_.stream()));
        cuda::add(ex_, dx, pos_embd_.as<float>(), T * C);
        if (pre_ln_w_.get())
            cuda::layernorm(ex_, dx, pre_ln_w_.as<float>(), pre_ln_b_.as<float>(), T, C, w_.eps, dx);

        // hidden state `index` -> its feature slots: feat[t][i][:] = h[t + cls][:]
        auto take = [&](int64_t index) {
            for (int64_t i = 0; i < nf; ++i)
                if (w_.feature_layers[static_cast<size_t>(i)] == index)
                    AC_CUDA_CHECK(cudaMemcpy2DAsync(feat.as<float>() + i * C, f(nf * C), dx + cls * C, f(C), f(C),
                                                    static_cast<size_t>(NP), cudaMemcpyDeviceToDevice, ex_.stream()));
        };
        take(0);
        for (int64_t l = 0; l < w_.n_layer; ++l) {
            const Layer& L = layers_[static_cast<size_t>(l)];
            cuda::layernorm(ex_, dx, L.ln1_w.as<float>(), L.ln1_b.as<float>(), T, C, w_.eps, xb.as<float>());
            cuda::matmul(ex_, L.wq, xb.as<float>(), T, q.as<float>(), L.bq.as<float>());
            cuda::matmul(ex_, L.wk, xb.as<float>(), T, k.as<float>(), L.bk.as<float>());
            cuda::matmul(ex_, L.wv, xb.as<float>(), T, v.as<float>(), L.bv.as<float>());
            cuda::attention_dense(ex_, q.as<float>(), k.as<float>(), v.as<float>(), T, static_cast<int>(H),
                                  static_cast<int>(D), att.as<float>());
            cuda::matmul(ex_, L.wo, att.as<float>(), T, xb.as<float>(), L.bo.as<float>());
            cuda::add(ex_, dx, xb.as<float>(), T * C);
            cuda::layernorm(ex_, dx, L.ln2_w.as<float>(), L.ln2_b.as<float>(), T, C, w_.eps, xb.as<float>());
            cuda::matmul(ex_, L.w_up, xb.as<float>(), T, ff.as<float>(), L.b_up.as<float>());
            cuda::activation(ex_, ff.as<float>(), T * FF, w_.act);
            cuda::matmul(ex_, L.w_down, ff.as<float>(), T, xb.as<float>(), L.b_down.as<float>());
            cuda::add(ex_, dx, xb.as<float>(), T * C);
            if (l + 1 == w_.n_layer && post_ln_w_.get())
                cuda::layernorm(ex_, dx, post_ln_w_.as<float>(), post_ln_b_.as<float>(), T, C, w_.eps, dx);
            take(l + 1);
        }
        // projector: mm.0 -> GELU -> mm.2
        cuda::matmul(ex_, mm0_, feat.as<float>(), NP, hid.as<float>(), mm0_b_.as<float>());
        cuda::activation(ex_, hid.as<float>(), NP * Hd, 0);
        cuda::matmul(ex_, mm2_, hid.as<float>(), NP, y.as<float>(), mm2_b_.as<float>());
        ex_.download(out, y.get(), f(NP * OUT));
    }

private:
    struct Layer {
        DeviceBuffer ln1_w, ln1_b, ln2_w, ln2_b, bq, bk, bv, bo, b_up, b_down;
        DeviceWeight wq, wk, wv, wo, w_up, w_down;
    };

    DeviceBuffer vec(const float* p, int64_t n) {
        if (!p || n <= 0) return DeviceBuffer();
        weight_bytes_ += sizeof(float) * static_cast<size_t>(n);
        return cuda::upload_buffer(ex_, p, sizeof(float) * static_cast<size_t>(n));
    }

    DeviceWeight weight(const Weight& w) {
        DeviceWeight d;
        d.type = w.type;
        d.n_rows = w.n_rows;
        d.n_cols = w.n_cols;
        d.row_bytes = w.row_bytes;
        const size_t bytes = w.row_bytes * static_cast<size_t>(w.n_rows);
        owned_.push_back(cuda::upload_buffer(ex_, w.data, bytes));
        d.data = owned_.back().as<uint8_t>();
        weight_bytes_ += bytes;
        return d;
    }

    VisionWeights w_;
    int device_;
    Exec ex_;
    size_t weight_bytes_ = 0;
    std::vector<DeviceBuffer> owned_;
    std::vector<Layer> layers_;
    DeviceWeight patch_w_, mm0_, mm2_;
    DeviceBuffer patch_b_, class_embd_, pos_embd_, pre_ln_w_, pre_ln_b_, post_ln_w_, post_ln_b_, mm0_b_, mm2_b_;
};

}  // namespace

std::unique_ptr<VisionEncoder> make_vision_encoder(const VisionWeights& w, int device) {
    return std::make_unique<CudaVision>(w, device);
}

}  // namespace gpu
}  // namespace aircache
