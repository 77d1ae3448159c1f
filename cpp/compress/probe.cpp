#include "compress/probe.h"

#include <algorithm>

namespace aircache {
namespace compress {

int64_t Probe::last_chunk_start() const { return s_.layout ? s_.layout->m : 0; }

int64_t Probe::n_keys(const HostChunk& c) const {
    int64_t n = c.rows[c.n - 1] + 1;
    if (s_.layout && !s_.layout->key_end.empty())
        for (int64_t t = 0; t < c.n; ++t) n = std::max(n, s_.layout->keys_of(c.rows[t]));
    return n;
}

bool Probe::observe_device(const DeviceChunk&) { return false; }

bool Probe::absorb(const Probe&) { return false; }

void ProbeSet::add(std::shared_ptr<Probe> p) {
    for (const auto& q : probes_)
        if (std::string(q->kind()) == p->kind() && (q->covers(*p) || q->absorb(*p))) return;
    probes_.push_back(std::move(p));
}

void ProbeSet::merge(const ProbeSet& o) {
    for (const auto& p : o.probes_) add(p);
}

}  // namespace compress
}  // namespace aircache
