// probes/elite.h — AirCache's elite-window importance: with the reference row m-1 and the window T
// of rows >= from, the elite rows E_h are those of T whose logit from the reference row is within
// ln(alpha) of the largest; each elite row's softmax over the visual keys and the non-visual elite
// keys it can see, renormalised over that set, gives the visual keys' importance, averaged over
// E_h. Needs the window in the last prefill chunk (last_chunk_start()).
#pragma once

#include "compress/probe.h"

namespace aircache {
namespace compress {

class EliteProbe final : public Probe {
public:
    EliteProbe(int64_t from, double ln_alpha) : from_(from), ln_alpha_(ln_alpha) {}
    const char* kind() const override { return "elite"; }
    void begin(const ProbeShape& s) override;
    int64_t first_row() const override { return first_; }
    int64_t last_chunk_start() const override { return first_; }
    void observe(const HostChunk& c, int g, const float* K) override;
    bool observe_device(const DeviceChunk& c) override;
    bool covers(const Probe& o) const override;

    // [n_head][N_v]: importance of the visual row layout.visual[i] for head h
    const std::vector<float>& importance(int layer) const { return imp_[static_cast<size_t>(layer)]; }
    const std::vector<float>& elite_size(int layer) const { return size_[static_cast<size_t>(layer)]; }  // [n_head]

private:
    int64_t from_;
    double ln_alpha_;
    int64_t first_ = 0;  // the window's first row (an empty window is {m-1})
    std::vector<std::vector<float>> imp_, size_;
};

}  // namespace compress
}  // namespace aircache
