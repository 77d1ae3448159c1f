// device.h — where a model runs: the CPU, or a CUDA device (all text layers, or the first N).
//
//   DeviceSpec d = resolve_device("auto");   // cuda:0 when built with CUDA and a GPU is present
//   d.cuda(); d.index;
//
// Names: "auto" | "cpu" | "cuda" | "cuda:N". "auto" reads the environment variable AIRCACHE_DEVICE
// first (so a test suite or a service can pin the default), then picks the first CUDA device when
// there is one, else the CPU. Asking for CUDA when the build has none, or when no device is usable,
// is an UnsupportedError that says which; an unknown name is an InputError.
#pragma once

#include <string>
#include <vector>

namespace aircache {

struct DeviceSpec {
    enum Kind { CPU, CUDA, TEST };
    Kind kind = CPU;
    int index = 0;  // CUDA device ordinal
    // TEST: the test-suite backend (backend.h, make_test_backend): host memory behind the device
    // interface, declining these ops ("test:decline=rms_norm+attention_kv").
    std::vector<std::string> decline;
    bool cuda() const { return kind == CUDA; }
    bool is_device() const { return kind != CPU; }  // a backend other than the CPU
    std::string name() const;  // "cpu" | "cuda:N" | "test[:decline=...]"
};

// Parses a name without checking that the device exists ("auto" -> not resolved: use resolve_device).
DeviceSpec parse_device(const std::string& name);
// Resolves "auto" and checks that a CUDA device asked for exists in this build and machine.
DeviceSpec resolve_device(const std::string& name);

// Text layers a model offloads for `n_gpu_layers` on `device` (llama.cpp's -ngl): the first
// n_gpu_layers; negative or more than n_layer: all; always 0 on the CPU.
int offload_layers(const DeviceSpec& device, int n_gpu_layers, int n_layer);

}  // namespace aircache
