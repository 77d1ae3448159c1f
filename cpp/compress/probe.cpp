#include "compress/probe.h"

namespace aircache {
namespace compress {

int64_t Probe::last_chunk_start() const { return s_.layout ? s_.layout->m : 0; }

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
