#include "backend/compute.h"

#include <cstring>
#include <set>

#include "backend/cpu_backend.h"
#include "common.h"

namespace aircache {

Compute::Compute(Backend& cpu, Backend* device, int n_layer, int n_device_layers)
    : cpu_(cpu), device_(device), n_layer_(n_layer), n_dev_(device ? std::max(0, std::min(n_device_layers, n_layer)) : 0) {}

ThreadPool& Compute::pool() const {
    const CpuOps* c = dynamic_cast<const CpuOps*>(&cpu_);
    if (!c) throw Error("internal: the CPU backend is not a CPU backend");
    return c->pool();
}

size_t Compute::place(const ParamGroups& g) {
    size_t bytes = 0;
    std::set<Backend*> used;
    for (size_t l = 0; l < g.layers.size(); ++l) {
        Backend& be = layer(static_cast<int>(l));
        used.insert(&be);
        for (Param* p : g.layers[l]) bytes += p->place(be);
    }
    for (Param* p : g.output) bytes += p->place(output());
    used.insert(&output());
    for (Backend* be : used)
        for (Param* p : g.shared) bytes += p->place(*be);
    device_bytes_ += bytes;
    return bytes;
}

Tensor Compute::scratch(Backend& be, int slot, GGMLType type, int64_t rows, int64_t cols) {
    Buffer& b = ws_[{&be, slot}];
    const size_t need = tensor_row_bytes(type, cols) * static_cast<size_t>(std::max<int64_t>(rows, 1));
    b.reserve(be, need);
    return make_tensor(&be, b.data(), type, rows, cols);
}

size_t Compute::held(Backend& be) const {
    size_t n = 0;
    for (const auto& [key, buf] : ws_)
        if (key.first == &be) n += buf.bytes();
    return n;
}

void Compute::require(Backend& be, size_t bytes, const std::string& what) const {
    const size_t have = held(be);
    if (bytes <= have) return;
    const uint64_t avail = be.memory_available();
    if (bytes - have > avail)
        throw OutOfMemory(strprintf("%s needs %s of working memory on %s but %s is available", what.c_str(),
                                    format_bytes(bytes).c_str(), be.name().c_str(),
                                    format_bytes(avail + have).c_str()));
}

Tensor Compute::to(const Tensor& t, Backend& be, int slot) {
    if (t.be == &be || (be.is_host() && on_host(t))) return t;
    Tensor d = scratch(be, slot, t.type, t.rows, t.cols);
    const size_t bytes = t.bytes();
    if (on_host(t)) {
        be.upload(d.data, t.data, bytes);
    } else if (be.is_host()) {
        t.be->download(d.data, t.data, bytes);
    } else {  // device to device: through the host
        std::vector<uint8_t> tmp(bytes);
        t.be->download(tmp.data(), t.data, bytes);
        be.upload(d.data, tmp.data(), bytes);
    }
    return d;
}

Tensor Compute::upload(Backend& be, int slot, const void* data, GGMLType type, int64_t rows, int64_t cols) {
    if (be.is_host()) return make_tensor(&be, const_cast<void*>(data), type, rows, cols);
    Tensor d = scratch(be, slot, type, rows, cols);
    be.upload(d.data, data, d.bytes());
    return d;
}

void Compute::download(const Tensor& t, void* dst) {
    if (on_host(t)) std::memcpy(dst, t.data, t.bytes());
    else t.be->download(dst, t.data, t.bytes());
}

}  // namespace aircache
