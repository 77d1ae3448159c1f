// nn/decoder.h — the scaffolding every decoder's forward shares over the backend interface: the runs
// of consecutive layers on one backend (activations, positions and all the run's rows tables moved
// there once), and the logits of the rows a batch wants.
//
//   nn::LayerRuns runs_;                                   // a member: its tables outlive the forward
//   runs_.begin(b, caches, n_layer, n_pos_axes, window);   // window(l): 0, or a sliding window
//   for (int l = 0; l < n_layer; ++l) {
//       Backend& be = c.layer(l);
//       const KVRows& R = runs_.enter(c, l, x, {kX, kPos, kRows});  // x moved when the backend changes
//       ... ops.rope(q, H, D, runs_.pos(), ...); ops.attention_kv(q, H, R, ...) ...
//   }
//   nn::output_logits(c, b, x, out_norm_, eps, output_, V, logits, rowwise, runs_.backend(),
//                     {kX, kXB, kAtt, kWant, kLogits});
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "backend/compute.h"
#include "backend/ops.h"
#include "kv_cache.h"
#include "text_model.h"

namespace aircache {
namespace nn {

// Scratch slots of the model's own enumeration.
struct RunSlots {
    int x, pos, rows;
};
struct OutputSlots {
    int x, norm, selected, want, logits;
};

class LayerRuns {
public:
    // A new forward of `b` over `caches`; window(l) > 0 narrows layer l's keys to a sliding window.
    void begin(const TextBatch& b, KVCache* const* caches, int n_layer, int n_pos_axes,
               std::function<int64_t(int)> window);
    // Layer l's rows table. Where l starts a run of layers on another backend, `x` is moved there and
    // the positions and every rows table of the run are uploaded (each row's cache slot reserved).
    const KVRows& enter(Compute& c, int l, Tensor& x, RunSlots s);
    const Tensor& pos() const { return pos_; }
    Backend* backend() const { return cur_; }

private:
    const TextBatch* b_ = nullptr;
    KVCache* const* caches_ = nullptr;
    int n_layer_ = 0, n_pos_axes_ = 1;
    std::function<int64_t(int)> window_;
    Backend* cur_ = nullptr;
    Tensor pos_;
    std::vector<KVRows> rows_;
    std::vector<std::vector<KVRow>> tables_;  // this forward's uploaded tables (host views point here)
};

// The logits of the rows b.want_logits selects (every row without it) into `logits` [n_out][V]:
// `x` moved to the output backend, the final RMSNorm, the output matrix. Nothing wanted: syncs `cur`.
void output_logits(Compute& c, const TextBatch& b, Tensor x, const Param& norm, float eps, const Param& output,
                   int64_t V, float* logits, bool rowwise, Backend* cur, OutputSlots s);

}  // namespace nn
}  // namespace aircache
