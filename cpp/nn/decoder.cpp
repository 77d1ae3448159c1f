#include "nn/decoder.h"

#include <utility>

#include "nn/attention.h"

namespace aircache {
namespace nn {

void LayerRuns::begin(const TextBatch& b, KVCache* const* caches, int n_layer, int n_pos_axes,
                      std::function<int64_t(int)> window) {
    b_ = &b;
    caches_ = caches;
    n_layer_ = n_layer;
    n_pos_axes_ = n_pos_axes;
    window_ = std::move(window);
    cur_ = nullptr;
    rows_.assign(static_cast<size_t>(n_layer), KVRows());
    tables_.clear();
}

const KVRows& LayerRuns::enter(Compute& c, int l, Tensor& x, RunSlots s) {
    Backend& be = c.layer(l);
    if (&be != cur_) {
        cur_ = &be;
        const int64_t n = b_->n;
        x = c.to(x, be, s.x);
        pos_ = c.upload(be, s.pos, b_->pos, GGMLType::I32, n, n_pos_axes_);
        int l1 = l;
        while (l1 < n_layer_ && &c.layer(l1) == &be) ++l1;
        tables_.emplace_back();
        std::vector<KVRow>& all = tables_.back();
        for (int k = l; k < l1; ++k) {
            KVRows& r = rows_[static_cast<size_t>(k)];
            r = kv_rows(*b_, caches_, k, window_ ? window_(k) : 0, n_pos_axes_);
            all.insert(all.end(), r.host.begin(), r.host.end());
        }
        const Tensor table = c.upload(be, s.rows, all.data(), GGMLType::I32, static_cast<int64_t>(all.size()), kKVRowInts);
        for (int k = l; k < l1; ++k) rows_[static_cast<size_t>(k)].table = table.slice_rows((k - l) * n, n);
    }
    return rows_[static_cast<size_t>(l)];
}

void output_logits(Compute& c, const TextBatch& b, Tensor x, const Param& norm, float eps, const Param& output,
                   int64_t V, float* logits, bool rowwise, Backend* cur, OutputSlots s) {
    const int64_t n = b.n, E = x.cols;
    std::vector<int32_t> want;
    for (int64_t t = 0; t < n; ++t)
        if (!b.want_logits || b.want_logits[t]) want.push_back(static_cast<int32_t>(t));
    if (want.empty()) {
        if (cur) cur->sync();
        return;
    }
    const int64_t n_out = static_cast<int64_t>(want.size());
    Backend& ob = c.output();
    x = c.to(x, ob, s.x);
    Ops ops = c.ops(ob);
    if (n_out != n) {
        const Tensor idx = c.upload(ob, s.want, want.data(), GGMLType::I32, n_out, 1);
        Tensor sel = c.scratch(ob, s.selected, GGMLType::F32, n_out, E);
        ops.get_rows(x, idx, sel);
        x = sel;
    }
    Tensor xn = c.scratch(ob, s.norm, GGMLType::F32, n_out, E);
    ops.rms_norm(x, &norm, eps, xn);
    if (ob.is_host()) {
        ops.matmul(output, xn, make_tensor(&ob, logits, GGMLType::F32, n_out, V), nullptr, rowwise);
    } else {
        Tensor lg = c.scratch(ob, s.logits, GGMLType::F32, n_out, V);
        ops.matmul(output, xn, lg, nullptr, rowwise);
        Compute::download(lg, logits);
    }
}

}  // namespace nn
}  // namespace aircache
