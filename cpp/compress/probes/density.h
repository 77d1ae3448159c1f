// probes/density.h — VL-Cache's attention density: for prompt rows q >= from, per query head, the
// number of causal keys j <= q whose logit is below the row's maximum + ln p (the sparse entries),
// and the number of entries looked at (sum over the rows of q + 1).
#pragma once

#include "compress/probe.h"

namespace aircache {
namespace compress {

class DensityProbe final : public Probe {
public:
    DensityProbe(int64_t from, double ln_p) : from_(from), ln_p_(ln_p) {}
    const char* kind() const override { return "density"; }
    void begin(const ProbeShape& s) override;
    int64_t first_row() const override { return from_; }
    void observe(const HostChunk& c, int g, const float* K) override;
    bool observe_device(const DeviceChunk& c) override;
    bool covers(const Probe& o) const override;

    int64_t from() const { return from_; }
    double ln_p() const { return ln_p_; }
    const std::vector<double>& count(int layer) const { return count_[static_cast<size_t>(layer)]; }  // [n_head]
    double total() const { return total_; }

private:
    int64_t from_;
    double ln_p_;
    std::vector<std::vector<double>> count_;  // [layer][h]
    double total_ = 0.0;
};

}  // namespace compress
}  // namespace aircache
