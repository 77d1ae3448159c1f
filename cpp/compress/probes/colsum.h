// probes/colsum.h — column sums of attention: for each start row r0, per query head h and key j,
// colsum[h][j] = sum over prompt rows q >= r0 of softmax_q[j] (the softmax over q's causal keys).
// H2O: r0 = 0; SnapKV / PyramidKV: m - window; VL-Cache: its post-vision rows. Starts of several
// requests merge into one probe.
#pragma once

#include "compress/probe.h"

namespace aircache {
namespace compress {

class ColsumProbe final : public Probe {
public:
    explicit ColsumProbe(std::vector<int64_t> starts);
    const char* kind() const override { return "colsum"; }
    void begin(const ProbeShape& s) override;
    int64_t first_row() const override;
    void observe(const HostChunk& c, int g, const float* K) override;
    bool observe_device(const DeviceChunk& c) override;
    bool covers(const Probe& o) const override;
    bool absorb(const Probe& o) override;

    const std::vector<int64_t>& starts() const { return starts_; }
    // [n_head][m] for start row r0 of `layer`
    const std::vector<float>& colsum(int layer, int64_t r0) const;

private:
    std::vector<int64_t> starts_;                       // ascending, unique
    std::vector<std::vector<std::vector<float>>> col_;  // [layer][start][h * m + j]
};

}  // namespace compress
}  // namespace aircache
