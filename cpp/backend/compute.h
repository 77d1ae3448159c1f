// backend/compute.h — where a model runs: the backend of each layer (the placement that
// n_gpu_layers decides, llama.cpp's -ngl), parameter placement, and working memory per backend.
// Models declare their parameters once, grouped by layer (ParamGroups); placing them is this
// layer's job, not the model's.
//
//   Compute c(cpu, cuda.get(), n_layer, n_gpu_layers);   // layers [0, n) on the device
//   c.place(model.params());                            // uploads each group where it runs
//   Ops ops = c.ops(c.layer(l));
//   Tensor q = c.scratch(c.layer(l), kQ, GGMLType::F32, n, H * D);
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "threadpool.h"

namespace aircache {

// A model's parameters by where they run.
struct ParamGroups {
    std::vector<std::vector<Param*>> layers;  // [layer]: placed with the layer
    std::vector<Param*> output;               // with the output norm / projection
    std::vector<Param*> shared;               // on every backend a layer runs on (RoPE tables)
};

class Compute {
public:
    // device null (or n_device_layers 0): everything on the CPU. Otherwise layers
    // [0, n_device_layers) run on the device, the output too when all of them do.
    Compute(Backend& cpu, Backend* device, int n_layer, int n_device_layers);

    Backend& cpu() const { return cpu_; }
    Backend* device() const { return n_dev_ > 0 ? device_ : nullptr; }
    Backend& layer(int l) const { return l < n_dev_ ? *device_ : cpu_; }
    Backend& output() const { return n_dev_ >= n_layer_ && n_dev_ > 0 ? *device_ : cpu_; }
    int n_device_layers() const { return n_dev_; }
    bool output_on_device() const { return n_dev_ > 0 && n_dev_ >= n_layer_; }
    ThreadPool& pool() const;
    Ops ops(Backend& be) const { return Ops(be, cpu_); }

    // Uploads every group to where it runs; returns the device bytes.
    size_t place(const ParamGroups& g);
    size_t device_bytes() const { return device_bytes_; }

    // Working memory `slot` on `be`: at least rows x cols of `type` (grow-only; the contents survive
    // only while the slot does not grow).
    Tensor scratch(Backend& be, int slot, GGMLType type, int64_t rows, int64_t cols);
    // `t` on `be`: itself, or a copy into `slot` there.
    Tensor to(const Tensor& t, Backend& be, int slot);
    // Host data into `slot` on `be` (a view of `data` itself on a host backend).
    Tensor upload(Backend& be, int slot, const void* data, GGMLType type, int64_t rows, int64_t cols);
    // A tensor's bytes into host memory.
    static void download(const Tensor& t, void* dst);
    // Refuses, before anything is allocated, work whose working memory on `be` (`bytes` in all, of
    // which what the slots there already hold is reused) exceeds what the backend has free:
    // OutOfMemory (Python MemoryError) naming `what` and both sizes.
    void require(Backend& be, size_t bytes, const std::string& what) const;
    // Working memory held on `be` now.
    size_t held(Backend& be) const;

private:
    Backend& cpu_;
    Backend* device_;
    int n_layer_, n_dev_;
    size_t device_bytes_ = 0;
    std::map<std::pair<Backend*, int>, Buffer> ws_;
};

}  // namespace aircache
