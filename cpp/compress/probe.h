// compress/probe.h — importance probes: the statistics a policy asks of the prefill's attention.
//
// A probe is a small class (one file per probe in compress/probes/, its CUDA half in a .cu file
// beside it): it says which prompt rows it reads, observes every layer's chunk of post-RoPE queries
// against the cache's keys as the prefill goes, and reduces them at once to per-head vectors (no
// m x m matrix is ever held). A policy requests probes (Policy::request) and reads their results
// in plan(); the engine never knows what a probe computes. Adding a statistic = a probe file (+ its
// optional .cu) and the policy that asks for it.
//
//   ProbeSet req;
//   req.add(std::make_shared<ColsumProbe>(std::vector<int64_t>{m - 32}));   // SnapKV's window
//   ... prefill with a StatsCollector(req, ...) ...
//   const ColsumProbe& c = req.get(ColsumProbe({m - 32}));                  // in plan()
//
// Requests of several policies merge into one set (one prefill serves them all: a probe absorbs
// another of its kind when it can, or both are kept).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "compress/layout.h"

namespace aircache {
namespace compress {

struct ProbeShape {
    const PromptLayout* layout = nullptr;
    ModelShape shape;
    int64_t head_dim = 0;
};

// One layer's prefill chunk on the host: the queries of its rows.
struct HostChunk {
    int layer = 0;
    int64_t n = 0;                 // query rows
    const int32_t* rows = nullptr; // [n] their prompt rows, ascending (a fresh prefill: cache index = prompt row)
    const float* q = nullptr;      // [n][n_head][head_dim] post-RoPE queries
    // The query heads of this call within KV group g (of G heads): [g * G + head_from, g * G +
    // head_to); head_to < 0: all G. A group's heads may be split over calls (threads): a probe's
    // results per query head must not depend on the split.
    int head_from = 0, head_to = -1;
    int first_head(int g, int G) const { return g * G + head_from; }
    int end_head(int g, int G) const { return g * G + (head_to < 0 ? G : head_to); }
};

// The same chunk where it was computed, on a CUDA device (what a probe's .cu half reads).
struct DeviceChunk {
    int layer = 0;
    int64_t n = 0;
    const int32_t* rows = nullptr; // host [n]
    const float* q = nullptr;      // device [n][n_head][head_dim]
    const void* k = nullptr;       // device: the cache layer's K, [n_head_kv][capacity][head_dim]
    int64_t capacity = 0;
    bool f16 = true;
    void* stream = nullptr;        // the backend's cudaStream_t
    int device = 0;
};

class Probe {
public:
    virtual ~Probe() = default;
    virtual const char* kind() const = 0;
    // Sizes the per-layer results for a prompt (once, before its prefill).
    virtual void begin(const ProbeShape& s) = 0;
    // The first prompt row the probe reads (rows before it need nothing).
    virtual int64_t first_row() const = 0;
    // Rows [x, m) that must arrive in the chunk holding the last prompt row (m: no constraint).
    virtual int64_t last_chunk_start() const;
    // Keys [0, n) the host half reads for this chunk (default: every key a row of the chunk sees).
    virtual int64_t n_keys(const HostChunk& c) const;
    // Host half for the query heads of KV head `g`; K: that head's keys [0, n_keys) as floats
    // [n_keys][head_dim]. Called for the KV heads in parallel: write only that group's results.
    virtual void observe(const HostChunk& c, int g, const float* K) = 0;
    // Device half (its .cu file, built with CUDA): true when it ran; false sends the chunk to the
    // host half (the queries and keys are copied to the host for it).
    virtual bool observe_device(const DeviceChunk& c);
    // Whether this probe's results include everything `o` (a probe of the same kind) asks for.
    virtual bool covers(const Probe& o) const = 0;
    // Widens this probe to compute `o`'s results too, when it can.
    virtual bool absorb(const Probe& o);

protected:
    ProbeShape s_;
    std::shared_ptr<void> device_scratch_;  // the device half's buffers (its .cu file owns the type)
};

class ProbeSet {
public:
    // Adds a probe, absorbed into one of its kind already here when that one covers or can absorb it.
    void add(std::shared_ptr<Probe> p);
    void merge(const ProbeSet& o);
    bool empty() const { return probes_.empty(); }
    const std::vector<std::shared_ptr<Probe>>& list() const { return probes_; }
    // The probe whose results cover `want` (an internal error when none was requested).
    template <class P> const P& get(const P& want) const {
        for (const auto& p : probes_)
            if (const P* q = dynamic_cast<const P*>(p.get()); q && q->covers(want)) return *q;
        throw Error(std::string("internal: no ") + want.kind() + " probe covering the request was collected");
    }

private:
    std::vector<std::shared_ptr<Probe>> probes_;
};

}  // namespace compress
}  // namespace aircache
